import Foundation
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka

/// The provider's two smaller files, sent like customer records (sealed to the key-vault
/// on `veil.upstream.records.v1`, in batches, with a summary):
/// - households: `tid,household_id` (the till's customer id → household), for point-of-sale lookups;
/// - PINs: `account_id,pin`, turned into keyed verifiers by the vault; the account id
///   leaves the provider only as `accountRef`, the reference ingress binds devices to.
public struct ReferenceFileExporter: Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        case households, pins

        var columns: [String] { self == .households ? ["tid", "household_id"] : ["account_id", "pin"] }
        var label: String { self == .households ? PartLabel.households : PartLabel.pinVerifiers }
    }

    public let codec: EnvelopeCodec
    public let producer: KafkaProducer
    /// `kP.id`: only the PIN file needs it (account references).
    public let pseudonymKey: VersionedKey?
    public var batchSize = 1_000

    public init(codec: EnvelopeCodec, producer: KafkaProducer, pseudonymKey: VersionedKey?) {
        self.codec = codec
        self.producer = producer
        self.pseudonymKey = pseudonymKey
    }

    public func export(_ kind: Kind, csv bytes: [UInt8], progress: @Sendable (UpstreamExporter.Summary, Double) -> Void = { _, _ in })
        async throws -> UpstreamExporter.Summary {
        let started = ContinuousClock.now
        var reader = CSVReader(bytes)
        guard let header = reader.next()?.map({ $0.trimmingCharacters(in: .whitespaces) }) else { throw ExportError.emptyFile }
        let indices = try kind.columns.map { column in
            guard let index = header.firstIndex(of: column) else { throw ExportError.missingIDColumn(column) }
            return index
        }
        let accountKey = pseudonymKey?.derived("veil.account-ref.v1")
        if kind == .pins && accountKey == nil { throw ExportError.missingIDColumn("kP.id (the provider pseudonym key)") }
        var summary = UpstreamExporter.Summary(exportedColumns: kind == .households ? ["tid (sealed)", "household_id"] : ["accountRef", "pin (sealed)"])
        var households: [HouseholdMapping] = [], pins: [PinVerifierRecord] = []

        func flush() async throws {
            let payload: [UInt8]
            let count: Int
            switch kind {
            case .households: (payload, count) = (ContractCoding.encode(HouseholdBatch(households: households)), households.count)
            case .pins: (payload, count) = (ContractCoding.encode(PinVerifierBatch(pins: pins)), pins.count)
            }
            guard count > 0 else { return }
            households.removeAll(keepingCapacity: true)
            pins.removeAll(keepingCapacity: true)
            let draft = EnvelopeDraft(type: MessageType.upstreamRecordsExported, parts: [
                .sealed(kind.label, payload: payload, to: [ServiceName.keyVault.rawValue]),
            ])
            _ = try await producer.send(try codec.message(draft, topic: Topic.upstreamRecords.name, key: Array(draft.id.description.utf8)))
            summary.published += count
            summary.batches += 1
        }

        while let row = reader.next() {
            if row.count == 1, row[0].isEmpty { continue }
            summary.read += 1
            guard row.count == header.count else {
                summary.rejected["wrong number of columns", default: 0] += 1
                continue
            }
            let first = row[indices[0]].trimmingCharacters(in: .whitespaces), second = row[indices[1]].trimmingCharacters(in: .whitespaces)
            guard !first.isEmpty, first.utf8.count <= 128, !second.isEmpty, second.utf8.count <= 128 else {
                summary.rejected["empty or longer than 128 bytes", default: 0] += 1
                continue
            }
            switch kind {
            case .households:
                households.append(HouseholdMapping(tid: first, householdId: second))
            case .pins:
                guard (4...12).contains(second.count), second.allSatisfy({ $0.isASCII && $0.isNumber }) else {
                    summary.rejected["pin not 4 to 12 digits", default: 0] += 1
                    continue
                }
                pins.append(PinVerifierRecord(accountRef: Data(accountKey!.hash(Array(first.utf8))), pin: second))
            }
            if households.count + pins.count >= batchSize {
                try await flush()
                progress(summary, Double(reader.index) / Double(max(1, bytes.count)))
            }
        }
        try await flush()
        summary.seconds = (ContinuousClock.now - started).seconds
        progress(summary, 1)
        return summary
    }

    /// A synthetic household file: `count` customers' TIDs (16-digit card-like numbers) in households of one to four.
    public static func sampleHouseholds(count: Int, seed: UInt64 = 7) -> String {
        var random = SplitMix64(seed: seed)
        var lines = ["tid,household_id"]
        var household = 0, left = 0
        for index in 0..<count {
            if left == 0 {
                household += 1
                left = Int(random.next() % 4) + 1
            }
            left -= 1
            lines.append("\(sampleTID(index)),HH-\(String(format: "%07d", household))")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The `index`th synthetic TID (a loyalty-card-like number).
    public static func sampleTID(_ index: Int) -> String { "6274" + String(format: "%012d", index * 7919 % 1_000_000_000_000) }
}
