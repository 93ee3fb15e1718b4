extension Sequence<UInt8> {
    /// Lowercase hexadecimal, two digits per byte. (Foundation's `String(format: "%02x")`
    /// parses its format on every call: measured, a key reference's eight bytes cost 2 % of
    /// the dispatcher's CPU that way.)
    public var hexEncoded: String {
        var digits: [UInt8] = []
        digits.reserveCapacity(underestimatedCount * 2)
        for byte in self {
            digits.append(hexDigits[Int(byte >> 4)])
            digits.append(hexDigits[Int(byte & 0x0f)])
        }
        return String(decoding: digits, as: UTF8.self)
    }
}

private let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)
