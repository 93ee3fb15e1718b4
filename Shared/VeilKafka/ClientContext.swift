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

    init(logger: Logger) { self.logger = logger }
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
