/// One HPKE-sealed part of an envelope body, exactly as it travels.
///
/// A part is self-contained: its own readable header (format, label,
/// recipients' key ids and versions), then per recipient the HPKE
/// encapsulated key (and, for several recipients, the HPKE-wrapped content
/// key), then the payload ciphertext. Nothing in it refers to the
/// envelope around it, so a stage that cannot open a part forwards it
/// byte-for-byte into the envelope it produces (`EnvelopeDraft.Part.forwarded`),
/// and the final recipient opens it there. See docs/ENVELOPE.md.
public struct SealedPart: Sendable, Hashable, CustomStringConvertible {
    /// The part's bytes as they appear in the body (without the 4-byte length prefix).
    public let bytes: ArraySlice<UInt8>
    /// The part's label, e.g. `payload` or `access-info`; unique within an envelope.
    public let label: String
    /// The encryption keys this part is sealed to, in wire order.
    public let recipients: [KeyReference]

    /// Index ranges into `bytes` (which keeps its parent buffer's indices).
    let headerRange: Range<Int>
    let wrappedKeysStart: Int
    let ciphertextRange: Range<Int>

    /// Part format 1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
    /// One recipient: the payload is HPKE-sealed directly. Several: the payload
    /// is sealed once under a random content key, HPKE-wrapped to each recipient.
    static let formatVersion: UInt8 = 1
    static let encapsulatedKeyBytes = 32
    static let wrappedKeyBytes = 32 + 16
    static let tagBytes = 16

    /// Parses a part occupying `range` of `buffer` (the envelope bytes).
    init(parsing buffer: [UInt8], range: Range<Int>, limits: EnvelopeLimits) throws(EnvelopeError) {
        var reader = WireReader(buffer, from: range.lowerBound, to: range.upperBound)
        let start = reader.offset
        guard try reader.u8() == Self.formatVersion else { throw .unsupportedVersion }
        let label = try reader.token(maxLength: limits.maxStringBytes)
        let count = Int(try reader.u8())
        guard count > 0 else { throw .malformed }
        guard count <= limits.maxRecipients else { throw .tooLarge }
        var recipients: [KeyReference] = []
        recipients.reserveCapacity(count)
        for _ in 0..<count {
            let keyID = try reader.token(maxLength: limits.maxStringBytes)
            let version = try reader.u32()
            let reference = KeyReference(keyID: keyID, version: version)
            guard !recipients.contains(reference) else { throw .malformed }
            recipients.append(reference)
        }
        headerRange = start..<reader.offset
        wrappedKeysStart = reader.offset
        _ = try reader.take(count * Self.recipientBlockBytes(recipients: count))
        guard reader.remaining >= Self.tagBytes else { throw .malformed }
        ciphertextRange = try reader.take(reader.remaining)
        self.bytes = buffer[range]
        self.label = label
        self.recipients = recipients
    }

    /// Bytes per recipient after the part header: `enc`, plus the wrapped content key if there are several.
    static func recipientBlockBytes(recipients: Int) -> Int {
        recipients == 1 ? encapsulatedKeyBytes : encapsulatedKeyBytes + wrappedKeyBytes
    }

    /// Index ranges of recipient `index`'s encapsulated key and wrapped
    /// content key (empty for a single recipient).
    func wrappedKeyRanges(of index: Int) -> (encapsulated: Range<Int>, wrapped: Range<Int>) {
        let start = wrappedKeysStart + index * Self.recipientBlockBytes(recipients: recipients.count)
        let middle = start + Self.encapsulatedKeyBytes
        let end = recipients.count == 1 ? middle : middle + Self.wrappedKeyBytes
        return (start..<middle, middle..<end)
    }

    public static func == (lhs: SealedPart, rhs: SealedPart) -> Bool { lhs.bytes == rhs.bytes }
    public func hash(into hasher: inout Hasher) { hasher.combine(bytes.count); hasher.combine(label) }

    /// Label, recipients and size only; the ciphertext is not printed.
    public var description: String {
        "SealedPart(\(label), \(bytes.count) bytes, to: \(recipients.map(\.description).joined(separator: ", ")))"
    }
}
