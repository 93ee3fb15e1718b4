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

/// The matcher process.
public enum Matcher {
    /// Its connections also search the filed records' schema (`VEIL_RECORDS_SCHEMA`, read-only
    /// grant), so its prepared lookup names the vault's tables unqualified.
    public static let runtime = ServiceRuntime(service: .matcher, readsSchemas: { configuration throws(ConfigurationError) in
        let records = configuration.setting("VEIL_RECORDS_SCHEMA") ?? ServiceName.keyVault.schema
        guard Database.isIdentifier(records) else {
            throw ConfigurationError(variable: "VEIL_RECORDS_SCHEMA", reason: "must match [a-z_][a-z0-9_]*")
        }
        return [records]
    }) { context in try MatcherHandler.make(context) }
}

/// The answering server's lookup: a batch of match tokens against the filed records,
/// one indexed query per consumed batch. It reads tokens and still-encrypted records
/// (a read-only grant on two of the vault's tables, nothing else) and holds no key
/// that opens a record or recovers an id.
public struct MatcherHandler: MessageHandler {
    public struct Input: Sendable {
        let envelope: VerifiedEnvelope
        let token: MatchTokenPayload
        let access: SealedPart
        let lookup: Lookup
        /// The output, sealed with the batch's others in `prepare` (all cores at once).
        var output: OutgoingMessage?
    }

    enum Lookup: Sendable {
        case found(EncryptedRecord)
        case missing
        /// The batch query failed: `handle` looks the token up alone (and is retried).
        case notLookedUp

        var record: EncryptedRecord? { if case .found(let record) = self { record } else { nil } }
    }

    let codec: EnvelopeCodec
    /// Its connections search the filed records' schema (`VEIL_RECORDS_SCHEMA`) after its own.
    let database: Database
    let logger: Logger

    public init(codec: EnvelopeCodec, database: Database, logger: Logger) {
        self.codec = codec
        self.database = database
        self.logger = logger
    }

    public static func make(_ context: ServiceContext) throws -> MatcherHandler {
        MatcherHandler(codec: context.codec, database: context.database, logger: context.logger)
    }

    public static let stage = "matcher"

    public func prepare(_ batch: [KafkaMessage]) async -> [Result<Input, StageError>] {
        let verified = await codec.verifyForStage(batch)
        var decoded: [Result<(VerifiedEnvelope, MatchTokenPayload, SealedPart), StageError>] = []
        decoded.reserveCapacity(batch.count)
        for result in verified {
            decoded.append(result.flatMap { envelope in
                guard envelope.header.type == MessageType.inquiryTokenized,
                      let opened = envelope.payload(PartLabel.matchToken),
                      let token = try? ContractCoding.decode(MatchTokenPayload.self, from: opened), token.token.count == 32,
                      let access = envelope.part(PartLabel.accessInfo) else {
                    codec.release(envelope)
                    return .failure(.permanent("matcher.bad_payload", "not a tokenized inquiry"))
                }
                return .success((envelope, token, access))
            })
        }
        let tokens = decoded.compactMap { try? $0.get().1.token }
        let found: [Data: EncryptedRecord]?
        do {
            found = try await lookup(tokens)
        } catch {
            logger.warning("batch lookup failed; looking up one by one", metadata: ["error": "\(safeDescription(error))"])
            found = nil
        }
        var inputs = decoded.map { result in
            result.map { envelope, token, access in
                Input(envelope: envelope, token: token, access: access, lookup: found.map { $0[token.token].map(Lookup.found) ?? .missing } ?? .notLookedUp)
            }
        }
        await codec.sealOutputs(of: &inputs, { input, index in
            if case .notLookedUp = input.lookup { return nil }
            return (draft(input, record: input.lookup.record), Topic.inquiriesMatched.name, batch[index].key)
        }, store: { $0.output = $1 })
        return inputs
    }

    public func gaveUp(on input: Input) { codec.release(input.envelope) }

    public func handle(_ input: Input, message: KafkaMessage) async throws -> [OutgoingMessage] {
        if let output = input.output { return [output] }
        let record = if case .notLookedUp = input.lookup {
            try await lookup([input.token.token])[input.token.token]
        } else {
            input.lookup.record
        }
        return [try codec.message(draft(input, record: record), topic: Topic.inquiriesMatched.name, key: message.key)]
    }

    /// The match sealed to the merger, the access info forwarded unopened.
    func draft(_ input: Input, record: EncryptedRecord?) -> EnvelopeDraft {
        let match = MatchPayload(token: input.token.token, matchKeyVersion: input.token.matchKeyVersion, record: record)
        return EnvelopeDraft(id: .derived(from: input.envelope.header.id, stage: Self.stage), type: MessageType.inquiryMatched,
                             parts: [
                                 .sealed(PartLabel.match, payload: ContractCoding.encode(match), to: [ServiceName.merger.rawValue]),
                                 .forwarded(input.access),
                             ])
    }

    /// One indexed query for all tokens of a batch.
    func lookup(_ tokens: [Data]) async throws -> [Data: EncryptedRecord] {
        guard !tokens.isEmpty else { return [:] }
        let rows = try await database.client.rows(RecordsByTokenStatement(tokens: tokens.map { ByteBuffer(bytes: $0) }),
                                                   logger: logger)
        var found: [Data: EncryptedRecord] = [:]
        for (token, version, wrapped, ciphertext) in rows {
            found[Data(token.readableBytesView)] = EncryptedRecord(recordKeyVersion: UInt32(version),
                                                                  wrappedDataKey: Data(wrapped.readableBytesView),
                                                                  ciphertext: Data(ciphertext.readableBytesView))
        }
        return found
    }
}

/// The filed records of a batch's tokens, in one indexed query, prepared (parsed and planned
/// once per connection). The tables are the vault's, unqualified: the matcher's connections
/// search `VEIL_RECORDS_SCHEMA`.
struct RecordsByTokenStatement: PostgresPreparedStatement {
    static let name = "veil.matcher.records"
    static let sql = """
        SELECT t.token, r.record_key_version, r.wrapped_data_key, r.record_ciphertext
        FROM match_tokens t JOIN filed_records r USING (customer_ref)
        WHERE t.token = ANY($1::bytea[])
        """
    static let bindingDataTypes: [PostgresDataType] = [.byteaArray]
    typealias Row = (ByteBuffer, Int32, ByteBuffer, ByteBuffer)

    var tokens: [ByteBuffer]

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(tokens) }
    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}
