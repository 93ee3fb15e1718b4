import CRdKafka
import Dispatch
import Foundation
import Logging
import Synchronization

/// A consumer-group member.
///
/// A dedicated thread polls librdkafka and hands messages over in batches; the
/// application reads them as an `AsyncSequence` (`messages`) or batch by batch
/// (`nextBatch()`). Offsets are committed only for messages the application
/// marked processed (`markProcessed`): auto-store is off, and the background
/// commit carries only stored offsets. On a rebalance, buffered messages of
/// revoked partitions are dropped (they were not processed, so the new owner
/// gets them) and stored offsets are committed before the partitions go.
public final class KafkaConsumer: Sendable {
    let handle: RDKafkaHandle
    let context: ConsumerContext
    let blocking: BlockingCalls
    let configuration: ConsumerConfiguration

    public init(configuration: ConsumerConfiguration, logger: Logger) throws(KafkaError) {
        guard !configuration.topics.isEmpty else { throw .configuration("a consumer needs at least one topic") }
        self.configuration = configuration
        context = ConsumerContext(logger: logger, maxBuffered: configuration.maxBufferedMessages,
                                  maxBatch: configuration.maxBatchSize,
                                  startsAtEnd: configuration.startsAtEnd)
        let conf = try makeRDKafkaConf(configuration.properties)
        rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(context).toOpaque())
        rd_kafka_conf_set_rebalance_cb(conf, rebalanceCallback)
        rd_kafka_conf_set_log_cb(conf, rdkafkaLogCallback)
        rd_kafka_conf_set_error_cb(conf, rdkafkaErrorCallback)
        let rk = try makeRDKafka(RD_KAFKA_CONSUMER, conf: conf)
        handle = RDKafkaHandle(rk)
        blocking = BlockingCalls(label: "veil.kafka.consumer.blocking")
        rd_kafka_poll_set_consumer(rk)

