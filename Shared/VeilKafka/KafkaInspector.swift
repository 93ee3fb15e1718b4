import CRdKafka
import Foundation

/// The low and high watermarks of one partition: the first offset still kept and
/// the offset the next message will get. `high - low` messages are on the partition.
public struct Watermarks: Sendable, Hashable {
    public var low: Int64
    public var high: Int64
    public init(low: Int64, high: Int64) {
        self.low = low
        self.high = high
    }
    public var count: Int64 { max(0, high - low) }
}

/// Operator access to a cluster, for tools such as `veilctl status` and `veilctl dlq`:
/// partitions, watermarks, any group's committed offsets, committing offsets for a
/// tool's own group, and reading a range of a partition without joining a group.
///
/// Every call uses a short-lived client on a dedicated queue (never the cooperative
/// pool), so it suits command-line tools, not hot paths.
public struct KafkaInspector: Sendable {
    let configuration: KafkaConfiguration
    let blocking = BlockingCalls(label: "veil.kafka.inspector")

    public init(configuration: KafkaConfiguration) {
        self.configuration = configuration
    }

    /// The partition count of each of `topics` the cluster has (missing topics are left out).
    public func partitions(of topics: [String], timeout: Duration = .seconds(10)) async throws(KafkaError) -> [String: Int32] {
        let wanted = Set(topics)
        return try await withClient(RD_KAFKA_PRODUCER, properties: [:]) { rk throws(KafkaError) in
            try KafkaAdmin.metadata(rk, timeout: timeout).filter { wanted.contains($0.key) }
        }
    }

    /// Every partition of `topics` the cluster has, in topic and partition order.
    public func topicPartitions(_ topics: [String], timeout: Duration = .seconds(10)) async throws(KafkaError) -> [TopicPartition] {
        let counts = try await partitions(of: topics, timeout: timeout)
        return topics.flatMap { topic in (0..<(counts[topic] ?? 0)).map { TopicPartition(topic: topic, partition: $0) } }
    }

