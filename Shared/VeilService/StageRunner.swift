import Logging
import ServiceLifecycle
import VeilKafka
import VeilStore

/// A failure of a stage handler. `permanent` failures can never succeed (malformed or
/// forged input) and go to the dead-letter topic at once; others are retried.
public struct StageError: Error, Sendable, CustomStringConvertible {
    public let code: String
    public let reason: String
    public let permanent: Bool

    public init(code: String, reason: String, permanent: Bool) {
        self.code = code
        self.reason = reason
        self.permanent = permanent
    }

    public static func permanent(_ code: String, _ reason: String) -> StageError {
        StageError(code: code, reason: reason, permanent: true)
    }

    public static func transient(_ code: String, _ reason: String) -> StageError {
        StageError(code: code, reason: reason, permanent: false)
    }

    public var description: String { "StageError(\(code)): \(reason)" }
}

/// What a stage does with one consumed message: its effects, and the messages to
/// produce. A stage derives each output id from its input id
/// (`MessageID.derived(from:stage:)`) so a retry produces the same ids.
public protocol MessageHandler: Sendable {
    func handle(_ message: KafkaMessage) async throws -> [OutgoingMessage]
}

/// The stage loop: consume → handle → produce → mark processed, with retries and
/// dead letters.
///
/// A batch's outputs are produced and acknowledged before the batch's offsets are
/// stored, so a crash in between redelivers the inputs and the handler produces
/// the same (derived) ids again, which the next consumer drops. A message that
/// fails permanently, or `maxAttempts` times, goes to `<topic>.dlq` with headers
/// saying why, and the partition moves on: a poison message never stops it.
public final class StageRunner: Service, Sendable {
    let name: String
    let consumer: KafkaConsumer
    let producer: KafkaProducer
    let handler: any MessageHandler
    let metrics: ServiceMetrics
    let maxAttempts: Int
    let retryBackoff: Duration
    let logger: Logger

    public init(name: String, consumer: KafkaConsumer, producer: KafkaProducer, handler: any MessageHandler,
                metrics: ServiceMetrics, maxAttempts: Int = 5, retryBackoff: Duration = .milliseconds(200), logger: Logger) {
        self.name = name
        self.consumer = consumer
        self.producer = producer
        self.handler = handler
        self.metrics = metrics
        self.maxAttempts = max(1, maxAttempts)
        self.retryBackoff = retryBackoff
        self.logger = logger
    }

    public func run() async throws {
        let consumer = self.consumer
        try await withGracefulShutdownHandler {
            var lastLagReport = ContinuousClock.now
            while let batch = try await consumer.nextBatch() {
                try await process(batch)
                if ContinuousClock.now - lastLagReport > .seconds(5) {
                    metrics.recordLag(consumer.lag())
                    lastLagReport = .now
                }
            }
        } onGracefulShutdown: {
            consumer.stopReading()
        }
        await consumer.close()
        logger.info("stage stopped", metadata: ["stage": "\(name)"])
    }

    /// Handles one batch and stores its offsets once its outputs are acknowledged.
    public func process(_ batch: [KafkaMessage]) async throws {
        var outputs: [OutgoingMessage] = []
        var timings: [(String, ContinuousClock.Instant)] = []
        for message in batch {
            let started = ContinuousClock.now
            metrics.messageIn(topic: message.topic)
            outputs += await handleWithRetries(message)
            timings.append((message.topic, started))
        }
        try await produceUntilAcknowledged(outputs)
        for output in outputs { metrics.messageOut(topic: output.topic) }
        consumer.markProcessed(batch)
        let now = ContinuousClock.now
        for (topic, started) in timings { metrics.processing(now - started, topic: topic) }
    }

    private func handleWithRetries(_ message: KafkaMessage) async -> [OutgoingMessage] {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await handler.handle(message)
            } catch let error as StageError where error.permanent {
                return [deadLetter(message, code: error.code, reason: error.reason, attempts: attempt)]
            } catch {
                let (code, reason) = Self.describe(error)
                metrics.error(code: code)
                if attempt >= maxAttempts {
                    return [deadLetter(message, code: code, reason: reason, attempts: attempt)]
                }
                logger.warning("handler failed; retrying", metadata: [
                    "stage": "\(name)", "message.id": "\(message.headerString("ce_id") ?? "-")",
                    "error.code": "\(code)", "attempt": "\(attempt)"])
                try? await Task.sleep(for: retryBackoff * attempt)
            }
        }
    }

    /// The dead-letter copy: the original key, value and headers, plus why it failed and where from.
    func deadLetter(_ message: KafkaMessage, code: String, reason: String, attempts: Int) -> OutgoingMessage {
        metrics.error(code: code)
        metrics.deadLettered(topic: message.topic)
        logger.error("message dead-lettered", metadata: [
            "stage": "\(name)", "message.id": "\(message.headerString("ce_id") ?? "-")", "error.code": "\(code)",
            "topic": "\(message.topic)", "partition": "\(message.partition)", "offset": "\(message.offset)"])
        return OutgoingMessage(topic: message.topic + ".dlq", key: message.key, value: message.value, headers: message.headers + [
            KafkaHeader(name: "veil_dlq_code", string: code),
            KafkaHeader(name: "veil_dlq_reason", string: reason),
            KafkaHeader(name: "veil_dlq_stage", string: name),
            KafkaHeader(name: "veil_dlq_topic", string: message.topic),
            KafkaHeader(name: "veil_dlq_partition", string: String(message.partition)),
            KafkaHeader(name: "veil_dlq_offset", string: String(message.offset)),
            KafkaHeader(name: "veil_dlq_attempts", string: String(attempts)),
        ])
    }

    /// Outputs must be acknowledged before offsets move on; a transient Kafka failure is
    /// retried, a fatal one stops the stage (the inputs are redelivered after restart).
    private func produceUntilAcknowledged(_ outputs: [OutgoingMessage]) async throws {
        guard !outputs.isEmpty else { return }
        var attempt = 0
        while true {
            do {
                try await producer.send(batch: outputs)
                return
            } catch {
                attempt += 1
                metrics.error(code: error.code)
                if error.isFatal || error.code == "kafka.closed" { throw error }
                logger.warning("producing outputs failed; retrying", metadata: ["error.code": "\(error.code)", "attempt": "\(attempt)"])
                try await Task.sleep(for: .milliseconds(min(5_000, 100 * attempt)))
            }
        }
    }

    static func describe(_ error: any Error) -> (code: String, reason: String) {
        switch error {
        case let e as StageError: (e.code, e.reason)
        case let e as KafkaError: (e.code, e.reason)
        default: ("stage.handler_failed", String(describing: type(of: error)))
        }
    }
}

extension StageError: SafelyDescribable {}
