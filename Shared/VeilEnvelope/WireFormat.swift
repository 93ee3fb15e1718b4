/// Bounds-checked reading of the envelope's binary layout.
///
/// Every read checks the remaining length first and throws
/// `EnvelopeError.malformed`; nothing here can trap on hostile input.
struct WireReader {
    let bytes: [UInt8]
    private(set) var offset: Int
    let end: Int

    init(_ bytes: [UInt8], from start: Int = 0, to end: Int? = nil) {
        self.bytes = bytes
        self.offset = min(max(0, start), bytes.count)
        self.end = min(max(self.offset, end ?? bytes.count), bytes.count)
    }

    var remaining: Int { end - offset }

    /// Claims the next `count` bytes and returns their index range in `bytes`.
    mutating func take(_ count: Int) throws(EnvelopeError) -> Range<Int> {
        guard count >= 0, count <= remaining else { throw .malformed }
        let range = offset..<(offset + count)
        offset += count
        return range
    }

    mutating func u8() throws(EnvelopeError) -> UInt8 {
        guard remaining >= 1 else { throw .malformed }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16() throws(EnvelopeError) -> UInt16 { UInt16(truncatingIfNeeded: try uint(2)) }
    mutating func u32() throws(EnvelopeError) -> UInt32 { UInt32(truncatingIfNeeded: try uint(4)) }
    mutating func u64() throws(EnvelopeError) -> UInt64 { try uint(8) }

    private mutating func uint(_ width: Int) throws(EnvelopeError) -> UInt64 {
        let range = try take(width)
        var value: UInt64 = 0
        for i in range { value = value << 8 | UInt64(bytes[i]) }
        return value
    }

    /// A length-prefixed token (1 length byte, then 1...maxLength token characters).
    mutating func token(maxLength: Int) throws(EnvelopeError) -> String {
        let length = Int(try u8())
        guard length > 0 else { throw .malformed }
        guard length <= maxLength else { throw .tooLarge }
        let range = try take(length)
        for i in range where !Token.isAllowed(bytes[i]) { throw .malformed }
        return String(decoding: bytes[range], as: UTF8.self)
    }
}

/// One-pass writer into a single growing buffer (callers reserve capacity up front).
struct WireWriter {
    var buffer: [UInt8] = []

    init(capacity: Int) { buffer.reserveCapacity(capacity) }

    var count: Int { buffer.count }

    mutating func u8(_ v: UInt8) { buffer.append(v) }
    mutating func u16(_ v: UInt16) { buffer.append(UInt8(v >> 8)); buffer.append(UInt8(truncatingIfNeeded: v)) }
    mutating func u32(_ v: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { buffer.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
    }
    mutating func u64(_ v: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { buffer.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }
    mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 { buffer.append(contentsOf: bytes) }

    /// Writes a token; the caller has validated it with `Token.validate`.
    mutating func token(_ s: String) {
        buffer.append(UInt8(truncatingIfNeeded: s.utf8.count))
        buffer.append(contentsOf: s.utf8)
    }

    /// Writes a zero length placeholder and returns its position for `patchU32`.
    mutating func placeholderU32() -> Int { defer { u32(0) }; return buffer.count }

    mutating func patchU32(at position: Int, _ v: UInt32) {
        for i in 0..<4 { buffer[position + i] = UInt8(truncatingIfNeeded: v >> UInt32(24 - 8 * i)) }
    }
}

/// The strings in an envelope header (type, producer, key ids, part labels)
/// are short ASCII tokens: letters, digits and `. _ - :`.
enum Token {
    static func isAllowed(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: ":"):
            true
        default:
            false
        }
    }

    /// Checks a token about to be written: non-empty, within the limit, allowed characters only.
    static func validate(_ s: String, maxLength: Int) throws(EnvelopeError) {
        let utf8 = s.utf8
        guard !utf8.isEmpty, utf8.allSatisfy(isAllowed) else { throw .malformed }
        guard utf8.count <= maxLength else { throw .tooLarge }
    }
}
