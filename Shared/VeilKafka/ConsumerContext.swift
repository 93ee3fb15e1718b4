import CRdKafka
import Dispatch
import Logging
import Synchronization

/// The hand-off between a consumer's poll thread and the tasks reading its messages,
/// and the group state that librdkafka's rebalance callback updates.
final class ConsumerContext: ClientContext, @unchecked Sendable {
    struct State {
        var batches: [[KafkaMessage]] = []
        var buffered = 0
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Result<[KafkaMessage]?, KafkaError>, Never>)] = []
        var nextWaiterID: UInt64 = 0
        var finished = false
        var failure: KafkaError?
        var assignment: Set<TopicPartition> = []
    }
    private let state = Mutex(State())
    /// Signalled whenever the application takes a batch, so a waiting poll thread re-checks.
    private let room = DispatchSemaphore(value: 0)
    let maxBuffered: Int
    /// The most messages `take` hands over at once.
    let maxBatch: Int
    /// Assign every partition at its current end, resolved before the assignment counts
    /// (`ConsumerConfiguration.startsAtEnd`).
    let startsAtEnd: Bool

    init(logger: Logger, maxBuffered: Int, maxBatch: Int, startsAtEnd: Bool) {
        self.maxBuffered = max(1, maxBuffered)
        self.maxBatch = max(1, maxBatch)
        self.startsAtEnd = startsAtEnd
        super.init(logger: logger)
    }

    var currentAssignment: Set<TopicPartition> { state.withLock { $0.assignment } }

    /// Messages fetched and not yet taken, and in how many hand-offs from the poll thread.
    var buffered: (messages: Int, handOffs: Int) { state.withLock { ($0.buffered, $0.batches.count) } }

    // MARK: Poll-thread side

    /// Blocks the poll thread (never a cooperative thread) while the buffer is full.
    /// Returns `false` when the consumer is stopping.
    func waitForRoom() -> Bool {
        while !stopping.load(ordering: .acquiring) {
            if state.withLock({ $0.buffered < maxBuffered }) { return true }
            _ = room.wait(timeout: .now() + .milliseconds(100))
        }
        return false
    }

    func deliver(_ batch: [KafkaMessage]) {
        let waiter: CheckedContinuation<Result<[KafkaMessage]?, KafkaError>, Never>? = state.withLock { s in
            if !s.waiters.isEmpty { return s.waiters.removeFirst().continuation }
            s.batches.append(batch)
            s.buffered += batch.count
            return nil
        }
        waiter?.resume(returning: .success(batch))
    }

    func fail(_ error: KafkaError) {
        logger.critical("consumer failed", metadata: ["error.code": "\(error.code)"])
        finish(failure: error)
    }

    /// Ends the sequence: waiting readers get `nil` (or the failure).
    func finish(failure: KafkaError? = nil) {
        let waiters = state.withLock { s in
            s.finished = true
            if s.failure == nil { s.failure = failure }
            defer { s.waiters.removeAll() }
            return s.waiters
        }
        let result: Result<[KafkaMessage]?, KafkaError> = failure.map { .failure($0) } ?? .success(nil)
        waiters.forEach { $0.continuation.resume(returning: result) }
        room.signal()
    }

    /// Buffered messages of revoked partitions were not processed: drop them so the
    /// new owner, not this member, handles them.
    func revoked(_ partitions: Set<TopicPartition>) {
        let dropped = state.withLock { s in
            s.assignment.subtract(partitions)
            var dropped = 0
            s.batches = s.batches.compactMap { batch in
                let kept = batch.filter { !partitions.contains($0.topicPartition) }
                dropped += batch.count - kept.count
                return kept.isEmpty ? nil : kept
            }
            s.buffered -= dropped
            return dropped
        }
        logger.info("partitions revoked", metadata: ["partitions": "\(partitions.map(\.description).sorted())",
                                                      "dropped.unprocessed": "\(dropped)"])
    }

    func assigned(_ partitions: Set<TopicPartition>) {
        state.withLock { $0.assignment.formUnion(partitions) }
        logger.info("partitions assigned", metadata: ["partitions": "\(partitions.map(\.description).sorted())"])
    }

    // MARK: Application side

    func take() async throws(KafkaError) -> [KafkaMessage]? {
        enum Immediate { case batch([KafkaMessage]), end(KafkaError?), wait(UInt64) }
        let id = state.withLock { s -> UInt64 in s.nextWaiterID += 1; return s.nextWaiterID }
        let result: Result<[KafkaMessage]?, KafkaError> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let immediate: Immediate = state.withLock { s in
                    if s.finished { return .end(s.failure) }
                    if !s.batches.isEmpty {
                        // Everything queued up to `maxBatch`, not just the poll thread's first
                        // hand-off: when the application falls behind, batches grow (fewer
                        // round trips per message) instead of staying as small as each
                        // fetch was (one message per partition and fetch, on some brokers).
                        var batch = s.batches[0]
                        var merged = 1
                        while merged < s.batches.count, batch.count + s.batches[merged].count <= maxBatch {
                            batch += s.batches[merged]
                            merged += 1
                        }
                        s.batches.removeFirst(merged)
                        s.buffered -= batch.count
                        return .batch(batch)
                    }
                    if s.finished || Task.isCancelled { return .end(s.failure) }
                    s.waiters.append((id, continuation))
                    return .wait(id)
                }
                switch immediate {
                case .batch(let batch):
                    room.signal()
                    continuation.resume(returning: .success(batch))
                case .end(let failure):
                    continuation.resume(returning: failure.map { .failure($0) } ?? .success(nil))
                case .wait:
                    break
                }
            }
        } onCancel: {
            let cancelled = state.withLock { s in
                s.waiters.firstIndex { $0.id == id }.map { s.waiters.remove(at: $0).continuation }
            }
            cancelled?.resume(returning: .success(nil))
        }
        return try result.get()
    }
}

