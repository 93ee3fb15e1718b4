import PostgresNIO
import Testing
@testable import VeilStore

/// A prepared statement whose SQL names a table unqualified, as the services' hot statements do.
private struct NoteByID: PostgresPreparedStatement {
    static let name = "veil.test.note"
    static let sql = "SELECT body FROM notes WHERE id = $1"
    static let bindingDataTypes: [PostgresDataType] = [.int4]
    typealias Row = String

    var id: Int32

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(id) }
    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

/// A table that only another service's schema holds (as the vault's records for the matcher).
private struct FiledByID: PostgresPreparedStatement {
    static let name = "veil.test.filed"
    static let sql = "SELECT body FROM filed WHERE id = $1"
    static let bindingDataTypes: [PostgresDataType] = [.int4]
    typealias Row = String

    var id: Int32

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(id) }
    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

/// Every row of a two-column table, to check that `first` leaves the connection clean.
private struct AllNotes: PostgresPreparedStatement {
    static let name = "veil.test.notes"
    static let sql = "SELECT id, body FROM notes ORDER BY id"
    static let bindingDataTypes: [PostgresDataType] = []
    typealias Row = (Int32, String)

    func makeBindings() throws -> PostgresBindings { PostgresBindings() }
    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

@Suite("Prepared statements and the schema search path", .timeLimit(.minutes(2)))
struct PreparedStatementTests {
    @Test("a prepared statement's unqualified table is the service's own first, then one it also reads; no other schema is searched")
    func searchPath() async throws {
        let own = uniqueSchema("own"), other = uniqueSchema("other"), unrelated = uniqueSchema("unrelated")
        let admin = try adminConfiguration()
        try await withDatabase(admin, schema: own) { database in
            try await database.client.withConnection { connection in
                for schema in [own, other, unrelated] {
                    try await connection.run("CREATE SCHEMA \(schema)")
                    try await connection.run("CREATE TABLE \(schema).notes (id int PRIMARY KEY, body text NOT NULL)")
                    try await connection.run("INSERT INTO \(schema).notes VALUES (1, '\(schema)')")
                }
                try await connection.run("INSERT INTO \(other).notes VALUES (2, 'only in other')")
                for schema in [other, unrelated] {
                    try await connection.run("CREATE TABLE \(schema).filed (id int PRIMARY KEY, body text NOT NULL)")
                    try await connection.run("INSERT INTO \(schema).filed VALUES (1, '\(schema)')")
                }
            }
        }
        func lookups(schema: String, alsoSearching: [String]) async throws -> [Result<String?, PSQLError>] {
            let database = try Database(configuration: admin, schema: schema, alsoSearching: alsoSearching, logger: quietLogger)
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await database.run() }
                defer { group.cancelAll() }
                var results: [Result<String?, PSQLError>] = []
                for statement in [{ try await database.client.first(NoteByID(id: 1), logger: quietLogger) },
                                  { try await database.client.first(NoteByID(id: 2), logger: quietLogger) },
                                  { try await database.client.first(FiledByID(id: 1), logger: quietLogger) }] {
                    do { results.append(.success(try await statement())) } catch let error as PSQLError { results.append(.failure(error)) }
                }
                return results
            }
        }
        // Its own `notes` hides the other's (row 2 is only in the other's); `filed` is found in the other schema.
        let searching = try await lookups(schema: own, alsoSearching: [other])
        #expect(try searching[0].get() == own)
        #expect(try searching[1].get() == nil)
        #expect(try searching[2].get() == other)
        // Without the other schema, `filed` is not found at all, not even in a schema nobody named.
        let alone = try await lookups(schema: own, alsoSearching: [])
        #expect(try alone[0].get() == own)
        #expect(throws: PSQLError.self) { try alone[2].get() }
    }

    @Test("first returns the first row and reads the rest, so the next statement on the pool works")
    func firstReadsToTheEnd() async throws {
        let schema = uniqueSchema()
        // One connection, so a row left unread would be in the way of the next statement.
        var configuration = try adminConfiguration()
        configuration.maximumConnections = 1
        try await withDatabase(configuration, schema: schema) { database in
            try await database.client.withConnection { connection in
                try await connection.run("CREATE SCHEMA \(schema)")
                try await connection.run("CREATE TABLE \(schema).notes (id int PRIMARY KEY, body text NOT NULL)")
                try await connection.run("INSERT INTO \(schema).notes SELECT n, 'note ' || n FROM generate_series(1, 500) n")
            }
            for _ in 0..<3 {
                let first = try await database.client.first(AllNotes(), logger: quietLogger)
                let last = try await database.client.first(NoteByID(id: 500), logger: quietLogger)
                #expect(first?.0 == 1 && first?.1 == "note 1")
                #expect(last == "note 500")
            }
        }
    }

    @Test("a statement that failed on its definition (no table yet, a column's type changed under it) works again once the schema is right")
    func recoversFromDefinitionErrors() async throws {
        let schema = uniqueSchema()
        // One connection: without the recovery, the pool would hand back the connection that
        // remembers the failed preparation.
        var configuration = try adminConfiguration()
        configuration.maximumConnections = 1
        try await withDatabase(configuration, schema: schema) { database in
            var early: PSQLError?
            do { _ = try await database.client.first(NoteByID(id: 1), logger: quietLogger) } catch let error as PSQLError { early = error }
            #expect(early?.serverInfo?[.sqlState] == "42P01")  // undefined_table
            try await database.client.withConnection { connection in
                try await connection.run("CREATE SCHEMA \(schema)")
                try await connection.run("CREATE TABLE \(schema).notes (id int PRIMARY KEY, body text NOT NULL)")
                try await connection.run("INSERT INTO \(schema).notes VALUES (1, 'one')")
            }
            let created = try await database.client.first(NoteByID(id: 1), logger: quietLogger)
            #expect(created == "one")
            try await database.client.withConnection { connection in
                try await connection.run("ALTER TABLE \(schema).notes ALTER COLUMN body TYPE varchar(40)")
            }
            _ = try? await database.client.first(NoteByID(id: 1), logger: quietLogger)  // may fail once: "cached plan must not change result type"
            let altered = try await database.client.first(NoteByID(id: 1), logger: quietLogger)
            #expect(altered == "one")
        }
    }

    @Test("a schema name that is not a plain identifier is refused, in the search path too")
    func badSchemaNames() throws {
        let admin = try adminConfiguration()
        #expect(throws: DatabaseError.self) { try Database(configuration: admin, schema: "ok", alsoSearching: ["x; DROP"], logger: quietLogger) }
        #expect(throws: DatabaseError.self) { try Database(configuration: admin, schema: "Bad-Name", logger: quietLogger) }
    }
}
