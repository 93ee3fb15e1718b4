import Foundation
import Logging
import NIOCore
import PostgresNIO
import Synchronization
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilService
import VeilStore

/// The third party's keys, in the key-vault's custody.
public enum VaultKeyPurpose: String, Sendable, CaseIterable {
    /// `kT`: `A = HMAC(kT, P)`; granted to the anonymizer.
    case thirdPartyHash = "third-party-hash"
    /// `k2`: `matchToken = HMAC(k2, A)`; never leaves the vault.
    case match
    /// The record key-encryption key; granted to the merger.
    case record
    /// Encrypts `A` at rest next to each filed record (`encryptedA`) and keys the
    /// record reference; never leaves the vault.
    case archive
}

/// A key version's life: `pending` (a rotation is filling in its tokens; filing
/// derives them too, inquiries do not use it yet), `active` (the version new data
/// uses), `previous` (replaced; still matched until retired), `retired` (deleted
/// tokens; kept only so old grants can be told apart).
public enum VaultKeyStatus: String, Sendable {
    case pending, active, previous, retired
}

/// A snapshot of every key version the vault holds, opened with the master key.
public struct VaultKeySet: Sendable {
    public struct Entry: Sendable {
        public let key: VersionedKey
        public let status: VaultKeyStatus
    }
    public let entries: [VaultKeyPurpose: [Entry]]

    /// The version new data uses.
    public func current(_ purpose: VaultKeyPurpose) -> VersionedKey? {
        entries[purpose]?.filter { $0.status == .active }.max { $0.key.version < $1.key.version }?.key
    }

    /// Every version not retired, for opening and (for `k2`) for deriving tokens while filing.
    public func usable(_ purpose: VaultKeyPurpose) -> [VersionedKey] {
        (entries[purpose] ?? []).filter { $0.status != .retired }.map(\.key)
    }

    public func ring(_ purpose: VaultKeyPurpose) -> KeyRing {
        KeyRing(usable(purpose), current: current(purpose)?.version)
    }

    /// Versions and statuses (no material): changes when a rotation happened.
    var versionsSummary: String {
        entries.keys.sorted { $0.rawValue < $1.rawValue }.map { purpose in
            "\(purpose.rawValue):" + (entries[purpose] ?? []).map { "\($0.key.version)\($0.status.rawValue)" }.sorted().joined(separator: ",")
        }.joined(separator: ";")
    }
}

/// The vault's key table: every key version sealed under the master key (from a
/// mounted secret), versioned, created on first start, re-read periodically so a
/// rotation by another process (`key-vault rotate match`) reaches every replica.
public final class VaultKeyStore: Sendable {
    let database: Database
    let master: VersionedKey
    let logger: Logger
    private let state = Mutex<VaultKeySet>(VaultKeySet(entries: [:]))

    public static let migrations: [Migration] = [
        Migration("001_vault_keys", sql: """
            CREATE TABLE {schema}.vault_keys (
                purpose         text NOT NULL,
                version         integer NOT NULL CHECK (version > 0),
                status          text NOT NULL CHECK (status IN ('pending', 'active', 'previous', 'retired')),
                sealed_material bytea NOT NULL,   -- ChaCha20-Poly1305 under the master key
                created_at      timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (purpose, version)
            );
            """),
        Migration("002_filed_records", sql: """
            CREATE TABLE {schema}.filed_records (
                customer_ref            bytea PRIMARY KEY,   -- HMAC(archive subkey, A): stable, reveals nothing
                archive_key_version     integer NOT NULL,
                third_party_key_version integer NOT NULL,
                encrypted_a             bytea NOT NULL,      -- A sealed under the archive key: k2 rotates from it
                record_key_version      integer NOT NULL,
                wrapped_data_key        bytea NOT NULL,
                record_ciphertext       bytea NOT NULL,
                fingerprint             bytea NOT NULL,      -- keyed hash of the record: re-filing the same changes nothing
                filed_at                timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE {schema}.match_tokens (
                token             bytea PRIMARY KEY,          -- HMAC(k2, A)
                match_key_version integer NOT NULL,
                customer_ref      bytea NOT NULL REFERENCES {schema}.filed_records ON DELETE CASCADE
            );
            CREATE INDEX match_tokens_customer ON {schema}.match_tokens (customer_ref, match_key_version);
            """),
        // The matcher reads tokens and encrypted records, nothing else: no key table, no encryptedA.
        Migration("003_matcher_read_grant", sql: """
            DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'veil_matcher') THEN EXECUTE 'GRANT USAGE ON SCHEMA {schema} TO veil_matcher'; EXECUTE 'GRANT SELECT ON {schema}.match_tokens TO veil_matcher'; EXECUTE 'GRANT SELECT (customer_ref, record_key_version, wrapped_data_key, record_ciphertext) ON {schema}.filed_records TO veil_matcher'; END IF; END $$
            """),
        // The vault writes a record and its tokens in one transaction and deletes no record, so the
        // foreign key only cost a lookup per token row: half of the token insert (7.4 of 14.9 µs a
        // row, 200,000 rows measured with psql). Tokens without a record cannot arise.
        Migration("006_match_tokens_without_foreign_key", sql: """
            ALTER TABLE {schema}.match_tokens DROP CONSTRAINT IF EXISTS match_tokens_customer_ref_fkey
            """),
        // Only the k2 rotation looked tokens up by customer (to find records without a token of
        // the new version); it now pages through filed_records by their key instead. Filing paid
        // for the index on every record: a third B-tree of random 32-byte keys.
        Migration("007_match_tokens_without_customer_index", sql: """
            DROP INDEX IF EXISTS {schema}.match_tokens_customer
            """),
    ]

