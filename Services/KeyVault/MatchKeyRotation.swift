import Foundation
import Logging
import NIOCore
import PostgresNIO
import VeilContracts
import VeilCore
import VeilService
import VeilStore

/// Rotates `k2` inside the vault alone: every filed record keeps `encryptedA`, so the
/// new version's token is derived from it without the provider, the anonymizer or
/// anyone else. Inquiries keep matching throughout:
///
/// 1. add version N+1 as `pending`; wait until every replica re-read the keys, so
///    records filed from now on get an N+1 token too;
/// 2. derive N+1 tokens for every record lacking one, in batches;
/// 3. switch: N+1 `active` (new inquiries use it), N `previous` (inquiries already
///    tokenized with N, still in flight, still match);
/// 4. later, `retirePrevious()` deletes version N's tokens.
public struct MatchKeyRotation: Sendable {
    let store: VaultKeyStore
    let refresh: Duration
    let logger: Logger

    public init(store: VaultKeyStore, refresh: Duration, logger: Logger) {
        self.store = store
        self.refresh = refresh
        self.logger = logger
    }

    /// Runs steps 1–3 and returns the new version; `progress(done)` after each batch.
    public func rotate(batchSize: Int = 5_000, progress: @Sendable (Int) -> Void = { _ in }) async throws -> UInt32 {
        try await store.reload()
        guard let old = store.keys.current(.match) else { throw RotationError.noActiveKey }
        let version = try await store.addVersion(.match, status: .pending)
        logger.notice("match key rotation started", metadata: ["from": "\(old.version)", "to": "\(version)"])
        try await Task.sleep(for: refresh * 2 + .milliseconds(500))
        try await store.reload()
        guard let key = store.keys.usable(.match).first(where: { $0.version == version }) else { throw RotationError.noActiveKey }
        let archive = store.keys.ring(.archive)
        let database = store.database
        let records = database.table("filed_records"), tokens = database.table("match_tokens")
        var done = 0
        // Every filed record once, in customer-reference order, a page at a time (keyset
        // paging on the primary key). A record filed or re-filed meanwhile already carries a
        // version-N+1 token (filing derives one for every usable version, pending included),
        // and the insert below ignores tokens that exist, so nothing is missed or doubled.
        var after: ByteBuffer?
        while true {
            let rows: [PostgresRow]
            if let after {
                rows = try await database.client.query("""
                    SELECT customer_ref, archive_key_version, encrypted_a FROM \(unescaped: records)
                    WHERE customer_ref > \(after) ORDER BY customer_ref LIMIT \(batchSize)
                    """, logger: logger).collect()
            } else {
                rows = try await database.client.query("""
                    SELECT customer_ref, archive_key_version, encrypted_a FROM \(unescaped: records)
                    ORDER BY customer_ref LIMIT \(batchSize)
                    """, logger: logger).collect()
            }
            if rows.isEmpty { break }
            var newTokens: [ByteBuffer] = [], refs: [ByteBuffer] = []
            for row in rows {
                let (ref, archiveVersion, encryptedA) = try row.decode((ByteBuffer, Int32, ByteBuffer).self)
                guard let archiveKey = archive[UInt32(archiveVersion)] else { throw RotationError.missingArchiveKey }
                let refBytes = Array(ref.readableBytesView)
                let a = try archiveKey.open(Array(encryptedA.readableBytesView), aad: refBytes)
                newTokens.append(ByteBuffer(bytes: key.hash(a)))
                refs.append(ref)
            }
            after = refs.last
            let versions = [Int32](repeating: Int32(version), count: refs.count)
            try await database.client.query("""
                INSERT INTO \(unescaped: tokens) (token, match_key_version, customer_ref)
                SELECT * FROM unnest(\(newTokens)::bytea[], \(versions)::int4[], \(refs)::bytea[]) ON CONFLICT (token) DO NOTHING
                """, logger: logger)
            done += rows.count
            progress(done)
        }
        try await database.transaction { connection in
            try await connection.query("""
                UPDATE \(unescaped: store.table) SET status = 'previous' WHERE purpose = 'match' AND status = 'active'
                """, logger: logger)
            try await connection.query("""
                UPDATE \(unescaped: store.table) SET status = 'active' WHERE purpose = 'match' AND version = \(Int32(version))
                """, logger: logger)
        }
        try await store.reload()
        logger.notice("match key rotated", metadata: ["version": "\(version)", "tokens": "\(done)"])
        return version
    }

    /// Deletes the tokens of `previous` match key versions and marks them retired.
    /// Run once inquiries tokenized before the switch have drained (minutes later).
    @discardableResult
    public func retirePrevious() async throws -> Int {
        let database = store.database
        let tokens = database.table("match_tokens"), table = store.table
        let deleted = try await database.transaction { connection in
            let rows = try await connection.query("""
                WITH old AS (UPDATE \(unescaped: table) SET status = 'retired' WHERE purpose = 'match' AND status = 'previous' RETURNING version),
                     gone AS (DELETE FROM \(unescaped: tokens) WHERE match_key_version IN (SELECT version FROM old) RETURNING 1)
                SELECT count(*) FROM gone
                """, logger: logger).collect()
            return try rows.first?.decode(Int.self) ?? 0
        }
        try await store.reload()
        logger.notice("previous match key retired", metadata: ["tokens.deleted": "\(deleted)"])
        return deleted
    }
}

public enum RotationError: Error, Sendable {
    case noActiveKey
    case missingArchiveKey
}

extension KeyVault {
    /// `key-vault rotate-match-key [--retire-previous]` and `key-vault retire-previous-match-key`:
    /// operator commands run with the vault's own configuration (its database role and
    /// master key). Returns nil when `arguments` name no command (run the service).
    public static func command(_ arguments: [String]) async -> Int32? {
        guard let command = arguments.first else { return nil }
        guard ["rotate-match-key", "retire-previous-match-key"].contains(command) else {
            FileHandle.standardError.write(Data("usage: key-vault [rotate-match-key [--retire-previous] | retire-previous-match-key]\n".utf8))
            return 2
        }
        let logger = Logger(label: "veil.key-vault")
        do {
            let configuration = try ServiceConfiguration.load(service: .keyVault)
            let database = try Database(configuration: configuration.database, schema: ServiceName.keyVault.schema, logger: logger)
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await database.run() }
                defer { group.cancelAll() }
                let store = VaultKeyStore(database: database, master: try VaultKeyStore.masterKey(configuration), logger: logger)
                let refresh = Duration.seconds(try configuration.integer("VEIL_VAULT_KEY_REFRESH_SECONDS", in: 1...3600))
                let rotation = MatchKeyRotation(store: store, refresh: refresh, logger: logger)
                if command == "rotate-match-key" {
                    let version = try await rotation.rotate { done in
                        FileHandle.standardError.write(Data("\r  re-derived \(done) tokens".utf8))
                    }
                    print("\nmatch key version \(version) active; the previous version's tokens are kept until retired")
                    if arguments.contains("--retire-previous") { print("retired: \(try await rotation.retirePrevious()) tokens deleted") }
                } else {
                    print("retired: \(try await rotation.retirePrevious()) tokens deleted")
                }
                return 0
            }
        } catch {
            FileHandle.standardError.write(Data("key-vault \(command): \(safeDescription(error))\n".utf8))
            return 1
        }
    }
}
