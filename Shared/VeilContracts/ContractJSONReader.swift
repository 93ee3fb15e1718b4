import Foundation

/// A payload that reads its own JSON on the common path and leaves everything else to
/// `JSONDecoder`: the reader handles exactly the shape `ContractJSONWritable` writes (known
/// keys once each, unescaped strings, plain numbers, padded base64) and gives up on
/// anything else — an escape, an unknown or repeated key, a number with a fraction where an
/// integer belongs, invalid UTF-8 — after which `ContractCoding.decode` asks `JSONDecoder`,
/// so every input decodes to what `JSONDecoder` makes of it, or fails as it fails.
/// `BuildingBlockTests.handReadPayloadsAgreeWithJSONDecoder` holds the two to the same results
/// over generated and mangled input.
public protocol ContractJSONReadable {
    /// Reads one JSON object; throws `ContractJSONReader.Unusual` to hand the input to `JSONDecoder`.
    init(contractJSON reader: inout ContractJSONReader) throws(ContractJSONReader.Unusual)
}

/// A forward reader over one payload's bytes.
public struct ContractJSONReader {
    /// Not an error in the payload: this reader does not handle it (`JSONDecoder` will).
    public struct Unusual: Error {}

    let bytes: [UInt8]
    var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Reads an object: calls `field` with each key's bytes, positioned at its value, which
    /// `field` must read. Keys must be distinct.
    public mutating func object(_ field: (inout ContractJSONReader, ArraySlice<UInt8>) throws(Unusual) -> Void) throws(Unusual) {
        try expect(UInt8(ascii: "{"))
        if peek() == UInt8(ascii: "}") { index += 1; return }
        var seen: [ArraySlice<UInt8>] = []
        while true {
            let key = try rawString()
            if seen.contains(key) { throw Unusual() }
            seen.append(key)
            try expect(UInt8(ascii: ":"))
            try field(&self, key)
            switch next() {
            case UInt8(ascii: ","): continue
            case UInt8(ascii: "}"): return
            default: throw Unusual()
            }
        }
    }

    public mutating func string() throws(Unusual) -> String {
        let raw = try rawString()
        guard let text = String(validating: raw, as: UTF8.self) else { throw Unusual() }
        return text
    }

    /// `null` or a string.
    public mutating func optionalString() throws(Unusual) -> String? {
        try null() ? nil : string()
    }

    /// Plain decimal digits only (no sign, fraction or exponent), within `UInt32`.
    public mutating func uint32() throws(Unusual) -> UInt32 {
        let digits = try number()
        guard !digits.isEmpty, digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
              digits.count <= 10, digits.first != UInt8(ascii: "0") || digits.count == 1,
              let value = UInt32(String(decoding: digits, as: UTF8.self)) else { throw Unusual() }
        return value
    }

    /// Padded standard base64 in a string, as `JSONDecoder`'s `.base64` strategy reads it.
    public mutating func data() throws(Unusual) -> Data {
        guard let data = Data(base64Encoded: Data(try rawString())) else { throw Unusual() }
        return data
    }

    /// Milliseconds since 1970, as `JSONDecoder`'s `.millisecondsSince1970` strategy reads them.
    public mutating func date() throws(Unusual) -> Date {
        let text = try number()
        guard Self.isJSONNumber(text), let milliseconds = Double(String(decoding: text, as: UTF8.self)),
              milliseconds.isFinite else { throw Unusual() }
        return Date(timeIntervalSince1970: milliseconds / 1000)
    }

    /// An object of strings.
    public mutating func stringMap() throws(Unusual) -> [String: String] {
        var map: [String: String] = [:]
        try object { reader, key throws(Unusual) in
            guard let name = String(validating: key, as: UTF8.self) else { throw Unusual() }
            map[name] = try reader.string()
        }
        return map
    }

    /// Reads `null` if it comes next.
    public mutating func null() -> Bool { literal("null") }

    // MARK: Lexing

