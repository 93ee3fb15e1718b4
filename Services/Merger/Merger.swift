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
        EnvelopeStage(codec: context.codec, handler: MergerHandler(settings: try MergerHandler.Settings(context.configuration),
                                                                   grants: context.grants, database: context.database,
                                                                   logger: context.logger))
    }
}

/// The answering server's last step: opens the matched record with the record key
/// the key-vault granted, merges it with the match token, `anonymizedDeviceId` and the
/// access info (sealed to the merger by ingress, forwarded unopened by every stage in
/// between), and publishes the insight sealed to each configured downstream provider
/// and/or saves it. The raw id, `P`, `A` and `encryptedId` never reach it.
public struct MergerHandler: EnvelopeHandler {
    public struct Settings: Sendable {
        public var providers: [String]
        public var publish: Bool
        public var save: Bool

        public init(providers: [String], publish: Bool, save: Bool) {
            self.providers = providers
            self.publish = publish
            self.save = save
        }

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

    let settings: Settings
    let grants: GrantedKeys
    let database: Database
    let logger: Logger
    let grantWait: Duration

    public init(settings: Settings, grants: GrantedKeys, database: Database, logger: Logger, grantWait: Duration = .seconds(5)) {
        self.settings = settings
        self.grants = grants
        self.database = database
        self.logger = logger
        self.grantWait = grantWait
    }

    public static let stage = "merger"

    public func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
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
        let payload = ContractCoding.encode(insight)
        if settings.save {
            // Idempotent: a redelivered inquiry finds its row already there.
            try await database.client.query("""
                INSERT INTO \(unescaped: database.table("insights"))
                    (inquiry_id, matched, match_token, match_key_version, anonymized_device_id, insight)
                VALUES (\(insight.inquiryId), \(insight.matched), \(ByteBuffer(bytes: match.token)), \(Int32(match.matchKeyVersion)),
                        \(ByteBuffer(bytes: access.anonymizedDeviceId)), \(String(decoding: payload, as: UTF8.self))::jsonb)
                ON CONFLICT (inquiry_id) DO NOTHING
                """, logger: logger)
        }
        guard settings.publish else { return [] }
        let draft = EnvelopeDraft(id: .derived(from: envelope.header.id, stage: Self.stage), type: MessageType.insightPublished,
                                  parts: [.sealed(PartLabel.insight, payload: payload, to: settings.providers)])
        return [try codec.message(draft, topic: Topic.insights.name, key: key)]
    }
}
