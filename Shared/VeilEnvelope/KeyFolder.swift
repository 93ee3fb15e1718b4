import Crypto
import Foundation
import VeilCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A folder of key files: every party's private keys, the directory key and
/// the signed key directory, as `veilctl keys init` writes it.
///
/// ```
/// <root>/                          0700
///   key-directory.json             signed directory (SignedKeyDirectory JSON)
///   directory/signing.v<N>.key     directory private key (key-vault custody)
///   directory/signing.v<N>.pub     directory public key (trust anchor for everyone)
///   <party>/signing.v<N>.key       base64 of the raw 32-byte Ed25519 private key
///   <party>/encryption.v<N>.key    base64 of the raw 32-byte X25519 private key
/// ```
/// Every folder is created 0700 and every file 0600. In production each
/// service receives only its own folder (or the equivalent `VEIL_*_KEY_V<N>`
/// variables), the trust anchor and the signed directory.
public struct KeyFolder: Sendable {
    /// The root folder.
    public let url: URL

    /// Opens an existing key folder.
    public init(url: URL) { self.url = url }

    /// The party name under which the directory key is stored.
    public static let directoryParty = "directory"
    /// The signed directory's file name.
    public static let directoryFile = "key-directory.json"
    /// Parties of a development key set: the seven services, the upstream exporter, and a demo downstream provider.
    public static let developmentParties = KeyDirectory.veilServices + ["upstream-exporter", "provider-demo"]

    /// Generates keys (version 1) for every party and a directory key, and
    /// writes them with the signed directory (serial 1, `allowlist`).
    /// Refuses to overwrite an existing key folder unless `overwrite` is true.
    @discardableResult
    public static func createDevelopmentKeys(at url: URL, parties: [String] = developmentParties,
                                             allowlist: [KeyDirectory.Permission] = KeyDirectory.veilAllowlist,
                                             overwrite: Bool = false, now: Date = Date()) throws(KeyError) -> KeyFolder {
        let folder = KeyFolder(url: url)
        let directoryFile = url.appendingPathComponent(directoryFile).path
        if !overwrite, FileManager.default.fileExists(atPath: directoryFile) { throw KeyError.io.at("\(directoryFile) exists") }
        try folder.makeFolder(url)
        let directoryKey = Curve25519.Signing.PrivateKey()
        try folder.writeSecret(directoryKey.rawRepresentation.base64EncodedString(),
                               party: directoryParty, file: KeyFileName.make(.signing, version: 1))
        try folder.writeSecret(directoryKey.publicKey.rawRepresentation.base64EncodedString(),
                               party: directoryParty, file: "signing.v1.pub")
        var keys: [KeyDirectory.PublishedKey] = []
        for party in parties {
            let identity = ServiceIdentity.generate(name: party)
            try folder.writeKeys(of: identity)
            keys += identity.publishedKeys()
        }
        let directory = KeyDirectory(serial: 1, issuedAt: now, keys: keys, allowlist: allowlist)
        try folder.writeDirectory(.sign(directory, with: directoryKey, keyVersion: 1))
        for (party, name) in developmentSecrets {
            try folder.writeSecret(Data(VersionedKey.generate(version: 1).rawBytes).base64EncodedString(),
                                   party: party, file: "\(name).v1.secret")
        }
        return folder
    }

    /// Symmetric secrets of a development key set: the first provider's pseudonym keys
    /// (`kP.id`, `kP.dev`, held by ingress and the upstream exporter) and the key-vault's
    /// master key (which encrypts the vault's keys at rest).
    public static let developmentSecrets: [(party: String, name: String)] = [
        (providerParty, pseudonymIDKey), (providerParty, pseudonymDeviceKey), ("key-vault", "master"),
    ]
    /// The first provider's folder of pseudonym keys.
    public static let providerParty = "provider"
    /// `kP.id`: `P = HMAC(kP.id, userId)`.
    public static let pseudonymIDKey = "pseudonym-id"
    /// `kP.dev`: `anonymizedDeviceId = HMAC(kP.dev, deviceId)`.
    public static let pseudonymDeviceKey = "pseudonym-device"

