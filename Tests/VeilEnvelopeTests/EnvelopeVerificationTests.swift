import Crypto
import Foundation
import Testing
import VeilCore
@testable import VeilEnvelope

@Suite("Verification on receipt")
struct EnvelopeVerificationTests {
    let topic = VeilWorld.received.topic

    @Test("a party no part is addressed to is told it is not a recipient")
    func wrongRecipient() throws {
        let world = VeilWorld()
        let sealed = try world.inquiry()
        #expect(throws: EnvelopeError.notARecipient) { try world.verifier("key-vault").verify(sealed.bytes, topic: topic) }
    }

    @Test("a signer key id or version missing from the directory is unknown")
    func unknownKey() throws {
        let world = VeilWorld()
        // A stranger with its own keys, not in the directory, claiming to be ingress.
        let stranger = ServiceIdentity.generate(name: "ingress", version: 9)
        let unknownDirectory = VeilWorld()
        let sealedByStranger = try EnvelopeSealer(identity: stranger, directory: world.store).sealedOrNil(world)
        #expect(sealedByStranger == nil)  // the sealer itself refuses: v9 is not active in the directory
        let forged = try unknownDirectory.inquiry()  // ingress of another world: same key id, different key, version 1
        #expect(throws: EnvelopeError.badSignature) { try world.verifier("anonymizer").verify(forged.bytes, topic: topic) }

        var world2 = VeilWorld()
        let rotatedIngress = world2["ingress"].rotated()
        world2.identities["ingress"] = rotatedIngress
        try world2.issue { $0.keys += rotatedIngress.publishedKeys().filter { $0.version == 2 } }
        let v2 = try world2.inquiry()
        #expect(Envelope.signerVersion(v2.bytes) == 2)
        #expect(throws: EnvelopeError.unknownKey) { try world.verifier("anonymizer").verify(v2.bytes, topic: topic) }
    }

    @Test("a retired signing version is refused as retired")
    func retiredKey() throws {
        var world = VeilWorld()
        let sealed = try world.inquiry()
        try world.issue { $0.retire(owner: "ingress", purpose: .signing, version: 1) }
        #expect(throws: EnvelopeError.retiredKey) { try world.verifier("anonymizer").verify(sealed.bytes, topic: topic) }
        #expect(throws: EnvelopeError.unknownKey) { try world.inquiry() }  // no active signing key left to sign with
    }

    @Test("a producer is allowed only the (topic, type) pairs the directory lists for it")
    func producerNotAllowed() throws {
        let world = VeilWorld()
        let verifier = world.verifier("anonymizer")
        // Right producer, wrong topic.
        let sealed = try world.inquiry()
        #expect(throws: EnvelopeError.producerNotAllowed) { try verifier.verify(sealed.bytes, topic: "veil.insights.v1") }
        // Wrong type on the right topic.
        let wrongType = try world.sealer("ingress").seal(EnvelopeDraft(
            type: "veil.inquiry.anonymized.v1", parts: [.sealed("p", payload: [1], to: ["anonymizer"])]))
        #expect(throws: EnvelopeError.producerNotAllowed) { try verifier.verify(wrongType.bytes, topic: topic) }
        // A party that may not produce on this topic at all.
        let fromMerger = try world.sealer("merger").seal(EnvelopeDraft(
            type: VeilWorld.received.type, parts: [.sealed("p", payload: [1], to: ["anonymizer"])]))
        #expect(throws: EnvelopeError.producerNotAllowed) { try verifier.verify(fromMerger.bytes, topic: topic) }
        // The envelope names ingress as producer but is signed with the merger's key.
        var impersonation = fromMerger.bytes
        let producerOffset = Envelope.fixedHeaderBytes + 1 + VeilWorld.received.type.utf8.count
        impersonation.replaceSubrange(producerOffset..<(producerOffset + 1 + 6), with: [7] + Array("ingress".utf8))
        #expect(throws: EnvelopeError.producerNotAllowed) { try verifier.verify(impersonation, topic: topic) }
    }

    @Test("created-at beyond the allowed skew, in the past or the future, is stale")
    func stale() throws {
        let world = VeilWorld()
        let verifier = world.verifier("anonymizer", skew: .seconds(60))
        let now = Date()
        let old = try world.inquiry(at: now.addingTimeInterval(-61))
        let future = try world.inquiry(at: now.addingTimeInterval(61))
        let edge = try world.inquiry(at: now.addingTimeInterval(-59))
        #expect(throws: EnvelopeError.stale) { try verifier.verify(old.bytes, topic: topic, now: now) }
        #expect(throws: EnvelopeError.stale) { try verifier.verify(future.bytes, topic: topic, now: now) }
        #expect(throws: Never.self) { try verifier.verify(edge.bytes, topic: topic, now: now) }
    }

    @Test("a message id seen within the window is a replay, even in a different envelope")
    func replayed() throws {
        let world = VeilWorld()
        let verifier = world.verifier("anonymizer")
        let id = MessageID.generate()
        let first = try world.inquiry(id: id)
        let again = try world.inquiry(id: id, pseudonym: Array("other".utf8))
        _ = try verifier.verify(first.bytes, topic: topic)
        #expect(throws: EnvelopeError.replayed) { try verifier.verify(first.bytes, topic: topic) }
        #expect(throws: EnvelopeError.replayed) { try verifier.verify(again.bytes, topic: topic) }
    }

