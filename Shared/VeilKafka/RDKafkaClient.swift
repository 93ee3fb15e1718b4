import CRdKafka
import Dispatch
import Foundation

/// Reads a NUL-terminated error buffer filled by librdkafka.
func errorString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Builds an `rd_kafka_conf_t`, naming the property librdkafka refused.
func makeRDKafkaConf(_ properties: [String: String]) throws(KafkaError) -> OpaquePointer {
    let conf = rd_kafka_conf_new()!
    var errstr = [CChar](repeating: 0, count: 512)
    for (key, value) in properties.sorted(by: { $0.key < $1.key }) {
        let result = rd_kafka_conf_set(conf, key, value, &errstr, errstr.count)
        if result != RD_KAFKA_CONF_OK {
            rd_kafka_conf_destroy(conf)
            throw .configuration("property '\(key)': " + errorString(errstr))
        }
    }
    return conf
}

/// Creates the client; takes ownership of `conf` on success and on failure.
func makeRDKafka(_ type: rd_kafka_type_t, conf: OpaquePointer) throws(KafkaError) -> OpaquePointer {
    var errstr = [CChar](repeating: 0, count: 512)
    guard let rk = rd_kafka_new(type, conf, &errstr, errstr.count) else {
        rd_kafka_conf_destroy(conf)
        throw .configuration(errorString(errstr))
    }
    return rk
}

/// Runs blocking librdkafka calls on a dedicated dispatch queue, never on
/// Swift's cooperative pool, and resumes the awaiting task when done.
struct BlockingCalls: Sendable {
    let queue: DispatchQueue

    init(label: String) {
        queue = DispatchQueue(label: label)
    }

    func run<T: Sendable>(_ body: @escaping @Sendable () throws(KafkaError) -> T) async throws(KafkaError) -> T {
        let result: Result<T, KafkaError> = await withCheckedContinuation { continuation in
            queue.async {
                do throws(KafkaError) { continuation.resume(returning: .success(try body())) }
                catch { continuation.resume(returning: .failure(error)) }
            }
        }
        return try result.get()
    }
}

/// A dedicated OS thread (not a cooperative-pool thread) for a poll loop.
/// `name` shows in `top -H` and `perf`; Linux keeps at most 15 bytes of it.
func startPollThread(name: String, _ body: @escaping @Sendable () -> Void) {
    precondition(name.utf8.count <= 15, "Linux thread names hold 15 bytes")
    let thread = Thread {
        // Foundation's `Thread.name` does not reach the kernel on Linux; this does.
        veil_name_current_thread(name)
        body()
    }
    thread.name = name
    thread.stackSize = 1 << 20
    thread.start()
}

/// An `rd_kafka_t` that may be shared across threads (librdkafka is thread-safe).
final class RDKafkaHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}
