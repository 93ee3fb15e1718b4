import Foundation
import VeilCore

/// What a producer wants to send: header fields and parts, before sealing and signing.
public struct EnvelopeDraft: Sendable {
    /// One body part: new data sealed to recipients, or a part received and forwarded unchanged.
    public struct Part: Sendable {
        enum Content: Sendable {
            case seal(label: String, payload: [UInt8], recipients: [String])
            case forward(SealedPart)
        }
        let content: Content

        /// Seals `payload` to the newest active encryption key of each recipient party.
        public static func sealed(_ label: String, payload: [UInt8], to recipients: [String]) -> Part {
            Part(content: .seal(label: label, payload: payload, recipients: recipients))
        }

        /// Forwards a part byte-for-byte (typically one this stage cannot open).
        public static func forwarded(_ part: SealedPart) -> Part { Part(content: .forward(part)) }

        var label: String {
            switch content {
            case .seal(let label, _, _): label
            case .forward(let part): part.label
            }
        }
    }

    /// The message id: `MessageID.generate()` for new data, `MessageID.derived(from:stage:)` in a stage.
    public var id: MessageID
    /// The message type, `veil.<noun>.<verb>.v1`.
    public var type: String
    /// The payload schema version.
    public var schemaVersion: UInt16
    /// Creation time, written in whole milliseconds.
    public var createdAt: Date
    /// The body parts, at least one; labels must be unique.
    public var parts: [Part]

    public init(id: MessageID = .generate(), type: String, schemaVersion: UInt16 = 1, createdAt: Date = Date(),
                parts: [Part]) {
        self.id = id
        self.type = type
        self.schemaVersion = schemaVersion
        self.createdAt = createdAt
        self.parts = parts
    }
}

/// A sealed and signed envelope, ready to produce: the Kafka value and its headers.
public struct SealedEnvelope: Sendable {
    /// The Kafka message value.
    public let bytes: [UInt8]
    /// The readable header written into it.
    public let header: EnvelopeHeader

    /// The CloudEvents binary-mode Kafka headers for this envelope.
    public var kafkaHeaders: [(String, [UInt8])] { header.cloudEventsHeaders }
}
