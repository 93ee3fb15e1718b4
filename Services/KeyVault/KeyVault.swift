import Foundation
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// The independent third party's custody and its two stages:
/// - real time: opens `encryptedId` (A), derives `matchToken = HMAC(k2, A)` for the matcher;
/// - upstream filing: hashes each record's `P` to `A`, files
///   `(token, key versions, encryptedA, encrypted record)` in bulk, idempotently.
public enum KeyVault {
    public static var migrations: [Migration] { VaultKeyStore.migrations + Households.migrations + SecureForms.migrations }

    public static let runtime = ServiceRuntime(service: .keyVault, migrations: migrations) { context in try await parts(context) }

    /// The handler and the grant publisher, sharing one key store.
    public static func parts(_ context: ServiceContext) async throws -> ServiceParts {
        let store = VaultKeyStore(database: context.database, master: try VaultKeyStore.masterKey(context.configuration),
                                  logger: context.logger)
        try await store.bootstrap()
        let refresh = Duration.seconds(try context.configuration.integer("VEIL_VAULT_KEY_REFRESH_SECONDS", in: 1...3600))
        // Batches of different keys are handled side by side (filing waits on PostgreSQL;
        // the next batch's hashing and sealing use the cores meanwhile).
        let handler = KeyVaultHandler(store: store, database: context.database, metrics: context.metrics, logger: context.logger)
        return ServiceParts(handler: ConcurrentEnvelopeStage(codec: context.codec, handler: handler, concurrency: 4),
                            services: [GrantPublisher(store: store, context: context, refresh: refresh)])
    }
}

/// Dispatches the vault's topics to their step.
public struct KeyVaultHandler: EnvelopeHandler {
    let store: VaultKeyStore
    let filing: RecordFiling
    let households: Households
    let secureForms: SecureForms

    public init(store: VaultKeyStore, database: Database, metrics: ServiceMetrics, logger: Logger) {
        self.store = store
        filing = RecordFiling(database: database, metrics: metrics, logger: logger)
        households = Households(database: database, logger: logger)
        secureForms = SecureForms(database: database, logger: logger)
    }

    public static let stage = "key-vault"

    public func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        switch (message.topic, envelope.header.type) {
        case (Topic.inquiriesAnonymized.name, MessageType.inquiryAnonymized):
            return [try tokenize(envelope, message: message, codec: codec)]
        case (Topic.upstreamRecords.name, MessageType.upstreamRecordsExported):
            // One envelope type for every provider file; the part label says which file it is.
            if let payload = envelope.payload(PartLabel.households) {
                guard let batch = try? ContractCoding.decode(HouseholdBatch.self, from: payload) else {
                    throw StageError.permanent("vault.bad_payload", "not a batch of households")
                }
                try await households.file(batch.households, keys: store.keys)
            } else if let payload = envelope.payload(PartLabel.pinVerifiers) {
                guard let batch = try? ContractCoding.decode(PinVerifierBatch.self, from: payload) else {
                    throw StageError.permanent("vault.bad_payload", "not a batch of PIN verifiers")
                }
                try await secureForms.file(batch.pins, keys: store.keys)
            } else {
                guard let payload = envelope.payload(PartLabel.records), let records = try? UpstreamBatch.decodeForFiling(payload) else {
                    throw StageError.permanent("vault.bad_payload", "not a batch of upstream records")
                }
                try await filing.file(records, keys: store.keys)
            }
            return []
        case (Topic.posLookups.name, MessageType.posLookupRequested):
            return [try await households.answer(envelope, message: message, codec: codec, keys: store.keys)]
        case (Topic.secureFormsSubmitted.name, MessageType.secureFormSubmitted):
            return [try await secureForms.check(envelope, message: message, codec: codec, keys: store.keys)]
        default:
            throw StageError.permanent("vault.unsupported", "the key-vault does not handle \(envelope.header.type) on \(message.topic) yet")
        }
    }

    func tokenize(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) throws -> OutgoingMessage {
        guard let opened = envelope.payload(PartLabel.encryptedID),
              let id = try? ContractCoding.decode(EncryptedIDPayload.self, from: opened), id.doublyHashedId.count == 32,
              let access = envelope.part(PartLabel.accessInfo) else {
            throw StageError.permanent("vault.bad_payload", "not an anonymized inquiry")
        }
        guard let k2 = store.keys.current(.match) else { throw StageError.transient("vault.no_key", "no active match key") }
        let token = MatchTokenPayload(token: Data(k2.hash(id.doublyHashedId)), matchKeyVersion: k2.version)
        let draft = EnvelopeDraft(id: .derived(from: envelope.header.id, stage: Self.stage), type: MessageType.inquiryTokenized,
                                  parts: [
                                      .sealed(PartLabel.matchToken, payload: ContractCoding.encode(token), to: [ServiceName.matcher.rawValue]),
                                      .forwarded(access),
                                  ])
        return try codec.message(draft, topic: Topic.inquiriesTokenized.name, key: message.key)
    }
}

