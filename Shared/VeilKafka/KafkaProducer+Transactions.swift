import CRdKafka

/// Kafka transactions, for real clusters (set `ProducerConfiguration.transactionalID`).
///
/// Veil's correctness never depends on them: librdkafka 2.0.2's mock cluster accepts
/// transactions but does not hide aborted ones from `read_committed` readers, so
/// exactly-once effects come from derived message ids and idempotent consumers.
extension KafkaProducer {
    /// Registers the transactional id with the coordinator, fencing older instances.
    public func initTransactions(timeout: Duration = .seconds(30)) async throws(KafkaError) {
        try await transactional { rd_kafka_init_transactions($0, Int32(timeout.milliseconds)) }
    }

    public func beginTransaction() async throws(KafkaError) {
        try await transactional { rd_kafka_begin_transaction($0) }
    }

    /// Adds the consumer's offsets (the next offset to read, per partition) to the
    /// transaction, so they commit or abort with the produced messages.
    public func sendOffsetsToTransaction(_ offsets: [TopicPartition: Int64], consumer: KafkaConsumer,
                                         timeout: Duration = .seconds(30)) async throws(KafkaError) {
        try await transactional { rk throws(KafkaError) in
            let list = rd_kafka_topic_partition_list_new(Int32(offsets.count))!
            defer { rd_kafka_topic_partition_list_destroy(list) }
            for (tp, offset) in offsets {
                rd_kafka_topic_partition_list_add(list, tp.topic, tp.partition).pointee.offset = offset
            }
            return try consumer.withGroupMetadata { metadata in
                rd_kafka_send_offsets_to_transaction(rk, list, metadata, Int32(timeout.milliseconds))
            }
        }
    }

    public func commitTransaction(timeout: Duration = .seconds(30)) async throws(KafkaError) {
        try await transactional { rd_kafka_commit_transaction($0, Int32(timeout.milliseconds)) }
    }

    public func abortTransaction(timeout: Duration = .seconds(30)) async throws(KafkaError) {
        try await transactional { rd_kafka_abort_transaction($0, Int32(timeout.milliseconds)) }
    }

    private func transactional(_ call: @escaping @Sendable (OpaquePointer) throws(KafkaError) -> OpaquePointer?) async throws(KafkaError) {
        let handle = self.handle
        try await blocking.run { () throws(KafkaError) in
            if let error = try call(handle.pointer) { throw KafkaError(consuming: error) }
        }
    }
}
