import Foundation

/// Envelope types of Veil's messages (`veil.<noun>.<verb>.v1`), as the key directory's allowlist names them.
public enum MessageType {
    public static let inquiryReceived = "veil.inquiry.received.v1"
    public static let inquiryAnonymized = "veil.inquiry.anonymized.v1"
    public static let inquiryTokenized = "veil.inquiry.tokenized.v1"
    public static let inquiryMatched = "veil.inquiry.matched.v1"
    public static let insightPublished = "veil.insight.published.v1"
    public static let upstreamRecordsExported = "veil.upstream-record.exported.v1"
    public static let keyGranted = "veil.key.granted.v1"
}

/// Labels of the sealed parts of the inquiry flow, and who can open each.
public enum PartLabel {
    /// `P = HMAC(kP.id, userId)`: ingress → anonymizer.
    public static let pseudonym = "pseudonym"
    /// Channel, time, app version, region, app data and `anonymizedDeviceId`: ingress → merger,
    /// forwarded unchanged by every stage in between.
    public static let accessInfo = "access-info"
    /// `encryptedId`, the doubly hashed id `A` sealed to the key-vault: anonymizer → key-vault.
    public static let encryptedID = "encrypted-id"
    /// `matchToken = HMAC(k2, A)`: key-vault → matcher.
    public static let matchToken = "match-token"
    /// The match result with the still-encrypted record: matcher → merger.
    public static let match = "match"
    /// The merged result: merger → downstream providers.
    public static let insight = "insight"
    /// A batch of pseudonymized customer records: upstream exporter → key-vault.
    public static let records = "records"
    /// Key material granted by the key-vault to one service.
    public static let grant = "grant"
}

/// JSON coding of every decrypted payload: bytes as base64, dates as milliseconds
/// since 1970, keys sorted. The JSON Schemas in docs/asyncapi.yaml describe these.
public enum ContractCoding {
    // Configured once and never mutated afterwards, so sharing them across threads is safe.
    nonisolated(unsafe) private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .millisecondsSince1970
        encoder.dataEncodingStrategy = .base64
        return encoder
    }()
    nonisolated(unsafe) private static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        decoder.dataDecodingStrategy = .base64
        return decoder
    }()

    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        // The payloads of every inquiry write themselves (the same bytes, a fraction of the cost).
        if let writable = value as? any ContractJSONWritable { return writable.contractJSON() }
        // Only plain values are encoded; this cannot fail.
        return (try? Array(encoder.encode(value))) ?? []
    }

    /// `value` through `JSONEncoder` alone, for checking the hand-written payloads against it.
    public static func encodeGenerically<T: Encodable>(_ value: T) -> [UInt8] {
        (try? Array(encoder.encode(value))) ?? []
    }

    /// A flat string map as a JSON object with sorted keys, written by hand: the same
    /// bytes `encode` gives, at a fraction of the cost of the generic encoder, for encoding
    /// one small map per record in bulk.
    public static func encodeFlat(_ map: [String: String]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(2 + map.count * 24)
        ContractJSONWriter.appendMap(map, to: &out)
        return out
    }

    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        // The payloads of every inquiry read their usual shape by hand; anything else, and
        // every error, is `JSONDecoder`'s.
        if let readable = T.self as? any ContractJSONReadable.Type, let value = readable.fromContractJSON(bytes) as? T {
            return value
        }
        return try decoder.decode(type, from: Data(bytes))
    }

    /// `bytes` through `JSONDecoder` alone, for checking the hand-read payloads against it.
    public static func decodeGenerically<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try decoder.decode(type, from: Data(bytes))
    }
}

/// Part `pseudonym`: the provider pseudonym `P` of the user id.
public struct PseudonymPayload: Codable, Sendable, Equatable {
    /// `HMAC-SHA256(kP.id, userId)`, 32 bytes.
    public var pseudonym: Data
    /// The version of `kP.id` used.
    public var keyVersion: UInt32

    public init(pseudonym: Data, keyVersion: UInt32) {
        self.pseudonym = pseudonym
        self.keyVersion = keyVersion
    }
}

