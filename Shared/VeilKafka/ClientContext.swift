import CRdKafka
import Dispatch
import Logging
import Synchronization

/// What librdkafka's callbacks reach through the client's opaque pointer.
/// Lives longer than the `rd_kafka_t` it is attached to.
class ClientContext: @unchecked Sendable {
    let logger: Logger
    /// Set when the poll thread must stop.
    let stopping = Atomic<Bool>(false)
    /// Set once `close()` started, so it runs once.
    let closed = Atomic<Bool>(false)
    /// Signalled by the poll thread as its last act.
    let pollThreadExited = DispatchSemaphore(value: 0)

    /// Consumer positions librdkafka reset because they fell out of the log (retention
    /// removed messages before this member read them), per partition, since start.
    let offsetResets = Mutex<[TopicPartition: Int]>([:])

    init(logger: Logger) { self.logger = logger }

    /// librdkafka logs (at warning level, facility `OFFSET`) every reset caused by an
    /// error, as `[thrd:main]: <topic> [<partition>]: offset reset (at offset …) to …: <reason>`;
    /// a reset for a group's first read (no committed offset) is only debug-logged.
    func noteOffsetReset(_ text: String) -> TopicPartition? {
        guard let reset = text.range(of: "]: offset reset") else { return nil }
        var head = text[..<reset.lowerBound]  // "[thrd:main]: <topic> [<partition>"
        if head.hasPrefix("[thrd:"), let thread = head.range(of: "]: ") { head = head[thread.upperBound...] }
        guard let bracket = head.range(of: " [", options: .backwards),
              let partition = Int32(head[bracket.upperBound...]) else { return nil }
        let tp = TopicPartition(topic: String(head[..<bracket.lowerBound]), partition: partition)
        offsetResets.withLock { $0[tp, default: 0] += 1 }
        return tp
    }
}

/// librdkafka's own log lines, routed into swift-log (and so into Veil's JSON logs).
let rdkafkaLogCallback: @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Void = { rk, level, facility, buffer in
    guard let rk, let opaque = rd_kafka_opaque(rk) else { return }
    let context = Unmanaged<ClientContext>.fromOpaque(opaque).takeUnretainedValue()
    let text = buffer.map { String(cString: $0) } ?? ""
    let facilityText = facility.map { String(cString: $0) } ?? ""
    let swiftLevel: Logger.Level = switch level {
    case ...3: .error
    case 4: .warning
    case 5, 6: .info
    default: .debug
    }
    if facilityText == "OFFSET", level <= 4, let tp = context.noteOffsetReset(text) {
        // Messages between the old position and the log start were never processed here.
        context.logger.warning("consumer position fell out of the log: messages skipped", metadata: [
            "kafka.event": "offset_reset", "topic": "\(tp.topic)", "partition": "\(tp.partition)", "rdkafka.message": "\(text)"])
        return
    }
    context.logger.log(level: swiftLevel, "\(text)", metadata: ["rdkafka.facility": "\(facilityText)"])
}

/// Client-level errors (all brokers down, fatal idempotence errors). Transient ones
/// are retried by librdkafka itself; they are logged so operators can see them.
let rdkafkaErrorCallback: @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafeMutableRawPointer?) -> Void = { rk, err, reason, opaque in
    guard let opaque else { return }
    let context = Unmanaged<ClientContext>.fromOpaque(opaque).takeUnretainedValue()
    let error = KafkaError(rdkafka: rd_kafka_resp_err_t(err), reason: reason.map { String(cString: $0) })
    context.logger.log(level: error.isFatal ? .critical : .warning, "kafka client error",
                       metadata: ["error.code": "\(error.code)", "error.reason": "\(error.reason)"])
}
