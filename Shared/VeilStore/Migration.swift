import Foundation
import Logging
import PostgresNIO

/// One step of a schema's history. Ids sort in the order they must run
/// (`001_processed_messages`, `002_outbox`, …); SQL may use `{schema}`.
/// Statements end with a semicolon at the end of a line (a `-- comment` may follow it);
/// a function body between `$$` lines is one statement however many lines end in `;`.
public struct Migration: Sendable, Hashable {
    public var id: String
    public var sql: String

    var statements: [String] {
        var statements: [String] = [], current: [Substring] = []
        func flush() {
            let statement = current.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines)
            if !statement.isEmpty { statements.append(statement) }
            current = []
        }
        var inBody = false  // between `$$` quotes (a PL/pgSQL body)
        for line in sql.split(separator: "\n", omittingEmptySubsequences: false) {
            let code = Self.withoutComment(line).trimmingCharacters(in: .whitespaces)
            if code.components(separatedBy: "$$").count % 2 == 0 { inBody.toggle() }
            if !inBody, code.hasSuffix(";") {
                current.append(Substring(code.dropLast()))
                flush()
            } else {
                current.append(line)
            }
        }
        flush()
        return statements
    }

    /// The line without a trailing `-- comment` (outside a quoted string).
    static func withoutComment(_ line: Substring) -> Substring {
        var quoted = false
        var index = line.startIndex
        while index < line.endIndex {
            let next = line.index(after: index)
            if line[index] == "'" {
                quoted.toggle()
            } else if !quoted, line[index] == "-", next < line.endIndex, line[next] == "-" {
                return line[..<index]
            }
            index = next
        }
        return line
    }

    public init(_ id: String, sql: String) {
        self.id = id
        self.sql = sql
    }
}

extension Database {
    /// The tables every service has: the idempotent-consumer ledger and the outbox.
    public static let platformMigrations: [Migration] = [
        Migration("000_platform_processed_messages", sql: """
            CREATE TABLE {schema}.processed_messages (
                consumer text NOT NULL,
                message_id uuid NOT NULL,
                processed_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer, message_id)
            )
            """),
        Migration("000_platform_outbox", sql: """
            CREATE TABLE {schema}.outbox (
                seq bigserial PRIMARY KEY,
                message_id uuid NOT NULL UNIQUE,
                topic text NOT NULL,
                key bytea,
                value bytea NOT NULL,
                headers bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                published_at timestamptz
            );
            CREATE INDEX outbox_unpublished ON {schema}.outbox (seq) WHERE published_at IS NULL
            """),
    ]

    /// Applies the platform migrations and then `migrations`, each once, in id order.
    ///
    /// Replicas starting together do not race: the whole run holds a transaction-level
    /// advisory lock keyed by the schema, and each applied id is recorded in
    /// `{schema}.schema_migrations` in the same transaction as its SQL.
    /// - Returns: the ids applied by this call.
    @discardableResult
    public func migrate(_ migrations: [Migration]) async throws -> [String] {
        let all = (Self.platformMigrations + migrations).sorted { $0.id < $1.id }
        let schema = self.schema
        return try await transaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(hashtext(\("veil.migrations." + schema)))", logger: logger)
            // A provisioned role finds its schema made for it; an administrative URL creates it.
            let exists = try await connection.query("SELECT 1 FROM pg_namespace WHERE nspname = \(schema)", logger: logger).collect()
            if exists.isEmpty {
                try await connection.query(PostgresQuery(unsafeSQL: "CREATE SCHEMA \(schema)"), logger: logger)
            }
            try await connection.query(PostgresQuery(unsafeSQL: """
                CREATE TABLE IF NOT EXISTS \(schema).schema_migrations (
                    id text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())
                """), logger: logger)
            var done = Set<String>()
            for try await id in try await connection.query(PostgresQuery(unsafeSQL: "SELECT id FROM \(schema).schema_migrations"),
                                                           logger: logger).decode(String.self) {
                done.insert(id)
            }
            var applied: [String] = []
            for migration in all where !done.contains(migration.id) {
                for statement in migration.statements {
                    let sql = statement.replacingOccurrences(of: "{schema}", with: schema)
                    try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger)
                }
                try await connection.query(PostgresQuery(unsafeSQL: "INSERT INTO \(schema).schema_migrations (id) VALUES ($1)",
                                                         binds: try bindings(migration.id)), logger: logger)
                applied.append(migration.id)
            }
            if !applied.isEmpty { logger.info("migrations applied", metadata: ["schema": "\(schema)", "ids": "\(applied)"]) }
            return applied
        }
    }
}

/// Bind parameters for SQL built with `unsafeSQL` (schema-qualified names); `nil` binds NULL.
func bindings(_ values: (any PostgresEncodable)?...) throws -> PostgresBindings {
    var binds = PostgresBindings()
    for value in values {
        if let value { try binds.append(value) } else { binds.appendNull() }
    }
    return binds
}
