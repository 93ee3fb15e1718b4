/// Names one version of one key, as written in envelopes and the key directory.
///
/// Key ids are `<party>.signing` for Ed25519 signing keys and
/// `<party>.encryption` for X25519 encryption keys (`ingress.signing`,
/// `provider-demo.encryption`); versions start at 1.
public struct KeyReference: Hashable, Sendable, Codable, CustomStringConvertible {
    /// The key id, e.g. `ingress.signing`.
    public var keyID: String
    /// The key version.
    public var version: UInt32

    public init(keyID: String, version: UInt32) {
        self.keyID = keyID
        self.version = version
    }

    /// `ingress.signing@v2`: ids and versions are public, so this is safe to log.
    public var description: String { "\(keyID)@v\(version)" }
}

/// What a key is used for; part of its key id.
public enum KeyPurpose: String, Sendable, Hashable, Codable, CaseIterable {
    /// Ed25519: signs envelopes.
    case signing
    /// X25519: opens HPKE-sealed parts.
    case encryption

    /// The key id of `party`'s key for this purpose.
    public func keyID(of party: String) -> String { "\(party).\(rawValue)" }
}
