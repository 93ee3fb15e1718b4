import CRdKafka
import Logging

/// How a topic should look when a service starts.
public struct TopicSpecification: Sendable, Hashable {
    public var name: String
    public var partitions: Int32
    public var replicationFactor: Int32
    /// Topic-level configuration, e.g. `retention.ms` or `cleanup.policy=compact`.
    public var config: [String: String]

    public init(name: String, partitions: Int32 = 12, replicationFactor: Int32 = 1, config: [String: String] = [:]) {
        self.name = name
        self.partitions = partitions
        self.replicationFactor = replicationFactor
        self.config = config
    }
}

/// Creates the topics a service needs at start-up. Existing topics are left as they are.
public struct KafkaAdmin: Sendable {
    let configuration: KafkaConfiguration
    let logger: Logger

    public init(configuration: KafkaConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Names of the topics the cluster has (from a metadata request).
    public func existingTopics(timeout: Duration = .seconds(10)) async throws(KafkaError) -> [String: Int32] {
        try await withClient { rk throws(KafkaError) in try Self.metadata(rk, timeout: timeout) }
    }

    /// Creates every missing topic; returns the names it created.
    @discardableResult
    public func ensureTopics(_ topics: [TopicSpecification], timeout: Duration = .seconds(30)) async throws(KafkaError) -> [String] {
        let logger = self.logger
        return try await withClient { rk throws(KafkaError) in
            let existing = try Self.metadata(rk, timeout: timeout)
            let missing = topics.filter { existing[$0.name] == nil }
            guard !missing.isEmpty else { return [] }
            try Self.create(rk, missing, timeout: timeout)
            logger.info("topics created", metadata: ["topics": "\(missing.map(\.name))"])
            return missing.map(\.name)
        }
    }

    private func withClient<T: Sendable>(_ body: @escaping @Sendable (OpaquePointer) throws(KafkaError) -> T) async throws(KafkaError) -> T {
        var properties = configuration.baseProperties(for: .producer)
        properties["allow.auto.create.topics"] = "false"
        properties["log_level"] = configuration.properties["log_level"] ?? "3"  // no log callback here: errors only, to stderr
        let conf = try makeRDKafkaConf(properties)
        let rk = RDKafkaHandle(try makeRDKafka(RD_KAFKA_PRODUCER, conf: conf))
        return try await BlockingCalls(label: "veil.kafka.admin").run { () throws(KafkaError) in
            defer { rd_kafka_destroy(rk.pointer) }
            return try body(rk.pointer)
        }
    }

    static func metadata(_ rk: OpaquePointer, timeout: Duration) throws(KafkaError) -> [String: Int32] {
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let err = rd_kafka_metadata(rk, 1, nil, &metadata, Int32(timeout.milliseconds))
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else { throw KafkaError(rdkafka: err) }
        defer { rd_kafka_metadata_destroy(metadata) }
        var result: [String: Int32] = [:]
        for i in 0..<Int(metadata.pointee.topic_cnt) {
            let topic = metadata.pointee.topics[i]
            if topic.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                result[String(cString: topic.topic)] = topic.partition_cnt
            }
        }
        return result
    }

    static func create(_ rk: OpaquePointer, _ topics: [TopicSpecification], timeout: Duration) throws(KafkaError) {
        var errstr = [CChar](repeating: 0, count: 512)
        var newTopics: [OpaquePointer?] = []
        defer { newTopics.forEach { rd_kafka_NewTopic_destroy($0) } }
        for spec in topics {
            guard let topic = rd_kafka_NewTopic_new(spec.name, spec.partitions, spec.replicationFactor, &errstr, errstr.count) else {
                throw .configuration("topic \(spec.name): " + errorString(errstr))
            }
            newTopics.append(topic)
            for (key, value) in spec.config.sorted(by: { $0.key < $1.key }) {
                rd_kafka_NewTopic_set_config(topic, key, value)
            }
        }
        let queue = rd_kafka_queue_new(rk)
        defer { rd_kafka_queue_destroy(queue) }
        let options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS)
        defer { rd_kafka_AdminOptions_destroy(options) }
        rd_kafka_AdminOptions_set_request_timeout(options, Int32(timeout.milliseconds), &errstr, errstr.count)
        rd_kafka_AdminOptions_set_operation_timeout(options, Int32(timeout.milliseconds), &errstr, errstr.count)
        newTopics.withUnsafeMutableBufferPointer { rd_kafka_CreateTopics(rk, $0.baseAddress, $0.count, options, queue) }
        guard let event = rd_kafka_queue_poll(queue, Int32(timeout.milliseconds) + 5_000) else {
            throw .timedOut("CreateTopics got no answer")
        }
        defer { rd_kafka_event_destroy(event) }
        let eventErr = rd_kafka_event_error(event)
        if eventErr != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaError(rdkafka: eventErr, reason: String(cString: rd_kafka_event_error_string(event)))
        }
        var count = 0
        guard let result = rd_kafka_event_CreateTopics_result(event),
              let results = rd_kafka_CreateTopics_result_topics(result, &count) else { return }
        for i in 0..<count {
            let err = rd_kafka_topic_result_error(results[i])
            if err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS {
                throw KafkaError(rdkafka: err, reason: String(cString: rd_kafka_topic_result_name(results[i])) + ": "
                                 + (rd_kafka_topic_result_error_string(results[i]).map { String(cString: $0) } ?? ""))
            }
        }
    }
}