    /// Every version of a symmetric secret, `<party>/<name>.v<N>.secret` (base64 of 32 bytes).
    public func secret(party: String, name: String) throws(KeyError) -> KeyRing {
        let folder = url.appendingPathComponent(party, isDirectory: true)
        let prefix = name + ".v", suffix = ".secret"
        var keys: [VersionedKey] = []
        for file in (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        where file.hasPrefix(prefix) && file.hasSuffix(suffix) {
            let path = folder.appendingPathComponent(file).path
            guard let version = UInt32(file.dropFirst(prefix.count).dropLast(suffix.count)), version > 0,
                  let data = FileManager.default.contents(atPath: path),
                  let raw = KeyFileName.decode(String(decoding: data, as: UTF8.self)),
                  let key = VersionedKey(version: version, raw: raw) else { throw KeyError.malformed.at(path) }
            keys.append(key)
        }
        guard !keys.isEmpty else { throw KeyError.missing.at(folder.appendingPathComponent(prefix + "N" + suffix).path) }
        return KeyRing(keys)
    }

    /// Loads a party's identity from its folder.
    public func identity(_ party: String) throws(KeyError) -> ServiceIdentity {
        try ServiceIdentity.load(name: party, from: url)
    }

    /// The signed directory as stored (not yet verified).
    public func signedDirectory() throws(KeyError) -> SignedKeyDirectory {
        let path = url.appendingPathComponent(Self.directoryFile).path
        guard let data = FileManager.default.contents(atPath: path) else { throw KeyError.missing.at(path) }
        return try SignedKeyDirectory(serialized: Array(data))
    }

    /// The trusted directory public keys by version (`directory/signing.v<N>.pub`).
    public func directoryTrust() throws(KeyError) -> [UInt32: Curve25519.Signing.PublicKey] {
        let folder = url.appendingPathComponent(Self.directoryParty)
        var trust: [UInt32: Curve25519.Signing.PublicKey] = [:]
        for file in (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? [] {
            guard file.hasSuffix(".pub"), let (_, version) = KeyFileName.parse(file.dropLast(4) + ".key") else { continue }
            let path = folder.appendingPathComponent(file).path
            guard let data = FileManager.default.contents(atPath: path),
                  let raw = KeyFileName.decode(String(decoding: data, as: UTF8.self)),
                  let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else { throw KeyError.malformed.at(path) }
            trust[version] = key
        }
        guard !trust.isEmpty else { throw KeyError.missing.at(folder.path) }
        return trust
    }

    /// A store holding the stored directory, verified against the stored trust anchors.
    public func directoryStore() throws(KeyError) -> KeyDirectoryStore {
        try KeyDirectoryStore(trusting: directoryTrust(), initial: signedDirectory())
    }

    /// Adds a new signing and encryption key version for `party`, publishes
    /// both as active in a new directory (serial + 1) and returns the new version.
    /// The old versions stay active until `retire` is called.
    @discardableResult
    public func rotate(_ party: String, now: Date = Date()) throws(KeyError) -> UInt32 {
        var directory = try verifiedDirectory()
        let identity = try self.identity(party)
        let version = max(identity.signingVersions.last ?? 0, identity.encryptionVersions.last ?? 0,
                          directory.newestVersion(of: party, purpose: .signing) ?? 0,
                          directory.newestVersion(of: party, purpose: .encryption) ?? 0) + 1
        let fresh = ServiceIdentity.generate(name: party, version: version)
        try writeKeys(of: fresh)
        directory = directory.next(issuedAt: now)
        for key in fresh.publishedKeys() { directory.publish(key) }
        try resign(directory)
        return version
    }

    /// Marks a key version of `party` retired in a new directory (serial + 1).
    public func retire(_ party: String, purpose: KeyPurpose, version: UInt32, now: Date = Date()) throws(KeyError) {
        var directory = try verifiedDirectory().next(issuedAt: now)
        guard directory.retire(owner: party, purpose: purpose, version: version) else {
            throw KeyError.unknownParty.at("\(purpose.keyID(of: party))@v\(version)")
        }
        try resign(directory)
    }

    /// Re-signs the stored directory unchanged but for a new serial and issue time.
    public func resign(now: Date = Date()) throws(KeyError) {
        try resign(verifiedDirectory().next(issuedAt: now))
    }

    private func verifiedDirectory() throws(KeyError) -> KeyDirectory {
        try signedDirectory().verified(trusting: directoryTrust())
    }

    private func resign(_ directory: KeyDirectory) throws(KeyError) {
        let folder = url.appendingPathComponent(Self.directoryParty)
        let trust = try directoryTrust()
        guard let version = trust.keys.max() else { throw KeyError.missing.at(folder.path) }
        let path = folder.appendingPathComponent(KeyFileName.make(.signing, version: version)).path
        guard let data = FileManager.default.contents(atPath: path),
              let raw = KeyFileName.decode(String(decoding: data, as: UTF8.self)),
              let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw) else { throw KeyError.missing.at(path) }
        try writeDirectory(.sign(directory, with: key, keyVersion: version))
    }

    private func writeKeys(of identity: ServiceIdentity) throws(KeyError) {
        for purpose in KeyPurpose.allCases {
            let versions = purpose == .signing ? identity.signingVersions : identity.encryptionVersions
            for version in versions {
                guard let text = identity.exportedPrivateKey(purpose, version: version) else { continue }
                try writeSecret(text, party: identity.name, file: KeyFileName.make(purpose, version: version))
            }
        }
    }

    private func writeDirectory(_ signed: SignedKeyDirectory) throws(KeyError) {
        try writeFile(url.appendingPathComponent(Self.directoryFile), signed.serialized())
    }

    private func writeSecret(_ text: String, party: String, file: String) throws(KeyError) {
        let folder = url.appendingPathComponent(party, isDirectory: true)
        try makeFolder(folder)
        try writeFile(folder.appendingPathComponent(file), Array((text + "\n").utf8))
    }

    /// `mkdir -m 0700`, tightening an existing folder to 0700 too.
    private func makeFolder(_ folder: URL) throws(KeyError) {
        if mkdir(folder.path, 0o700) != 0, errno != EEXIST {
            do {
                try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            } catch {
                throw KeyError.io.at(folder.path)
            }
        }
        guard chmod(folder.path, 0o700) == 0 else { throw KeyError.io.at(folder.path) }
    }

    /// Writes a file created with mode 0600 (never readable by others, not even briefly).
    private func writeFile(_ file: URL, _ bytes: [UInt8]) throws(KeyError) {
        let path = file.path
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw KeyError.io.at(path) }
        defer { close(fd) }
        guard fchmod(fd, 0o600) == 0 else { throw KeyError.io.at(path) }
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw KeyError.io.at(path) }
            written += n
        }
    }
}
