import CRdKafka
import Dispatch
import Logging
import Synchronization

/// A message as librdkafka fetched it, not yet copied: the poll thread hands these over
/// and the reading task either copies them into `KafkaMessage`s (`nextBatch`) or lends
/// them to a body (`withNextBatch`). So a message's bytes are read and freed on the
/// reader's thread, and the poll thread only moves pointers. Each is destroyed exactly
/// once: by the reader that copied or lent it, by `revoked`, or by `discardBuffered`
/// before the client is destroyed.
struct FetchedMessage: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<rd_kafka_message_t>

    var topicPartition: TopicPartition {
        TopicPartition(topic: pointer.pointee.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "",
                       partition: pointer.pointee.partition)
    }

    func destroy() { rd_kafka_message_destroy(pointer) }
}

/// The hand-off between a consumer's poll thread and the tasks reading its messages,
/// and the group state that librdkafka's rebalance callback updates.
final class ConsumerContext: ClientContext, @unchecked Sendable {
    struct State {
        var batches: [[FetchedMessage]] = []
        var buffered = 0
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Result<[FetchedMessage]?, KafkaError>, Never>)] = []
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

    func deliver(_ batch: [FetchedMessage]) {
        let waiter: CheckedContinuation<Result<[FetchedMessage]?, KafkaError>, Never>? = state.withLock { s in
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
        let result: Result<[FetchedMessage]?, KafkaError> = failure.map { .failure($0) } ?? .success(nil)
        waiters.forEach { $0.continuation.resume(returning: result) }
        room.signal()
    }

    /// Buffered messages of revoked partitions were not processed: drop them so the
    /// new owner, not this member, handles them.
    func revoked(_ partitions: Set<TopicPartition>) {
        let dropped = state.withLock { s in
            s.assignment.subtract(partitions)
            var dropped: [FetchedMessage] = []
            s.batches = s.batches.compactMap { batch in
                var kept: [FetchedMessage] = []
                for message in batch {
                    if partitions.contains(message.topicPartition) { dropped.append(message) } else { kept.append(message) }
                }
                return kept.isEmpty ? nil : kept
            }
            s.buffered -= dropped.count
            return dropped
        }
        dropped.forEach { $0.destroy() }
        logger.info("partitions revoked", metadata: ["partitions": "\(partitions.map(\.description).sorted())",
                                                      "dropped.unprocessed": "\(dropped.count)"])
    }

    /// Destroys every message still buffered, once the poll thread has stopped and
    /// before the client is destroyed (which waits for its messages to be let go).
    func discardBuffered() {
        let left = state.withLock { s in
            defer { s.batches.removeAll(); s.buffered = 0 }
            return s.batches
        }
        for batch in left { batch.forEach { $0.destroy() } }
    }

    func assigned(_ partitions: Set<TopicPartition>) {
        state.withLock { $0.assignment.formUnion(partitions) }
        logger.info("partitions assigned", metadata: ["partitions": "\(partitions.map(\.description).sorted())"])
    }

    // MARK: Application side

    /// The next batch, copied out of librdkafka on the calling task's thread.
    func take() async throws(KafkaError) -> [KafkaMessage]? {
        guard let fetched = try await takeFetched() else { return nil }
        return KafkaMessage.copying(fetched)
    }

    private enum Ready { case batch([FetchedMessage]), end(KafkaError?) }

    /// What a reader gets without waiting, if anything: the end, or everything queued up
    /// to `maxBatch` (not just the poll thread's first hand-off: when the application falls
    /// behind, batches grow, fewer round trips per message, instead of staying as small as
    /// each fetch was, one message per partition and fetch on some brokers).
    private func ready(_ s: inout State) -> Ready? {
        if s.finished { return .end(s.failure) }
        guard !s.batches.isEmpty else { return nil }
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

    func takeFetched() async throws(KafkaError) -> [FetchedMessage]? {
        // A reader that is behind finds a batch waiting: it takes it without suspending
        // (no trip through the executor, no hop to another thread).
        switch state.withLock({ ready(&$0) }) {
        case .batch(let batch):
            room.signal()
            return batch
        case .end(let failure):
            if let failure { throw failure }
            return nil
        case nil:
            break
        }
        let id = state.withLock { s -> UInt64 in s.nextWaiterID += 1; return s.nextWaiterID }
        let result: Result<[FetchedMessage]?, KafkaError> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                // Looked at again under the lock: a batch may have come meanwhile.
                let now: Ready? = state.withLock { s in
                    if let ready = ready(&s) { return ready }
                    if Task.isCancelled { return .end(nil) }
                    s.waiters.append((id, continuation))
                    return nil
                }
                switch now {
                case .batch(let batch):
                    room.signal()
                    continuation.resume(returning: .success(batch))
                case .end(let failure):
                    continuation.resume(returning: failure.map { .failure($0) } ?? .success(nil))
                case nil:
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