/// Part `access-info`: how and when the user reached the business. Only the merger opens it.
public struct AccessInfo: Codable, Sendable, Equatable {
    /// `HMAC-SHA256(kP.dev, deviceId)`, 32 bytes.
    public var anonymizedDeviceId: Data
    /// The version of `kP.dev` used.
    public var deviceKeyVersion: UInt32
    /// `app`, `chat`, `web`, `pos`, ...
    public var channel: String
    /// When ingress accepted the inquiry.
    public var receivedAt: Date
    public var appVersion: String
    /// The region ingress serves (its configuration), if set.
    public var region: String?
    /// Free-form app data the device sent (string values only).
    public var appData: [String: String]

    public init(anonymizedDeviceId: Data, deviceKeyVersion: UInt32, channel: String, receivedAt: Date,
                appVersion: String, region: String?, appData: [String: String]) {
        self.anonymizedDeviceId = anonymizedDeviceId
        self.deviceKeyVersion = deviceKeyVersion
        self.channel = channel
        self.receivedAt = receivedAt
        self.appVersion = appVersion
        self.region = region
        self.appData = appData
    }
}

/// Part `encrypted-id`: the doubly hashed id `A = HMAC(kT, P)`, sealed to the key-vault.
public struct EncryptedIDPayload: Codable, Sendable, Equatable {
    public var doublyHashedId: Data
    /// The version of `kT` used.
    public var thirdPartyKeyVersion: UInt32

    public init(doublyHashedId: Data, thirdPartyKeyVersion: UInt32) {
        self.doublyHashedId = doublyHashedId
        self.thirdPartyKeyVersion = thirdPartyKeyVersion
    }
}

/// Part `match-token`: `HMAC(k2, A)`, sealed to the matcher.
public struct MatchTokenPayload: Codable, Sendable, Equatable {
    public var token: Data
    /// The version of `k2` used; the matcher looks the token up among that version's tokens.
    public var matchKeyVersion: UInt32

    public init(token: Data, matchKeyVersion: UInt32) {
        self.token = token
        self.matchKeyVersion = matchKeyVersion
    }
}

/// A filed customer record as the key-vault stored it: the record's JSON encrypted
/// under a random data key, which is wrapped by the record key (a key-encryption key).
public struct EncryptedRecord: Codable, Sendable, Equatable {
    public var recordKeyVersion: UInt32
    /// ChaCha20-Poly1305 combined box (nonce ‖ ciphertext ‖ tag) of the 32-byte data key.
    public var wrappedDataKey: Data
    /// ChaCha20-Poly1305 combined box of the record's JSON under the data key.
    public var ciphertext: Data

    public init(recordKeyVersion: UInt32, wrappedDataKey: Data, ciphertext: Data) {
        self.recordKeyVersion = recordKeyVersion
        self.wrappedDataKey = wrappedDataKey
        self.ciphertext = ciphertext
    }
}

/// Part `match`: the matcher's answer, sealed to the merger.
public struct MatchPayload: Codable, Sendable, Equatable {
    public var token: Data
    public var matchKeyVersion: UInt32
    /// The filed record, or nil when no record carries this token.
    public var record: EncryptedRecord?

    public init(token: Data, matchKeyVersion: UInt32, record: EncryptedRecord?) {
        self.token = token
        self.matchKeyVersion = matchKeyVersion
        self.record = record
    }
}

/// Part `insight` on `veil.insights.v1`: what a downstream provider receives.
public struct Insight: Codable, Sendable, Equatable {
    /// The inquiry id ingress returned to the device (also the Kafka key).
    public var inquiryId: String
    /// Whether a filed customer record matched.
    public var matched: Bool
    /// The match token (a keyed pseudonym, stable per customer until `k2` rotates).
    public var matchToken: Data
    public var matchKeyVersion: UInt32
    /// `HMAC(kP.dev, deviceId)`.
    public var anonymizedDeviceId: Data
    public var channel: String
    public var receivedAt: Date
    public var appVersion: String
    public var region: String?
    public var appData: [String: String]
    /// The record's fields that the provider's export policy allowed; nil when unmatched.
    public var record: [String: String]?
    public var mergedAt: Date

