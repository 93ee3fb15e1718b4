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

/// The vault's point-of-sale part: it files the provider's TID → HHID mappings and
/// answers lookups. A TID is never stored: the row key is `HMAC(kH, TID)` and the HHID
/// is sealed under the archive key (bound to that row key); terminals get back the
/// de-identified `HMAC(kD, TID)`. `kH` and `kD` are subkeys of the archive key, which
/// never leaves the vault.
struct Households: Sendable {
    let database: Database
    let logger: Logger
    /// Subkeys per archive version, derived once: a lookup used to run three HKDFs and key
    /// two HMACs (3 % of the vault's CPU at 500 lookups/s).
    let subkeys = SubkeyCache()

    static let migrations: [Migration] = [
        Migration("004_households", sql: """
            CREATE TABLE {schema}.households (
                tid_ref             bytea PRIMARY KEY,      -- HMAC(kH, TID), never the TID
                archive_key_version integer NOT NULL,
                household_sealed    bytea NOT NULL,         -- the HHID, ChaCha20-Poly1305 under the archive key, bound to tid_ref
                fingerprint         bytea NOT NULL,         -- keyed hash of the HHID: re-filing the same mapping changes nothing
                filed_at            timestamptz NOT NULL DEFAULT now()
            );
            """),
    ]

    /// The archive key's point-of-sale subkeys, for one version, with their HMAC key
    /// schedules done.
    struct Keys: Sendable {
        let archive: VersionedKey
        let reference: KeyedHasher
        let deidentify: KeyedHasher
        let fingerprint: KeyedHasher

        init(_ archive: VersionedKey, subkeys: SubkeyCache) {
            self.archive = archive
            reference = subkeys.hasher(archive, purpose: "veil.household-ref.v1")
            deidentify = subkeys.hasher(archive, purpose: "veil.deidentified-tid.v1")
            fingerprint = subkeys.hasher(archive, purpose: "veil.household-fingerprint.v1")
        }

        static func normalized(_ tid: String) -> [UInt8] {
            Array(tid.trimmingCharacters(in: .whitespaces).uppercased().utf8)
        }
    }

    /// Files a batch in one statement (upsert by `tid_ref`; unchanged rows are not written).
    func file(_ mappings: [HouseholdMapping], keys: VaultKeySet) async throws {
        guard let archive = keys.current(.archive) else { throw StageError.transient("vault.no_key", "vault keys not loaded") }
        let k = Keys(archive, subkeys: subkeys)
        var rows: [[UInt8]: (sealed: [UInt8], fingerprint: [UInt8])] = [:]
        for mapping in mappings {
            let tid = Keys.normalized(mapping.tid)
            let household = mapping.householdId.trimmingCharacters(in: .whitespaces)
            guard !tid.isEmpty, tid.count <= 128, !household.isEmpty, household.utf8.count <= 128 else { continue }
            let ref = k.reference.hash(tid)
            rows[ref] = (try archive.seal(Array(household.utf8), aad: ref), k.fingerprint.hash(Array(household.utf8)))
        }
        guard !rows.isEmpty else { return }
        let list = Array(rows)
        let refs = list.map { ByteBuffer(bytes: $0.key) }, sealed = list.map { ByteBuffer(bytes: $0.value.sealed) }
        let fingerprints = list.map { ByteBuffer(bytes: $0.value.fingerprint) }
        let table = database.table("households")
        try await database.client.query("""
            INSERT INTO \(unescaped: table) (tid_ref, archive_key_version, household_sealed, fingerprint)
            SELECT r, \(Int32(archive.version)), s, f FROM unnest(\(refs)::bytea[], \(sealed)::bytea[], \(fingerprints)::bytea[]) AS t(r, s, f)
            ON CONFLICT (tid_ref) DO UPDATE SET archive_key_version = EXCLUDED.archive_key_version,
                household_sealed = EXCLUDED.household_sealed, fingerprint = EXCLUDED.fingerprint, filed_at = now()
            WHERE \(unescaped: table).fingerprint <> EXCLUDED.fingerprint
            """, logger: logger)
        logger.debug("households filed", metadata: ["count": "\(list.count)"])
    }

    /// Answers a lookup: the reply, sealed to ingress, with an id derived from the lookup's.
    func answer(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec, keys: VaultKeySet) async throws -> OutgoingMessage {
        let lookupID = envelope.header.id.description
        var answer = HouseholdAnswer(lookupId: lookupID, found: false)
        if let bytes = envelope.payload(PartLabel.terminalID), let payload = try? ContractCoding.decode(TerminalIDPayload.self, from: bytes),
           !payload.tid.isEmpty, payload.tid.utf8.count <= 128 {
            let tid = Keys.normalized(payload.tid)
            // Every usable archive version, newest first: mappings filed before a rotation still answer.
            for archive in keys.usable(.archive).sorted(by: { $0.version > $1.version }) {
                let k = Keys(archive, subkeys: subkeys)
                let ref = k.reference.hash(tid)
                let found = try await database.client.first(HouseholdStatement(tidRef: ByteBuffer(bytes: ref),
                                                                               archiveVersion: Int32(archive.version)), logger: logger)
                guard let sealed = found else { continue }
                let household = try archive.open(Array(sealed.readableBytesView), aad: ref)
                answer = HouseholdAnswer(lookupId: lookupID, found: true, householdId: String(decoding: household, as: UTF8.self),
                                         deidentifiedTid: Data(k.deidentify.hash(tid)))
                break
            }
        } else {
            answer.error = "no readable terminal-id part sealed to the key-vault"
        }
        let draft = EnvelopeDraft(id: .derived(from: envelope.header.id, stage: "key-vault.pos"), type: MessageType.posLookupAnswered,
                                  parts: [.sealed(PartLabel.household, payload: ContractCoding.encode(answer), to: [ServiceName.ingress.rawValue])])
        return try codec.message(draft, topic: Topic.posLookupReplies.name, key: message.key)
    }
}

/// A household mapping by terminal-ID reference, prepared (a lookup is on a till's clock;
/// the table is unqualified: connections search the vault's schema).
struct HouseholdStatement: PostgresPreparedStatement {
    static let name = "veil.key-vault.household"
    static let sql = "SELECT household_sealed FROM households WHERE tid_ref = $1 AND archive_key_version = $2"
    static let bindingDataTypes: [PostgresDataType] = [.bytea, .int4]
    typealias Row = ByteBuffer

    var tidRef: ByteBuffer
    var archiveVersion: Int32

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(tidRef, archiveVersion) }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}
