import Foundation

/// Strict size limits applied to every envelope, both when sealing and on receipt.
///
/// Checked before any cryptography so that a hostile producer cannot make a
/// consumer spend memory or CPU on an oversized message.
public struct EnvelopeLimits: Sendable, Hashable {
    /// Largest serialized envelope, in bytes (Kafka's default `message.max.bytes` is about 1 MiB).
    public var maxEnvelopeBytes: Int
    /// Most sealed parts in one envelope.
    public var maxParts: Int
    /// Most recipients of one sealed part.
    public var maxRecipients: Int
    /// Longest type, producer, key id or part label, in bytes (the format allows at most 255).
    public var maxStringBytes: Int

    public init(maxEnvelopeBytes: Int = 1_000_000, maxParts: Int = 8, maxRecipients: Int = 16,
                maxStringBytes: Int = 64) {
        self.maxEnvelopeBytes = min(max(0, maxEnvelopeBytes), Int(Int32.max))
        self.maxParts = min(max(1, maxParts), 255)
        self.maxRecipients = min(max(1, maxRecipients), 255)
        self.maxStringBytes = min(max(1, maxStringBytes), 255)
    }
}

/// How envelopes are checked on receipt: limits and the allowed clock skew.
///
/// Every argument has a default; `init(environment:)` fills the same struct
/// from `VEIL_ENVELOPE_*` variables.
public struct EnvelopeConfiguration: Sendable, Hashable {
    /// Size limits.
    public var limits: EnvelopeLimits
    /// How far created-at may lie from now, in the past or the future. It is
    /// also how long message ids are remembered for replay detection, so it
    /// must exceed the longest consumer lag at which messages should still be
    /// accepted.
    public var maxClockSkew: Duration

    public init(limits: EnvelopeLimits = EnvelopeLimits(), maxClockSkew: Duration = .seconds(300)) {
        self.limits = limits
        self.maxClockSkew = maxClockSkew < .zero ? .zero : maxClockSkew
    }

    /// Reads `VEIL_ENVELOPE_MAX_BYTES`, `VEIL_ENVELOPE_MAX_PARTS`,
    /// `VEIL_ENVELOPE_MAX_RECIPIENTS`, `VEIL_ENVELOPE_MAX_STRING_BYTES` and
    /// `VEIL_ENVELOPE_MAX_CLOCK_SKEW_SECONDS`; missing or unparsable values keep their defaults.
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        let defaults = EnvelopeLimits()
        func int(_ name: String, _ fallback: Int) -> Int { environment[name].flatMap { Int($0) } ?? fallback }
        self.init(
            limits: EnvelopeLimits(
                maxEnvelopeBytes: int("VEIL_ENVELOPE_MAX_BYTES", defaults.maxEnvelopeBytes),
                maxParts: int("VEIL_ENVELOPE_MAX_PARTS", defaults.maxParts),
                maxRecipients: int("VEIL_ENVELOPE_MAX_RECIPIENTS", defaults.maxRecipients),
                maxStringBytes: int("VEIL_ENVELOPE_MAX_STRING_BYTES", defaults.maxStringBytes)),
            maxClockSkew: .seconds(int("VEIL_ENVELOPE_MAX_CLOCK_SKEW_SECONDS", 300)))
    }

    /// The skew in whole milliseconds, saturating.
    var maxClockSkewMilliseconds: UInt64 {
        let (seconds, attoseconds) = maxClockSkew.components
        guard seconds >= 0 else { return 0 }
        let (ms, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1000)
        let (total, overflow2) = ms.addingReportingOverflow(UInt64(max(0, attoseconds / 1_000_000_000_000_000)))
        return overflow || overflow2 ? UInt64.max : total
    }
}