    mutating func skipWhitespace() {
        while index < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[index]) { index += 1 }
    }

    mutating func peek() -> UInt8? {
        skipWhitespace()
        return index < bytes.count ? bytes[index] : nil
    }

    mutating func next() -> UInt8? {
        defer { index += 1 }
        return peek()
    }

    mutating func expect(_ byte: UInt8) throws(Unusual) {
        guard next() == byte else { throw Unusual() }
    }

    mutating func literal(_ word: StaticString) -> Bool {
        skipWhitespace()
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { return false }
        let matches = word.withUTF8Buffer { bytes[index..<index + count].elementsEqual($0) }
        if matches { index += count }
        return matches
    }

    /// A string's bytes between its quotes; one with an escape or a control character is unusual.
    mutating func rawString() throws(Unusual) -> ArraySlice<UInt8> {
        try expect(UInt8(ascii: "\""))
        let start = index
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                index += 1
                return bytes[start..<index - 1]
            }
            if byte == UInt8(ascii: "\\") || byte < 0x20 { throw Unusual() }
            index += 1
        }
        throw Unusual()
    }

    /// The bytes of a JSON number (sign, digits, fraction, exponent).
    mutating func number() throws(Unusual) -> ArraySlice<UInt8> {
        skipWhitespace()
        let start = index
        while index < bytes.count,
              (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) || [UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "."),
                                                                               UInt8(ascii: "e"), UInt8(ascii: "E")].contains(bytes[index]) {
            index += 1
        }
        guard index > start else { throw Unusual() }
        return bytes[start..<index]
    }

    /// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` (`Double`
    /// alone would also take `+1`, `01` or `.5`, which `JSONDecoder` refuses).
    static func isJSONNumber(_ text: ArraySlice<UInt8>) -> Bool {
        var i = text.startIndex
        func digit(_ at: Int) -> Bool { at < text.endIndex && (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(text[at]) }
        if i < text.endIndex, text[i] == UInt8(ascii: "-") { i += 1 }
        guard digit(i) else { return false }
        if text[i] == UInt8(ascii: "0") { i += 1 } else { while digit(i) { i += 1 } }
        if i < text.endIndex, text[i] == UInt8(ascii: ".") {
            i += 1
            guard digit(i) else { return false }
            while digit(i) { i += 1 }
        }
        if i < text.endIndex, text[i] == UInt8(ascii: "e") || text[i] == UInt8(ascii: "E") {
            i += 1
            if i < text.endIndex, text[i] == UInt8(ascii: "+") || text[i] == UInt8(ascii: "-") { i += 1 }
            guard digit(i) else { return false }
            while digit(i) { i += 1 }
        }
        return i == text.endIndex
    }

    /// The whole input was one value.
    mutating func end() throws(Unusual) {
        guard peek() == nil else { throw Unusual() }
    }
}

extension ContractJSONReadable {
    /// The value read by hand, or `nil` when the input is one for `JSONDecoder`.
    public static func fromContractJSON(_ bytes: [UInt8]) -> Self? {
        var reader = ContractJSONReader(bytes)
        guard let value = try? Self(contractJSON: &reader), (try? reader.end()) != nil else { return nil }
        return value
    }
}

/// Required fields: a key that never came is unusual (`JSONDecoder` names it in its error).
@inline(__always)
func required<T>(_ value: T?) throws(ContractJSONReader.Unusual) -> T {
    guard let value else { throw ContractJSONReader.Unusual() }
    return value
}

/// The shape three payloads share: bytes and the version of the key behind them, both required.
func bytesAndVersion(_ reader: inout ContractJSONReader, bytes bytesKey: ArraySlice<UInt8>,
                     version versionKey: ArraySlice<UInt8>) throws(ContractJSONReader.Unusual) -> (Data, UInt32) {
    var bytes: Data?, version: UInt32?
    try reader.object { r, key throws(ContractJSONReader.Unusual) in
        switch key {
        case bytesKey: bytes = try r.data()
        case versionKey: version = try r.uint32()
        default: throw ContractJSONReader.Unusual()
        }
    }
    return (try required(bytes), try required(version))
}

extension PseudonymPayload: ContractJSONReadable {
    public init(contractJSON reader: inout ContractJSONReader) throws(ContractJSONReader.Unusual) {
        let (pseudonym, keyVersion) = try bytesAndVersion(&reader, bytes: Keys.pseudonym, version: Keys.keyVersion)
        self.init(pseudonym: pseudonym, keyVersion: keyVersion)
    }
}

