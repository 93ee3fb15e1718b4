import Crypto
import Foundation

/// The public key directory: every party's public keys with versions and
/// status, and which producers may publish which type on which topic.
///
/// Issued by the key-vault with an increasing `serial`, signed with the
/// directory key (`SignedKeyDirectory`) and followed at run time through
/// `KeyDirectoryStore`. Encoded as JSON with sorted keys, keys and allowlist
/// in a canonical order, so the same directory always has the same bytes.
public struct KeyDirectory: Sendable, Hashable, Codable {
    /// Whether a key version may be used.
    public enum KeyStatus: String, Sendable, Hashable, Codable {
        /// Used for new messages (newest active version) and accepted on receipt.
        case active
        /// No longer accepted: envelopes signed with it are refused with `envelope.retired_key`.
        case retired
    }

    /// One version of one party's public key.
    public struct PublishedKey: Sendable, Hashable, Codable {
        /// The party holding the private half, e.g. `ingress` or `provider-demo`.
        public var owner: String
        /// Signing (Ed25519) or encryption (X25519).
        public var purpose: KeyPurpose
        /// Version, from 1.
        public var version: UInt32
        /// Active or retired.
        public var status: KeyStatus
        /// Base64 of the raw 32-byte public key.
        public var publicKey: String

        public init(owner: String, purpose: KeyPurpose, version: UInt32, status: KeyStatus, publicKey: String) {
            self.owner = owner
            self.purpose = purpose
            self.version = version
            self.status = status
            self.publicKey = publicKey
        }

        /// The key id and version that envelopes use to name this key.
        public var reference: KeyReference { KeyReference(keyID: purpose.keyID(of: owner), version: version) }
    }

    /// Who may publish `type` on `topic`.
    public struct Permission: Sendable, Hashable, Codable {
        /// The Kafka topic, e.g. `veil.inquiries.received.v1`.
        public var topic: String
        /// The envelope type, e.g. `veil.inquiry.received.v1`.
        public var type: String
        /// The parties allowed to produce it.
        public var producers: [String]

        public init(topic: String, type: String, producers: [String]) {
            self.topic = topic
            self.type = type
            self.producers = producers.sorted()
        }
    }

    /// Increases with every issued directory; a store accepts only newer serials.
    public var serial: UInt64
    /// When the directory was issued (whole seconds).
    public var issuedAt: Date
    /// Every published key version.
    public var keys: [PublishedKey]
    /// The (topic, type) → producers allowlist.
    public var allowlist: [Permission]

    public init(serial: UInt64, issuedAt: Date = Date(), keys: [PublishedKey], allowlist: [Permission]) {
        self.serial = serial
        self.issuedAt = Date(timeIntervalSince1970: issuedAt.timeIntervalSince1970.rounded(.down))
        self.keys = keys
        self.allowlist = allowlist
    }

    /// The next directory: same content, `serial + 1`, issued now. Apply changes to it, then sign it.
    public func next(issuedAt: Date = Date()) -> KeyDirectory {
        KeyDirectory(serial: serial &+ 1, issuedAt: issuedAt, keys: keys, allowlist: allowlist)
    }

    /// Adds (or replaces) a key version as active.
    public mutating func publish(_ key: PublishedKey) {
        keys.removeAll { $0.reference == key.reference }
        keys.append(key)
    }

    /// Marks a key version retired; returns false if it is not in the directory.
    @discardableResult
    public mutating func retire(owner: String, purpose: KeyPurpose, version: UInt32) -> Bool {
        guard let index = keys.firstIndex(where: { $0.owner == owner && $0.purpose == purpose && $0.version == version })
        else { return false }
        keys[index].status = .retired
        return true
    }

    /// The newest version of `owner`'s key for `purpose`, active or not.
    public func newestVersion(of owner: String, purpose: KeyPurpose) -> UInt32? {
        keys.filter { $0.owner == owner && $0.purpose == purpose }.map(\.version).max()
    }

    /// The canonical JSON bytes (sorted keys, keys and allowlist in canonical order).
    public func canonicalJSON() -> [UInt8] {
        var copy = self
        copy.keys.sort { ($0.owner, $0.purpose.rawValue, $0.version) < ($1.owner, $1.purpose.rawValue, $1.version) }
        copy.allowlist.sort { ($0.topic, $0.type) < ($1.topic, $1.type) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        // Encoding plain strings, integers and ISO dates cannot fail.
        return (try? Array(encoder.encode(copy))) ?? []
    }

    /// Decodes a document produced by `canonicalJSON()`.
    public init(json: [UInt8]) throws(KeyError) {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        do {
            self = try decoder.decode(KeyDirectory.self, from: Data(json))
        } catch {
            throw .directoryMalformed
        }
    }
}

/// The directory indexed for lookups on the hot path, with public keys parsed once.
final class ResolvedDirectory: Sendable {
    struct SigningKey: Sendable {
        let owner: String
        let status: KeyDirectory.KeyStatus
        let key: Curve25519.Signing.PublicKey
    }
    struct EncryptionKey: Sendable {
        let reference: KeyReference
        let key: Curve25519.KeyAgreement.PublicKey
    }
    struct TopicType: Hashable, Sendable {
        let topic: String
        let type: String
    }

    let document: KeyDirectory
    let signingKeys: [KeyReference: SigningKey]
    /// Per party, its active signing versions.
    let activeSigningVersions: [String: Set<UInt32>]
    /// Per party, its newest active encryption key: what new parts are sealed to.
    let newestEncryptionKey: [String: EncryptionKey]
    let allowlist: [TopicType: Set<String>]

    init(_ document: KeyDirectory) throws(KeyError) {
        var signing: [KeyReference: SigningKey] = [:]
        var active: [String: Set<UInt32>] = [:]
        var encryption: [String: EncryptionKey] = [:]
        for entry in document.keys {
            guard entry.version > 0, (try? Token.validate(entry.owner, maxLength: 200)) != nil,
                  let data = Data(base64Encoded: entry.publicKey), data.count == 32
            else { throw .directoryMalformed }
            switch entry.purpose {
            case .signing:
                guard signing[entry.reference] == nil,
                      let key = try? Curve25519.Signing.PublicKey(rawRepresentation: data) else { throw .directoryMalformed }
                signing[entry.reference] = SigningKey(owner: entry.owner, status: entry.status, key: key)
                if entry.status == .active { active[entry.owner, default: []].insert(entry.version) }
            case .encryption:
                guard let key = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: data) else { throw .directoryMalformed }
                if entry.status == .active, (encryption[entry.owner]?.reference.version ?? 0) < entry.version {
                    encryption[entry.owner] = EncryptionKey(reference: entry.reference, key: key)
                }
            }
        }
        var allowlist: [TopicType: Set<String>] = [:]
        for permission in document.allowlist {
            allowlist[TopicType(topic: permission.topic, type: permission.type), default: []].formUnion(permission.producers)
        }
        self.document = document
        self.signingKeys = signing
        self.activeSigningVersions = active
        self.newestEncryptionKey = encryption
        self.allowlist = allowlist
    }

    func allows(_ producer: String, toPublish type: String, on topic: String) -> Bool {
        allowlist[TopicType(topic: topic, type: type)]?.contains(producer) ?? false
    }
}
