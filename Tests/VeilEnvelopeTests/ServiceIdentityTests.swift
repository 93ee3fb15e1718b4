import Crypto
import Foundation
import Testing
import VeilCore
@testable import VeilEnvelope

@Suite("Service identities")
struct ServiceIdentityTests {
    @Test("an at-rest key is HKDF of the encryption key and the purpose, the same every time, per version; the newest by default")
    func atRestKeys() throws {
        let identity = ServiceIdentity.generate(name: "dispatcher").rotated()
        func expected(_ purpose: String, _ version: UInt32) throws -> SymmetricKey {
            let raw = try #require(identity.exportedPrivateKey(.encryption, version: version))
            let key = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: try #require(Data(base64Encoded: raw)))
            return HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: key.rawRepresentation),
                                          info: Array("veil.at-rest.\(purpose)".utf8), outputByteCount: 32)
        }
        let requests2 = try expected("service-requests", 2), requests1 = try expected("service-requests", 1)
        let chats1 = try expected("chat-messages", 1)
        for _ in 0..<2 {  // derived once, then from the cache: the same either way
            let newest = try #require(identity.atRestKey("service-requests"))
            #expect(newest.version == 2)
            #expect(newest.key == requests2)
            #expect(identity.atRestKey("service-requests", version: 1)?.key == requests1)
            #expect(identity.atRestKey("chat-messages", version: 1)?.key == chats1)
        }
        #expect(identity.atRestKey("chat-messages", version: 1)?.key != identity.atRestKey("service-requests", version: 1)?.key)
        #expect(identity.atRestKey("service-requests", version: 3) == nil)
        // Shredding a version takes its at-rest keys with it, though the original identity derived them before.
        #expect(identity.removingEncryptionKey(version: 1).atRestKey("service-requests", version: 1) == nil)
    }

    @Test("hexadecimal is two lowercase digits per byte")
    func hex() {
        #expect([UInt8]([0x00, 0x0f, 0xa0, 0xff, 0x42]).hexEncoded == "000fa0ff42")
        #expect([UInt8]().hexEncoded == "")
        #expect(SHA256.hash(data: Array("abc".utf8)).hexEncoded
                == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

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