extension AccessInfo: ContractJSONReadable {
    public init(contractJSON reader: inout ContractJSONReader) throws(ContractJSONReader.Unusual) {
        var device: Data?, deviceKeyVersion: UInt32?, channel: String?, receivedAt: Date?, appVersion: String?
        var region: String?, appData: [String: String]?
        try reader.object { r, key throws(ContractJSONReader.Unusual) in
            switch key {
            case Keys.anonymizedDeviceId: device = try r.data()
            case Keys.deviceKeyVersion: deviceKeyVersion = try r.uint32()
            case Keys.channel: channel = try r.string()
            case Keys.receivedAt: receivedAt = try r.date()
            case Keys.appVersion: appVersion = try r.string()
            case Keys.region: region = try r.optionalString()
            case Keys.appData: appData = try r.stringMap()
            default: throw ContractJSONReader.Unusual()
            }
        }
        self.init(anonymizedDeviceId: try required(device), deviceKeyVersion: try required(deviceKeyVersion),
                  channel: try required(channel), receivedAt: try required(receivedAt), appVersion: try required(appVersion),
                  region: region, appData: try required(appData))
    }
}

extension EncryptedIDPayload: ContractJSONReadable {
    public init(contractJSON reader: inout ContractJSONReader) throws(ContractJSONReader.Unusual) {
        let (id, version) = try bytesAndVersion(&reader, bytes: Keys.doublyHashedId, version: Keys.thirdPartyKeyVersion)
        self.init(doublyHashedId: id, thirdPartyKeyVersion: version)
    }
}

extension MatchTokenPayload: ContractJSONReadable {
    public init(contractJSON reader: inout ContractJSONReader) throws(ContractJSONReader.Unusual) {
        let (token, version) = try bytesAndVersion(&reader, bytes: Keys.token, version: Keys.matchKeyVersion)
        self.init(token: token, matchKeyVersion: version)
    }
}

extension EncryptedRecord: ContractJSONReadable {
    public init(contractJSON reader: inout ContractJSONReader) throws(ContractJSONReader.Unusual) {
        var version: UInt32?, wrapped: Data?, ciphertext: Data?
        try reader.object { r, key throws(ContractJSONReader.Unusual) in
            switch key {
            case Keys.recordKeyVersion: version = try r.uint32()
            case Keys.wrappedDataKey: wrapped = try r.data()
            case Keys.ciphertext: ciphertext = try r.data()
            default: throw ContractJSONReader.Unusual()
            }
        }
        self.init(recordKeyVersion: try required(version), wrappedDataKey: try required(wrapped), ciphertext: try required(ciphertext))
    }
}

extension MatchPayload: ContractJSONReadable {
    public init(contractJSON reader: inout ContractJSONReader) throws(ContractJSONReader.Unusual) {
        var token: Data?, version: UInt32?, record: EncryptedRecord?
        try reader.object { r, key throws(ContractJSONReader.Unusual) in
            switch key {
            case Keys.token: token = try r.data()
            case Keys.matchKeyVersion: version = try r.uint32()
            case Keys.record: record = r.null() ? nil : try EncryptedRecord(contractJSON: &r)
            default: throw ContractJSONReader.Unusual()
            }
        }
        self.init(token: try required(token), matchKeyVersion: try required(version), record: record)
    }
}

/// A flat string map (a filed record's fields).
extension Dictionary: ContractJSONReadable where Key == String, Value == String {
    public init(contractJSON reader: inout ContractJSONReader) throws(ContractJSONReader.Unusual) {
        self = try reader.stringMap()
    }
}

/// The keys as UTF-8, compared with the key bytes as read.
private enum Keys {
    static let pseudonym = bytes("pseudonym"), keyVersion = bytes("keyVersion")
    static let anonymizedDeviceId = bytes("anonymizedDeviceId"), deviceKeyVersion = bytes("deviceKeyVersion")
    static let channel = bytes("channel"), receivedAt = bytes("receivedAt"), appVersion = bytes("appVersion")
    static let region = bytes("region"), appData = bytes("appData")
    static let doublyHashedId = bytes("doublyHashedId"), thirdPartyKeyVersion = bytes("thirdPartyKeyVersion")
    static let token = bytes("token"), matchKeyVersion = bytes("matchKeyVersion"), record = bytes("record")
    static let recordKeyVersion = bytes("recordKeyVersion"), wrappedDataKey = bytes("wrappedDataKey"), ciphertext = bytes("ciphertext")

    static func bytes(_ key: String) -> ArraySlice<UInt8> { ArraySlice(key.utf8) }
}