        let list = rd_kafka_topic_partition_list_new(Int32(configuration.topics.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for topic in configuration.topics {
            rd_kafka_topic_partition_list_add(list, topic, RD_KAFKA_PARTITION_UA)
        }
        let err = rd_kafka_subscribe(rk, list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            rd_kafka_destroy(rk)
            throw KafkaError(rdkafka: err)
        }
        let handle = self.handle, context = self.context, maxBatch = configuration.maxBatchSize
        startPollThread(name: "veil-kcons-poll") {
            Self.pollLoop(handle: handle, context: context, maxBatch: maxBatch)
            context.pollThreadExited.signal()
        }
    }

    deinit {
        if !context.closed.load(ordering: .acquiring) { abandon() }
    }

    /// The poll thread: fetch up to `maxBatch` messages and hand them over uncopied
    /// (the reading task copies them: `ConsumerContext.take`).
    private static func pollLoop(handle: RDKafkaHandle, context: ConsumerContext, maxBatch: Int) {
        var batch: [FetchedMessage] = []
        batch.reserveCapacity(maxBatch)
        var raws = [UnsafeMutablePointer<rd_kafka_message_t>?](repeating: nil, count: maxBatch)
        guard let queue = rd_kafka_queue_get_consumer(handle.pointer) else { return }
        defer { rd_kafka_queue_destroy(queue) }
        while !context.stopping.load(ordering: .acquiring) {
            guard context.waitForRoom() else { break }
            // Block for the first message only (consume_batch_queue with a timeout waits
            // for a *full* batch, which would add latency), then take what else is
            // already queued in one call. Both serve rebalance and error callbacks.
            guard let first = rd_kafka_consumer_poll(handle.pointer, 100) else { continue }
            raws[0] = first
            let more = raws.withUnsafeMutableBufferPointer { buffer in
                rd_kafka_consume_batch_queue(queue, 0, buffer.baseAddress! + 1, maxBatch - 1)
            }
            for i in 0..<(1 + max(0, more)) {
                guard let raw = raws[i] else { continue }
                let err = raw.pointee.err
                if err != RD_KAFKA_RESP_ERR_NO_ERROR {
                    let error = KafkaError(rdkafka: err, reason: rd_kafka_message_errstr(raw).map { String(cString: $0) })
                    rd_kafka_message_destroy(raw)
                    if error.isFatal {
                        for later in raws[(i + 1)..<(1 + max(0, more))] { later.map { rd_kafka_message_destroy($0) } }
                        batch.forEach { $0.destroy() }
                        context.fail(error)
                        return
                    }
                    context.logger.warning("consumer error", metadata: ["error.code": "\(error.code)", "error.reason": "\(error.reason)"])
                    continue
                }
                batch.append(FetchedMessage(pointer: raw))
            }
            if !batch.isEmpty {
                context.deliver(batch)
                batch.removeAll(keepingCapacity: true)
            }
        }
    }

    // MARK: Reading

    /// Messages one by one, as an `AsyncSequence`. Ends when the consumer is closed.
    public var messages: KafkaMessages { KafkaMessages(consumer: self) }

    /// The next batch of up to `maxBatchSize` messages, waiting for at least one.
    /// Returns `nil` once the consumer is closed or the task is cancelled.
    public func nextBatch() async throws(KafkaError) -> [KafkaMessage]? {
        try await context.take()
    }

    /// Lends the next batch to `body` without copying it (`KafkaMessageView`), waiting for at
    /// least one message, and destroys librdkafka's messages when `body` returns or throws.
    /// Returns `body`'s result, or `nil` (without calling it) once the consumer is closed or
    /// the task is cancelled. The views must not leave `body`; `copy()` the ones to keep.
    public func withNextBatch<R>(_ body: (KafkaBatchView) throws -> R) async throws -> R? {
        guard let fetched = try await context.takeFetched() else { return nil }
        defer { for message in fetched { message.destroy() } }
        return try body(KafkaBatchView(fetched: fetched))
    }

    // MARK: Offsets

    /// Marks a lent batch processed: the highest offset per partition, stored without
    /// building a `String` per topic.
    @discardableResult
    public func markProcessed(_ batch: KafkaBatchView) -> Bool {
        let highest = Self.nextOffsets(batch.fetched.lazy.compactMap { message in
            let m = message.pointer.pointee
            return m.rkt.map { ($0, m.partition, m.offset) }
        })
        guard !highest.isEmpty else { return true }
        let list = rd_kafka_topic_partition_list_new(Int32(highest.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for (rkt, partition, offset) in highest {
            rd_kafka_topic_partition_list_add(list, rd_kafka_topic_name(rkt), partition).pointee.offset = offset
        }
        return storeList(list)
    }

    /// Records that `message` and everything before it in its partition is done.
    /// The offset is committed with the next background or explicit commit.
    /// Returns `false` if the partition is no longer assigned to this member (a
    /// rebalance took it): the new owner will see the message again.
    @discardableResult
    public func markProcessed(_ message: KafkaMessage) -> Bool {
        store([(message.topic, message.partition, message.offset + 1)])
    }

    /// Marks a whole batch processed, storing the highest offset per partition.
    @discardableResult
    public func markProcessed(_ batch: [KafkaMessage]) -> Bool {
        store(Self.nextOffsets(batch.lazy.map { ($0.topic, $0.partition, $0.offset) }))
    }

    /// The offset to store for each partition in `messages` (topic, partition, offset): one
    /// past the highest. Batches hold few partitions, usually in runs: a linear scan over
    /// them beats hashing a topic per message.
    static func nextOffsets<Topic: Equatable>(_ messages: some Sequence<(Topic, Int32, Int64)>) -> [(Topic, Int32, Int64)] {
        var highest: [(Topic, Int32, Int64)] = []
        for (topic, partition, offset) in messages {
            if let last = highest.indices.last, highest[last].1 == partition, highest[last].0 == topic {
                highest[last].2 = max(highest[last].2, offset + 1)
            } else if let i = highest.firstIndex(where: { $0.1 == partition && $0.0 == topic }) {
                highest[i].2 = max(highest[i].2, offset + 1)
            } else {
                highest.append((topic, partition, offset + 1))
            }
        }
        return highest
    }

    private func store(_ offsets: [(String, Int32, Int64)]) -> Bool {
        guard !offsets.isEmpty else { return true }
        let list = rd_kafka_topic_partition_list_new(Int32(offsets.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for (topic, partition, offset) in offsets {
            rd_kafka_topic_partition_list_add(list, topic, partition).pointee.offset = offset
        }
        return storeList(list)
    }

    private func storeList(_ list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) -> Bool {
        let err = rd_kafka_offsets_store(handle.pointer, list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { return false }
        for i in 0..<Int(list.pointee.cnt) where list.pointee.elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR {
            return false
        }
        return true
    }

    /// Commits every stored offset now and waits for the broker. Runs on a dedicated
    /// queue, not on the poll tick, so it completes as soon as the broker answers.
    public func commit() async throws(KafkaError) {
        let handle = self.handle
        try await blocking.run { () throws(KafkaError) in
            let err = rd_kafka_commit(handle.pointer, nil, 0)
            if err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET {
                throw KafkaError(rdkafka: err)
            }
        }
    }

    /// The committed offsets of the group for the given partitions (`-1001` when none).
    public func committedOffsets(_ partitions: [TopicPartition], timeout: Duration = .seconds(10)) async throws(KafkaError) -> [TopicPartition: Int64] {
        let handle = self.handle
        return try await blocking.run { () throws(KafkaError) in
            let list = rd_kafka_topic_partition_list_new(Int32(partitions.count))!
            defer { rd_kafka_topic_partition_list_destroy(list) }
            for p in partitions { rd_kafka_topic_partition_list_add(list, p.topic, p.partition) }
            let err = rd_kafka_committed(handle.pointer, list, Int32(timeout.milliseconds))
            if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(rdkafka: err) }
            var result: [TopicPartition: Int64] = [:]
            for i in 0..<Int(list.pointee.cnt) {
                let e = list.pointee.elems[i]
                result[TopicPartition(topic: String(cString: e.topic), partition: e.partition)] = e.offset
            }
            return result
        }
    }

    // MARK: Group state

    /// The partitions currently assigned to this member.
    public var assignment: Set<TopicPartition> { context.currentAssignment }

    /// Messages behind the high watermark, per assigned partition, from librdkafka's
    /// cached watermarks (no broker round trip).
    public func lag() -> [TopicPartition: Int64] {
        var result: [TopicPartition: Int64] = [:]
        let assigned = assignment
        guard !assigned.isEmpty else { return result }
        let list = rd_kafka_topic_partition_list_new(Int32(assigned.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for p in assigned { rd_kafka_topic_partition_list_add(list, p.topic, p.partition) }
        rd_kafka_position(handle.pointer, list)
        for i in 0..<Int(list.pointee.cnt) {
            let e = list.pointee.elems[i]
            var low: Int64 = 0, high: Int64 = 0
            guard rd_kafka_get_watermark_offsets(handle.pointer, e.topic, e.partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR,
                  high >= 0 else { continue }
            let position = e.offset >= 0 ? e.offset : low
            result[TopicPartition(topic: String(cString: e.topic), partition: e.partition)] = max(0, high - position)
        }
        return result
    }

    /// How many times librdkafka moved this member's position because it was no longer in
    /// the log (the broker's retention removed messages before they were read; they were
    /// skipped), per partition, since the consumer started. Each reset is also logged as a
    /// warning with `kafka.event=offset_reset`.
    public func offsetResets() -> [TopicPartition: Int] {
        context.offsetResets.withLock { $0 }
    }

    /// Group metadata, for `KafkaProducer.sendOffsetsToTransaction`.
    func withGroupMetadata<R>(_ body: (OpaquePointer) throws(KafkaError) -> R) throws(KafkaError) -> R {
        guard let metadata = rd_kafka_consumer_group_metadata(handle.pointer) else {
            throw .closed("no consumer group metadata")
        }
        defer { rd_kafka_consumer_group_metadata_destroy(metadata) }
        return try body(metadata)
    }

    // MARK: Closing

    /// Ends `messages` and `nextBatch()` (they return `nil`) while staying in the
    /// group, so in-flight work can finish and be marked before `close()`. Buffered,
    /// untaken messages are not processed; they are redelivered after a restart.
    public func stopReading() {
        context.finish()
    }

    /// Leaves the group gracefully: stops fetching, commits stored offsets, revokes
    /// partitions and closes, giving up after `timeout` (the rest finishes in the background).
    public func close(timeout: Duration = .seconds(10)) async {
        guard !context.closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        context.stopping.store(true, ordering: .releasing)
        context.finish()
        let handle = self.handle, context = self.context, logger = context.logger
        let deadline = DispatchTime.now() + .milliseconds(timeout.milliseconds)
        _ = try? await blocking.run {
            context.pollThreadExited.wait()
            context.discardBuffered()
            // Asynchronous: the close below waits for it, within the deadline (a synchronous
            // commit waited on an unreachable coordinator without one).
            let err = rd_kafka_commit(handle.pointer, nil, 1)
            if err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET {
                logger.warning("final commit failed", metadata: ["error.code": "\(KafkaError(rdkafka: err).code)"])
            }
            if Self.closeGroupMembership(handle: handle, context: context, deadline: deadline) {
                rd_kafka_destroy(handle.pointer)
            } else {
                // Destroying a consumer whose close did not finish blocks without bound
                // (rd_kafka_destroy closes it again) or, with NO_CONSUMER_CLOSE, spins
                // librdkafka's main thread (2.0.2, coordinator unreachable): both seen here.
                // The handle is left to the process; the group drops the member by session timeout.
                // Its threads still log through the context (the handle's opaque): keep that alive too.
                _ = Unmanaged.passRetained(context)
                logger.warning("consumer left open after its close timed out")
            }
        }
    }

    /// `rd_kafka_consumer_close_queue` lets us bound the close by a deadline while
    /// serving the final revoke ourselves.
    /// Returns whether the consumer closed within the deadline.
    private static func closeGroupMembership(handle: RDKafkaHandle, context: ConsumerContext, deadline: DispatchTime) -> Bool {
        guard let queue = rd_kafka_queue_new(handle.pointer) else { return false }
        defer { rd_kafka_queue_destroy(queue) }
        if let error = rd_kafka_consumer_close_queue(handle.pointer, queue) {
            context.logger.warning("consumer close failed", metadata: ["error.code": "\(KafkaError(consuming: error).code)"])
            return false
        }
        while rd_kafka_consumer_closed(handle.pointer) == 0 && DispatchTime.now() < deadline {
            guard let event = rd_kafka_queue_poll(queue, 100) else { continue }
            if rd_kafka_event_type(event) == RD_KAFKA_EVENT_REBALANCE {
                let partitions = rd_kafka_event_topic_partition_list(event)
                handleRebalance(handle.pointer, err: rd_kafka_event_error(event), partitions: partitions, context: context)
            }
            rd_kafka_event_destroy(event)
        }
        if rd_kafka_consumer_closed(handle.pointer) == 0 {
            context.logger.warning("consumer close timed out; leaving the group by session timeout")
            return false
        }
        return true
    }

    /// Stops without committing or leaving the group, as a crash would: offsets not yet
    /// committed are redelivered to whoever owns the partitions next.
    public func abandon() {
        guard !context.closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        context.stopping.store(true, ordering: .releasing)
        context.finish()
        context.pollThreadExited.wait()
        context.discardBuffered()
        rd_kafka_destroy_flags(handle.pointer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE)
    }
}

/// The consumer's messages as an `AsyncSequence`; each hand-off moves a whole batch.
public struct KafkaMessages: AsyncSequence, Sendable {
    public typealias Element = KafkaMessage
    let consumer: KafkaConsumer

    public struct AsyncIterator: AsyncIteratorProtocol {
        let consumer: KafkaConsumer
        var batch: [KafkaMessage] = []
        var index = 0

        public mutating func next() async throws(KafkaError) -> KafkaMessage? {
            if index == batch.count {
                guard let next = try await consumer.nextBatch() else { return nil }
                batch = next
                index = 0
            }
            defer { index += 1 }
            return batch[index]
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(consumer: consumer) }
}

extension KafkaMessage {
    /// Copies fetched messages out of librdkafka's buffers and lets the originals go, for
    /// `nextBatch()`: owned messages may live anywhere, past `close()` too (a lent message
    /// kept that long would pin the client: `rd_kafka_destroy` waits for every message, which
    /// is why `withNextBatch` lends only for the length of its body). A batch holds few
    /// topics, usually one: each topic's name becomes one `String` per batch.
    static func copying(_ fetched: [FetchedMessage]) -> [KafkaMessage] {
        var messages: [KafkaMessage] = []
        messages.reserveCapacity(fetched.count)
        var lastTopic: (handle: OpaquePointer?, name: String) = (nil, "")
        for message in fetched {
            let raw = message.pointer
            if let rkt = raw.pointee.rkt, rkt != lastTopic.handle {
                lastTopic = (rkt, String(cString: rd_kafka_topic_name(rkt)))
            }
            messages.append(KafkaMessage(copying: raw, topic: raw.pointee.rkt == nil ? "" : lastTopic.name))
            rd_kafka_message_destroy(raw)
        }
        return messages
    }

    init(copying raw: UnsafeMutablePointer<rd_kafka_message_t>, topic: String) {
        let m = raw.pointee
        let value = m.payload.map { copyBytes($0, m.len) } ?? []
        let key = m.key.map { copyBytes($0, m.key_len) }
        var headers: [KafkaHeader] = []
        var hdrs: OpaquePointer?
        if rd_kafka_message_headers(raw, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs {
            var index = 0
            var name: UnsafePointer<CChar>?
            var valuePointer: UnsafeRawPointer?
            var size = 0
            while rd_kafka_header_get_all(hdrs, index, &name, &valuePointer, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
                headers.append(KafkaHeader(name: name.map { String(cString: $0) } ?? "",
                                           value: valuePointer.map { copyBytes($0, size) }))
                index += 1
            }
        }
        var timestampType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let timestamp = rd_kafka_message_timestamp(raw, &timestampType)
        self.init(topic: topic, partition: m.partition, offset: m.offset,
                  key: key, value: value, headers: headers, timestampMilliseconds: timestamp)
    }
}

/// A byte array copied from C memory. `Array(UnsafeRawBufferPointer)` is specialized
/// here and copies with one `memcpy`; `Array(unsafeUninitializedCapacity:)` called
/// libswiftCore's unspecialized buffer initializer, which looked up the array's generic
/// metadata on every message (a quarter of the poll thread's time in `veil-bench kafka`).
@inline(__always)
private func copyBytes(_ start: UnsafeRawPointer, _ count: Int) -> [UInt8] {
    [UInt8](UnsafeRawBufferPointer(start: start, count: count))
}

extension Duration {
    var milliseconds: Int {
        Int(components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000)
    }
}
