import Crypto
import Foundation
import VeilCore

/// Checks envelopes on receipt and opens the parts addressed to this party
/// (the consumer side of a stage).
///
/// The checks run in this order, each failing with its own `EnvelopeError`:
/// size limits → format version → layout → signer key known (and not
/// retired) → producer allowed for (topic, type) → signature → freshness →
/// replay → opening. An id is recorded in the replay window only once its
/// signature verified, so forged messages cannot block genuine ids.
///
/// Verify a message once and retry only its handling: verifying the same
/// bytes again within the window is (rightly) a replay.
public struct EnvelopeVerifier: Sendable {
    /// Whose parts to open.
    public let identity: ServiceIdentity
    /// Signing keys, statuses and the allowlist.
    public let directory: KeyDirectoryStore
    /// Ids accepted recently; share one window across all verifiers of a process.
    public let replayWindow: ReplayWindow
    /// Limits and clock skew.
    public let configuration: EnvelopeConfiguration

    public init(identity: ServiceIdentity, directory: KeyDirectoryStore, replayWindow: ReplayWindow = ReplayWindow(),
                configuration: EnvelopeConfiguration = EnvelopeConfiguration()) {
        self.identity = identity
        self.directory = directory
        self.replayWindow = replayWindow
        self.configuration = configuration
    }

    /// Verifies an envelope received on `topic` and opens the parts addressed to this identity.
    public func verify(_ bytes: [UInt8], topic: String, now: Date = Date()) throws(EnvelopeError) -> VerifiedEnvelope {
        try verify(bytes, topic: topic, now: Self.milliseconds(now), using: directory.snapshot())
    }

    /// Verifies a batch across all cores; results are in input order.
    public func verifyBatch(_ messages: [(topic: String, bytes: [UInt8])],
                            now: Date = Date()) async -> [Result<VerifiedEnvelope, EnvelopeError>] {
        let snapshot = directory.snapshot()
        let millis = Self.milliseconds(now)
        return await ParallelBatch.map(messages) { message in
            Result { () throws(EnvelopeError) in
                try verify(message.bytes, topic: message.topic, now: millis, using: snapshot)
            }
        }
    }

    /// Verifies a batch across all cores, judging each envelope's freshness against its
    /// own reference time: a Kafka consumer passes each record's broker timestamp, so a
    /// backlog read late is not stale, while an old envelope produced again is.
    public func verifyBatch(_ messages: [(topic: String, bytes: [UInt8], at: Date)]) async -> [Result<VerifiedEnvelope, EnvelopeError>] {
        let snapshot = directory.snapshot()
        return await ParallelBatch.map(messages) { message in
            Result { () throws(EnvelopeError) in
                try verify(message.bytes, topic: message.topic, now: Self.milliseconds(message.at), using: snapshot)
            }
        }
    }

    func verify(_ bytes: [UInt8], topic: String, now: UInt64,
                using directory: ResolvedDirectory) throws(EnvelopeError) -> VerifiedEnvelope {
        let envelope = try Envelope(parsing: bytes, limits: configuration.limits)
        let header = envelope.header

        guard let signer = directory.signingKeys[header.signer] else { throw .unknownKey }
        guard signer.status == .active else { throw .retiredKey }

        guard signer.owner == header.producer,
              directory.allows(header.producer, toPublish: header.type, on: topic) else { throw .producerNotAllowed }

        guard signer.key.isValidSignature(envelope.signature, for: envelope.signedBytes) else { throw .badSignature }

        let skew = configuration.maxClockSkewMilliseconds
        let created = header.createdAtMilliseconds
        let age = now >= created ? now - created : created - now
        guard age <= skew else { throw .stale }

        let (expiry, overflow) = created.addingReportingOverflow(skew)
        guard replayWindow.recordIfNew(header.id, expiresAt: overflow ? .max : expiry, now: now) else { throw .replayed }

        do throws(EnvelopeError) {
            var opened: [String: [UInt8]] = [:]
            var addressed = false
            for part in envelope.parts {
                let ours = part.recipients.indices.filter { part.recipients[$0].keyID == identity.encryptionKeyID }
                guard !ours.isEmpty else { continue }
                addressed = true
                guard let index = ours.first(where: { identity.encryptionKeys[part.recipients[$0].version] != nil }),
                      let key = identity.encryptionKeys[part.recipients[index].version] else { throw .openFailed }
                opened[part.label] = try part.open(asRecipient: index, with: key)
            }
            guard addressed else { throw .notARecipient }
            return VerifiedEnvelope(header: header, parts: envelope.parts, opened: opened)
        } catch {
            // Not accepted after all (e.g. sealed to a key version this process does not
            // hold yet): a replay once it does must not be refused as a duplicate.
            replayWindow.forget(header.id)
            throw error
        }
    }

    static func milliseconds(_ date: Date) -> UInt64 {
        let value = (date.timeIntervalSince1970 * 1000).rounded(.down)
        guard value > 0 else { return 0 }
        return value < 1.8e19 ? UInt64(value) : .max
    }
}

/// An envelope that passed every check, with the plaintext of the parts
/// addressed to this party and every part still sealed for forwarding.
///
/// Its description shows the header only, never payloads.
public struct VerifiedEnvelope: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// The verified header.
    public let header: EnvelopeHeader
    /// Every part in body order, sealed, for forwarding with `EnvelopeDraft.Part.forwarded`.
    public let parts: [SealedPart]
    /// Plaintext by label, for the parts this party could open.
    public let opened: [String: [UInt8]]

    /// The plaintext of the part labelled `label`, if it was addressed to this party.
    public func payload(_ label: String) -> [UInt8]? { opened[label] }

    /// The sealed part labelled `label`, for forwarding.
    public func part(_ label: String) -> SealedPart? { parts.first { $0.label == label } }

    public var description: String {
        "VerifiedEnvelope(\(header.id), \(header.type) from \(header.producer), opened: \(opened.keys.sorted()))"
    }
    public var debugDescription: String { description }
}
