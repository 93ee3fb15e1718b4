import Foundation

/// A payload that writes its own JSON: byte for byte what `ContractCoding.encode` gives
/// through `JSONEncoder` (keys sorted by their UTF-8 bytes, bytes as padded base64, dates as
/// milliseconds since 1970, absent optionals left out), without Codable's generic machinery.
///
/// Only the payloads every inquiry carries conform: `JSONEncoder` took 6–40 µs per payload
/// here (an `Insight` 40 µs), about 5 % of the pipeline's CPU, the merger's and ingress's most.
/// `BuildingBlockTests.handWrittenPayloadsMatchJSONEncoder` holds each conforming type to
/// `JSONEncoder`'s exact bytes, so a field added to one of them without its line here fails
/// that test, not a consumer.
public protocol ContractJSONWritable {
    /// Writes the value as one JSON object.
    func writeJSON(_ writer: inout ContractJSONWriter)
}

/// Writes one JSON object at a time; the caller names the fields in sorted order.
public struct ContractJSONWriter {
    public private(set) var bytes: [UInt8] = []
    private var needsComma = false

    public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    public mutating func object(_ body: (inout ContractJSONWriter) -> Void) {
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
        body(&self)
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
    }

    private mutating func key(_ key: StaticString) {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
        bytes.append(UInt8(ascii: "\""))
        key.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        needsComma = true
    }

    public mutating func field(_ name: StaticString, _ value: String) {
        key(name)
        Self.appendString(value, to: &bytes)
    }

    public mutating func field(_ name: StaticString, _ value: String?) {
        if let value { field(name, value) }
    }

    public mutating func field(_ name: StaticString, _ value: Bool) {
        key(name)
        bytes.append(contentsOf: value ? Array("true".utf8) : Array("false".utf8))
    }

    public mutating func field(_ name: StaticString, _ value: UInt32) {
        key(name)
        bytes.append(contentsOf: String(value).utf8)
    }

    /// Padded standard base64, as `JSONEncoder`'s `.base64` strategy.
    public mutating func field(_ name: StaticString, _ value: Data) {
        key(name)
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: value.base64EncodedData())
        bytes.append(UInt8(ascii: "\""))
    }

    /// Milliseconds since 1970 as `JSONEncoder`'s `.millisecondsSince1970` writes them: a
    /// `Double`, without a fraction when it has none.
    public mutating func field(_ name: StaticString, _ value: Date) {
        key(name)
        Self.appendNumber(1000.0 * value.timeIntervalSince1970, to: &bytes)
    }

    /// A string map as an object, keys sorted by their UTF-8 bytes.
    public mutating func field(_ name: StaticString, _ value: [String: String]) {
        key(name)
        Self.appendMap(value, to: &bytes)
    }

    public mutating func field(_ name: StaticString, _ value: [String: String]?) {
        if let value { field(name, value) }
    }

    public mutating func field<Nested: ContractJSONWritable>(_ name: StaticString, _ value: Nested?) {
        guard let value else { return }
        key(name)
        value.writeJSON(&self)
    }

    static func appendMap(_ map: [String: String], to out: inout [UInt8]) {
        out.append(UInt8(ascii: "{"))
        // By UTF-8 bytes: the order of String's `<` (and JSONEncoder's) for keys in NFC, and a
        // total order for all keys. String's `<` is not one for keys outside NFC (Swift 6.3:
        // "\u{E9}Z" and "e\u{301}" are neither `<` nor `==` each other), so sorting by it wrote
        // such a map's keys in an order that depended on the dictionary's.
        for (index, key) in map.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }).enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            appendString(key, to: &out)
            out.append(UInt8(ascii: ":"))
            appendString(map[key]!, to: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    static func appendNumber(_ value: Double, to out: inout [UInt8]) {
        if value.rounded(.towardZero) == value, abs(value) < 9_007_199_254_740_992 {
            out.append(contentsOf: String(Int64(value)).utf8)
        } else {
            out.append(contentsOf: value.description.utf8)
        }
    }

    /// A JSON string as `JSONEncoder` writes it with `.withoutEscapingSlashes`: quote,
    /// backslash and control characters escaped, everything else (UTF-8 included) as is.
    static func appendString(_ string: String, to out: inout [UInt8]) {
        appendString(utf8: string.utf8, to: &out)
    }

    /// The same, from valid UTF-8 bytes.
    static func appendString<Bytes: Sequence<UInt8>>(utf8: Bytes, to out: inout [UInt8]) {
        let hex: StaticString = "0123456789abcdef"
        out.append(UInt8(ascii: "\""))
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x08: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                hex.withUTF8Buffer { digits in
                    out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"),
                                            digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
                }
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

extension ContractJSONWritable {
    /// The value's JSON.
    public func contractJSON() -> [UInt8] {
        var writer = ContractJSONWriter()
        writeJSON(&writer)
        return writer.bytes
    }
}

// Fields in the order JSONEncoder's `.sortedKeys` puts them (by UTF-8 bytes: upper case
// before lower case, so `matchKeyVersion` and `matchToken` come before `matched`).

extension PseudonymPayload: ContractJSONWritable {
    public func writeJSON(_ writer: inout ContractJSONWriter) {
        writer.object {
            $0.field("keyVersion", keyVersion)
            $0.field("pseudonym", pseudonym)
        }
    }
}

extension AccessInfo: ContractJSONWritable {
    public func writeJSON(_ writer: inout ContractJSONWriter) {
        writer.object {
            $0.field("anonymizedDeviceId", anonymizedDeviceId)
            $0.field("appData", appData)
            $0.field("appVersion", appVersion)
            $0.field("channel", channel)
            $0.field("deviceKeyVersion", deviceKeyVersion)
            $0.field("receivedAt", receivedAt)
            $0.field("region", region)
        }
    }
}

extension EncryptedIDPayload: ContractJSONWritable {
    public func writeJSON(_ writer: inout ContractJSONWriter) {
        writer.object {
            $0.field("doublyHashedId", doublyHashedId)
            $0.field("thirdPartyKeyVersion", thirdPartyKeyVersion)
        }
    }
}

extension MatchTokenPayload: ContractJSONWritable {
    public func writeJSON(_ writer: inout ContractJSONWriter) {
        writer.object {
            $0.field("matchKeyVersion", matchKeyVersion)
            $0.field("token", token)
        }
    }
}

extension EncryptedRecord: ContractJSONWritable {
    public func writeJSON(_ writer: inout ContractJSONWriter) {
        writer.object {
            $0.field("ciphertext", ciphertext)
            $0.field("recordKeyVersion", recordKeyVersion)
            $0.field("wrappedDataKey", wrappedDataKey)
        }
    }
}

extension MatchPayload: ContractJSONWritable {
    public func writeJSON(_ writer: inout ContractJSONWriter) {
        writer.object {
            $0.field("matchKeyVersion", matchKeyVersion)
            $0.field("record", record)
            $0.field("token", token)
        }
    }
}

extension Insight: ContractJSONWritable {
    public func writeJSON(_ writer: inout ContractJSONWriter) {
        writer.object {
            $0.field("anonymizedDeviceId", anonymizedDeviceId)
            $0.field("appData", appData)
            $0.field("appVersion", appVersion)
            $0.field("channel", channel)
            $0.field("inquiryId", inquiryId)
            $0.field("matchKeyVersion", matchKeyVersion)
            $0.field("matchToken", matchToken)
            $0.field("matched", matched)
            $0.field("mergedAt", mergedAt)
            $0.field("receivedAt", receivedAt)
            $0.field("record", record)
            $0.field("region", region)
        }
    }
}
