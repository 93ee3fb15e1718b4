import Foundation
import Logging
import Synchronization

/// One JSON object per line on standard error: time, level, service, message and
/// metadata. Veil logs message ids and error codes, never payloads.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    let label: String
    let service: String
    let sink: @Sendable (Data) -> Void

    private static let output = Mutex<FileHandle>(FileHandle.standardError)

    /// Writes a line to standard error (serialised across threads).
    public static let standardError: @Sendable (Data) -> Void = { line in output.withLock { $0.write(line) } }

    /// - Parameter sink: where each line goes; standard error by default (tests capture it).
    public init(label: String, service: String, level: Logger.Level = .info,
                sink: @escaping @Sendable (Data) -> Void = JSONLogHandler.standardError) {
        self.label = label
        self.service = service
        self.sink = sink
        logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [String: Any] = [
            "ts": Self.timestamp(),
            "level": event.level.rawValue,
            "service": service,
            "logger": label,
            "msg": event.message.description,
        ]
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        for (key, value) in merged { fields[key] = Self.json(value) }
        guard var line = try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        line.append(0x0a)
        sink(line)
    }

    static func json(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let s): s
        case .stringConvertible(let c): c.description
        case .array(let a): a.map(json)
        case .dictionary(let d): d.mapValues(json)
        }
    }

    static func timestamp() -> String {
        let style = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
        return Date().formatted(style)
    }
}