    public init(inquiryId: String, matched: Bool, matchToken: Data, matchKeyVersion: UInt32, access: AccessInfo,
                record: [String: String]?, mergedAt: Date) {
        self.inquiryId = inquiryId
        self.matched = matched
        self.matchToken = matchToken
        self.matchKeyVersion = matchKeyVersion
        self.anonymizedDeviceId = access.anonymizedDeviceId
        self.channel = access.channel
        self.receivedAt = access.receivedAt
        self.appVersion = access.appVersion
        self.region = access.region
        self.appData = access.appData
        self.record = record
        self.mergedAt = mergedAt
    }
}

/// One pseudonymized customer record from the provider's file.
public struct UpstreamRecord: Codable, Sendable, Equatable {
    /// `P = HMAC(kP.id, customer id)`.
    public var pseudonym: Data
    public var keyVersion: UInt32
    /// The columns the export policy allows.
    public var fields: [String: String]

    public init(pseudonym: Data, keyVersion: UInt32, fields: [String: String]) {
        self.pseudonym = pseudonym
        self.keyVersion = keyVersion
        self.fields = fields
    }
}

/// Part `records` on `veil.upstream.records.v1`: a batch of records, sealed to the key-vault.
public struct UpstreamBatch: Codable, Sendable, Equatable {
    public var records: [UpstreamRecord]
    public init(records: [UpstreamRecord]) { self.records = records }
}

/// The compact form of part `records`, which the exporter sends: JSON cost more to
/// write and read than everything else filing does to a record (a quarter of the
/// exporter's CPU, a third of the key-vault's). The key-vault reads both forms; a
/// payload that starts with the magic is binary, anything else is the JSON above.
///
/// Layout (integers big-endian): `"VUB1"`, record count (u32); per record: `P` (32
/// bytes), key version (u32), field count (u32); per field: key length (u32), key
/// (UTF-8), value length (u32), value (UTF-8). Nothing may follow the last record.
extension UpstreamBatch {
    public static let binaryMagic: [UInt8] = Array("VUB1".utf8)

    public func binaryEncoded() -> [UInt8] {
        var writer = UpstreamBatchWriter(capacity: records.count * 160)
        for record in records {
            writer.beginRecord(pseudonym: Array(record.pseudonym), keyVersion: record.keyVersion, fieldCount: record.fields.count)
            for (key, value) in record.fields.sorted(by: { $0.key < $1.key }) {
                writer.appendField(key: Array(key.utf8), value: ArraySlice(value.utf8))
            }
        }
        return writer.finish()
    }

    /// Reads either form (see the type's documentation).
    public static func decode(_ bytes: [UInt8]) throws -> UpstreamBatch {
        guard bytes.starts(with: binaryMagic) else { return try ContractCoding.decode(UpstreamBatch.self, from: bytes) }
        var records: [UpstreamRecord] = []
        try readBinary(bytes, reserve: { records.reserveCapacity($0) }) { reader, pseudonym, version, fieldCount in
            records.append(UpstreamRecord(pseudonym: Data(pseudonym), keyVersion: version,
                                          fields: try readFields(&reader, count: fieldCount)))
        }
        return UpstreamBatch(records: records)
    }

    /// Walks the binary form: the record count, then per record its `P`, key version and
    /// field count, leaving `reader` at the record's fields, which `body` reads.
    static func readBinary(_ bytes: [UInt8], reserve: (Int) -> Void,
                           _ body: (inout BinaryReader, ArraySlice<UInt8>, UInt32, Int) throws -> Void) throws {
        var reader = BinaryReader(bytes: bytes, index: binaryMagic.count)
        let count = Int(try reader.integer(UInt32.self))
        // Each record takes at least 40 bytes: a count beyond that is a lie, not a reason to reserve memory.
        guard count <= (bytes.count - reader.index) / 40 else { throw ContractError.malformed("record count \(count) exceeds the payload") }
        reserve(count)
        for _ in 0..<count {
            let pseudonym = try reader.bytes(32)
            let version = try reader.integer(UInt32.self)
            let fieldCount = Int(try reader.integer(UInt32.self))
            guard fieldCount <= (bytes.count - reader.index) / 8 else { throw ContractError.malformed("field count \(fieldCount) exceeds the payload") }
            try body(&reader, pseudonym, version, fieldCount)
        }
        guard reader.index == bytes.count else { throw ContractError.malformed("\(bytes.count - reader.index) bytes after the last record") }
    }

