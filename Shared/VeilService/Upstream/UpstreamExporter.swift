import Foundation
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka

/// Which columns of a customer file leave the provider, and which one is the id.
///
/// A policy file is JSON: `{"idColumn": "customer_id", "allow": ["tier", "plan"]}`.
/// Without one, every column is allowed except the id and anything that looks like
/// a name, address, phone number, e-mail or birth date.
public struct ExportPolicy: Codable, Sendable, Equatable {
    public var idColumn: String
    /// Allowed columns; nil means "all but the default deny list".
    public var allow: [String]?

    public init(idColumn: String = "customer_id", allow: [String]? = nil) {
        self.idColumn = idColumn
        self.allow = allow
    }

    public static let deniedByDefault = ["name", "address", "street", "phone", "mobile", "email", "e_mail", "birth", "postcode",
                                         "zip", "iban", "ssn", "passport"]

    /// The columns of `header` that are exported (never the id column).
    public func exportedColumns(of header: [String]) -> [String] {
        header.filter { column in
            guard column != idColumn else { return false }
            if let allow { return allow.contains(column) }
            let lower = column.lowercased()
            return !Self.deniedByDefault.contains { lower.contains($0) }
        }
    }
}

/// The provider-side exporter: reads a customer CSV, replaces the id by
/// `P = HMAC(kP.id, id)`, keeps the allowed columns, and publishes batches of records
/// sealed to the key-vault on `veil.upstream.records.v1`.
public struct UpstreamExporter: Sendable {
    public struct Summary: Sendable, CustomStringConvertible {
        public var read = 0
        public var published = 0
        public var batches = 0
        /// Rejected rows by reason.
        public var rejected: [String: Int] = [:]
        public var exportedColumns: [String] = []
        public var seconds = 0.0

        public var description: String {
            var lines = ["records read:      \(read)", "records published: \(published) in \(batches) batches",
                         "columns exported:  \(exportedColumns.joined(separator: ", "))"]
            let rejectedTotal = rejected.values.reduce(0, +)
            lines.append("records rejected:  \(rejectedTotal)")
            for (reason, count) in rejected.sorted(by: { $0.key < $1.key }) { lines.append("  \(reason): \(count)") }
            if seconds > 0 { lines.append(String(format: "throughput:        %.0f records/s", Double(published) / seconds)) }
            return lines.joined(separator: "\n")
        }
    }

    public let codec: EnvelopeCodec
    public let producer: KafkaProducer
    public let pseudonymKey: VersionedKey
    public let policy: ExportPolicy
    public var batchSize = 500
    public var maxInFlight = 8

    public init(codec: EnvelopeCodec, producer: KafkaProducer, pseudonymKey: VersionedKey, policy: ExportPolicy) {
        self.codec = codec
        self.producer = producer
        self.pseudonymKey = pseudonymKey
        self.policy = policy
    }

    /// Exports a CSV file's bytes; `progress(rowsRead, totalBytesRead fraction)` after each batch.
    public func export(csv bytes: [UInt8], progress: @Sendable (Summary, Double) -> Void = { _, _ in }) async throws -> Summary {
        let started = ContinuousClock.now
        var rows = try UpstreamBatchReader(csv: bytes, policy: policy, pseudonymKey: pseudonymKey)
        var summary = Summary(exportedColumns: rows.exportedColumns)
        var inFlight: [Task<Void, any Error>] = []
        while let batch = rows.nextBatch(maxRecords: batchSize) {
            (summary.read, summary.rejected) = (rows.read, rows.rejected)
            let draft = EnvelopeDraft(type: MessageType.upstreamRecordsExported, parts: [
                .sealed(PartLabel.records, payload: batch.payload, to: ["key-vault"]),
            ])
            let message = try codec.message(draft, topic: Topic.upstreamRecords.name, key: Array(draft.id.description.utf8))
            let producer = self.producer
            inFlight.append(Task { _ = try await producer.send(message) })
            if inFlight.count >= maxInFlight { try await inFlight.removeFirst().value }
            summary.published += batch.records
            summary.batches += 1
            if batch.records >= batchSize { progress(summary, rows.fractionRead) }
        }
        (summary.read, summary.rejected) = (rows.read, rows.rejected)
        for task in inFlight { try await task.value }
        summary.seconds = (ContinuousClock.now - started).seconds
        progress(summary, 1)
        return summary
    }
}

