import Crypto
import Foundation
import Synchronization
import VeilCore

/// Parts sealed to keys outside the key directory: a device's or a technician's own
/// X25519 key. They travel inside envelopes like any part (`EnvelopeDraft.Part.forwarded`)
/// and are stored or delivered as their bytes; only the holder of the private key opens them.
extension SealedPart {
    /// Seals `payload` to explicit recipients (their key reference and public key).
    public static func seal(_ payload: [UInt8], label: String,
                            to recipients: [(reference: KeyReference, key: Curve25519.KeyAgreement.PublicKey)],
                            limits: EnvelopeLimits = EnvelopeLimits()) throws(EnvelopeError) -> SealedPart {
        guard !recipients.isEmpty, recipients.count <= limits.maxRecipients else { throw .tooLarge }
        var writer = WireWriter(capacity: payload.count + 128)
        try seal(payload, label: label, to: recipients, into: &writer)
        let bytes = writer.buffer
        return try SealedPart(parsing: bytes, range: 4..<bytes.count, limits: limits)  // after the length prefix
    }

    /// A part from its bytes (`bytes`, as stored or delivered).
    public init(serialized: some Collection<UInt8>, limits: EnvelopeLimits = EnvelopeLimits()) throws(EnvelopeError) {
        let buffer = Array(serialized)
        try self.init(parsing: buffer, range: 0..<buffer.count, limits: limits)
    }

    /// Opens the part as the recipient named `reference`, with its private key.
    public func open(as reference: KeyReference, with key: Curve25519.KeyAgreement.PrivateKey) throws(EnvelopeError) -> [UInt8] {
        guard let index = recipients.firstIndex(of: reference) else { throw .notARecipient }
        return try open(asRecipient: index, with: key)
    }

    /// The reference naming a key outside the directory: `<prefix>-<16 hex of SHA-256(public key)>`.
    public static func reference(prefix: String, for key: Curve25519.KeyAgreement.PublicKey) -> KeyReference {
        let digest = SHA256.hash(data: key.rawRepresentation).prefix(8).hexEncoded
        return KeyReference(keyID: "\(prefix)-\(digest)", version: 1)
    }
}

extension KeyDirectoryStore {
    /// A party's newest active encryption key: what new parts to it are sealed to.
    public func encryptionKey(of party: String) -> (reference: KeyReference, key: Curve25519.KeyAgreement.PublicKey)? {
        snapshot().newestEncryptionKey[party].map { ($0.reference, $0.key) }
    }

    /// An active signing key by reference, with its owner (for verifying signed statements
    /// such as an authentication assertion, outside an envelope).
    public func activeSigningKey(_ reference: KeyReference) -> (owner: String, key: Curve25519.Signing.PublicKey)? {
        guard let entry = snapshot().signingKeys[reference], entry.status == .active else { return nil }
        return (entry.owner, entry.key)
    }
}

extension ServiceIdentity {
    /// Signs `bytes` with the newest signing version this identity holds (for statements
    /// that travel on their own, such as an authentication assertion).
    public func signStatement(_ bytes: [UInt8]) throws -> (signature: [UInt8], signer: KeyReference) {
        guard let version = signingVersions.last, let key = signingKeys[version] else { throw EnvelopeError.unknownKey }
        return (Array(try key.signature(for: bytes)), KeyReference(keyID: signingKeyID, version: version))
    }

    /// A 256-bit key for this service's data at rest, derived from its encryption key
    /// `version` (HKDF with `purpose`): it rotates with the service key, and old
    /// versions keep opening old rows as long as their key files are kept.
    /// Derived once per purpose and version (a dispatcher derived one per request).
    public func atRestKey(_ purpose: String, version: UInt32? = nil) -> (version: UInt32, key: SymmetricKey)? {
        guard let version = version ?? encryptionVersions.last, let key = encryptionKeys[version] else { return nil }
        let derived = atRestKeys.key(purpose, version: version) {
            HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: key.rawRepresentation),
                                   info: Array("veil.at-rest.\(purpose)".utf8), outputByteCount: 32)
        }
        return (version, derived)
    }
}

/// An identity's derived at-rest keys, by purpose and version. Its keys never change (a
/// rotated identity is a new value with a cache of its own), so entries never go stale.
final class AtRestKeyCache: Sendable {
    private let keys = Mutex<[String: SymmetricKey]>([:])

    func key(_ purpose: String, version: UInt32, derive: () -> SymmetricKey) -> SymmetricKey {
        let name = "\(purpose)#\(version)"
        if let known = keys.withLock({ $0[name] }) { return known }
        let derived = derive()
        keys.withLock { $0[name] = derived }
        return derived
    }
}
