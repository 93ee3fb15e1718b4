import Foundation
import VeilCore
import VeilEnvelope
import VeilKafka

/// How a service signs, seals, verifies and opens the envelopes it sends and
/// receives over Kafka: its identity and the key directory it trusts.
public struct EnvelopeCodec: Sendable {
    public let identity: ServiceIdentity
    public let directory: KeyDirectoryStore
    public let sealer: EnvelopeSealer
    public let verifier: EnvelopeVerifier

    public init(identity: ServiceIdentity, directory: KeyDirectoryStore,
                configuration: EnvelopeConfiguration = EnvelopeConfiguration(), replayWindow: ReplayWindow = ReplayWindow()) {
        self.identity = identity
        self.directory = directory
        sealer = EnvelopeSealer(identity: identity, directory: directory, limits: configuration.limits)
        verifier = EnvelopeVerifier(identity: identity, directory: directory, replayWindow: replayWindow,
                                    configuration: configuration)
    }

    /// Seals and signs `draft` into a Kafka message: the envelope as value, its header
    /// mirrored into CloudEvents headers, keyed by `key` (the inquiry or request id).
    public func message(_ draft: EnvelopeDraft, topic: String, key: [UInt8]?) throws(EnvelopeError) -> OutgoingMessage {
        Self.outgoing(try sealer.seal(draft), topic: topic, key: key)
    }

    private static func outgoing(_ sealed: SealedEnvelope, topic: String, key: [UInt8]?) -> OutgoingMessage {
        OutgoingMessage(topic: topic, key: key, value: sealed.bytes,
                        headers: sealed.kafkaHeaders.map { KafkaHeader(name: $0.0, value: $0.1) })
    }

    /// `message(_:topic:key:)` for a batch's outputs, sealed and signed across all cores;
    /// results in input order. A stage that makes its outputs one by one in `handle`
    /// keeps one core busy per batch; one that makes them here in `prepare` uses all.
    public func messages(_ outputs: [(draft: EnvelopeDraft, topic: String, key: [UInt8]?)]) async -> [Result<OutgoingMessage, EnvelopeError>] {
        guard !outputs.isEmpty else { return [] }
        let sealed = await sealer.sealBatch(outputs.map(\.draft))
        return zip(outputs, sealed).map { output, result in
            result.map { Self.outgoing($0, topic: output.topic, key: output.key) }
        }
    }

    /// For a `prepare` step: makes the output of every input `make` returns a draft for,
    /// all sealed at once across cores (`messages`), and stores each in its input with
    /// `store`, for `handle` to hand over in order. An input whose draft does not seal keeps
    /// none, and `handle` makes it itself (with the stage's retries and dead letters).
    public func sealOutputs<Input>(of inputs: inout [Result<Input, StageError>],
                                   _ make: (Input, Int) -> (draft: EnvelopeDraft, topic: String, key: [UInt8]?)?,
                                   store: (inout Input, OutgoingMessage) -> Void) async {
        var indices: [Int] = []
        var outputs: [(draft: EnvelopeDraft, topic: String, key: [UInt8]?)] = []
        for (index, result) in inputs.enumerated() {
            guard case .success(let input) = result, let output = make(input, index) else { continue }
            indices.append(index)
            outputs.append(output)
        }
        for (index, sealed) in zip(indices, await messages(outputs)) {
            guard case .success(let output) = sealed, case .success(var input) = inputs[index] else { continue }
            store(&input, output)
            inputs[index] = .success(input)
        }
    }

    /// Verifies and opens a consumed batch in parallel. Freshness is judged against each
    /// record's Kafka timestamp (falling back to now), so a lagging consumer's backlog
    /// is not stale but an old envelope produced again is.
    public func verify(_ batch: [KafkaMessage]) async -> [Result<VerifiedEnvelope, EnvelopeError>] {
        let now = Date()
        return await verifier.verifyBatch(batch.map { message in
            let at = message.timestampMilliseconds > 0
                ? Date(timeIntervalSince1970: Double(message.timestampMilliseconds) / 1000) : now
            return (topic: message.topic, bytes: message.value, at: at)
        })
    }
}

extension EnvelopeCodec {
    /// Forgets that `envelope` was accepted: it is going to the dead-letter topic, never
    /// applied, so a replay of it after a fix (`veilctl dlq replay`) must not be refused
    /// as a duplicate. Its effects, if any ever happen, stay idempotent by id.
    public func release(_ envelope: VerifiedEnvelope) {
        verifier.replayWindow.forget(envelope.header.id)
    }

    /// `verify(_:)` with envelope errors as stage errors: a replayed id is a duplicate
    /// (dropped), anything else is permanent (dead-lettered with the envelope error code).
    public func verifyForStage(_ batch: [KafkaMessage]) async -> [Result<VerifiedEnvelope, StageError>] {
        await verify(batch).map { result in
            result.mapError { error in
                error == .replayed
                    ? StageError.duplicate(error.code, "message id already accepted")
                    : StageError.permanent(error.code, "envelope rejected")
            }
        }
    }
}

