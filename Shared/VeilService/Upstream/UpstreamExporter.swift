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
        var reader = CSVReader(bytes)
        guard let header = reader.next()?.map({ $0.trimmingCharacters(in: .whitespaces) }) else {
            throw ExportError.emptyFile
        }
        guard let idIndex = header.firstIndex(of: policy.idColumn) else { throw ExportError.missingIDColumn(policy.idColumn) }
        let columns = policy.exportedColumns(of: header)
        let indices = columns.compactMap { header.firstIndex(of: $0) }
        var summary = Summary(exportedColumns: columns)
        var batch: [UpstreamRecord] = []
        var inFlight: [Task<Void, any Error>] = []

        func flush() async throws {
            guard !batch.isEmpty else { return }
            let records = batch
            batch.removeAll(keepingCapacity: true)
            let draft = EnvelopeDraft(type: MessageType.upstreamRecordsExported, parts: [
                .sealed(PartLabel.records, payload: UpstreamBatch(records: records).binaryEncoded(), to: ["key-vault"]),
            ])
            let message = try codec.message(draft, topic: Topic.upstreamRecords.name, key: Array(draft.id.description.utf8))
            let producer = self.producer
            inFlight.append(Task { _ = try await producer.send(message) })
            if inFlight.count >= maxInFlight { try await inFlight.removeFirst().value }
            summary.published += records.count
            summary.batches += 1
        }

        while let row = reader.next() {
            if row.count == 1, row[0].isEmpty { continue }  // blank line
            summary.read += 1
            guard row.count == header.count else {
                summary.rejected["wrong number of columns", default: 0] += 1
                continue
            }
            let id = row[idIndex].trimmingCharacters(in: .whitespaces)
            guard !id.isEmpty else {
                summary.rejected["empty \(policy.idColumn)", default: 0] += 1
                continue
            }
            guard id.utf8.count <= 128 else {
                summary.rejected["\(policy.idColumn) longer than 128 bytes", default: 0] += 1
                continue
            }
            var fields: [String: String] = [:]
            for (column, index) in zip(columns, indices) where !row[index].isEmpty { fields[column] = row[index] }
            batch.append(UpstreamRecord(pseudonym: Data(pseudonymKey.hash(Array(id.utf8))), keyVersion: pseudonymKey.version,
                                        fields: fields))
            if batch.count >= batchSize {
                try await flush()
                progress(summary, Double(reader.index) / Double(max(1, bytes.count)))
            }
        }
        try await flush()
        for task in inFlight { try await task.value }
        summary.seconds = (ContinuousClock.now - started).seconds
        progress(summary, 1)
        return summary
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
