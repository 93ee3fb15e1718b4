import Crypto
import Foundation

/// The private keys of one party (a service, a downstream provider, a device):
/// Ed25519 signing keys and X25519 encryption keys, each by version.
///
/// It signs with the newest version that the key directory lists as active,
/// and opens parts sealed to any encryption version it still holds; dropping
/// an old version makes data sealed to it unreadable (crypto-shredding).
/// Printing, reflecting or dumping an identity shows only its name and key
/// versions, never key material.
public struct ServiceIdentity: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The party's name, e.g. `ingress`; also the producer name in envelopes it signs.
    public let name: String
    let signingKeys: [UInt32: Curve25519.Signing.PrivateKey]
    let encryptionKeys: [UInt32: Curve25519.KeyAgreement.PrivateKey]
    /// At-rest keys derived so far (`atRestKey`).
    let atRestKeys = AtRestKeyCache()

    /// An identity from keys already in memory (versions ≥ 1).
    public init(name: String,
                signingKeys: [UInt32: Curve25519.Signing.PrivateKey],
                encryptionKeys: [UInt32: Curve25519.KeyAgreement.PrivateKey]) {
        self.name = name
        self.signingKeys = signingKeys
        self.encryptionKeys = encryptionKeys
    }

    /// A fresh identity with one signing and one encryption key of `version`.
    public static func generate(name: String, version: UInt32 = 1) -> ServiceIdentity {
        ServiceIdentity(name: name, signingKeys: [version: .init()], encryptionKeys: [version: .init()])
    }

    /// This identity plus a fresh signing and encryption key one version above the newest it holds.
    public func rotated() -> ServiceIdentity {
        var signing = signingKeys
        var encryption = encryptionKeys
        signing[(signingVersions.last ?? 0) + 1] = .init()
        encryption[(encryptionVersions.last ?? 0) + 1] = .init()
        return ServiceIdentity(name: name, signingKeys: signing, encryptionKeys: encryption)
    }

    /// This identity without the encryption key `version` (crypto-shredding).
    public func removingEncryptionKey(version: UInt32) -> ServiceIdentity {
        var encryption = encryptionKeys
        encryption[version] = nil
        return ServiceIdentity(name: name, signingKeys: signingKeys, encryptionKeys: encryption)
    }

    /// `<name>.signing`.
    public var signingKeyID: String { KeyPurpose.signing.keyID(of: name) }
    /// `<name>.encryption`.
    public var encryptionKeyID: String { KeyPurpose.encryption.keyID(of: name) }
    /// Signing key versions held, ascending.
    public var signingVersions: [UInt32] { signingKeys.keys.sorted() }
    /// Encryption key versions held, ascending.
    public var encryptionVersions: [UInt32] { encryptionKeys.keys.sorted() }

    /// The public halves of every key held, as directory entries with `status`.
    public func publishedKeys(status: KeyDirectory.KeyStatus = .active) -> [KeyDirectory.PublishedKey] {
        signingKeys.sorted { $0.key < $1.key }.map {
            .init(owner: name, purpose: .signing, version: $0.key, status: status,
                  publicKey: $0.value.publicKey.rawRepresentation.base64EncodedString())
        } + encryptionKeys.sorted { $0.key < $1.key }.map {
            .init(owner: name, purpose: .encryption, version: $0.key, status: status,
                  publicKey: $0.value.publicKey.rawRepresentation.base64EncodedString())
        }
    }

    public var description: String {
        "ServiceIdentity(\(name), signing: \(signingVersions.map { "v\($0)" }), encryption: \(encryptionVersions.map { "v\($0)" }))"
    }
    public var debugDescription: String { description }
    public var customMirror: Mirror {
        Mirror(self, children: ["name": name, "signingVersions": signingVersions, "encryptionVersions": encryptionVersions],
               displayStyle: .struct)
    }
}