    /// A record's fields (a repeated key: the last wins).
    static func readFields(_ reader: inout BinaryReader, count: Int) throws -> [String: String] {
        var fields: [String: String] = Dictionary(minimumCapacity: count)
        for _ in 0..<count {
            let key = try reader.string(Int(try reader.integer(UInt32.self)))
            fields[key] = try reader.string(Int(try reader.integer(UInt32.self)))
        }
        return fields
    }
}

/// Writes the binary form of part `records` record by record, for an exporter that
/// reads its rows straight into it instead of building an `UpstreamRecord` (and a
/// dictionary of fields) per row. `UpstreamBatch.binaryEncoded` writes through it.
public struct UpstreamBatchWriter: Sendable {
    private var out: [UInt8]
    /// Records begun so far.
    public private(set) var count = 0
    /// Fields the current record announced and not yet written.
    private var fieldsDue = 0

    public init(capacity: Int = 0) {
        out = []
        out.reserveCapacity(8 + capacity)
        out.append(contentsOf: UpstreamBatch.binaryMagic)
        Self.append(UInt32(0), to: &out)  // the record count, set by `finish`
    }

    /// Starts a record; exactly `fieldCount` `appendField` calls must follow. Fields are
    /// written as given: `binaryEncoded` gives them sorted by key, as the key-vault's
    /// fast path expects (any other order is still read correctly, only slower).
    public mutating func beginRecord(pseudonym: [UInt8], keyVersion: UInt32, fieldCount: Int) {
        precondition(pseudonym.count == 32, "a pseudonym is 32 bytes")
        precondition(fieldsDue == 0, "the previous record still owes \(fieldsDue) fields")
        out.append(contentsOf: pseudonym)
        Self.append(keyVersion, to: &out)
        Self.append(UInt32(fieldCount), to: &out)
        fieldsDue = fieldCount
        count += 1
    }

    /// One field of the current record, both sides UTF-8.
    public mutating func appendField(key: [UInt8], value: ArraySlice<UInt8>) {
        precondition(fieldsDue > 0, "more fields than the record announced")
        fieldsDue -= 1
        Self.append(UInt32(key.count), to: &out)
        out.append(contentsOf: key)
        Self.append(UInt32(value.count), to: &out)
        out.append(contentsOf: value)
    }

    /// The payload's bytes so far (the header included).
    public var byteCount: Int { out.count }

    /// The finished payload.
    public consuming func finish() -> [UInt8] {
        precondition(fieldsDue == 0, "the last record still owes \(fieldsDue) fields")
        withUnsafeBytes(of: UInt32(count).bigEndian) { raw in
            for (offset, byte) in raw.enumerated() { out[UpstreamBatch.binaryMagic.count + offset] = byte }
        }
        return out
    }

    private static func append<I: FixedWidthInteger>(_ value: I, to out: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { out.append(contentsOf: $0) }
    }
}

/// A record as the key-vault files it: `P`, its key version, and its fields as the JSON
/// object `ContractCoding.encodeFlat(fields)` writes (sorted keys), byte for byte.
public struct FilingRecord: Sendable, Equatable {
    public var pseudonym: [UInt8]
    public var keyVersion: UInt32
    public var fieldsJSON: [UInt8]

    public init(pseudonym: [UInt8], keyVersion: UInt32, fieldsJSON: [UInt8]) {
        self.pseudonym = pseudonym
        self.keyVersion = keyVersion
        self.fieldsJSON = fieldsJSON
    }
}

