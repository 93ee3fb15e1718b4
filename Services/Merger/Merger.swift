import Foundation
import Logging
import NIOCore
import PostgresNIO
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// The merger process.
public enum Merger {
    public static let runtime = ServiceRuntime(service: .merger, migrations: MergerHandler.migrations) { context in
        MergerHandler(settings: try MergerHandler.Settings(context.configuration), codec: context.codec,
                      grants: context.grants, database: context.database, logger: context.logger)
    }
}

/// The answering server's last step: opens the matched record with the record key
/// the key-vault granted, merges it with the match token, `anonymizedDeviceId` and the
/// access info (sealed to the merger by ingress, forwarded unopened by every stage in
/// between), and publishes the insight sealed to each configured downstream provider
/// and/or saves it. The raw id, `P`, `A` and `encryptedId` never reach it.
public struct MergerHandler: MessageHandler {
    public struct Settings: Sendable {
        public var providers: [String]
        public var publish: Bool
        public var save: Bool

        public init(_ configuration: ServiceConfiguration) throws {
            providers = (configuration.setting("VEIL_MERGER_PROVIDERS") ?? "").split(separator: ",")
                .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            publish = try configuration.boolean("VEIL_MERGER_PUBLISH")
            save = try configuration.boolean("VEIL_MERGER_SAVE")
            if publish && providers.isEmpty {
                throw ConfigurationError(variable: "VEIL_MERGER_PROVIDERS", reason: "must name at least one provider when publishing")
            }
        }
    }

    public static let migrations: [Migration] = [
        Migration("001_merger_insights", sql: """
            CREATE TABLE {schema}.insights (
                inquiry_id           text PRIMARY KEY,
                matched              boolean NOT NULL,
                match_token          bytea NOT NULL,
                match_key_version    integer NOT NULL,
                anonymized_device_id bytea NOT NULL,
                insight              jsonb NOT NULL,
                merged_at            timestamptz NOT NULL DEFAULT now()
            );
            CREATE INDEX insights_match_token ON {schema}.insights (match_token);
            """),
    ]

    /// A verified envelope and, unless merging it failed transiently in `prepare` (then
    /// `handle` merges it again, with retries), the merged insight and whether the batch saved it.
    public struct Input: Sendable {
        let envelope: VerifiedEnvelope
        let merged: Merged?
        /// The published insight, sealed with the batch's others in `prepare` (all cores at once).
        var output: OutgoingMessage?
    }

    struct Merged: Sendable {
        let insight: Insight
        let payload: [UInt8]
        let key: [UInt8]
        var saved: Bool
    }

    let settings: Settings
    let codec: EnvelopeCodec
    let grants: GrantedKeys
    let database: Database
    let logger: Logger
    let grantWait: Duration

    public init(settings: Settings, codec: EnvelopeCodec, grants: GrantedKeys, database: Database, logger: Logger,
                grantWait: Duration = .seconds(5)) {
        self.settings = settings
        self.codec = codec
        self.grants = grants
        self.database = database
        self.logger = logger
        self.grantWait = grantWait
    }

    public static let stage = "merger"

    /// Verifies and opens the batch, merges each inquiry, and saves the whole batch with
    /// one statement (a failure leaves the saving to `handle`, one by one, with retries).
    public func prepare(_ batch: [KafkaMessage]) async -> [Result<Input, StageError>] {
        let verified = await codec.verifyForStage(batch)
        var results: [Result<Input, StageError>] = []
        results.reserveCapacity(batch.count)
        for (message, result) in zip(batch, verified) {
            switch result {
            case .success(let envelope):
                do {
                    results.append(.success(Input(envelope: envelope, merged: try await merge(envelope, message: message))))
                } catch let error as StageError where error.permanent {
                    codec.release(envelope)
                    results.append(.failure(error))
                } catch {
                    results.append(.success(Input(envelope: envelope, merged: nil)))
                }
            case .failure(let error):
                results.append(.failure(error))
            }
        }
        var inputs = results
        if settings.save {
            do {
                try await save(results.compactMap { try? $0.get().merged })
                inputs = results.map { result in
                    result.map { input in
                        var merged = input.merged
                        merged?.saved = true
                        return Input(envelope: input.envelope, merged: merged)
                    }
                }
            } catch {
                // `handle` saves them one by one, with retries.
                logger.warning("batch save failed; saving one by one", metadata: ["error": "\(safeDescription(error))"])
            }
        }
        guard settings.publish else { return inputs }
        await codec.sealOutputs(of: &inputs, { input, _ in
            input.merged.map { (draft(input.envelope, $0), Topic.insights.name, $0.key) }
        }, store: { $0.output = $1 })
        return inputs
    }

