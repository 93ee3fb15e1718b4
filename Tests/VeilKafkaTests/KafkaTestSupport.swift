import Foundation
import Logging
import Synchronization
import Testing
@testable import VeilKafka

/// A fresh embedded cluster (librdkafka's mock brokers on localhost TCP) per test.
struct KafkaFixture {
    let cluster: EmbeddedKafkaCluster
    let logger: Logger

    init(brokers: Int = 3) throws {
        cluster = try EmbeddedKafkaCluster(brokers: brokers)
        var logger = Logger(label: "test")
        logger.logLevel = ProcessInfo.processInfo.environment["VEIL_TEST_LOG"] == nil ? .critical : .debug
        self.logger = logger
    }

    var kafka: KafkaConfiguration { KafkaConfiguration(bootstrapServers: cluster.bootstrapServers, clientID: "test") }

    func topic(_ name: String = "t", partitions: Int32 = 4) throws -> String {
        let full = "\(name).\(UUID().uuidString.prefix(8))"
        try cluster.createTopic(full, partitions: partitions)
        return full
    }

    func producer(_ configure: (inout ProducerConfiguration) -> Void = { _ in }) throws -> KafkaProducer {
        var configuration = ProducerConfiguration(kafka: kafka)
        configure(&configuration)
        return try KafkaProducer(configuration: configuration, logger: logger)
    }

    func consumer(group: String, topics: [String], _ configure: (inout ConsumerConfiguration) -> Void = { _ in }) throws -> KafkaConsumer {
        var configuration = ConsumerConfiguration(kafka: kafka, groupID: group, topics: topics)
        configuration.sessionTimeoutMilliseconds = 6_000
        configure(&configuration)
        return try KafkaConsumer(configuration: configuration, logger: logger)
    }
}

struct TestTimeout: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}

/// Runs `body` with a deadline so a broken behaviour fails the test instead of hanging it.
/// On time-out `body` is cancelled and *not* waited for: a body stuck on an await that
/// ignores cancellation (the very defect such a test looks for) cannot stall the run.
func within<T: Sendable>(_ seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let (outcomes, continuation) = AsyncStream<Result<T, any Error>?>.makeStream(bufferingPolicy: .bufferingOldest(1))
    let work = Task {
        do { continuation.yield(.success(try await body())) } catch { continuation.yield(.failure(error)) }
    }
    let timer = Task {
        try? await Task.sleep(for: .seconds(seconds))
        continuation.yield(nil)
    }
    defer { timer.cancel() }
    var iterator = outcomes.makeAsyncIterator()
    guard let outcome = await iterator.next() ?? nil else {
        work.cancel()
        throw TestTimeout(what: what)
    }
    return try outcome.get()
}

/// Reads until `count` messages arrived, marking each processed when `mark` is set.
func collect(_ consumer: KafkaConsumer, count: Int, mark: Bool = true) async throws -> [KafkaMessage] {
    var received: [KafkaMessage] = []
    while received.count < count, let batch = try await consumer.nextBatch() {
        received += batch
        if mark { consumer.markProcessed(batch) }
    }
    return received
}

extension String {
    var bytes: [UInt8] { Array(utf8) }
}

/// Keeps every log record it is given, for tests that check what was logged.
final class RecordedLogs: Sendable {
    struct Record: Sendable {
        let level: Logger.Level
        let message: String
        let metadata: [String: String]
    }
    private let records = Mutex<[Record]>([])

    var all: [Record] { records.withLock { $0 } }

    func logger(label: String = "recorded") -> Logger {
        Logger(label: label) { _ in Handler(logs: self) }
    }

    struct Handler: LogHandler {
        let logs: RecordedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { $1 }.mapValues { "\($0)" }
            logs.records.withLock { $0.append(Record(level: event.level, message: "\(event.message)", metadata: merged)) }
        }
    }
}