    public init(database: Database, master: VersionedKey, logger: Logger) {
        self.database = database
        self.master = master
        self.logger = logger
    }

    /// The master key: `VEIL_VAULT_MASTER_KEY_FILE`, or the newest
    /// `<VEIL_KEYS_DIR>/key-vault/master.v<N>.secret`.
    public static func masterKey(_ configuration: ServiceConfiguration) throws -> VersionedKey {
        if let path = configuration.setting("VEIL_VAULT_MASTER_KEY_FILE") {
            guard let data = FileManager.default.contents(atPath: path),
                  let raw = Data(base64Encoded: String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)),
                  let key = VersionedKey(version: 1, raw: raw) else {
                throw ConfigurationError(variable: "VEIL_VAULT_MASTER_KEY_FILE", reason: "must name a file with base64 of 32 bytes")
            }
            return key
        }
        do {
            guard let key = try KeyFolder(url: URL(fileURLWithPath: configuration.keysDirectory))
                .secret(party: ServiceName.keyVault.rawValue, name: "master").current else { throw KeyError.missing }
            return key
        } catch {
            throw ConfigurationError(variable: "VEIL_VAULT_MASTER_KEY_FILE", reason: "not set and no master key in VEIL_KEYS_DIR: \(error)")
        }
    }

    public var keys: VaultKeySet { state.withLock { $0 } }

    /// Creates version 1 of every purpose that has none (replicas may race: the
    /// first insert wins), then loads.
    public func bootstrap() async throws {
        for purpose in VaultKeyPurpose.allCases {
            let key = VersionedKey.generate(version: 1)
            let sealed = ByteBuffer(bytes: try seal(key, purpose: purpose))
            try await database.client.query("""
                INSERT INTO \(unescaped: table) (purpose, version, status, sealed_material)
                SELECT \(purpose.rawValue), 1, 'active', \(sealed)
                WHERE NOT EXISTS (SELECT 1 FROM \(unescaped: table) WHERE purpose = \(purpose.rawValue))
                ON CONFLICT DO NOTHING
                """, logger: logger)
        }
        _ = try await reload()
    }

    /// Re-reads the table; returns true if versions or statuses changed.
    @discardableResult
    public func reload() async throws -> Bool {
        var entries: [VaultKeyPurpose: [VaultKeySet.Entry]] = [:]
        let rows = try await database.client.query("SELECT purpose, version, status, sealed_material FROM \(unescaped: table)",
                                                   logger: logger)
        for try await (purposeName, version, statusName, sealed) in rows.decode((String, Int32, String, ByteBuffer).self) {
            guard let purpose = VaultKeyPurpose(rawValue: purposeName), let status = VaultKeyStatus(rawValue: statusName) else { continue }
            let raw = try master.open(Array(sealed.readableBytesView), aad: Self.aad(purpose, UInt32(version)))
            guard let key = VersionedKey(version: UInt32(version), raw: raw) else { throw RecordCipherError.malformed }
            entries[purpose, default: []].append(.init(key: key, status: status))
        }
        let fresh = VaultKeySet(entries: entries)
        return state.withLock { current in
            let changed = current.versionsSummary != fresh.versionsSummary
            current = fresh
            return changed
        }
    }

    /// Adds the next version of `purpose` with `status` and returns its number.
    public func addVersion(_ purpose: VaultKeyPurpose, status: VaultKeyStatus) async throws -> UInt32 {
        try await database.transaction { connection in
            try await connection.query("LOCK TABLE \(unescaped: table) IN SHARE ROW EXCLUSIVE MODE", logger: logger)
            let rows = try await connection.query("SELECT coalesce(max(version), 0) FROM \(unescaped: table) WHERE purpose = \(purpose.rawValue)",
                                                  logger: logger).collect()
            let version = UInt32(try rows.first?.decode(Int32.self) ?? 0) + 1
            let sealed = ByteBuffer(bytes: try seal(VersionedKey.generate(version: version), purpose: purpose))
            try await connection.query("""
                INSERT INTO \(unescaped: table) (purpose, version, status, sealed_material)
                VALUES (\(purpose.rawValue), \(Int32(version)), \(status.rawValue), \(sealed))
                """, logger: logger)
            return version
        }
    }

    var table: String { database.table("vault_keys") }

    private func seal(_ key: VersionedKey, purpose: VaultKeyPurpose) throws -> [UInt8] {
        try master.seal(key.rawBytes, aad: Self.aad(purpose, key.version))
    }

    static func aad(_ purpose: VaultKeyPurpose, _ version: UInt32) -> [UInt8] {
        Array("veil.vault-key.v1|\(purpose.rawValue)|\(version)".utf8)
    }
}
