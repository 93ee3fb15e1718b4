import Crypto
import Foundation
import Testing
@testable import VeilEnvelope

@Suite("Service identities")
struct ServiceIdentityTests {
    @Test("loads every key version from files in <folder>/<party>/")
    func loadFromFiles() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("veil-identity-\(UUID())")
        defer { try? FileManager.default.removeItem(at: root) }
        let party = root.appendingPathComponent("matcher")
        try FileManager.default.createDirectory(at: party, withIntermediateDirectories: true)
        let identity = ServiceIdentity.generate(name: "matcher").rotated()
        for version: UInt32 in [1, 2] {
            for purpose in KeyPurpose.allCases {
                let text = try #require(identity.exportedPrivateKey(purpose, version: version))
                try Data((text + "\n").utf8).write(to: party.appendingPathComponent("\(purpose.rawValue).v\(version).key"))
            }
        }
        try Data("ignored".utf8).write(to: party.appendingPathComponent("README"))
        let loaded = try ServiceIdentity.load(name: "matcher", from: root)
        #expect(loaded.signingVersions == [1, 2])
        #expect(loaded.encryptionVersions == [1, 2])
        #expect(loaded.publishedKeys() == identity.publishedKeys())
        #expect(throws: KeyError.missing) { try ServiceIdentity.load(name: "merger", from: root) }
        try Data("not a key".utf8).write(to: party.appendingPathComponent("signing.v3.key"))
        #expect(throws: KeyError.malformed) { try ServiceIdentity.load(name: "matcher", from: root) }
    }

    @Test("loads keys from VEIL_SIGNING_KEY_V<N> / VEIL_ENCRYPTION_KEY_V<N> variables")
    func loadFromEnvironment() throws {
        let identity = ServiceIdentity.generate(name: "merger", version: 4)
        let environment = [
            "VEIL_SIGNING_KEY_V4": try #require(identity.exportedPrivateKey(.signing, version: 4)),
            "VEIL_ENCRYPTION_KEY_V4": try #require(identity.exportedPrivateKey(.encryption, version: 4)),
            "PATH": "/usr/bin",
        ]
        let loaded = try ServiceIdentity.load(name: "merger", environment: environment)
        #expect(loaded.publishedKeys() == identity.publishedKeys())
        #expect(throws: KeyError.missing) { try ServiceIdentity.load(name: "merger", environment: ["PATH": "/usr/bin"]) }
        #expect(throws: KeyError.malformed) {
            try ServiceIdentity.load(name: "merger", environment: environment.merging(["VEIL_SIGNING_KEY_V5": "AAAA"]) { $1 })
        }
    }

    @Test("printing, reflecting or dumping an identity never shows private key bytes")
    func redaction() throws {
        let identity = ServiceIdentity.generate(name: "key-vault").rotated()
        var secrets: [String] = []
        for version in identity.signingVersions {
            secrets.append(try #require(identity.exportedPrivateKey(.signing, version: version)))
            secrets.append(try #require(identity.exportedPrivateKey(.encryption, version: version)))
        }
        let raw = Data(base64Encoded: secrets[0])!
        let hex = raw.map { String(format: "%02x", $0) }.joined()
        var dumped = ""
        dump(identity, to: &dumped)
        for text in [String(describing: identity), String(reflecting: identity), dumped, "\(identity)"] {
            #expect(text.contains("key-vault"))
            for secret in secrets { #expect(!text.contains(secret)) }
            #expect(!text.contains(hex))
            #expect(!text.contains(String(describing: Array(raw))))
        }
    }
}
