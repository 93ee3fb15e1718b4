/// Why an envelope was refused, as a stable code that logs, metrics and
/// dead-letter records can carry.
///
/// Modelled on `KafkaError` / `ServiceGroupError`: a struct rather than an
/// enum, so new codes do not break callers' `switch` statements. Equality is
/// by code. `description` names only the code and a fixed explanation: it
/// never contains payload bytes, key material or identifiers.
public struct EnvelopeError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The stable machine-readable code, e.g. `envelope.bad_signature`.
    public let code: String

    private init(_ code: String) { self.code = code }

    /// The envelope (or one of its strings, parts or recipient lists) exceeds a configured limit.
    public static let tooLarge = EnvelopeError("envelope.too_large")
    /// The bytes do not follow the envelope layout (bad magic, truncated, bad lengths or characters).
    public static let malformed = EnvelopeError("envelope.malformed")
    /// The envelope or part format version is not one this library understands.
    public static let unsupportedVersion = EnvelopeError("envelope.unsupported_version")
    /// A key id and version named in the envelope is not in the key directory.
    public static let unknownKey = EnvelopeError("envelope.unknown_key")
    /// The signing key version is in the directory but marked retired.
    public static let retiredKey = EnvelopeError("envelope.retired_key")
    /// The directory does not allow this producer (or this producer's key) to publish this type on this topic.
    public static let producerNotAllowed = EnvelopeError("envelope.producer_not_allowed")
    /// The Ed25519 signature does not verify over header and body.
    public static let badSignature = EnvelopeError("envelope.bad_signature")
    /// Created-at lies outside the allowed clock skew of now, in the past or the future.
    public static let stale = EnvelopeError("envelope.stale")
    /// The message id was already accepted within the freshness window.
    public static let replayed = EnvelopeError("envelope.replayed")
    /// No sealed part is addressed to this service's encryption key.
    public static let notARecipient = EnvelopeError("envelope.not_a_recipient")
    /// A part addressed to this service could not be opened (wrong key, tampered, or key no longer held).
    public static let openFailed = EnvelopeError("envelope.open_failed")
    /// Sealing failed: a recipient has no active encryption key, or the identity no active signing key.
    public static let sealFailed = EnvelopeError("envelope.seal_failed")

    /// Every code this library can produce, for dashboards and documentation.
    public static let all: [EnvelopeError] = [
        .tooLarge, .malformed, .unsupportedVersion, .unknownKey, .retiredKey, .producerNotAllowed,
        .badSignature, .stale, .replayed, .notARecipient, .openFailed, .sealFailed,
    ]

    public var description: String {
        "EnvelopeError(\(code)): \(explanation)"
    }

    private var explanation: String {
        switch code {
        case "envelope.too_large": "the envelope exceeds a configured size limit"
        case "envelope.malformed": "the bytes are not a well-formed envelope"
        case "envelope.unsupported_version": "unknown envelope or part format version"
        case "envelope.unknown_key": "a key id or version is not in the key directory"
        case "envelope.retired_key": "the signing key version is retired"
        case "envelope.producer_not_allowed": "the producer may not publish this type on this topic"
        case "envelope.bad_signature": "the signature does not verify"
        case "envelope.stale": "created-at is outside the allowed clock skew"
        case "envelope.replayed": "the message id was already accepted"
        case "envelope.not_a_recipient": "no part is addressed to this service"
        case "envelope.open_failed": "a part addressed to this service could not be opened"
        case "envelope.seal_failed": "no active key to seal or sign with"
        default: "envelope refused"
        }
    }
}
