import Crypto
import Foundation

extension ServiceIdentity {
    /// Loads `<folder>/<name>/signing.v<N>.key` and `encryption.v<N>.key`
    /// (each holding the base64 of a raw 32-byte private key), every version present.
    public static func load(name: String, from folder: URL) throws(KeyError) -> ServiceIdentity {
        let partyFolder = folder.appendingPathComponent(name, isDirectory: true)
        let files: [String]
        do {
            files = try FileManager.default.contentsOfDirectory(atPath: partyFolder.path)
        } catch {
            throw KeyError.missing.at(partyFolder.path)
        }
        var signing: [UInt32: String] = [:]
        var encryption: [UInt32: String] = [:]
        for file in files {
            guard let (purpose, version) = KeyFileName.parse(file) else { continue }
            let path = partyFolder.appendingPathComponent(file).path
            guard let data = FileManager.default.contents(atPath: path),
                  let text = String(data: data, encoding: .utf8) else { throw KeyError.io.at(path) }
            switch purpose {
            case .signing: signing[version] = text
            case .encryption: encryption[version] = text
            }
        }
        return try make(name: name, signing: signing, encryption: encryption, origin: partyFolder.path)
    }

    /// Loads keys from mounted-secret variables `VEIL_SIGNING_KEY_V<N>` and
    /// `VEIL_ENCRYPTION_KEY_V<N>` (base64 of a raw 32-byte private key), every version present.
    public static func load(name: String,
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws(KeyError) -> ServiceIdentity {
        var signing: [UInt32: String] = [:]
        var encryption: [UInt32: String] = [:]
        for (variable, value) in environment {
            if let version = version(of: variable, prefix: "VEIL_SIGNING_KEY_V") { signing[version] = value }
            if let version = version(of: variable, prefix: "VEIL_ENCRYPTION_KEY_V") { encryption[version] = value }
        }
        return try make(name: name, signing: signing, encryption: encryption, origin: "VEIL_*_KEY_V<N>")
    }

    private static func version(of variable: String, prefix: String) -> UInt32? {
        guard variable.hasPrefix(prefix), let v = UInt32(variable.dropFirst(prefix.count)), v > 0 else { return nil }
        return v
    }

    private static func make(name: String, signing: [UInt32: String], encryption: [UInt32: String],
                             origin: String) throws(KeyError) -> ServiceIdentity {
        guard !signing.isEmpty, !encryption.isEmpty else { throw KeyError.missing.at(origin) }
        var signingKeys: [UInt32: Curve25519.Signing.PrivateKey] = [:]
        var encryptionKeys: [UInt32: Curve25519.KeyAgreement.PrivateKey] = [:]
        for (version, text) in signing {
            guard let raw = KeyFileName.decode(text),
                  let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
            else { throw KeyError.malformed.at("\(origin) signing v\(version)") }
            signingKeys[version] = key
        }
        for (version, text) in encryption {
            guard let raw = KeyFileName.decode(text),
                  let key = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: raw)
            else { throw KeyError.malformed.at("\(origin) encryption v\(version)") }
            encryptionKeys[version] = key
        }
        return ServiceIdentity(name: name, signingKeys: signingKeys, encryptionKeys: encryptionKeys)
    }

    /// The base64 text stored in a key file or variable for `purpose` / `version`.
    func exportedPrivateKey(_ purpose: KeyPurpose, version: UInt32) -> String? {
        switch purpose {
        case .signing: signingKeys[version]?.rawRepresentation.base64EncodedString()
        case .encryption: encryptionKeys[version]?.rawRepresentation.base64EncodedString()
        }
    }
}

/// Names and contents of key files: `signing.v3.key` holds base64 of 32 raw bytes.
enum KeyFileName {
    static func make(_ purpose: KeyPurpose, version: UInt32) -> String { "\(purpose.rawValue).v\(version).key" }

    static func parse(_ file: String) -> (KeyPurpose, UInt32)? {
        let pieces = file.split(separator: ".", omittingEmptySubsequences: false)
        guard pieces.count == 3, pieces[2] == "key", pieces[1].hasPrefix("v"),
              let purpose = KeyPurpose(rawValue: String(pieces[0])),
              let version = UInt32(pieces[1].dropFirst()), version > 0 else { return nil }
        return (purpose, version)
    }

    static func decode(_ text: String) -> [UInt8]? {
        guard let data = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)),
              data.count == 32 else { return nil }
        return Array(data)
    }
}