/// librdkafka calls this on the poll thread during `rd_kafka_consumer_poll`.
let rebalanceCallback: @convention(c) (OpaquePointer?, rd_kafka_resp_err_t, UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?, UnsafeMutableRawPointer?) -> Void = { rk, err, partitions, opaque in
    guard let rk, let opaque else { return }
    let context = Unmanaged<ConsumerContext>.fromOpaque(opaque).takeUnretainedValue()
    handleRebalance(rk, err: err, partitions: partitions, context: context)
}

/// Applies an assignment or revocation, eager or cooperative. On revoke, the
/// offsets of processed messages are committed before the partitions are let go.
func handleRebalance(_ rk: OpaquePointer, err: rd_kafka_resp_err_t,
                     partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?, context: ConsumerContext) {
    let cooperative = String(cString: rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE"
    var set = Set<TopicPartition>()
    if let partitions {
        for i in 0..<Int(partitions.pointee.cnt) {
            let e = partitions.pointee.elems[i]
            set.insert(TopicPartition(topic: String(cString: e.topic), partition: e.partition))
        }
    }
    switch err {
    case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
        if context.startsAtEnd, let partitions {
            // `auto.offset.reset=latest` resolves the end only after the assignment, in the
            // background, and skips what is produced meanwhile; asking the broker for the end
            // here (on the poll thread) makes "assigned" mean "reads everything from now on".
            for i in 0..<Int(partitions.pointee.cnt) {
                let e = partitions.pointee.elems[i]
                var low: Int64 = 0, high: Int64 = 0
                if rd_kafka_query_watermark_offsets(rk, e.topic, e.partition, &low, &high, 10_000) == RD_KAFKA_RESP_ERR_NO_ERROR {
                    partitions.pointee.elems[i].offset = high
                } else {
                    context.logger.warning("end of partition unknown: its start is left to auto.offset.reset",
                                           metadata: ["topic": "\(String(cString: e.topic))", "partition": "\(e.partition)"])
                }
            }
        }
        if cooperative {
            if let error = rd_kafka_incremental_assign(rk, partitions) {
                context.logger.error("assign failed", metadata: ["error.code": "\(KafkaError(consuming: error).code)"])
            }
        } else {
            rd_kafka_assign(rk, partitions)
        }
        context.assigned(set)
    case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
        context.revoked(set)
        let commitErr = rd_kafka_commit(rk, nil, 0)
        if commitErr != RD_KAFKA_RESP_ERR_NO_ERROR && commitErr != RD_KAFKA_RESP_ERR__NO_OFFSET {
            context.logger.warning("commit on revoke failed", metadata: ["error.code": "\(KafkaError(rdkafka: commitErr).code)"])
        }
        if cooperative {
            if let error = rd_kafka_incremental_unassign(rk, partitions) { _ = KafkaError(consuming: error) }
        } else {
            rd_kafka_assign(rk, nil)
        }
    default:
        context.logger.error("rebalance error", metadata: ["error.code": "\(KafkaError(rdkafka: err).code)"])
        context.revoked(context.currentAssignment)
        rd_kafka_assign(rk, nil)
    }
}
