import Crypto
import Foundation
import Testing
@testable import VeilEnvelope

@Suite("Key directory")
struct KeyDirectoryTests {
    let topic = VeilWorld.received.topic

    @Test("a directory with a bad signature is refused")
    func badSignature() throws {
        let world = VeilWorld()
        let signed = try SignedKeyDirectory.sign(world.directory.next(), with: world.directoryKey)
        let tamperedDocument = signed.document.replacingOccurrences(of: "\"serial\" : 2", with: "\"serial\" : 3")
        #expect(tamperedDocument != signed.document)
        let tampered = SignedKeyDirectory(document: tamperedDocument, keyVersion: 1, signature: signed.signature)
        #expect(throws: KeyError.directoryBadSignature) { try world.store.accept(tampered) }
        let garbled = SignedKeyDirectory(document: signed.document, keyVersion: 1, signature: "not base64!")
        #expect(throws: KeyError.directoryBadSignature) { try world.store.accept(garbled) }
        #expect(world.store.serial == 1)
    }

    @Test("a directory signed by the wrong key is refused")
    func wrongKey() throws {
        let world = VeilWorld()
        let impostor = Curve25519.Signing.PrivateKey()
        #expect(throws: KeyError.directoryBadSignature) {
            try world.store.accept(.sign(world.directory.next(), with: impostor, keyVersion: 1))
        }
        #expect(throws: KeyError.directoryUntrustedKey) {
            try world.store.accept(.sign(world.directory.next(), with: impostor, keyVersion: 2))
        }
        #expect(throws: KeyError.directoryBadSignature) {
            _ = try KeyDirectoryStore(trusting: [1: world.directoryKey.publicKey],
                                      initial: .sign(world.directory, with: impostor))
        }
    }

    @Test("an older serial is not accepted over a newer one; the same directory again is a no-op")
    func serials() throws {
        let world = VeilWorld()
        let second = try SignedKeyDirectory.sign(world.directory.next(), with: world.directoryKey)
        let third = try SignedKeyDirectory.sign(world.directory.next().next(), with: world.directoryKey)
        #expect(try world.store.accept(third))
        #expect(world.store.serial == 3)
        #expect(throws: KeyError.directoryStale) { try world.store.accept(second) }
        #expect(try world.store.accept(third) == false)
        var conflicting = world.directory.next().next()
        conflicting.allowlist = []
        #expect(throws: KeyError.directoryStale) { try world.store.accept(.sign(conflicting, with: world.directoryKey)) }
        #expect(world.store.serial == 3)
        #expect(Set(world.store.directory.allowlist) == Set(world.directory.allowlist))
    }

    @Test("the signed form survives serialization and encodes deterministically")
    func serialization() throws {
        let world = VeilWorld()
        let signed = try SignedKeyDirectory.sign(world.directory, with: world.directoryKey)
        let parsed = try SignedKeyDirectory(serialized: signed.serialized())
        #expect(parsed == signed)
        #expect(try parsed.verified(trusting: [1: world.directoryKey.publicKey]).canonicalJSON() == world.directory.canonicalJSON())
        var shuffled = world.directory
        shuffled.keys.reverse()
        shuffled.allowlist.reverse()
        #expect(shuffled.canonicalJSON() == world.directory.canonicalJSON())
        #expect(throws: KeyError.directoryMalformed) { try SignedKeyDirectory(serialized: Array("{".utf8)) }
    }

    @Test("a directory with a malformed public key is refused")
    func malformedKey() throws {
        let world = VeilWorld()
        var broken = world.directory.next()
        broken.keys[0].publicKey = "AAAA"
        #expect(throws: KeyError.directoryMalformed) { try world.store.accept(.sign(broken, with: world.directoryKey)) }
    }

    @Test("rotation: the new version signs at once, old messages verify until their version is retired")
    func rotation() throws {
        var world = VeilWorld()
        let verifier = world.verifier("anonymizer")
        let beforeRotation = try world.inquiry()
        let beforeRotationCopy = try world.inquiry()

        // Ingress gets version 2 keys; until the directory publishes them it keeps signing with v1.
        world.identities["ingress"] = world["ingress"].rotated()
        #expect(try header(world.inquiry()).signer.version == 1)
        let ingressV2 = world["ingress"].publishedKeys().filter { $0.version == 2 }
        try world.issue { directory in ingressV2.forEach { directory.publish($0) } }
        let afterRotation = try world.inquiry()
        #expect(try header(afterRotation).signer == KeyReference(keyID: "ingress.signing", version: 2))
        #expect(throws: Never.self) { try verifier.verify(beforeRotation.bytes, topic: topic) }
        #expect(throws: Never.self) { try verifier.verify(afterRotation.bytes, topic: topic) }

        // Retiring v1: messages signed under it are now refused; v2 goes on.
        try world.issue { $0.retire(owner: "ingress", purpose: .signing, version: 1) }
        #expect(throws: EnvelopeError.retiredKey) { try verifier.verify(beforeRotationCopy.bytes, topic: topic) }
        #expect(throws: Never.self) { try verifier.verify(world.inquiry().bytes, topic: topic) }
    }

    @Test("sealing uses the recipient's newest active encryption key; the recipient opens old and new")
    func recipientRotation() throws {
        var world = VeilWorld()
        let old = try world.inquiry()
        world.identities["anonymizer"] = world["anonymizer"].rotated()
        let anonymizerV2 = world["anonymizer"].publishedKeys().filter { $0.version == 2 }
        try world.issue { directory in anonymizerV2.forEach { directory.publish($0) } }
        let new = try world.inquiry()
        let part = try #require(try Envelope(parsing: new.bytes).part("pseudonym"))
        #expect(part.recipients == [KeyReference(keyID: "anonymizer.encryption", version: 2)])
        let verifier = world.verifier("anonymizer")
        #expect(try verifier.verify(old.bytes, topic: topic).payload("pseudonym") == Array("P-123".utf8))
        #expect(try verifier.verify(new.bytes, topic: topic).payload("pseudonym") == Array("P-123".utf8))
        // Retiring encryption v2 makes senders fall back to the newest active one (v1).
        try world.issue { $0.retire(owner: "anonymizer", purpose: .encryption, version: 2) }
        let fallback = try #require(try Envelope(parsing: world.inquiry().bytes).part("pseudonym"))
        #expect(fallback.recipients.map(\.version) == [1])
    }

    @Test("the default allowlist names a producer for every Veil topic it lists")
    func defaultAllowlist() {
        let allowlist = KeyDirectory.veilAllowlist
        #expect(Set(allowlist.map(\.topic)).count == allowlist.count)
        for permission in allowlist {
            #expect(permission.topic.hasPrefix("veil.") && permission.topic.hasSuffix(".v1"))
            #expect(permission.type.hasPrefix("veil.") && permission.type.hasSuffix(".v1"))
            #expect(!permission.producers.isEmpty)
        }
        #expect(allowlist.contains { $0.topic == "veil.inquiries.received.v1" && $0.producers == ["ingress"] })
    }

    private func header(_ sealed: SealedEnvelope) throws -> EnvelopeHeader { try Envelope(parsing: sealed.bytes).header }
}
