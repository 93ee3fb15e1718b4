import Foundation
import VeilCore

/// The part of an envelope anyone can read without keys: who produced what,
/// when, under which schema, and which key signed it.
///
/// The recipients of each sealed part are in that part's own header
/// (`SealedPart.recipients`), so that a part can be forwarded unchanged.
public struct EnvelopeHeader: Hashable, Sendable {
    /// The envelope format version (currently 1).
    public var formatVersion: UInt8
    /// The message id (UUIDv7, or derived from the input id by a stage).
    public var id: MessageID
    /// The message type, `veil.<noun>.<verb>.v1`.
    public var type: String
    /// The producing party (service name, downstream provider or device).
    public var producer: String
    /// Creation time in milliseconds since the Unix epoch.
    public var createdAtMilliseconds: UInt64
    /// The version of the type's payload schema.
    public var schemaVersion: UInt16
    /// The producer's signing key that signed this envelope.
    public var signer: KeyReference

    /// Creation time as a `Date`.
    public var createdAt: Date { Date(timeIntervalSince1970: Double(createdAtMilliseconds) / 1000) }
}
