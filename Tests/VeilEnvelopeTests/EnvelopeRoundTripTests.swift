import Foundation
import Testing
import VeilCore
@testable import VeilEnvelope

@Suite("Sealing and opening envelopes")
struct EnvelopeRoundTripTests {
    let world = VeilWorld()

    @Test("one part to one recipient opens to the same payload and header")
    func oneRecipient() throws {
        let id = MessageID.generate()
        let sealed = try world.sealer("ingress").seal(EnvelopeDraft(
            id: id, type: VeilWorld.received.type, schemaVersion: 3,
            parts: [.sealed("payload", payload: Array("hello".utf8), to: ["anonymizer"])]))
        let verified = try world.verifier("anonymizer").verify(sealed.bytes, topic: VeilWorld.received.topic)
        #expect(verified.payload("payload") == Array("hello".utf8))
        #expect(verified.header == sealed.header)
        #expect(verified.header.id == id)
        #expect(verified.header.schemaVersion == 3)
        #expect(verified.header.producer == "ingress")
        #expect(verified.header.signer == KeyReference(keyID: "ingress.signing", version: 1))
        #expect(verified.parts.first?.recipients == [KeyReference(keyID: "anonymizer.encryption", version: 1)])
    }

    @Test("one part to several recipients: each opens it with its own key")
    func severalRecipients() throws {
        let sealed = try world.sealer("ingress").seal(EnvelopeDraft(
            type: VeilWorld.received.type,
            parts: [.sealed("payload", payload: Array("shared".utf8), to: ["anonymizer", "merger", "key-vault"])]))
        for party in ["anonymizer", "merger", "key-vault"] {
            let verified = try world.verifier(party).verify(sealed.bytes, topic: VeilWorld.received.topic)
            #expect(verified.payload("payload") == Array("shared".utf8))
        }
        #expect(throws: EnvelopeError.notARecipient) {
            try world.verifier("provider-demo").verify(sealed.bytes, topic: VeilWorld.received.topic)
        }
    }

    @Test("several parts: a party opens exactly the parts addressed to it")
    func severalParts() throws {
        let sealed = try world.inquiry()
        let anonymizer = try world.verifier("anonymizer").verify(sealed.bytes, topic: VeilWorld.received.topic)
        #expect(anonymizer.payload("pseudonym") == Array("P-123".utf8))
        #expect(anonymizer.payload("access-info") == nil)
        #expect(anonymizer.parts.map(\.label) == ["pseudonym", "access-info"])
        let merger = try world.verifier("merger").verify(sealed.bytes, topic: VeilWorld.received.topic)
        #expect(merger.payload("access-info") == Array("channel=app".utf8))
        #expect(merger.payload("pseudonym") == nil)
    }

    @Test("a stage forwards a part it cannot open; the final recipient opens it under the forwarder's signature")
    func forwarding() throws {
        let received = try world.inquiry()
        let atAnonymizer = try world.verifier("anonymizer").verify(received.bytes, topic: VeilWorld.received.topic)
        let accessInfo = try #require(atAnonymizer.part("access-info"))

        let outputID = MessageID.derived(from: atAnonymizer.header.id, stage: "anonymizer")
        let forwarded = try world.sealer("anonymizer").seal(EnvelopeDraft(
            id: outputID, type: VeilWorld.anonymized.type,
            parts: [.sealed("encrypted-id", payload: Array("A-456".utf8), to: ["key-vault"]),
                    .forwarded(accessInfo)]))

        // The part travels byte for byte.
        let parsed = try Envelope(parsing: forwarded.bytes)
        #expect(parsed.part("access-info")?.bytes == accessInfo.bytes)
        #expect(forwarded.bytes.firstRange(of: Array(accessInfo.bytes)) != nil)

        // The merger verifies the anonymizer's signature and opens the original part.
        let atMerger = try world.verifier("merger").verify(forwarded.bytes, topic: VeilWorld.anonymized.topic)
        #expect(atMerger.header.producer == "anonymizer")
        #expect(atMerger.header.id == outputID)
        #expect(atMerger.payload("access-info") == Array("channel=app".utf8))
        #expect(atMerger.payload("encrypted-id") == nil)
    }

    @Test("the CloudEvents Kafka headers mirror the readable header")
    func cloudEventsHeaders() throws {
        let created = Date(timeIntervalSince1970: 1_735_689_599.123)  // 2024-12-31T23:59:59.123Z
        let id = MessageID.generate(now: created)
        let sealed = try world.inquiry(id: id, at: created)
        let headers = Dictionary(uniqueKeysWithValues: sealed.kafkaHeaders.map { ($0.0, String(decoding: $0.1, as: UTF8.self)) })
        #expect(headers == [
            "ce_id": id.description,
            "ce_type": "veil.inquiry.received.v1",
            "ce_source": "ingress",
            "ce_time": "2024-12-31T23:59:59.123Z",
            "ce_specversion": "1.0",
            "content-type": "application/vnd.veil.envelope.v1",
        ])
        #expect(EnvelopeHeader.rfc3339(milliseconds: 0) == "1970-01-01T00:00:00.000Z")
        #expect(EnvelopeHeader.rfc3339(milliseconds: 951_782_400_000) == "2000-02-29T00:00:00.000Z")
    }

    @Test("sealing refuses drafts the receiver would refuse")
    func sealingLimits() throws {
        let sealer = EnvelopeSealer(identity: world["ingress"], directory: world.store,
                                    limits: EnvelopeLimits(maxEnvelopeBytes: 1000, maxParts: 2, maxRecipients: 2))
        let type = VeilWorld.received.type
        #expect(throws: EnvelopeError.tooLarge) {
            try sealer.seal(EnvelopeDraft(type: type, parts: [.sealed("p", payload: [UInt8](repeating: 1, count: 1000), to: ["merger"])]))
        }
        #expect(throws: EnvelopeError.tooLarge) {
            try sealer.seal(EnvelopeDraft(type: type, parts: ["a", "b", "c"].map { .sealed($0, payload: [1], to: ["merger"]) }))
        }
        #expect(throws: EnvelopeError.tooLarge) {
            try sealer.seal(EnvelopeDraft(type: type, parts: [.sealed("p", payload: [1], to: ["merger", "anonymizer", "key-vault"])]))
        }
        #expect(throws: EnvelopeError.malformed) { try sealer.seal(EnvelopeDraft(type: type, parts: [])) }
        #expect(throws: EnvelopeError.malformed) {
            try sealer.seal(EnvelopeDraft(type: "has space", parts: [.sealed("p", payload: [1], to: ["merger"])]))
        }
        #expect(throws: EnvelopeError.malformed) {
            try sealer.seal(EnvelopeDraft(type: type, parts: [.sealed("p", payload: [1], to: ["merger"]),
                                                              .sealed("p", payload: [2], to: ["merger"])]))
        }
        #expect(throws: EnvelopeError.unknownKey) {
            try sealer.seal(EnvelopeDraft(type: type, parts: [.sealed("p", payload: [1], to: ["nobody"])]))
        }
    }

    @Test("the size follows the documented formula")
    func documentedSize() throws {
        let payload = [UInt8](repeating: 7, count: 512)
        let sealed = try world.sealer("ingress").seal(EnvelopeDraft(
            type: VeilWorld.received.type, parts: [.sealed("payload", payload: payload, to: ["anonymizer"])]))
        let (t, q, k, label, kr) = (24, 7, 15, 7, 21)  // type, producer, signer key id, label, recipient key id
        let header = 31 + 3 + t + q + k + 4 + 1
        let part = 4 + 1 + 1 + label + 1 + 1 + kr + 4 + 32 + payload.count + 16
        #expect(sealed.bytes.count == header + part + 64)
        let two = try world.sealer("ingress").seal(EnvelopeDraft(
            type: VeilWorld.received.type, parts: [.sealed("payload", payload: payload, to: ["anonymizer", "merger"])]))
        #expect(two.bytes.count == sealed.bytes.count + 48 + (1 + 17 + 4 + 80))
    }

    @Test("an empty payload round-trips")
    func emptyPayload() throws {
        let sealed = try world.sealer("ingress").seal(EnvelopeDraft(
            type: VeilWorld.received.type, parts: [.sealed("payload", payload: [], to: ["anonymizer"])]))
        let verified = try world.verifier("anonymizer").verify(sealed.bytes, topic: VeilWorld.received.topic)
        #expect(verified.payload("payload") == [])
    }

    @Test("batch sealing and verifying keep input order and report per item")
    func batches() async throws {
        let drafts = (0..<50).map { i in
            EnvelopeDraft(type: i == 7 ? "veil.not.allowed.v1" : VeilWorld.received.type,
                          parts: [.sealed("payload", payload: [UInt8(i)], to: [i == 3 ? "nobody" : "anonymizer"])])
        }
        let sealed = await world.sealer("ingress").sealBatch(drafts)
        #expect(sealed.count == 50)
        #expect(throws: EnvelopeError.unknownKey) { try sealed[3].get() }
        let messages = sealed.enumerated().compactMap { i, r in (try? r.get()).map { (topic: VeilWorld.received.topic, bytes: $0.bytes) } }
        #expect(messages.count == 49)
        let verified = await world.verifier("anonymizer").verifyBatch(messages + [messages[0]])
        #expect(verified.count == 50)
        let payloads = verified.prefix(49).map { (try? $0.get())?.payload("payload")?.first }
        let expected: [UInt8?] = (0..<50).filter { $0 != 3 }.map { $0 == 7 ? nil : UInt8($0) }
        #expect(payloads == expected)
        #expect(throws: EnvelopeError.producerNotAllowed) { try verified[6].get() }
        #expect(throws: EnvelopeError.replayed) { try verified[49].get() }
    }
}
