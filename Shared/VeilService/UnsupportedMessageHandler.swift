import VeilEnvelope
import VeilKafka

/// The step of a service whose domain logic is not built yet. Messages are still
/// verified as envelopes first (a forged or malformed one is dead-lettered with its
/// envelope error); a genuine one is dead-lettered with `stage.unsupported_type`, so
/// nothing is dropped silently and it can be replayed once the step exists.
public struct UnsupportedEnvelopeHandler: EnvelopeHandler {
    public init() {}

    public func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        throw StageError.permanent("stage.unsupported_type", "no handler for \(envelope.header.type) on \(message.topic)")
    }
}
