import CRdKafka

/// An error from Veil's Kafka layer.
///
/// A struct with a stable `code` rather than an enum, so new cases do not break
/// callers (the swift-kafka-client / ServiceGroupError pattern). `description`
/// names the code and librdkafka's reason; it never contains message payloads.
public struct KafkaError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A stable, dotted identifier, e.g. `kafka.timed_out` or `kafka.broker.msg_timed_out`.
    public let code: String
    /// librdkafka's own error number, when the error came from librdkafka.
    public let rdkafkaCode: Int32?
    /// A human-readable reason, from librdkafka or from Veil.
    public let reason: String
    /// Retrying the same operation may succeed (e.g. a broker was briefly down).
    public let isRetriable: Bool
    /// The client instance is unusable and must be recreated (e.g. a fenced producer).
    public let isFatal: Bool
    /// A transactional error that requires `abortTransaction()` before going on.
    public let requiresAbort: Bool

    public init(code: String, reason: String, rdkafkaCode: Int32? = nil,
                isRetriable: Bool = false, isFatal: Bool = false, requiresAbort: Bool = false) {
        self.code = code
        self.reason = reason
        self.rdkafkaCode = rdkafkaCode
        self.isRetriable = isRetriable
        self.isFatal = isFatal
        self.requiresAbort = requiresAbort
    }

    public var description: String { "KafkaError(\(code)): \(reason)" }

    public static func == (lhs: KafkaError, rhs: KafkaError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    // MARK: Veil's own codes

    public static func configuration(_ reason: String) -> KafkaError {
        KafkaError(code: "kafka.configuration", reason: reason, isFatal: true)
    }
    public static func closed(_ reason: String = "the client is closed") -> KafkaError {
        KafkaError(code: "kafka.closed", reason: reason)
    }
    public static func timedOut(_ reason: String) -> KafkaError {
        KafkaError(code: "kafka.timed_out", reason: reason, isRetriable: true)
    }
    public static func unknownTopic(_ topic: String) -> KafkaError {
        KafkaError(code: "kafka.unknown_topic", reason: "the cluster has no topic \(topic)")
    }
    public static func cancelled() -> KafkaError {
        KafkaError(code: "kafka.cancelled", reason: "the operation was cancelled")
    }
    public static func delivery(failed: Int, of total: Int, first: KafkaError) -> KafkaError {
        KafkaError(code: first.code, reason: "\(failed) of \(total) messages not delivered: \(first.reason)",
                   rdkafkaCode: first.rdkafkaCode, isRetriable: first.isRetriable, isFatal: first.isFatal)
    }

    // MARK: From librdkafka

    /// Maps a librdkafka response code; `code` is `kafka.` plus librdkafka's lower-cased name.
    init(rdkafka err: rd_kafka_resp_err_t, reason: String? = nil, isFatal: Bool? = nil) {
        let name = String(cString: rd_kafka_err2name(err))
        let normalized = name.hasPrefix("_") ? "local." + name.dropFirst() : "broker." + name
        let retriable: Bool
        switch err {
        case RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, RD_KAFKA_RESP_ERR__TRANSPORT,
             RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR__QUEUE_FULL, RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE,
             RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
             RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND, RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
             RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
             RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
             RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION, RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
             RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
            retriable = true
        default:
            retriable = false
        }
        let fatal = isFatal ?? (err == RD_KAFKA_RESP_ERR__FATAL || err == RD_KAFKA_RESP_ERR__FENCED
                                || err == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH)
        self.init(code: "kafka." + normalized.lowercased(),
                  reason: reason ?? String(cString: rd_kafka_err2str(err)),
                  rdkafkaCode: err.rawValue, isRetriable: retriable, isFatal: fatal)
    }

    /// Takes ownership of an `rd_kafka_error_t` and destroys it.
    init(consuming error: OpaquePointer) {
        defer { rd_kafka_error_destroy(error) }
        let base = KafkaError(rdkafka: rd_kafka_error_code(error),
                              reason: String(cString: rd_kafka_error_string(error)),
                              isFatal: rd_kafka_error_is_fatal(error) != 0)
        self.init(code: base.code, reason: base.reason, rdkafkaCode: base.rdkafkaCode,
                  isRetriable: base.isRetriable || rd_kafka_error_is_retriable(error) != 0,
                  isFatal: base.isFatal, requiresAbort: rd_kafka_error_txn_requires_abort(error) != 0)
    }
}
