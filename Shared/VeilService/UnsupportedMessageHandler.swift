import VeilKafka

/// The handler of a service whose domain step is not built yet: it joins its group,
/// serves health and metrics, and sends every message it receives to the
/// dead-letter topic with `stage.unsupported_type`, so nothing is dropped silently
/// and the messages can be replayed once the step exists.
public struct UnsupportedMessageHandler: MessageHandler {
    public init() {}

    public func handle(_ message: KafkaMessage) async throws -> [OutgoingMessage] {
        throw StageError.permanent("stage.unsupported_type",
                                   "no handler for \(message.headerString("ce_type") ?? "untyped message") on \(message.topic)")
    }
}