extension UpstreamBatch {
    /// Reads either form straight into what filing needs: the same records as `decode`,
    /// each with `ContractCoding.encodeFlat(record.fields)`, and the same errors.
    ///
    /// Decoding into a dictionary of `String`s only to sort its keys and write them out
    /// again was a fifth of the vault's filing work. A binary record whose keys are ASCII
    /// and strictly increasing (what `binaryEncoded` writes) is written as JSON straight
    /// from the payload; any other record (keys out of order, repeated, or beyond ASCII)
    /// goes through the dictionary, so the result never depends on the path.
    public static func decodeForFiling(_ bytes: [UInt8]) throws -> [FilingRecord] {
        guard bytes.starts(with: binaryMagic) else {
            return try decode(bytes).records.map {
                FilingRecord(pseudonym: Array($0.pseudonym), keyVersion: $0.keyVersion, fieldsJSON: ContractCoding.encodeFlat($0.fields))
            }
        }
        var records: [FilingRecord] = []
        try readBinary(bytes, reserve: { records.reserveCapacity($0) }) { reader, pseudonym, version, fieldCount in
            let fieldsStart = reader.index
            let json: [UInt8]
            if let direct = try directFieldsJSON(&reader, count: fieldCount) {
                json = direct
            } else {
                reader.index = fieldsStart
                json = ContractCoding.encodeFlat(try readFields(&reader, count: fieldCount))
            }
            records.append(FilingRecord(pseudonym: Array(pseudonym), keyVersion: version, fieldsJSON: json))
        }
        return records
    }

    /// The record's fields as JSON, or nil when its keys are not ASCII in strictly
    /// increasing order (the caller then takes the dictionary path from the same start).
    private static func directFieldsJSON(_ reader: inout BinaryReader, count: Int) throws -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(2 + count * 24)
        out.append(UInt8(ascii: "{"))
        var previousKey: ArraySlice<UInt8> = []
        for index in 0..<count {
            let key = try reader.bytes(Int(try reader.integer(UInt32.self)))
            guard key.allSatisfy({ $0 < 0x80 }), index == 0 || previousKey.lexicographicallyPrecedes(key) else { return nil }
            previousKey = key
            let valueStart = reader.index
            let value = try reader.bytes(Int(try reader.integer(UInt32.self)))
            if !value.allSatisfy({ $0 < 0x80 }) {
                // Beyond ASCII: the same check (and error) as the dictionary path's.
                reader.index = valueStart
                _ = try reader.string(Int(try reader.integer(UInt32.self)))
            }
            if index > 0 { out.append(UInt8(ascii: ",")) }
            ContractJSONWriter.appendString(utf8: key, to: &out)
            out.append(UInt8(ascii: ":"))
            ContractJSONWriter.appendString(utf8: value, to: &out)
        }
        out.append(UInt8(ascii: "}"))
        return out
    }
}

/// A payload that does not follow its contract.
public enum ContractError: Error, Sendable, CustomStringConvertible {
    case malformed(String)
    public var description: String {
        switch self { case .malformed(let reason): "malformed payload: \(reason)" }
    }
}

/// Bounds-checked reading of a binary payload.
struct BinaryReader {
    let bytes: [UInt8]
    var index: Int

    mutating func bytes(_ count: Int) throws -> ArraySlice<UInt8> {
        guard count >= 0, bytes.count - index >= count else { throw ContractError.malformed("truncated at byte \(index)") }
        defer { index += count }
        return bytes[index..<index + count]
    }

    mutating func integer<I: FixedWidthInteger>(_: I.Type) throws -> I {
        try bytes(MemoryLayout<I>.size).reduce(0) { $0 << 8 | I($1) }
    }

    mutating func string(_ count: Int) throws -> String {
        let start = index
        guard let string = String(validating: try bytes(count), as: UTF8.self) else {
            throw ContractError.malformed("invalid UTF-8 at byte \(start)")
        }
        return string
    }
}

/// Part `grant` on `veil.keys.grants.v1`: key material the key-vault grants to one service.
public struct KeyGrant: Codable, Sendable, Equatable {
    /// What a granted key is for.
    public enum Purpose: String, Codable, Sendable, CaseIterable {
        /// `kT`, granted to the anonymizer.
        case thirdPartyHash = "third-party-hash"
        /// The record key-encryption key, granted to the merger.
        case record
    }

    public struct Key: Codable, Sendable, Equatable {
        public var version: UInt32
        /// 32 bytes.
        public var material: Data
        /// The newest active version is used for new data; older ones only to open.
        public var active: Bool

        public init(version: UInt32, material: Data, active: Bool) {
            self.version = version
            self.material = material
            self.active = active
        }
    }

    public var purpose: Purpose
    public var keys: [Key]

    public init(purpose: Purpose, keys: [Key]) {
        self.purpose = purpose
        self.keys = keys
    }
}