/// A stage step on verified envelopes: what a service's domain code implements.
public protocol EnvelopeHandler: Sendable {
    /// Handles one verified envelope (its parts for this service opened) and returns
    /// the envelopes to publish, made with `codec.message(_:topic:key:)`. Output ids
    /// are derived from `envelope.header.id` so a retry repeats them.
    func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage]
}

/// Adapts an `EnvelopeHandler` to the stage loop: verification runs batch-parallel
/// across cores before handling; a message that fails verification is dead-lettered
/// with the envelope error code, and a replayed id (a duplicate from an upstream
/// retry) is dropped without effect.
public struct EnvelopeStage<Handler: EnvelopeHandler>: MessageHandler {
    public let codec: EnvelopeCodec
    public let handler: Handler

    public init(codec: EnvelopeCodec, handler: Handler) {
        self.codec = codec
        self.handler = handler
    }

    public func prepare(_ batch: [KafkaMessage]) async -> [Result<VerifiedEnvelope, StageError>] {
        await codec.verifyForStage(batch)
    }

    public func handle(_ input: VerifiedEnvelope, message: KafkaMessage) async throws -> [OutgoingMessage] {
        try await handler.handle(input, message: message, codec: codec)
    }

    public func gaveUp(on input: VerifiedEnvelope) { codec.release(input) }
}

/// `EnvelopeStage` that handles a batch's messages concurrently: messages with the
/// same Kafka key (one request, one technician) in their order, different keys at once,
/// at most `concurrency` at a time. For handlers whose work is mostly waiting (database
/// round trips), where one-by-one handling would cap a replica's rate.
///
/// The work happens in `prepare`; `handle` hands over its outputs in message order, so
/// outputs and offsets move exactly as in `EnvelopeStage`. A message whose handling
/// failed transiently (and every later one with its key, not attempted) is handled again
/// by `handle`, in order, with the stage loop's retries; a permanent failure is
/// dead-lettered as usual.
public struct ConcurrentEnvelopeStage<Handler: EnvelopeHandler>: MessageHandler {
    public struct Input: Sendable {
        public let envelope: VerifiedEnvelope
        let outcome: Result<[OutgoingMessage], any Error>?
    }

    public let codec: EnvelopeCodec
    public let handler: Handler
    public let concurrency: Int

    public init(codec: EnvelopeCodec, handler: Handler, concurrency: Int = 16) {
        self.codec = codec
        self.handler = handler
        self.concurrency = max(1, concurrency)
    }

    public func prepare(_ batch: [KafkaMessage]) async -> [Result<Input, StageError>] {
        let verified = await codec.verifyForStage(batch)
        // Same key → one sequence, in order; a message without a key is its own sequence.
        var sequences: [[Int]] = []
        var byKey: [[UInt8]: Int] = [:]
        for (index, result) in verified.enumerated() {
            guard case .success = result else { continue }
            if let key = batch[index].key, let sequence = byKey[key] {
                sequences[sequence].append(index)
            } else {
                if let key = batch[index].key { byKey[key] = sequences.count }
                sequences.append([index])
            }
        }
        var outcomes = [Result<[OutgoingMessage], any Error>?](repeating: nil, count: batch.count)
        await withTaskGroup(of: [(Int, Result<[OutgoingMessage], any Error>)].self) { group in
            var next = 0
            func start() {
                let indices = sequences[next]
                next += 1
                group.addTask {
                    var done: [(Int, Result<[OutgoingMessage], any Error>)] = []
                    for index in indices {
                        guard case .success(let envelope) = verified[index] else { continue }
                        do {
                            done.append((index, .success(try await handler.handle(envelope, message: batch[index], codec: codec))))
                        } catch {
                            done.append((index, .failure(error)))
                            break  // later messages of this key wait for it, in `handle`
                        }
                    }
                    return done
                }
            }
            while next < min(concurrency, sequences.count) { start() }
            for await finished in group {
                for (index, outcome) in finished { outcomes[index] = outcome }
                if next < sequences.count { start() }
            }
        }
        return verified.enumerated().map { index, result in
            result.map { Input(envelope: $0, outcome: outcomes[index]) }
        }
    }

    public func handle(_ input: Input, message: KafkaMessage) async throws -> [OutgoingMessage] {
        switch input.outcome {
        case .success(let outputs):
            return outputs
        case .failure(let error as StageError) where error.permanent:
            throw error
        default:
            // Failed transiently in `prepare`, or not attempted after an earlier failure of its key.
            let outputs = try await handler.handle(input.envelope, message: message, codec: codec)
            return outputs
        }
    }

    public func gaveUp(on input: Input) { codec.release(input.envelope) }
}
