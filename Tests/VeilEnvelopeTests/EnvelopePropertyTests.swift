import Foundation
import PropertyBased
import Testing
import VeilCore
@testable import VeilEnvelope

@Suite("Properties")
struct EnvelopePropertyTests {
    let world = VeilWorld()
    let topic = VeilWorld.received.topic

    @Test("any payload round-trips through seal and verify")
    func randomPayloadsRoundTrip() async {
        let sealer = world.sealer("ingress")
        let verifier = world.verifier("anonymizer")
        await propertyCheck(count: 200, input: Gen.uint8().array(of: 0...4096)) { payload in
            let sealed = try sealer.seal(EnvelopeDraft(
                type: VeilWorld.received.type, parts: [.sealed("payload", payload: payload, to: ["anonymizer"])]))
            let verified = try verifier.verify(sealed.bytes, topic: topic)
            #expect(verified.payload("payload") == payload)
        }
    }

    @Test("every truncation of an envelope is refused with a typed error")
    func truncations() throws {
        let sealed = try world.inquiry()
        let verifier = world.verifier("anonymizer")
        for length in 0..<sealed.bytes.count {
            let error = EnvelopeError.caught { try verifier.verify(Array(sealed.bytes.prefix(length)), topic: topic) }
            #expect(error == .malformed, "prefix of \(length) bytes gave \(String(describing: error))")
        }
    }

    @Test("random truncations never crash and always throw an EnvelopeError")
    func randomTruncations() async throws {
        let sealed = try world.inquiry()
        let verifier = world.verifier("anonymizer")
        await propertyCheck(input: Gen.int(in: 0...sealed.bytes.count - 1)) { length in
            #expect(EnvelopeError.caught { try verifier.verify(Array(sealed.bytes.prefix(length)), topic: topic) } != nil)
        }
    }

    @Test("random garbage never crashes and always throws an EnvelopeError")
    func garbage() async {
        let verifier = world.verifier("anonymizer")
        await propertyCheck(count: 500, input: Gen.uint8().array(of: 0...2048)) { bytes in
            #expect(EnvelopeError.caught { try verifier.verify(bytes, topic: topic) } != nil)
        }
    }

    @Test("garbage behind a valid magic and version reaches the parser and is refused")
    func garbageAfterMagic() async {
        let verifier = world.verifier("anonymizer")
        let prefix: [UInt8] = Array("VEIL".utf8) + [1]
        await propertyCheck(count: 500, input: Gen.uint8().array(of: 0...1024)) { tail in
            let error = EnvelopeError.caught { try verifier.verify(prefix + tail, topic: topic) }
            #expect(error != nil)
            #expect(error != .unsupportedVersion)
        }
    }

    @Test("random byte edits of a real envelope are always refused")
    func randomEdits() async throws {
        let sealed = try world.inquiry()
        let verifier = world.verifier("anonymizer")
        let edits = PropertyBased.zip(Gen.int(in: 0...sealed.bytes.count - 1), Gen.uint8(in: 1...255)).array(of: 1...8)
        await propertyCheck(count: 300, input: edits) { edits in
            var bytes = sealed.bytes
            for (position, mask) in edits { bytes[position] ^= mask }
            guard bytes != sealed.bytes else { return }
            #expect(EnvelopeError.caught { try verifier.verify(bytes, topic: topic) } != nil)
        }
    }
}
