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
    /// A duplicate of a message already applied: dropped without effect or dead letter.
    public let duplicate: Bool

    public init(code: String, reason: String, permanent: Bool, duplicate: Bool = false) {
        self.code = code
        self.reason = reason
        self.permanent = permanent
        self.duplicate = duplicate
    }

    public static func duplicate(_ code: String, _ reason: String) -> StageError {
        StageError(code: code, reason: reason, permanent: true, duplicate: true)
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
///
/// `prepare` runs once per batch (e.g. verifying envelopes in parallel) and is not
/// retried; `handle` is retried on transient failures. `gaveUp(on:)` is told when a
/// prepared input goes to the dead-letter topic instead (e.g. to forget its id, so a
/// replay after a fix is not refused as a duplicate of something never applied).
public protocol MessageHandler: Sendable {
    associatedtype Input: Sendable = KafkaMessage
    func prepare(_ batch: [KafkaMessage]) async -> [Result<Input, StageError>]
    func handle(_ input: Input, message: KafkaMessage) async throws -> [OutgoingMessage]
    func gaveUp(on input: Input)
}

extension MessageHandler {
    public func gaveUp(on input: Input) {}
}

extension MessageHandler where Input == KafkaMessage {
    public func prepare(_ batch: [KafkaMessage]) async -> [Result<KafkaMessage, StageError>] {
        batch.map { .success($0) }
    }
}

/// The stage loop: consume → handle → produce → mark processed, with retries and
/// dead letters. Up to `maxBatchesInFlight` batches' outputs await their
/// acknowledgements while the next batches are handled (a batch is marked processed
/// only after every earlier one), so a stage is not limited to one batch per
/// produce round trip.
///
/// A batch's outputs are produced and acknowledged before the batch's offsets are
/// stored, so a crash in between redelivers the inputs and the handler produces
/// the same (derived) ids again, which the next consumer drops. A message that
/// fails permanently, or `maxAttempts` times, goes to `<topic>.dlq` with headers
/// saying why, and the partition moves on: a poison message never stops it.
public final class StageRunner<Handler: MessageHandler>: Service, Sendable {
    let name: String
    let consumer: KafkaConsumer
    let producer: KafkaProducer
    let handler: Handler
    let metrics: ServiceMetrics
    let maxAttempts: Int
    let retryBackoff: Duration
    let logger: Logger
    /// Batches whose outputs may await acknowledgement while the next ones are handled.
    let maxBatchesInFlight: Int

    public init(name: String, consumer: KafkaConsumer, producer: KafkaProducer, handler: Handler,
                metrics: ServiceMetrics, maxAttempts: Int = 5, retryBackoff: Duration = .milliseconds(200),
                maxBatchesInFlight: Int = 8, logger: Logger) {
        self.name = name
        self.consumer = consumer
        self.producer = producer
        self.handler = handler
        self.metrics = metrics
        self.maxAttempts = max(1, maxAttempts)
        self.retryBackoff = retryBackoff
        self.maxBatchesInFlight = max(1, maxBatchesInFlight)
        self.logger = logger
    }

    public func run() async throws {
        let consumer = self.consumer
        var inFlight: [Task<Void, any Error>] = []
        do {
            try await withGracefulShutdownHandler {
                var lastLagReport = ContinuousClock.now
                while let batch = try await consumer.nextBatch() {
                    inFlight.append(try await process(batch, after: inFlight.last))
                    // A bounded window of batches awaiting acknowledgements; the oldest must finish first.
                    while inFlight.count > maxBatchesInFlight { try await inFlight.removeFirst().value }
                    if ContinuousClock.now - lastLagReport > .seconds(5) {
                        metrics.recordLag(consumer.lag())
                        metrics.recordOffsetResets(consumer.offsetResets(), consumer: name)
                        lastLagReport = .now
                    }
                }
            } onGracefulShutdown: {
                consumer.stopReading()
            }
            for task in inFlight { try await task.value }
        } catch {
            for task in inFlight { _ = await task.result }
            await consumer.close()
            throw error
        }
        await consumer.close()
        logger.info("stage stopped", metadata: ["stage": "\(name)"])
    }

    /// Handles one batch and stores its offsets once its outputs are acknowledged.
    public func process(_ batch: [KafkaMessage]) async throws {
        try await process(batch, after: nil).value
    }

    /// Handles one batch now and returns the task that waits for its outputs'
    /// acknowledgements and then marks it processed — after `previous` did, so offsets
    /// move forward in order even though several batches' outputs are in flight at once.
    func process(_ batch: [KafkaMessage], after previous: Task<Void, any Error>?) async throws -> Task<Void, any Error> {
        var outputs: [OutgoingMessage] = []
        let started = ContinuousClock.now
        metrics.batch(size: batch.count)
        let prepared = await handler.prepare(batch)
        for (message, input) in zip(batch, prepared) {
            metrics.messageIn(topic: message.topic)
            switch input {
            case .success(let input):
                outputs += try await handleWithRetries(input, message: message)
            case .failure(let error) where error.duplicate:
                metrics.duplicateDropped(topic: message.topic)
                logger.debug("duplicate dropped", metadata: ["message.id": "\(message.headerString("ce_id") ?? "-")"])
            case .failure(let error):
                outputs.append(deadLetter(message, code: error.code, reason: error.reason, attempts: 1))
            }
        }
        let ready = outputs
        return Task {
            try await produceUntilAcknowledged(ready)
            try await previous?.value
            for output in ready { metrics.messageOut(topic: output.topic) }
            consumer.markProcessed(batch)
            let now = ContinuousClock.now
            for message in batch { metrics.processing(now - started, topic: message.topic) }
        }
    }

    /// Retries transient failures; dead-letters permanent ones and those that keep failing.
    /// A failure while the stage is being cancelled (a crash-like stop) is neither: the
    /// batch is abandoned unmarked and redelivered, never dead-lettered.
    private func handleWithRetries(_ input: Handler.Input, message: KafkaMessage) async throws -> [OutgoingMessage] {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await handler.handle(input, message: message)
            } catch let error as StageError where error.permanent {
                handler.gaveUp(on: input)
                return [deadLetter(message, code: error.code, reason: error.reason, attempts: attempt)]
            } catch {
                if Task.isCancelled || error is CancellationError { throw CancellationError() }
                let (code, reason) = Self.describe(error)
                if attempt >= maxAttempts {
                    handler.gaveUp(on: input)
                    return [deadLetter(message, code: code, reason: reason, attempts: attempt)]  // counts the error
                }
                metrics.error(code: code)
                logger.warning("handler failed; retrying", metadata: [
                    "stage": "\(name)", "message.id": "\(message.headerString("ce_id") ?? "-")",
                    "error.code": "\(code)", "attempt": "\(attempt)"])
                try? await Task.sleep(for: retryBackoff * attempt)
            }
        }
    }

    /// The dead-letter copy: the original key, value and headers, plus why it failed and
    /// where from (`DeadLetterHeader`), including the original record time, so a replay
    /// is judged fresh or stale exactly as the original was.
    func deadLetter(_ message: KafkaMessage, code: String, reason: String, attempts: Int) -> OutgoingMessage {
        metrics.error(code: code)
        metrics.deadLettered(topic: message.topic)
        logger.error("message dead-lettered", metadata: [
            "stage": "\(name)", "message.id": "\(message.headerString("ce_id") ?? "-")", "error.code": "\(code)",
            "topic": "\(message.topic)", "partition": "\(message.partition)", "offset": "\(message.offset)"])
        return OutgoingMessage(topic: message.topic + ".dlq", key: message.key, value: message.value, headers: message.headers + [
            KafkaHeader(name: DeadLetterHeader.code, string: code),
            KafkaHeader(name: DeadLetterHeader.reason, string: reason),
            KafkaHeader(name: DeadLetterHeader.stage, string: name),
            KafkaHeader(name: DeadLetterHeader.topic, string: message.topic),
            KafkaHeader(name: DeadLetterHeader.partition, string: String(message.partition)),
            KafkaHeader(name: DeadLetterHeader.offset, string: String(message.offset)),
            KafkaHeader(name: DeadLetterHeader.attempts, string: String(attempts)),
            KafkaHeader(name: DeadLetterHeader.timestamp, string: String(message.timestampMilliseconds)),
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
