import CRdKafka
import Dispatch
import Logging
import ServiceLifecycle
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A Kafka producer whose `send` returns once the broker acknowledged the message.
///
/// - Idempotent (acks=all) by default, so librdkafka's internal retries never duplicate.
/// - A full local queue is backpressure: `send` waits for room instead of failing.
/// - Delivery reports are served by a dedicated poll thread; no blocking librdkafka
///   call runs on Swift's cooperative pool.
/// - As a `Service`, `run()` waits for graceful shutdown, then flushes and closes.
public final class KafkaProducer: Service, Sendable {
    let handle: RDKafkaHandle
    let context: ProducerContext
    let blocking: BlockingCalls
    let logger: Logger
    private let topics: Mutex<[String: RDKafkaTopic]> = Mutex([:])

    public init(configuration: ProducerConfiguration, logger: Logger) throws(KafkaError) {
        self.logger = logger
        context = ProducerContext(logger: logger)
        let conf = try makeRDKafkaConf(configuration.properties)
        rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(context).toOpaque())
        rd_kafka_conf_set_dr_msg_cb(conf, deliveryReportCallback)
        rd_kafka_conf_set_log_cb(conf, rdkafkaLogCallback)
        rd_kafka_conf_set_error_cb(conf, rdkafkaErrorCallback)
        handle = RDKafkaHandle(try makeRDKafka(RD_KAFKA_PRODUCER, conf: conf))
        blocking = BlockingCalls(label: "veil.kafka.producer.blocking")
        let handle = self.handle, context = self.context
        startPollThread(name: "veil-kprod-poll") {
            while !context.stopping.load(ordering: .acquiring) {
                if context.bulkSenders.load(ordering: .relaxed) > 0 {
                    // A bulk sender serves its reports itself (`BatchSend`). Blocking in
                    // the poll would have librdkafka's broker threads wake this thread for
                    // every report batch, and the acknowledged messages freed here, away from
                    // the thread that allocated them; a look every millisecond serves the
                    // other senders' reports meanwhile.
                    rd_kafka_poll(handle.pointer, 0)
                    context.wakeSpaceWaiters()
                    usleep(1000)
                } else {
                    rd_kafka_poll(handle.pointer, 50)
                    context.wakeSpaceWaiters()
                }
            }
            context.pollThreadExited.signal()
        }
    }

    deinit {
        if !context.closed.load(ordering: .acquiring) {
            context.stopping.store(true, ordering: .releasing)
            context.pollThreadExited.wait()
            topics.withLock { $0.values.forEach { rd_kafka_topic_destroy($0.pointer) } }
            rd_kafka_destroy(handle.pointer)
        }
    }

    // MARK: Sending

    /// Sends one message and waits for the broker's acknowledgement.
    @discardableResult
    public func send(_ message: OutgoingMessage) async throws(KafkaError) -> DeliveryReport {
        let ticket = DeliveryTicket(wantsReport: true)
        try await enqueue(message, topic: try topicHandle(message.topic), ticket: ticket)
        let outcome = await ticket.wait(topic: message.topic)
        if let error = outcome.firstError { throw error }
        guard let report = outcome.lastReport else { throw .closed("no delivery report") }
        return report
    }

    /// Sends a batch and waits until every message is acknowledged. librdkafka batches
    /// them on the wire; one continuation serves the whole batch, and a lazily built
    /// sequence streams into librdkafka without being materialised.
    /// - Throws: the first delivery error, with the number of undelivered messages.
    @inlinable
    public func send(batch messages: some Sequence<OutgoingMessage>) async throws(KafkaError) {
        // Inlinable so the loop is specialised for the caller's sequence; each message
        // costs one synchronous hand-over, and only a full queue suspends.
        var batch = BatchSend(producer: self)
        do {
            for message in messages {
                while try !batch.offer(message) {
                    try await batch.waitForSpace()
                }
            }
        } catch {
            await batch.abandon()
            throw error
        }
        try await batch.finish()
    }

    /// Hands one message to librdkafka, waiting while its queue is full.
    private func enqueue(_ message: OutgoingMessage, topic: RDKafkaTopic, ticket: DeliveryTicket) async throws(KafkaError) {
        let opaque = Unmanaged.passUnretained(ticket).toOpaque()
        while true {
            ticket.expectOne()
            let offered: Bool
            do { offered = try offer(message, topic: topic, opaque: opaque) } catch {
                ticket.cancelOne()
                throw error
            }
            if offered { return }
            ticket.cancelOne()
            await context.waitForSpace()
        }
    }

    /// Tries to hand one message to librdkafka. Returns `false` when its queue is full.
    /// The caller has counted the message on its ticket (`opaque`, unretained: the sender
    /// keeps the ticket alive until every report arrived). Passing the pointer rather than
    /// the ticket keeps the sender off the ticket's reference count, which the poll thread
    /// touches per report: measured, a retain and release per message on both threads
    /// cost a shared cache line per message.
    func offer(_ message: OutgoingMessage, topic: RDKafkaTopic, opaque: UnsafeMutableRawPointer,
               servingReports: Bool = false) throws(KafkaError) -> Bool {
        // `close` waits for offers under way before it serves the last reports, so no
        // message reaches librdkafka after that and waits for a report forever.
        context.offering.add(1, ordering: .sequentiallyConsistent)
        defer { context.offering.subtract(1, ordering: .sequentiallyConsistent) }
        guard !context.stopping.load(ordering: .sequentiallyConsistent) else { throw .closed() }
        let err = produce(message, topic: topic, opaque: opaque)
        if servingReports { serveReports() }
        switch err {
        case RD_KAFKA_RESP_ERR_NO_ERROR: return true
        case RD_KAFKA_RESP_ERR__QUEUE_FULL: return false
        default: throw KafkaError(rdkafka: err)
        }
    }

    /// Serves the delivery reports already waiting, on the calling thread, without blocking
    /// (inside an offer, so never after `close` destroyed the client), as a C producer loop
    /// does between messages: librdkafka frees each acknowledged message where its report
    /// is served, here on the thread that allocated it.
    private func serveReports() {
        if rd_kafka_poll(handle.pointer, 0) > 0 { context.wakeSpaceWaiters() }
    }

    private func produce(_ message: OutgoingMessage, topic: RDKafkaTopic, opaque: UnsafeMutableRawPointer) -> rd_kafka_resp_err_t {
        let partition = message.partition ?? RD_KAFKA_PARTITION_UA
        let err: rd_kafka_resp_err_t = message.value.withUnsafeBytes { value in
            withOptionalBytes(message.key) { key in
                if message.headers.isEmpty && message.timestampMilliseconds == nil {
                    // The plain path avoids building a varargs list for the common case.
                    let rc = rd_kafka_produce(topic.pointer, partition, RD_KAFKA_MSG_F_COPY,
                                              UnsafeMutableRawPointer(mutating: value.baseAddress), value.count,
                                              key?.baseAddress, key?.count ?? 0, opaque)
                    return rc == 0 ? RD_KAFKA_RESP_ERR_NO_ERROR : rd_kafka_last_error()
                }
                return produceWithHeaders(message, topic: topic, partition: partition,
                                          value: value, key: key, opaque: opaque)
            }
        }
        return err
    }

    private func produceWithHeaders(_ message: OutgoingMessage, topic: RDKafkaTopic, partition: Int32,
                                    value: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer?,
                                    opaque: UnsafeMutableRawPointer) -> rd_kafka_resp_err_t {
        let headers = rd_kafka_headers_new(message.headers.count)!
        for header in message.headers {
            if let bytes = header.value {
                bytes.withUnsafeBytes { _ = rd_kafka_header_add(headers, header.name, -1, $0.baseAddress, $0.count) }
            } else {
                _ = rd_kafka_header_add(headers, header.name, -1, nil, 0)
            }
        }
        var vus = [rd_kafka_vu_t](repeating: rd_kafka_vu_t(), count: 6)
        vus[0].vtype = RD_KAFKA_VTYPE_RKT
        vus[0].u.rkt = topic.pointer
        vus[1].vtype = RD_KAFKA_VTYPE_PARTITION
        vus[1].u.i32 = partition
        vus[2].vtype = RD_KAFKA_VTYPE_VALUE
        vus[2].u.mem.ptr = UnsafeMutableRawPointer(mutating: value.baseAddress)
        vus[2].u.mem.size = value.count
        vus[3].vtype = RD_KAFKA_VTYPE_KEY
        vus[3].u.mem.ptr = key.flatMap { UnsafeMutableRawPointer(mutating: $0.baseAddress) }
        vus[3].u.mem.size = key?.count ?? 0
        vus[4].vtype = RD_KAFKA_VTYPE_OPAQUE
        vus[4].u.ptr = opaque
        vus[5].vtype = RD_KAFKA_VTYPE_HEADERS
        vus[5].u.headers = headers
        if let timestamp = message.timestampMilliseconds {
            var at = rd_kafka_vu_t()
            at.vtype = RD_KAFKA_VTYPE_TIMESTAMP
            at.u.i64 = timestamp
            vus.append(at)
        }
        var flags = rd_kafka_vu_t()
        flags.vtype = RD_KAFKA_VTYPE_MSGFLAGS
        flags.u.i = RD_KAFKA_MSG_F_COPY
        vus.append(flags)
        guard let error = rd_kafka_produceva(handle.pointer, vus, vus.count) else {
            return RD_KAFKA_RESP_ERR_NO_ERROR  // librdkafka now owns the headers
        }
        let code = rd_kafka_error_code(error)
        rd_kafka_error_destroy(error)
        rd_kafka_headers_destroy(headers)
        return code
    }

    func topicHandle(_ name: String) throws(KafkaError) -> RDKafkaTopic {
        let result: RDKafkaTopic?? = topics.withLock { cache in
            if let topic = cache[name] { return topic }
            // `close` empties the cache under this lock after setting `stopping`: checked here,
            // no topic is created on a handle that is being destroyed.
            guard !context.stopping.load(ordering: .sequentiallyConsistent) else { return .some(nil) }
            guard let pointer = rd_kafka_topic_new(handle.pointer, name, nil) else { return nil }
            let topic = RDKafkaTopic(pointer: pointer)
            cache[name] = topic
            return topic
        }
        switch result {
        case .some(.some(let topic)): return topic
        case .some(.none): throw .closed()
        case .none: throw KafkaError(rdkafka: rd_kafka_last_error())
        }
    }

    /// Whether a broker answers a metadata request on this client's existing
    /// connections (for readiness probes: no new client per probe).
    public func isConnected(timeout: Duration = .seconds(2)) async -> Bool {
        let handle = self.handle
        return (try? await blocking.run { () throws(KafkaError) -> Bool in
            var metadata: UnsafePointer<rd_kafka_metadata>?
            let err = rd_kafka_metadata(handle.pointer, 0, nil, &metadata, Int32(timeout.milliseconds))
            if let metadata { rd_kafka_metadata_destroy(metadata) }
            return err == RD_KAFKA_RESP_ERR_NO_ERROR
        }) ?? false
    }

    // MARK: Flushing and closing

    /// Messages handed to librdkafka and not yet acknowledged.
    public var inFlightCount: Int { Int(rd_kafka_outq_len(handle.pointer)) }

    /// Waits until every queued message is delivered or `timeout` passes.
    public func flush(timeout: Duration = .seconds(30)) async throws(KafkaError) {
        let handle = self.handle
        let millis = Int32(clamping: timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        try await blocking.run { () throws(KafkaError) in
            let err = rd_kafka_flush(handle.pointer, millis)
            if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(rdkafka: err) }
        }
    }

    /// Flushes (up to `timeout`), stops the poll thread and destroys the client.
    /// Sends still waiting for queue space fail with `kafka.closed`.
    public func close(timeout: Duration = .seconds(30)) async {
        guard !context.closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        do { try await flush(timeout: timeout) } catch {
            logger.warning("producer closed with undelivered messages", metadata: ["error.code": "\(error.code)"])
            // Fail what is left so every waiting `send` gets its report, then let the poll thread serve them.
            rd_kafka_purge(handle.pointer, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
            for _ in 0..<50 where rd_kafka_outq_len(handle.pointer) > 0 {
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        context.stopping.store(true, ordering: .sequentiallyConsistent)
        context.wakeSpaceWaiters()
        let handle = self.handle, context = self.context
        let cached = topics.withLock { cache in
            defer { cache.removeAll() }
            return Array(cache.values)
        }
        _ = try? await blocking.run {
            context.pollThreadExited.wait()
            // A send that passed its check as the flush ended (a service cancelled rather
            // than shut down gracefully closes its producer while its stage still sends)
            // must still get a report, or it waits forever: fail what is left, serve it here.
            while context.offering.load(ordering: .sequentiallyConsistent) > 0 { usleep(100) }
            if rd_kafka_outq_len(handle.pointer) > 0 {
                rd_kafka_purge(handle.pointer, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
                for _ in 0..<500 where rd_kafka_outq_len(handle.pointer) > 0 { rd_kafka_poll(handle.pointer, 10) }
            }
            cached.forEach { rd_kafka_topic_destroy($0.pointer) }
            rd_kafka_destroy(handle.pointer)
        }
    }

    /// Runs until graceful shutdown, then flushes and closes.
    public func run() async throws {
        try? await gracefulShutdown()
        await close()
    }
}

/// The state of one `send(batch:)`: its ticket, the topic handle of the previous
/// message (batches are usually for one topic), and the count.
@usableFromInline
struct BatchSend {
    let producer: KafkaProducer
    let ticket = DeliveryTicket()
    /// The ticket as librdkafka's per-message opaque (see `KafkaProducer.offer`).
    let opaque: UnsafeMutableRawPointer
    var topic: (name: String, handle: RDKafkaTopic)?
    var total = 0
    /// Counts reserved on the ticket and not yet used by a sent message.
    var reserved = 0

    @usableFromInline
    init(producer: KafkaProducer) {
        self.producer = producer
        opaque = Unmanaged.passUnretained(ticket).toOpaque()
    }

    @usableFromInline
    mutating func offer(_ message: OutgoingMessage) throws(KafkaError) -> Bool {
        if topic?.name != message.topic { topic = (message.topic, try producer.topicHandle(message.topic)) }
        if reserved == 0 {
            ticket.reserve(1024)
            reserved = 1024
        }
        guard try producer.offer(message, topic: topic!.handle, opaque: opaque, servingReports: bulk && total & 63 == 63) else { return false }
        reserved -= 1
        total += 1
        if total == Self.bulkThreshold {
            bulk = true
            producer.context.bulkSenders.add(1, ordering: .relaxed)
        }
        return true
    }

    /// A batch becomes a bulk send after this many messages: from then on it serves delivery
    /// reports itself every 64 messages and the poll thread stops blocking (see
    /// `KafkaProducer.init`). A service's batches (a stage's outputs) stay below it, and
    /// their reports are served the moment they arrive; a bulk exporter or a benchmark
    /// goes past it, where the wake-ups and cross-thread frees cost ~10 % of the rate
    /// (measured with `veil-bench kafka --produce-only`, ARCHITECTURE.md §9).
    static let bulkThreshold = 1024
    /// Whether this batch counts in `ProducerContext.bulkSenders`.
    var bulk = false

    /// Leaves bulk mode: the reports still to come are served by the poll thread, blocking
    /// again, as soon as they arrive. Called before waiting for them, on every way out.
    mutating func endBulk() {
        if bulk { producer.context.bulkSenders.subtract(1, ordering: .relaxed); bulk = false }
    }

    @usableFromInline
    func waitForSpace() async throws(KafkaError) {
        await producer.context.waitForSpace()
    }

    /// Messages already handed over still report to this ticket: wait for them.
    @usableFromInline
    mutating func abandon() async {
        endBulk()
        ticket.unreserve(reserved)
        _ = await ticket.wait()
    }

    @usableFromInline
    mutating func finish() async throws(KafkaError) {
        endBulk()
        ticket.unreserve(reserved)
        let outcome = await ticket.wait()
        if let error = outcome.firstError {
            throw .delivery(failed: outcome.failures, of: total, first: error)
        }
    }
}

/// A cached `rd_kafka_topic_t`.
struct RDKafkaTopic: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// State shared between the producer, its poll thread and librdkafka callbacks.
final class ProducerContext: ClientContext, @unchecked Sendable {
    private let spaceWaiters = Mutex<[CheckedContinuation<Void, Never>]>([])
    /// Offers between their `stopping` check and librdkafka taking the message.
    let offering = Atomic<Int>(0)
    /// Batch sends in bulk mode (`BatchSend.bulkThreshold`), which serve their own reports.
    let bulkSenders = Atomic<Int>(0)

    /// Suspends until the poll thread served delivery reports (room may have appeared), or
    /// at once if the producer is closing: `close` sets `stopping` before it wakes the
    /// waiters, and a sender that found the queue full just before must not queue up
    /// after that wake-up, with no poll thread left to wake it.
    func waitForSpace() async {
        await withCheckedContinuation { continuation in
            let closing = spaceWaiters.withLock { waiters in
                if stopping.load(ordering: .sequentiallyConsistent) { return true }
                waiters.append(continuation)
                return false
            }
            if closing { continuation.resume() }
        }
    }

    /// Called by the poll thread after each poll: delivery reports may have made room.
    func wakeSpaceWaiters() {
        let waiters = spaceWaiters.withLock { waiters in
            defer { waiters.removeAll() }
            return waiters
        }
        waiters.forEach { $0.resume() }
    }
}

/// Collects the delivery reports of one `send` call (one message or a batch).
///
/// Hot path: one atomic increment per message sent and one decrement per report;
/// the lock is taken only for errors and for the final hand-over. The sender holds
/// one extra "guard" count until it has installed its continuation, so the count
/// can reach zero only once somebody is waiting.
final class DeliveryTicket: Sendable {
    struct Outcome: Sendable {
        var failures = 0
        var firstError: KafkaError?
        var lastReport: DeliveryReport?
    }
    private let pending = Atomic<Int>(1)
    /// Single sends want the partition and offset back; batches only the outcome.
    let wantsReport: Bool
    private let lastPartition = Atomic<Int32>(-1)
    private let lastOffset = Atomic<Int64>(-1)
    private let state = Mutex<(outcome: Outcome, continuation: CheckedContinuation<Outcome, Never>?)>((Outcome(), nil))

    init(wantsReport: Bool = false) { self.wantsReport = wantsReport }

    func expectOne() { pending.add(1, ordering: .relaxed) }
    func cancelOne() { pending.subtract(1, ordering: .relaxed) }
    /// Reserves counts for messages about to be sent, so the sender touches the shared
    /// counter once per chunk instead of once per message (the poll thread decrements
    /// it per report). The guard count keeps it above zero meanwhile.
    func reserve(_ count: Int) { pending.add(count, ordering: .relaxed) }
    func unreserve(_ count: Int) { if count > 0 { pending.subtract(count, ordering: .relaxed) } }

    /// Called on the poll thread for each delivered message.
    func delivered(partition: Int32, offset: Int64) {
        if wantsReport {
            lastPartition.store(partition, ordering: .relaxed)
            lastOffset.store(offset, ordering: .relaxed)
        }
        release()
    }

    /// Called on the poll thread for each failed message.
    func failed(_ error: KafkaError) {
        state.withLock { s in
            s.outcome.failures += 1
            if s.outcome.firstError == nil { s.outcome.firstError = error }
        }
        release()
    }

    private func release() {
        if pending.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { complete() }
    }

    private func complete() {
        let (continuation, outcome) = state.withLock { s in
            defer { s.continuation = nil }
            return (s.continuation, s.outcome)
        }
        continuation?.resume(returning: outcome)
    }

    /// Waits for every enqueued message's report.
    /// `topic`: the name for the report (the sender's; the topic handle may be gone by now,
    /// destroyed by a `close` that raced this send).
    func wait(topic: String? = nil) async -> Outcome {
        var outcome = await withCheckedContinuation { continuation in
            state.withLock { $0.continuation = continuation }
            release()  // drop the sender's guard count
        }
        if outcome.firstError == nil, lastPartition.load(ordering: .relaxed) >= 0, let topic {
            outcome.lastReport = DeliveryReport(topic: topic,
                                                partition: lastPartition.load(ordering: .relaxed),
                                                offset: lastOffset.load(ordering: .relaxed))
        }
        return outcome
    }
}

private let deliveryReportCallback: @convention(c) (OpaquePointer?, UnsafePointer<rd_kafka_message_t>?, UnsafeMutableRawPointer?) -> Void = { _, message, _ in
    guard let message, let opaque = message.pointee._private else { return }
    // Unretained, and not retained for the call either: the sender keeps its ticket alive
    // until every report arrived.
    let m = message.pointee
    Unmanaged<DeliveryTicket>.fromOpaque(opaque)._withUnsafeGuaranteedRef { ticket in
        if m.err == RD_KAFKA_RESP_ERR_NO_ERROR {
            ticket.delivered(partition: m.partition, offset: m.offset)
        } else {
            ticket.failed(KafkaError(rdkafka: m.err))
        }
    }
}

func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawBufferPointer?) -> R) -> R {
    guard let bytes else { return body(nil) }
    return bytes.withUnsafeBytes { body($0) }
}