    @Test("an id is recorded only after its signature verified: a forgery cannot block the genuine message")
    func replayRecordedAfterSignature() throws {
        let world = VeilWorld()
        let verifier = world.verifier("anonymizer")
        let genuine = try world.inquiry()
        var forged = genuine.bytes
        forged[forged.count - 1] ^= 1
        #expect(throws: EnvelopeError.badSignature) { try verifier.verify(forged, topic: topic) }
        #expect(throws: Never.self) { try verifier.verify(genuine.bytes, topic: topic) }
    }

    @Test("the checks run in the documented order")
    func order() throws {
        let world = VeilWorld()
        let verifier = EnvelopeVerifier(identity: world["key-vault"], directory: world.store,
                                        configuration: EnvelopeConfiguration(limits: EnvelopeLimits(maxEnvelopeBytes: 600),
                                                                             maxClockSkew: .seconds(1)))
        let old = Date().addingTimeInterval(-3600)
        // Stale and not addressed to the key-vault: staleness comes first.
        let staleInquiry = try world.inquiry(at: old)
        #expect(throws: EnvelopeError.stale) { try verifier.verify(staleInquiry.bytes, topic: topic) }
        // Bad signature and stale: the signature comes first.
        var tampered = staleInquiry.bytes
        tampered[tampered.count - 1] ^= 1
        #expect(throws: EnvelopeError.badSignature) { try verifier.verify(tampered, topic: topic) }
        // Wrong topic and bad signature: the allowlist comes first.
        #expect(throws: EnvelopeError.producerNotAllowed) { try verifier.verify(tampered, topic: "veil.insights.v1") }
        // Too large and an unknown version: size comes first.
        var big = try world.inquiry(accessInfo: [UInt8](repeating: 0, count: 600)).bytes
        big[4] = 2
        #expect(throws: EnvelopeError.tooLarge) { try verifier.verify(big, topic: topic) }
        #expect(throws: EnvelopeError.unsupportedVersion) { try verifier.verify(Array(big.prefix(100)), topic: topic) }
    }

    @Test("a part addressed to a key version no longer held cannot be opened (crypto-shredding)")
    func shreddedKey() throws {
        let world = VeilWorld()
        let sealed = try world.inquiry()
        let shredded = EnvelopeVerifier(identity: world["anonymizer"].removingEncryptionKey(version: 1), directory: world.store)
        #expect(throws: EnvelopeError.openFailed) { try shredded.verify(sealed.bytes, topic: topic) }
    }

    @Test("a part with another part's HPKE key material fails to open", arguments: [["anonymizer"], ["anonymizer", "merger"]])
    func openFailed(recipients: [String]) throws {
        let world = VeilWorld()
        // Two parts with identical headers (so identical AAD); splice A's
        // encapsulated (and wrapped) key into B, re-sign, and deliver.
        func seal(_ text: String) throws -> SealedPart {
            let sealed = try world.sealer("ingress").seal(EnvelopeDraft(
                type: VeilWorld.received.type, parts: [.sealed("secret", payload: Array(text.utf8), to: recipients)]))
            return try #require(try Envelope(parsing: sealed.bytes).part("secret"))
        }
        let partA = try seal("first")
        let partB = try seal("other")
        let keysA = partA.wrappedKeyRanges(of: 0)
        let keysB = partB.wrappedKeyRanges(of: 0)
        var spliced = Array(partB.bytes)
        let offset = keysB.encapsulated.lowerBound - partB.bytes.startIndex
        let keyMaterial = partA.bytes[keysA.encapsulated.lowerBound..<keysA.wrapped.upperBound]
        spliced.replaceSubrange(offset..<(offset + keyMaterial.count), with: keyMaterial)
        let frankenPart = try SealedPart(parsing: spliced, range: 0..<spliced.count, limits: EnvelopeLimits())
        let resealed = try world.sealer("ingress").seal(EnvelopeDraft(type: VeilWorld.received.type,
                                                                      parts: [.forwarded(frankenPart)]))
        #expect(throws: EnvelopeError.openFailed) { try world.verifier("anonymizer").verify(resealed.bytes, topic: topic) }
    }

    @Test("errors describe themselves by code only, never by payload or key")
    func errorDescriptions() throws {
        for error in EnvelopeError.all {
            #expect(error.description.hasPrefix("EnvelopeError(\(error.code))"))
            #expect(error.code.hasPrefix("envelope."))
        }
        #expect(Set(EnvelopeError.all.map(\.code)).count == EnvelopeError.all.count)
        let world = VeilWorld()
        let secret = "SECRET-PSEUDONYM"
        let verified = try world.verifier("anonymizer").verify(try world.inquiry(pseudonym: Array(secret.utf8)).bytes, topic: topic)
        #expect(!String(describing: verified).contains(secret))
        #expect(!String(reflecting: verified).contains(secret))
    }
}

extension EnvelopeSealer {
    fileprivate func sealedOrNil(_ world: VeilWorld) throws -> SealedEnvelope? {
        try? seal(EnvelopeDraft(type: VeilWorld.received.type, parts: [.sealed("p", payload: [1], to: ["anonymizer"])]))
    }
}

extension Envelope {
    fileprivate static func signerVersion(_ bytes: [UInt8]) -> UInt32? { try? Envelope(parsing: bytes).header.signer.version }
}
