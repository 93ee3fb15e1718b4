extension EnvelopeHeader {
    /// The CloudEvents 1.0 binary-mode Kafka headers that mirror this header,
    /// so operators can route and trace without keys: `ce_specversion`,
    /// `ce_id`, `ce_type`, `ce_source` (the producer), `ce_time` (RFC 3339,
    /// UTC, milliseconds) and `content-type`.
    public var cloudEventsHeaders: [(String, [UInt8])] {
        [
            ("ce_specversion", Array("1.0".utf8)),
            ("ce_id", Array(id.description.utf8)),
            ("ce_type", Array(type.utf8)),
            ("ce_source", Array(producer.utf8)),
            ("ce_time", Array(Self.rfc3339(milliseconds: createdAtMilliseconds).utf8)),
            ("content-type", Array(Self.contentType.utf8)),
        ]
    }

    /// The Kafka `content-type` of an envelope value.
    public static let contentType = "application/vnd.veil.envelope.v1"

    /// `2025-01-31T23:59:59.123Z`. Computed directly (no formatter: this is on
    /// the hot path and must be thread-safe); years past 9999 are clamped.
    static func rfc3339(milliseconds: UInt64) -> String {
        let ms = min(milliseconds, 253_402_300_799_999)  // 9999-12-31T23:59:59.999Z
        let days = Int64(ms / 86_400_000)
        let msOfDay = Int64(ms % 86_400_000)
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468
        let era = z / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ v: Int64, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(msOfDay / 3_600_000, 2)):"
            + "\(pad(msOfDay / 60_000 % 60, 2)):\(pad(msOfDay / 1000 % 60, 2)).\(pad(msOfDay % 1000, 3))Z"
    }
}
