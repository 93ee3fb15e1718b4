import Crypto
import Foundation

/// The identity of one message as it travels through Veil.
///
/// New messages get a UUIDv7 (time-ordered, RFC 9562). A stage that turns an
/// input message into an output message does not draw a fresh id: it derives
/// the output id from the input id and its own stage name, so a retry after a
/// crash produces the same id and the next consumer drops it as a duplicate.
/// That is how Veil gets exactly-once *effects* on any Kafka-compatible broker.
public struct MessageID: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// The 16 bytes of the UUID.
    public let uuid: UUID

    public init(uuid: UUID) { self.uuid = uuid }

    /// A fresh UUIDv7: 48 bits of Unix milliseconds, version 7, 74 random bits.
    public static func generate(now: Date = Date()) -> MessageID {
        let millis = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        var bytes = [UInt8](repeating: 0, count: 16)
        for i in 0..<6 { bytes[i] = UInt8((millis >> (8 * (5 - UInt64(i)))) & 0xff) }
        var rng = SystemRandomNumberGenerator()
        for i in 6..<16 { bytes[i] = UInt8.random(in: 0...255, using: &rng) }
        bytes[6] = (bytes[6] & 0x0f) | 0x70  // version 7
        bytes[8] = (bytes[8] & 0x3f) | 0x80  // RFC 9562 variant
        return MessageID(bytes: bytes)!
    }

    /// The id a stage gives to the message it produces from `input`.
    ///
    /// Deterministic: the same input and stage always give the same id. It is a
    /// UUIDv8 (RFC 9562 "custom") whose bits are SHA-256(input ‖ stage); it
    /// keeps the input's 48-bit timestamp so derived ids still sort by time.
    public static func derived(from input: MessageID, stage: String) -> MessageID {
        var hasher = SHA256()
        hasher.update(data: input.bytes)
        hasher.update(data: Array("veil.derived-id.v1/".utf8))
        hasher.update(data: Array(stage.utf8))
        var bytes = Array(hasher.finalize())
        bytes.removeLast(16)
        let source = input.bytes
        for i in 0..<6 { bytes[i] = source[i] }
        bytes[6] = (bytes[6] & 0x0f) | 0x80  // version 8
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        return MessageID(bytes: bytes)!
    }

    /// Creates an id from exactly 16 bytes.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 16 else { return nil }
        let b = Array(bytes)
        uuid = UUID(uuid: (b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                           b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]))
    }

    /// Parses the canonical textual form (`xxxxxxxx-xxxx-...`).
    public init?(_ string: String) {
        guard let uuid = UUID(uuidString: string) else { return nil }
        self.uuid = uuid
    }

    /// The 16 raw bytes.
    public var bytes: [UInt8] {
        withUnsafeBytes(of: uuid.uuid) { Array($0) }
    }

    /// Milliseconds since the Unix epoch encoded in a v7 (or derived v8) id.
    public var timestampMilliseconds: UInt64 {
        bytes.prefix(6).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Lower-case canonical form, as used in `ce_id` and logs.
    public var description: String { uuid.uuidString.lowercased() }

    public static func < (lhs: MessageID, rhs: MessageID) -> Bool {
        lhs.bytes.lexicographicallyPrecedes(rhs.bytes)
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let id = MessageID(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                    debugDescription: "not a UUID"))
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
