import VeilCore

/// A parsed envelope: its readable header, its sealed parts and its signature.
///
/// Parsing checks only the layout and the limits; it does not verify the
/// signature or consult the key directory — `EnvelopeVerifier` does that.
/// Use `Envelope(parsing:)` directly to route or inspect a message without keys.
///
/// Layout (big-endian, documented byte by byte in docs/ENVELOPE.md):
/// `"VEIL"` · version · id · created-at · schema · type · producer · signer key
/// · part count · parts (each length-prefixed) · 64-byte Ed25519 signature.
public struct Envelope: Sendable {
    /// The readable header.
    public let header: EnvelopeHeader
    /// The sealed parts in body order.
    public let parts: [SealedPart]
    /// The whole serialized envelope.
    public let bytes: [UInt8]

    /// The first four bytes, `VEIL`.
    static let magic: [UInt8] = Array("VEIL".utf8)
    /// The only format version this library reads and writes.
    public static let formatVersion: UInt8 = 1
    static let signatureBytes = 64
    /// Bytes before the first variable-length field: magic 4, version 1, id 16, created-at 8, schema 2.
    static let fixedHeaderBytes = 31

    /// Everything before the signature: the signed bytes.
    var signedBytes: ArraySlice<UInt8> { bytes[0..<(bytes.count - Self.signatureBytes)] }
    /// The trailing 64-byte signature.
    var signature: ArraySlice<UInt8> { bytes[(bytes.count - Self.signatureBytes)...] }

    /// Parses `bytes`, checking in order: total size, magic and format
    /// version, then the layout with its per-field limits.
    public init(parsing bytes: [UInt8], limits: EnvelopeLimits = EnvelopeLimits()) throws(EnvelopeError) {
        guard bytes.count <= limits.maxEnvelopeBytes else { throw .tooLarge }
        var reader = WireReader(bytes)
        let magic = try reader.take(4)
        guard bytes[magic].elementsEqual(Self.magic) else { throw .malformed }
        guard try reader.u8() == Self.formatVersion else { throw .unsupportedVersion }
        guard let id = MessageID(bytes: bytes[try reader.take(16)]) else { throw .malformed }
        let createdAt = try reader.u64()
        let schemaVersion = try reader.u16()
        let type = try reader.token(maxLength: limits.maxStringBytes)
        let producer = try reader.token(maxLength: limits.maxStringBytes)
        let signerID = try reader.token(maxLength: limits.maxStringBytes)
        let signerVersion = try reader.u32()
        let partCount = Int(try reader.u8())
        guard partCount > 0 else { throw .malformed }
        guard partCount <= limits.maxParts else { throw .tooLarge }
        var parts: [SealedPart] = []
        parts.reserveCapacity(partCount)
        for _ in 0..<partCount {
            let length = Int(try reader.u32())
            let part = try SealedPart(parsing: bytes, range: try reader.take(length), limits: limits)
            guard !parts.contains(where: { $0.label == part.label }) else { throw .malformed }
            parts.append(part)
        }
        guard reader.remaining == Self.signatureBytes else { throw .malformed }
        self.header = EnvelopeHeader(formatVersion: Self.formatVersion, id: id, type: type, producer: producer,
                                     createdAtMilliseconds: createdAt, schemaVersion: schemaVersion,
                                     signer: KeyReference(keyID: signerID, version: signerVersion))
        self.parts = parts
        self.bytes = bytes
    }

    /// The part with this label, if any.
    public func part(_ label: String) -> SealedPart? { parts.first { $0.label == label } }
}
