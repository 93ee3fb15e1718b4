import Foundation
import Testing
import VeilCore
@testable import VeilEnvelope

/// Flipping any byte of a serialized envelope is refused, with the error class
/// that the verification order assigns to the region the byte is in.
@Suite("Tampering")
struct EnvelopeTamperingTests {
    /// One region of the documented layout (docs/ENVELOPE.md) and the errors a changed byte there may produce.
    struct Region {
        let name: String
        let range: Range<Int>
        let allowed: Set<EnvelopeError>
    }

    /// Walks the layout as docs/ENVELOPE.md documents it, independently of the parser.
    static func layout(of bytes: [UInt8]) -> [Region] {
        var regions: [Region] = []
        var offset = 0
        func region(_ name: String, _ count: Int, _ allowed: Set<EnvelopeError>) {
            regions.append(Region(name: name, range: offset..<(offset + count), allowed: allowed))
            offset += count
        }
        func u8() -> Int { Int(bytes[offset]) }
        func u32() -> Int { bytes[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) } }
        let length: Set<EnvelopeError> = [.malformed, .tooLarge]
        // Inside a part the ciphertext runs to the part's end, so a shifted
        // length there can still parse; the signature then catches it.
        let partLength: Set<EnvelopeError> = [.malformed, .tooLarge, .badSignature]
        func token(_ name: String, _ whenValid: EnvelopeError, inPart: Bool = false) {
            let count = u8()
            region("\(name) length", 1, inPart ? partLength : length)
            region(name, count, [.malformed, whenValid])
        }
        region("magic", 4, [.malformed])
        region("format version", 1, [.unsupportedVersion])
        region("message id", 16, [.badSignature])
        region("created-at", 8, [.badSignature])
        region("schema version", 2, [.badSignature])
        token("type", .producerNotAllowed)
        token("producer", .producerNotAllowed)
        token("signer key id", .unknownKey)
        region("signer key version", 4, [.unknownKey])
        let parts = u8()
        region("part count", 1, length)
        for p in 0..<parts {
            let count = u32()
            region("part \(p) length", 4, [.malformed])
            let partEnd = offset + count
            region("part \(p) format", 1, [.unsupportedVersion])
            token("part \(p) label", .badSignature, inPart: true)
            let recipients = u8()
            region("part \(p) recipient count", 1, partLength)
            for r in 0..<recipients {
                token("part \(p) recipient \(r) key id", .badSignature, inPart: true)
                region("part \(p) recipient \(r) key version", 4, [.badSignature])
            }
            region("part \(p) wrapped keys and ciphertext", partEnd - offset, [.badSignature])
        }
        region("signature", 64, [.badSignature])
        precondition(offset == bytes.count, "the documented layout must cover every byte")
        return regions
    }

    @Test("every single-byte change, at every position, is refused with its region's error class")
    func exhaustiveByteFlips() throws {
        let world = VeilWorld()
        let created = Date()
        let sealed = try world.sealer("ingress").seal(EnvelopeDraft(
            type: VeilWorld.received.type, createdAt: created,
            parts: [.sealed("payload", payload: Array("tiny".utf8), to: ["anonymizer"]),
                    .sealed("access-info", payload: Array("x".utf8), to: ["merger", "key-vault"])]))
        let verifier = world.verifier("anonymizer")
        let regions = Self.layout(of: sealed.bytes)
        #expect(regions.reduce(0) { $0 + $1.range.count } == sealed.bytes.count)

        var checked = 0
        for region in regions {
            for position in region.range {
                for mask: UInt8 in [0x01, 0x80, 0xFF] {
                    var tampered = sealed.bytes
                    tampered[position] ^= mask
                    let error = EnvelopeError.caught {
                        try verifier.verify(tampered, topic: VeilWorld.received.topic, now: created)
                    }
                    #expect(error.map(region.allowed.contains) == true,
                            "byte \(position) (\(region.name)) ^ \(mask): got \(String(describing: error)), expected one of \(region.allowed.map(\.code).sorted())")
                    checked += 1
                }
            }
        }
        #expect(checked == sealed.bytes.count * 3)
        // The untouched envelope still verifies: the loop recorded nothing as seen.
        #expect(try verifier.verify(sealed.bytes, topic: VeilWorld.received.topic, now: created).payload("payload") == Array("tiny".utf8))
    }

    @Test("appending or removing bytes is refused as malformed")
    func lengthChanges() throws {
        let world = VeilWorld()
        let sealed = try world.inquiry()
        let verifier = world.verifier("anonymizer")
        #expect(throws: EnvelopeError.malformed) { try verifier.verify(sealed.bytes + [0], topic: VeilWorld.received.topic) }
        #expect(throws: EnvelopeError.malformed) { try verifier.verify(Array(sealed.bytes.dropLast()), topic: VeilWorld.received.topic) }
        #expect(throws: EnvelopeError.malformed) { try verifier.verify([], topic: VeilWorld.received.topic) }
    }
}
