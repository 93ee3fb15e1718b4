import Foundation
import Logging
import PostgresNIO
import Testing
@testable import VeilStore

/// The administrative URL of the test database: `make test` starts a private
/// PostgreSQL and sets DATABASE_URL. Tests fail (not skip) without it.
func adminConfiguration() throws -> DatabaseConfiguration {
    guard let url = ProcessInfo.processInfo.environment["DATABASE_URL"] else {
        Issue.record("DATABASE_URL is not set: run the tests with `make test`, which starts PostgreSQL")
        throw DatabaseError(code: "test.no_database", reason: "DATABASE_URL not set")
    }
    return try DatabaseConfiguration(url: url)
}

var quietLogger: Logger {
    var logger = Logger(label: "test")
    logger.logLevel = ProcessInfo.processInfo.environment["VEIL_TEST_LOG"] == nil ? .critical : .debug
    return logger
}

/// A schema name no other test uses.
func uniqueSchema(_ prefix: String = "t") -> String {
    "\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
}

/// Runs `body` with a running `Database` on `schema`.
func withDatabase<T: Sendable>(_ configuration: DatabaseConfiguration, schema: String,
                               _ body: @Sendable (Database) async throws -> T) async throws -> T {
    let database = try Database(configuration: configuration, schema: schema, logger: quietLogger)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await database.run() }
        defer { group.cancelAll() }
        return try await body(database)
    }
}

extension PostgresConnection {
    /// Runs test SQL (schema names are interpolated, hence unsafeSQL).
    func run(_ sql: String) async throws {
        try await query(PostgresQuery(unsafeSQL: sql), logger: quietLogger)
    }
}