/// The exporter's reading half: CSV rows straight into binary batches
/// (`UpstreamBatch.binaryEncoded`'s bytes), each id replaced by `P = HMAC(kP.id, id)` and
/// only the allowed columns kept, sorted by name. No dictionary and no `String` per row:
/// building an `UpstreamRecord` for each row cost the exporter more than the key-vault's
/// filing of it, on the cores they share in a benchmark.
public struct UpstreamBatchReader {
    private var reader: CSVReader
    private var row = CSVRow()
    private let headerCount: Int
    private let idIndex: Int
    private let idColumn: String
    /// Each exported column once, in `binaryEncoded`'s order: its UTF-8 name and its index in a row.
    private let fields: [(name: [UInt8], index: Int)]
    private let hasher: KeyedHasher
    /// The header's columns that leave the provider (`ExportPolicy.exportedColumns`).
    public let exportedColumns: [String]

    public init(csv bytes: [UInt8], policy: ExportPolicy, pseudonymKey: VersionedKey) throws {
        reader = CSVReader(bytes)
        guard let header = reader.next()?.map({ $0.trimmingCharacters(in: .whitespaces) }) else { throw ExportError.emptyFile }
        guard let idIndex = header.firstIndex(of: policy.idColumn) else { throw ExportError.missingIDColumn(policy.idColumn) }
        self.idIndex = idIndex
        idColumn = policy.idColumn
        headerCount = header.count
        exportedColumns = policy.exportedColumns(of: header)
        // A column named twice is one field, read from its first occurrence (as a dictionary keyed by name would).
        var unique: [String: Int] = [:]
        for column in exportedColumns where unique[column] == nil { unique[column] = header.firstIndex(of: column) }
        fields = unique.sorted { $0.key < $1.key }.map { (Array($0.key.utf8), $0.value) }
        hasher = pseudonymKey.hasher
    }

    /// How much of the file has been read, 0 to 1.
    public var fractionRead: Double { Double(reader.index) / Double(max(1, reader.bytes.count)) }

    /// Rows read so far (blank lines not counted).
    public private(set) var read = 0
    /// Rows rejected so far, by reason.
    public private(set) var rejected: [String: Int] = [:]

    /// The next batch of at most `maxRecords` records (at least one), or nil when the file is done.
    public mutating func nextBatch(maxRecords: Int) -> (payload: [UInt8], records: Int)? {
        let maxRecords = max(1, maxRecords)  // never an empty batch that would end the export early
        var writer = UpstreamBatchWriter(capacity: maxRecords * 160)
        while writer.count < maxRecords, reader.nextRow(into: &row) {
            if row.count == 1, row[0].isEmpty { continue }  // blank line
            read += 1
            guard row.count == headerCount else {
                rejected["wrong number of columns", default: 0] += 1
                continue
            }
            let id = identifier()
            guard !id.isEmpty else {
                rejected["empty \(idColumn)", default: 0] += 1
                continue
            }
            guard id.count <= 128 else {
                rejected["\(idColumn) longer than 128 bytes", default: 0] += 1
                continue
            }
            var present = 0
            for field in fields where !row[field.index].isEmpty { present += 1 }
            writer.beginRecord(pseudonym: hasher.hash(id), keyVersion: hasher.version, fieldCount: present)
            for field in fields {
                let value = row[field.index]
                guard !value.isEmpty else { continue }
                if value.allSatisfy({ $0 < 0x80 }) {
                    writer.appendField(key: field.name, value: value)
                } else {  // as a `String` would carry it: invalid UTF-8 replaced
                    writer.appendField(key: field.name, value: ArraySlice(row.string(field.index).utf8))
                }
            }
        }
        guard writer.count > 0 else { return nil }
        let records = writer.count
        return (writer.finish(), records)
    }

    /// The row's id, without surrounding whitespace (Unicode's, as Foundation trims it).
    private func identifier() -> ArraySlice<UInt8> {
        let raw = row[idIndex]
        let blank: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        if let first = raw.first, let last = raw.last, !blank(first), !blank(last), raw.allSatisfy({ $0 < 0x80 }) {
            return raw
        }
        return ArraySlice(row.string(idIndex).trimmingCharacters(in: .whitespaces).utf8)
    }
}

public enum ExportError: Error, Sendable, CustomStringConvertible {
    case emptyFile
    case missingIDColumn(String)

    public var description: String {
        switch self {
        case .emptyFile: "the CSV file is empty"
        case .missingIDColumn(let column): "the CSV header has no '\(column)' column (set idColumn in the policy)"
        }
    }
}
