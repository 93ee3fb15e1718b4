import Logging
import PostgresNIO
import ServiceLifecycle

/// A service's connection pool and its schema. A `Service`: it must be running
/// (in the service group) for queries to go through, as `PostgresClient`.
public final class Database: Service, Sendable {
    public let client: PostgresClient
    /// The schema that holds this service's tables; also its migration scope.
    public let schema: String
    public let configuration: DatabaseConfiguration
    let logger: Logger

    /// - Parameter alsoSearching: schemas of other services this one reads (by a grant), searched
    ///   after its own for unqualified names, so its prepared statements can name their tables.
    public init(configuration: DatabaseConfiguration, schema: String, alsoSearching: [String] = [],
                logger: Logger) throws(DatabaseError) {
        guard ([schema] + alsoSearching).allSatisfy(Self.isIdentifier) else {
            throw DatabaseError(code: "database.configuration", reason: "schema must match [a-z_][a-z0-9_]*")
        }
        self.configuration = configuration
        self.schema = schema
        self.logger = logger
        // Every statement names its schema, except prepared statements: their SQL is a
        // static string, the same for every schema, so each connection resolves unqualified
        // names in this one, then in those it also reads (and `pg_catalog`, always searched first).
        var client = configuration.clientConfiguration
        client.options.additionalStartupParameters.append(("search_path", ([schema] + alsoSearching).joined(separator: ", ")))
        self.client = PostgresClient(configuration: client, backgroundLogger: logger)
    }

    public func run() async throws {
        await client.run()
    }

    /// `true` when a round trip to the server succeeds (for `/health/ready`).
    public func isReachable() async -> Bool {
        do {
            try await client.query("SELECT 1", logger: logger)
            return true
        } catch {
            return false
        }
    }

    /// Runs `body` in a transaction: committed if it returns, rolled back if it throws.
    /// The closure's own error is rethrown as it is (not wrapped), once the rollback succeeded.
    public func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await client.withTransaction(logger: logger) { try await body($0) }
        } catch let error as PostgresTransactionError {
            if let inner = error.closureError, error.rollbackError == nil { throw inner }
            throw error
        }
    }

    /// A schema-qualified table name for SQL built with `unsafeSQL`.
    public func table(_ name: String) -> String { "\(schema).\(name)" }

    public static func isIdentifier(_ text: String) -> Bool {
        guard let first = text.unicodeScalars.first, first == "_" || ("a"..."z").contains(first) else { return false }
        return text.count <= 63 && text.unicodeScalars.allSatisfy { $0 == "_" || ("a"..."z").contains($0) || ("0"..."9").contains($0) }
    }
}

extension PostgresClient {
    /// Runs a prepared statement and returns its first row, if any. The remaining rows are
    /// read to the end, so the connection goes back to the pool with nothing pending.
    public func first<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> Statement.Row? {
        try await withConnection { try await $0.first(statement, logger: logger) }
    }

    /// Runs a prepared statement and returns all its rows.
    public func rows<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row] {
        try await withConnection { try await $0.rows(statement, logger: logger) }
    }
}

extension PostgresConnection {
    /// `PostgresClient.first` on this connection (e.g. within a transaction).
    public func first<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> Statement.Row? {
        var first: Statement.Row?
        try await forEachRow(statement, logger: logger) { if first == nil { first = $0 } }
        return first
    }

    /// `PostgresClient.rows` on this connection (e.g. within a transaction).
    public func rows<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row] {
        var rows: [Statement.Row] = []
        try await forEachRow(statement, logger: logger) { rows.append($0) }
        return rows
    }

    /// postgres-nio remembers a statement whose preparation failed (its table did not exist
    /// yet, a grant was missing) and fails it again on this connection for as long as the
    /// connection lives; PostgreSQL likewise refuses a prepared statement whose result
    /// columns changed type under it. On such an error the connection is closed, so the pool
    /// opens a fresh one and the next call prepares again.
    private func forEachRow<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger,
                                                                 _ body: (Statement.Row) -> Void) async throws {
        do {
            for try await row in try await execute(statement, logger: logger) { body(row) }
        } catch let error as PSQLError where error.invalidatesPreparedStatements {
            logger.warning("prepared statement failed on its definition; connection closed",
                           metadata: ["statement": "\(Statement.name)", "error": "\(safeDescription(error))"])
            try? await close()
            throw error
        }
    }
}

extension PSQLError {
    /// Errors about the objects a statement names or about its plan (SQLSTATE class 42:
    /// undefined table, column or function, missing privilege; 3F000 invalid schema; 0A000,
    /// "cached plan must not change result type").
    var invalidatesPreparedStatements: Bool {
        guard let state = serverInfo?[.sqlState] else { return false }
        return state.hasPrefix("42") || state == "3F000" || state == "0A000"
    }
}

extension PostgresBindings {
    /// Bindings of the given values, in order: a prepared statement's `makeBindings()` in one line.
    public init<each Value: PostgresEncodable>(_ values: repeat each Value) throws {
        self.init()
        repeat try append(each values)
    }
}
