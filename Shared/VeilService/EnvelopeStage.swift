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
        let sealed = try sealer.seal(draft)
        return OutgoingMessage(topic: topic, key: key, value: sealed.bytes,
                               headers: sealed.kafkaHeaders.map { KafkaHeader(name: $0.0, value: $0.1) })
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