/// Files upstream records: two multi-row statements per batch (`unnest` of arrays),
/// upserting by the customer reference so re-filing the same record changes nothing.
struct RecordFiling: Sendable {
    let database: Database
    let metrics: ServiceMetrics
    let logger: Logger

    struct Row: Sendable {
        var ref: [UInt8]
        var encryptedA: [UInt8]
        var record: EncryptedRecord
        var fingerprint: [UInt8]
        var tokens: [(token: [UInt8], version: UInt32)]
    }


    /// The keys of one batch, derived and keyed once: the archive key's two subkeys,
    /// and every HMAC key with its pads already hashed.
    struct BatchKeys: Sendable {
        let kT: KeyedHasher
        let archive: VersionedKey
        let reference: KeyedHasher
        let fingerprint: KeyedHasher
        let recordKey: VersionedKey
        let match: [KeyedHasher]

        init(kT: VersionedKey, archive: VersionedKey, recordKey: VersionedKey, match: [VersionedKey]) {
            self.kT = kT.hasher
            self.archive = archive
            reference = archive.derived("veil.customer-ref.v1").hasher
            fingerprint = archive.derived("veil.record-fingerprint.v1").hasher
            self.recordKey = recordKey
            self.match = match.map(\.hasher)
        }
    }

    /// Random bytes one record takes: the record's data key and two nonces, and the nonce sealing `A`.
    static let randomPerRecord = 32 + 12 + 12 + 12

    static func row(_ record: FilingRecord, keys: BatchKeys, random: inout RandomBytes) throws -> Row {
        let a = keys.kT.hash(record.pseudonym)
        let ref = keys.reference.hash(a)
        let fields = record.fieldsJSON
        return Row(ref: ref, encryptedA: try keys.archive.seal(a, aad: ref, nonce: random.take(12)),
                   record: try RecordCipher.seal(json: fields, with: keys.recordKey, random: &random),
                   fingerprint: keys.fingerprint.hash(fields),
                   tokens: keys.match.map { ($0.hash(a), $0.version) })
    }