    public func gaveUp(on input: Input) { codec.release(input.envelope) }

    public func handle(_ input: Input, message: KafkaMessage) async throws -> [OutgoingMessage] {
        var merged: Merged
        if let done = input.merged { merged = done } else { merged = try await merge(input.envelope, message: message) }
        if settings.save && !merged.saved {
            try await save([merged])
            merged.saved = true
        }
        guard settings.publish else { return [] }
        if let output = input.output { return [output] }
        return [try codec.message(draft(input.envelope, merged), topic: Topic.insights.name, key: merged.key)]
    }

    /// The insight sealed to every configured provider.
    func draft(_ envelope: VerifiedEnvelope, _ merged: Merged) -> EnvelopeDraft {
        EnvelopeDraft(id: .derived(from: envelope.header.id, stage: Self.stage), type: MessageType.insightPublished,
                      parts: [.sealed(PartLabel.insight, payload: merged.payload, to: settings.providers)])
    }

    func merge(_ envelope: VerifiedEnvelope, message: KafkaMessage) async throws -> Merged {
        guard envelope.header.type == MessageType.inquiryMatched,
              let matchBytes = envelope.payload(PartLabel.match), let accessBytes = envelope.payload(PartLabel.accessInfo),
              let match = try? ContractCoding.decode(MatchPayload.self, from: matchBytes),
              let access = try? ContractCoding.decode(AccessInfo.self, from: accessBytes),
              let key = message.key, let inquiryID = MessageID(String(decoding: key, as: UTF8.self)) else {
            throw StageError.permanent("merger.bad_payload", "not a matched inquiry with its access info")
        }
        var fields: [String: String]?
        if let record = match.record {
            let ring = try await grants.ring(.record, waiting: grantWait)
            guard ring[record.recordKeyVersion] != nil else {
                throw StageError.transient("grant.missing", "record key version \(record.recordKeyVersion) not granted yet")
            }
            do {
                fields = try RecordCipher.open(record, with: ring)
            } catch {
                throw StageError.permanent("merger.record_unreadable", "the filed record does not open with the granted key")
            }
        }
        let insight = Insight(inquiryId: inquiryID.description, matched: fields != nil, matchToken: match.token,
                              matchKeyVersion: match.matchKeyVersion, access: access, record: fields,
                              mergedAt: Date(timeIntervalSince1970: Double(envelope.header.createdAtMilliseconds) / 1000))
        return Merged(insight: insight, payload: ContractCoding.encode(insight), key: key, saved: false)
    }

    /// Saves insights with one multi-row statement; idempotent (a redelivered inquiry finds its row).
    func save(_ inputs: [Merged]) async throws {
        guard !inputs.isEmpty else { return }
        let ids = inputs.map(\.insight.inquiryId), matched = inputs.map(\.insight.matched)
        let tokens = inputs.map { ByteBuffer(bytes: $0.insight.matchToken) }
        let versions = inputs.map { Int32($0.insight.matchKeyVersion) }
        let devices = inputs.map { ByteBuffer(bytes: $0.insight.anonymizedDeviceId) }
        let documents = inputs.map { String(decoding: $0.payload, as: UTF8.self) }
        _ = try await database.client.first(SaveInsightsStatement(ids: ids, matched: matched, tokens: tokens, versions: versions,
                                                                  devices: devices, documents: documents), logger: logger)
    }
}

/// `Merger.save`'s one statement, prepared (parsed and planned once per connection; the
/// table is unqualified: connections search the merger's schema).
struct SaveInsightsStatement: PostgresPreparedStatement {
    static let name = "veil.merger.save"
    static let sql = """
        INSERT INTO insights (inquiry_id, matched, match_token, match_key_version, anonymized_device_id, insight)
        SELECT i, m, t, v, d, j::jsonb FROM unnest($1::text[], $2::bool[], $3::bytea[], $4::int4[], $5::bytea[], $6::text[])
            AS x(i, m, t, v, d, j)
        ON CONFLICT (inquiry_id) DO NOTHING
        """
    static let bindingDataTypes: [PostgresDataType] = [.textArray, .boolArray, .byteaArray, .int4Array, .byteaArray, .textArray]
    typealias Row = Void

    var ids: [String]
    var matched: [Bool]
    var tokens: [ByteBuffer]
    var versions: [Int32]
    var devices: [ByteBuffer]
    var documents: [String]

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(ids, matched, tokens, versions, devices, documents) }

    func decodeRow(_ row: PostgresRow) throws {}
}
