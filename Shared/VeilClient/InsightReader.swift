import Foundation
import VeilContracts
import VeilEnvelope

/// What a downstream provider uses to read `veil.insights.v1`: verifies each message's
/// signature against the key directory (only the merger may publish insights), checks
/// freshness and replay, and opens the part sealed to the provider's key.
public struct InsightReader: Sendable {
    public let verifier: EnvelopeVerifier

    /// - Parameters:
    ///   - identity: the provider's private keys (`veilctl keys init` writes `provider-demo`).
    ///   - directory: the signed key directory, verified against Veil's directory key.
    public init(identity: ServiceIdentity, directory: KeyDirectoryStore, configuration: EnvelopeConfiguration = EnvelopeConfiguration()) {
        verifier = EnvelopeVerifier(identity: identity, directory: directory, configuration: configuration)
    }

    /// Verifies and opens one message value consumed from `topic` at `receivedAt` (its Kafka timestamp).
    public func read(_ value: [UInt8], topic: String = Topic.insights.name, receivedAt: Date = Date()) throws -> Insight {
        let envelope = try verifier.verify(value, topic: topic, now: receivedAt)
        guard envelope.header.type == MessageType.insightPublished, let payload = envelope.payload(PartLabel.insight) else {
            throw EnvelopeError.notARecipient
        }
        return try ContractCoding.decode(Insight.self, from: payload)
    }
}
