import CRdKafka
import Dispatch
import Logging
import ServiceLifecycle
import Synchronization

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
        startPollThread(name: "veil-kafka-producer-poll") {
            while !context.stopping.load(ordering: .acquiring) {
                rd_kafka_poll(handle.pointer, 50)
                context.wakeSpaceWaiters()
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
        let ticket = DeliveryTicket()
        try await enqueue(message, ticket: ticket)
        let outcome = await ticket.wait()
        if let error = outcome.firstError { throw error }
        guard let report = outcome.lastReport else { throw .closed("no delivery report") }
        return report
    }

    /// Sends a batch and waits until every message is acknowledged. librdkafka batches
    /// them on the wire; one continuation serves the whole batch.
    /// - Throws: the first delivery error, with the number of undelivered messages.
    public func send(batch messages: some Sequence<OutgoingMessage>) async throws(KafkaError) {
        let ticket = DeliveryTicket()
        var total = 0
        for message in messages {
            try await enqueue(message, ticket: ticket)
            total += 1
        }
        let outcome = await ticket.wait()
        if let error = outcome.firstError {
            throw .delivery(failed: outcome.failures, of: total, first: error)
        }
    }

    /// Hands one message to librdkafka, waiting while its queue is full.
    private func enqueue(_ message: OutgoingMessage, ticket: DeliveryTicket) async throws(KafkaError) {
        guard !context.stopping.load(ordering: .acquiring) else { throw .closed() }
        let topic = try topicHandle(message.topic)
        while true {
            ticket.expectOne()
            let err = produce(message, topic: topic, ticket: ticket)
            switch err {
            case RD_KAFKA_RESP_ERR_NO_ERROR:
                return
            case RD_KAFKA_RESP_ERR__QUEUE_FULL:
                ticket.cancelOne()
                await context.waitForSpace()
                guard !context.stopping.load(ordering: .acquiring) else { throw .closed() }
            default:
                ticket.cancelOne()
                throw KafkaError(rdkafka: err)
            }
        }
    }

    private func produce(_ message: OutgoingMessage, topic: RDKafkaTopic, ticket: DeliveryTicket) -> rd_kafka_resp_err_t {
        let opaque = Unmanaged.passRetained(ticket).toOpaque()
        let partition = message.partition ?? RD_KAFKA_PARTITION_UA
        let err: rd_kafka_resp_err_t = message.value.withUnsafeBytes { value in
            withOptionalBytes(message.key) { key in
                if message.headers.isEmpty {
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
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            Unmanaged<DeliveryTicket>.fromOpaque(opaque).release()
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

    private func topicHandle(_ name: String) throws(KafkaError) -> RDKafkaTopic {
        let result: RDKafkaTopic? = topics.withLock { cache in
            if let topic = cache[name] { return topic }
            guard let pointer = rd_kafka_topic_new(handle.pointer, name, nil) else { return nil }
            let topic = RDKafkaTopic(pointer: pointer)
            cache[name] = topic
            return topic
        }
        guard let result else { throw KafkaError(rdkafka: rd_kafka_last_error()) }
        return result
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
        }
        context.stopping.store(true, ordering: .releasing)
        context.wakeSpaceWaiters()
        let handle = self.handle, context = self.context
        let cached = topics.withLock { cache in
            defer { cache.removeAll() }
            return Array(cache.values)
        }
        _ = try? await blocking.run {
            context.pollThreadExited.wait()
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

/// A cached `rd_kafka_topic_t`.
struct RDKafkaTopic: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// State shared between the producer, its poll thread and librdkafka callbacks.
final class ProducerContext: ClientContext, @unchecked Sendable {
    private let spaceWaiters = Mutex<[CheckedContinuation<Void, Never>]>([])

    func waitForSpace() async {
        await withCheckedContinuation { continuation in
            spaceWaiters.withLock { $0.append(continuation) }
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
final class DeliveryTicket: Sendable {
    struct Outcome: Sendable {
        var pending = 0
        var failures = 0
        var firstError: KafkaError?
        var lastReport: DeliveryReport?
        var continuation: CheckedContinuation<Outcome, Never>?
    }
    private let state = Mutex(Outcome())

    func expectOne() { state.withLock { $0.pending += 1 } }
    func cancelOne() { state.withLock { $0.pending -= 1 } }

    /// Called on the poll thread for each message.
    func delivered(_ report: DeliveryReport?, error: KafkaError?) {
        let resume: (CheckedContinuation<Outcome, Never>, Outcome)? = state.withLock { outcome in
            outcome.pending -= 1
            if let error {
                outcome.failures += 1
                if outcome.firstError == nil { outcome.firstError = error }
            } else {
                outcome.lastReport = report
            }
            guard outcome.pending == 0, let continuation = outcome.continuation else { return nil }
            outcome.continuation = nil
            return (continuation, outcome)
        }
        if let (continuation, outcome) = resume { continuation.resume(returning: outcome) }
    }

    /// Waits for every enqueued message's report.
    func wait() async -> Outcome {
        await withCheckedContinuation { continuation in
            let ready: Outcome? = state.withLock { outcome in
                if outcome.pending == 0 { return outcome }
                outcome.continuation = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}

private let deliveryReportCallback: @convention(c) (OpaquePointer?, UnsafePointer<rd_kafka_message_t>?, UnsafeMutableRawPointer?) -> Void = { _, message, _ in
    guard let message, let opaque = message.pointee._private else { return }
    let ticket = Unmanaged<DeliveryTicket>.fromOpaque(opaque).takeRetainedValue()
    let m = message.pointee
    if m.err == RD_KAFKA_RESP_ERR_NO_ERROR {
        let topic = m.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? ""
        ticket.delivered(DeliveryReport(topic: topic, partition: m.partition, offset: m.offset), error: nil)
    } else {
        ticket.delivered(nil, error: KafkaError(rdkafka: m.err))
    }
}

func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawBufferPointer?) -> R) -> R {
    guard let bytes else { return body(nil) }
    return bytes.withUnsafeBytes { body($0) }
}
