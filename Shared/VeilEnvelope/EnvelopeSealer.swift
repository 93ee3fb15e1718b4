import Crypto
import Foundation
import VeilCore

/// Seals and signs envelopes as one party (the producer side of a stage).
///
/// Signs with the newest signing version the identity holds that the current
/// directory lists as active — so a new key is used as soon as the directory
/// publishes it — and seals new parts to each recipient's newest active
/// encryption key. Refuses to produce anything the limits would reject.
public struct EnvelopeSealer: Sendable {
    /// Who signs.
    public let identity: ServiceIdentity
    /// Where recipients' keys and this identity's active versions come from.
    public let directory: KeyDirectoryStore
    /// Limits the produced envelopes must meet.
    public let limits: EnvelopeLimits

    public init(identity: ServiceIdentity, directory: KeyDirectoryStore, limits: EnvelopeLimits = EnvelopeLimits()) {
        self.identity = identity
        self.directory = directory
        self.limits = limits
    }

    /// Seals the new parts, copies forwarded parts, and signs header and body.
    ///
    /// Errors: `unknown_key` (no active signing key of ours, or a recipient
    /// without an active encryption key), `too_large`, `malformed` (bad
    /// strings, no parts, duplicate labels), `seal_failed`.
    public func seal(_ draft: EnvelopeDraft) throws(EnvelopeError) -> SealedEnvelope {
        try seal(draft, using: directory.snapshot())
    }

    /// Seals a batch across all cores; results are in input order.
    public func sealBatch(_ drafts: [EnvelopeDraft]) async -> [Result<SealedEnvelope, EnvelopeError>] {
        let snapshot = directory.snapshot()
        return await ParallelBatch.map(drafts) { draft in
            Result { () throws(EnvelopeError) in try seal(draft, using: snapshot) }
        }
    }

    func seal(_ draft: EnvelopeDraft, using directory: ResolvedDirectory) throws(EnvelopeError) -> SealedEnvelope {
        // Newest held signing version that the directory lists as active.
        let active = directory.activeSigningVersions[identity.name] ?? []
        guard let version = identity.signingVersions.last(where: { active.contains($0) }),
              let signingKey = identity.signingKeys[version] else { throw .unknownKey }
        let signer = KeyReference(keyID: identity.signingKeyID, version: version)
        let maxString = limits.maxStringBytes
        try Token.validate(draft.type, maxLength: maxString)
        try Token.validate(identity.name, maxLength: maxString)
        try Token.validate(signer.keyID, maxLength: maxString)
        guard !draft.parts.isEmpty else { throw .malformed }
        guard draft.parts.count <= limits.maxParts else { throw .tooLarge }

        // Resolve recipients and compute the exact size before any cryptography.
        typealias Recipient = (reference: KeyReference, key: Curve25519.KeyAgreement.PublicKey)
        var resolved: [[Recipient]] = []
        resolved.reserveCapacity(draft.parts.count)
        var labels = Set<String>()
        var size = Envelope.fixedHeaderBytes + 3 + draft.type.utf8.count + identity.name.utf8.count
            + signer.keyID.utf8.count + 4 + 1 + Envelope.signatureBytes
        for part in draft.parts {
            guard labels.insert(part.label).inserted else { throw .malformed }
            switch part.content {
            case .forward(let sealed):
                resolved.append([])
                size += 4 + sealed.bytes.count
            case .seal(let label, let payload, let names):
                try Token.validate(label, maxLength: maxString)
                guard !names.isEmpty, Set(names).count == names.count else { throw .malformed }
                guard names.count <= limits.maxRecipients else { throw .tooLarge }
                var recipients: [Recipient] = []
                recipients.reserveCapacity(names.count)
                size += 4 + 1 + 1 + label.utf8.count + 1 + payload.count + SealedPart.tagBytes
                for name in names {
                    guard let key = directory.newestEncryptionKey[name] else { throw .unknownKey }
                    try Token.validate(key.reference.keyID, maxLength: maxString)
                    recipients.append((key.reference, key.key))
                    size += 1 + key.reference.keyID.utf8.count + 4
                        + SealedPart.recipientBlockBytes(recipients: names.count)
                }
                resolved.append(recipients)
            }
            guard size <= limits.maxEnvelopeBytes else { throw .tooLarge }
        }

        let millis = EnvelopeVerifier.milliseconds(draft.createdAt)
        var writer = WireWriter(capacity: size)
        writer.append(Envelope.magic)
        writer.u8(Envelope.formatVersion)
        writer.append(draft.id.bytes)
        writer.u64(millis)
        writer.u16(draft.schemaVersion)
        writer.token(draft.type)
        writer.token(identity.name)
        writer.token(signer.keyID)
        writer.u32(signer.version)
        writer.u8(UInt8(truncatingIfNeeded: draft.parts.count))
        for (part, recipients) in zip(draft.parts, resolved) {
            switch part.content {
            case .forward(let sealed):
                writer.u32(UInt32(truncatingIfNeeded: sealed.bytes.count))
                writer.append(sealed.bytes)
            case .seal(let label, let payload, _):
                try SealedPart.seal(payload, label: label, to: recipients, into: &writer)
            }
        }
        guard let signature = try? signingKey.signature(for: writer.buffer) else { throw .sealFailed }
        writer.append(signature)
        let header = EnvelopeHeader(formatVersion: Envelope.formatVersion, id: draft.id, type: draft.type,
                                    producer: identity.name, createdAtMilliseconds: millis,
                                    schemaVersion: draft.schemaVersion, signer: signer)
        return SealedEnvelope(bytes: writer.buffer, header: header)
    }
}