    func file(_ records: [FilingRecord], keys: VaultKeySet) async throws {
        guard let kT = keys.current(.thirdPartyHash), let archive = keys.current(.archive), let recordKey = keys.current(.record),
              keys.current(.match) != nil else { throw StageError.transient("vault.no_key", "vault keys not loaded") }
        let batchKeys = BatchKeys(kT: kT, archive: archive, recordKey: recordKey, match: keys.usable(.match))
        // The per-record hashing and sealing runs on every core.
        let valid = records.filter { $0.pseudonym.count == 32 }
        let chunkSize = max(64, valid.count / Cores.active)
        let computed = try await withThrowingTaskGroup(of: (Int, [Row]).self) { group in
            for start in stride(from: 0, to: valid.count, by: chunkSize) {
                let chunk = valid[start..<min(start + chunkSize, valid.count)]
                group.addTask {
                    var random = RandomBytes(capacity: chunk.count * Self.randomPerRecord)
                    return (start, try chunk.map { try Self.row($0, keys: batchKeys, random: &random) })
                }
            }
            var parts: [(Int, [Row])] = []
            for try await part in group { parts.append(part) }
            return parts.sorted { $0.0 < $1.0 }.flatMap(\.1)
        }
        guard !computed.isEmpty else { return }
        // In customer-reference order: batches filed concurrently then take their row
        // locks in one global order, so overlapping batches wait instead of deadlocking.
        // The last copy of a customer in a batch wins.
        let order = computed.indices.sorted { a, b in
            computed[a].ref == computed[b].ref ? a < b : computed[a].ref.lexicographicallyPrecedes(computed[b].ref)
        }
        var list: [Row] = []
        list.reserveCapacity(order.count)
        for index in order {
            if let last = list.last, last.ref == computed[index].ref { list[list.count - 1] = computed[index] } else { list.append(computed[index]) }
        }
        let refs = list.map { ByteBuffer(bytes: $0.ref) }
        let encryptedA = list.map { ByteBuffer(bytes: $0.encryptedA) }
        let recordVersions = list.map { Int32($0.record.recordKeyVersion) }
        let wrapped = list.map { ByteBuffer(bytes: $0.record.wrappedDataKey) }
        let ciphertexts = list.map { ByteBuffer(bytes: $0.record.ciphertext) }
        let fingerprints = list.map { ByteBuffer(bytes: $0.fingerprint) }
        let tokenRows = list.flatMap { row in row.tokens.map { (ByteBuffer(bytes: $0.token), Int32($0.version), ByteBuffer(bytes: row.ref)) } }
        let records = database.table("filed_records"), tokens = database.table("match_tokens")
        try await database.transaction { connection in
            try await connection.query("""
                INSERT INTO \(unescaped: records) (customer_ref, archive_key_version, third_party_key_version, encrypted_a,
                    record_key_version, wrapped_data_key, record_ciphertext, fingerprint)
                SELECT r, \(Int32(archive.version)), \(Int32(kT.version)), a, v, w, c, f
                FROM unnest(\(refs)::bytea[], \(encryptedA)::bytea[], \(recordVersions)::int4[], \(wrapped)::bytea[],
                            \(ciphertexts)::bytea[], \(fingerprints)::bytea[]) AS t(r, a, v, w, c, f)
                ON CONFLICT (customer_ref) DO UPDATE SET
                    archive_key_version = EXCLUDED.archive_key_version, third_party_key_version = EXCLUDED.third_party_key_version,
                    encrypted_a = EXCLUDED.encrypted_a, record_key_version = EXCLUDED.record_key_version,
                    wrapped_data_key = EXCLUDED.wrapped_data_key, record_ciphertext = EXCLUDED.record_ciphertext,
                    fingerprint = EXCLUDED.fingerprint, filed_at = now()
                WHERE \(unescaped: records).fingerprint <> EXCLUDED.fingerprint
                """, logger: logger)
            try await connection.query("""
                INSERT INTO \(unescaped: tokens) (token, match_key_version, customer_ref)
                SELECT * FROM unnest(\(tokenRows.map(\.0))::bytea[], \(tokenRows.map(\.1))::int4[], \(tokenRows.map(\.2))::bytea[])
                ON CONFLICT (token) DO NOTHING
                """, logger: logger)
        }
        metrics.count("records_filed", help: "Upstream records filed (new, changed or already filed unchanged)", by: list.count)
        logger.debug("records filed", metadata: ["count": "\(list.count)"])
    }
}

/// Grants `kT` to the anonymizer and the record key to the merger, each sealed to the
/// service's own key, on `veil.keys.grants.v1`: at start-up and whenever the key
/// versions change (a rotation). Also re-reads the key table every `refresh`.
struct GrantPublisher: Service {
    let store: VaultKeyStore
    let context: ServiceContext
    let refresh: Duration

    func run() async throws {
        try await publish()
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: refresh)
                guard !Task.isCancelled else { break }  // shutting down: not a failed refresh
                do {
                    if try await store.reload() {
                        context.logger.notice("vault key versions changed; granting again")
                        try await publish()
                    }
                } catch is CancellationError {
                    break
                } catch {
                    context.logger.error("vault key refresh failed", metadata: ["error": "\(safeDescription(error))"])
                }
            }
        }
    }

    func publish() async throws {
        let keys = store.keys
        let grants: [(ServiceName, KeyGrant.Purpose, VaultKeyPurpose)] = [
            (.anonymizer, .thirdPartyHash, .thirdPartyHash), (.merger, .record, .record),
        ]
        var messages: [OutgoingMessage] = []
        for (recipient, purpose, vaultPurpose) in grants {
            let current = keys.current(vaultPurpose)?.version
            let grant = KeyGrant(purpose: purpose, keys: keys.usable(vaultPurpose).map {
                KeyGrant.Key(version: $0.version, material: Data($0.rawBytes), active: $0.version == current)
            })
            let draft = EnvelopeDraft(type: MessageType.keyGranted, parts: [
                .sealed(PartLabel.grant, payload: ContractCoding.encode(grant), to: [recipient.rawValue]),
            ])
            messages.append(try context.codec.message(draft, topic: Topic.keysGrants.name, key: Array(recipient.rawValue.utf8)))
        }
        try await context.producer.send(batch: messages)
        context.logger.notice("key grants published", metadata: ["recipients": "anonymizer, merger"])
    }
}