    /// The watermarks of each partition, asked of the partition leaders.
    public func watermarks(_ partitions: [TopicPartition], timeout: Duration = .seconds(10)) async throws(KafkaError) -> [TopicPartition: Watermarks] {
        try await withClient(RD_KAFKA_PRODUCER, properties: [:]) { rk throws(KafkaError) in
            var result: [TopicPartition: Watermarks] = [:]
            for p in partitions {
                var low: Int64 = 0, high: Int64 = 0
                let err = rd_kafka_query_watermark_offsets(rk, p.topic, p.partition, &low, &high, Int32(timeout.milliseconds))
                guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(rdkafka: err, reason: "watermarks of \(p)") }
                result[p] = Watermarks(low: low, high: high)
            }
            return result
        }
    }

    /// A group's committed offsets for `partitions` (partitions without one are left out).
    /// Works for any group, with or without live members; the inspector never joins it.
    public func committedOffsets(group: String, _ partitions: [TopicPartition],
                                 timeout: Duration = .seconds(10)) async throws(KafkaError) -> [TopicPartition: Int64] {
        guard !partitions.isEmpty else { return [:] }
        return try await withClient(RD_KAFKA_CONSUMER, properties: ["group.id": group, "enable.auto.commit": "false"]) { rk throws(KafkaError) in
            let list = Self.list(partitions.map { ($0, -1001) })  // RD_KAFKA_OFFSET_INVALID
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let err = rd_kafka_committed(rk, list, Int32(timeout.milliseconds))
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(rdkafka: err, reason: "committed offsets of \(group)") }
            var result: [TopicPartition: Int64] = [:]
            for i in 0..<Int(list.pointee.cnt) {
                let e = list.pointee.elems[i]
                if e.err == RD_KAFKA_RESP_ERR_NO_ERROR, e.offset >= 0 {
                    result[TopicPartition(topic: String(cString: e.topic), partition: e.partition)] = e.offset
                }
            }
            return result
        }
    }

    /// Commits `offsets` (the next offset to read, per partition) for `group` without
    /// joining it: for a tool's own bookkeeping group, never a service's live group.
    public func commit(group: String, _ offsets: [TopicPartition: Int64]) async throws(KafkaError) {
        guard !offsets.isEmpty else { return }
        try await withClient(RD_KAFKA_CONSUMER, properties: ["group.id": group, "enable.auto.commit": "false"]) { rk throws(KafkaError) in
            let list = Self.list(offsets.map { ($0.key, $0.value) })
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let err = rd_kafka_commit(rk, list, 0)
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(rdkafka: err, reason: "commit for \(group)") }
            for i in 0..<Int(list.pointee.cnt) where list.pointee.elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR {
                throw KafkaError(rdkafka: list.pointee.elems[i].err, reason: "commit for \(group)")
            }
        }
    }

    /// The messages of `partition` with offsets in `range` that are still kept, read
    /// without a consumer group. Stops at the range's end or after `timeout`.
    public func read(_ partition: TopicPartition, offsets range: Range<Int64>,
                     timeout: Duration = .seconds(30)) async throws(KafkaError) -> [KafkaMessage] {
        guard !range.isEmpty else { return [] }
        let properties = ["group.id": "veil.inspector", "enable.auto.commit": "false", "enable.auto.offset.store": "false",
                          "enable.partition.eof": "true", "auto.offset.reset": "earliest"]
        return try await withClient(RD_KAFKA_CONSUMER, properties: properties) { rk throws(KafkaError) in
            rd_kafka_poll_set_consumer(rk)
            let list = Self.list([(partition, range.lowerBound)])
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let err = rd_kafka_assign(rk, list)
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(rdkafka: err, reason: "assign \(partition)") }
            defer { _ = rd_kafka_assign(rk, nil) }
            var messages: [KafkaMessage] = []
            let deadline = ContinuousClock.now + timeout
            while ContinuousClock.now < deadline {
                guard let raw = rd_kafka_consumer_poll(rk, 100) else { continue }
                defer { rd_kafka_message_destroy(raw) }
                let m = raw.pointee
                if m.err == RD_KAFKA_RESP_ERR__PARTITION_EOF { break }
                guard m.err == RD_KAFKA_RESP_ERR_NO_ERROR else {
                    let error = KafkaError(rdkafka: m.err, reason: rd_kafka_message_errstr(raw).map { String(cString: $0) })
                    if error.isRetriable { continue }
                    throw error
                }
                if m.offset >= range.upperBound { break }
                messages.append(KafkaMessage(copying: raw, topic: partition.topic))
                if m.offset + 1 >= range.upperBound { break }
            }
            return messages
        }
    }

    private static func list(_ entries: [(TopicPartition, Int64)]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
        let list = rd_kafka_topic_partition_list_new(Int32(entries.count))!
        for (p, offset) in entries {
            rd_kafka_topic_partition_list_add(list, p.topic, p.partition).pointee.offset = offset
        }
        return list
    }

    private func withClient<T: Sendable>(_ type: rd_kafka_type_t, properties extra: [String: String],
                                         _ body: @escaping @Sendable (OpaquePointer) throws(KafkaError) -> T) async throws(KafkaError) -> T {
        var settings = configuration.baseProperties(for: type == RD_KAFKA_CONSUMER ? .consumer : .producer).merging(extra) { $1 }
        settings["log_level"] = configuration.properties["log_level"] ?? "3"  // no log callback here: errors only, to stderr
        let properties = settings
        return try await blocking.run { () throws(KafkaError) in
            let rk = try makeRDKafka(type, conf: try makeRDKafkaConf(properties))
            defer {
                if type == RD_KAFKA_CONSUMER { _ = rd_kafka_consumer_close(rk) }
                rd_kafka_destroy(rk)
            }
            return try body(rk)
        }
    }
}
