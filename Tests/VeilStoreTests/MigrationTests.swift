import PostgresNIO
import Testing
@testable import VeilStore

@Suite("Migrations", .timeLimit(.minutes(2)))
struct MigrationTests {
    let migrations = [
        Migration("001_widgets", sql: "CREATE TABLE {schema}.widgets (id int PRIMARY KEY);\nINSERT INTO {schema}.widgets VALUES (1)"),
        Migration("002_widgets_name", sql: "ALTER TABLE {schema}.widgets ADD COLUMN name text"),
    ]

    @Test("statements end at a semicolon at the end of a line, even with a comment after it; semicolons in strings and comments do not split")
    func statementSplitting() {
        let migration = Migration("003_split", sql: """
            ALTER TABLE t ADD COLUMN a bytea;        -- a comment; with a semicolon
            ALTER TABLE t ADD COLUMN b text DEFAULT 'x; -- not a comment';
            -- a line of comment only
            CREATE INDEX i ON t (a)
            """)
        #expect(migration.statements == [
            "ALTER TABLE t ADD COLUMN a bytea",
            "ALTER TABLE t ADD COLUMN b text DEFAULT 'x; -- not a comment'",
            "-- a line of comment only\nCREATE INDEX i ON t (a)",
        ])
    }

    @Test("a function body between $$ lines is one statement")
    func functionBodies() {
        let migration = Migration("004_function", sql: """
            CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM 1;
                RETURN 2;
            END
            $$;
            SELECT f();
            """)
        #expect(migration.statements == [
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n    PERFORM 1;\n    RETURN 2;\nEND\n$$",
            "SELECT f()",
        ])
    }

    @Test("migrations run once, in order, and are recorded")
    func runOnce() async throws {
        let admin = try adminConfiguration()
        let schema = uniqueSchema()
        try await withDatabase(admin, schema: schema) { database in
            let first = try await database.migrate(migrations)
            #expect(first == ["000_platform_outbox", "000_platform_processed_messages", "001_widgets", "002_widgets_name"])
            let second = try await database.migrate(migrations)
            #expect(second.isEmpty)
            let rows = try await database.client.query(PostgresQuery(unsafeSQL: "SELECT count(*) FROM \(schema).widgets")).collect()
            #expect(try rows.first?.decode(Int.self) == 1)
        }
    }

    @Test("two replicas migrating at the same moment apply each migration exactly once")
    func concurrentReplicas() async throws {
        let admin = try adminConfiguration()
        let schema = uniqueSchema()
        let migrations = self.migrations
        let applied = try await withThrowingTaskGroup(of: [String].self) { group in
            for _ in 0..<4 {
                group.addTask { try await withDatabase(admin, schema: schema) { try await $0.migrate(migrations) } }
            }
            var all: [String] = []
            for try await ids in group { all += ids }
            return all
        }
        #expect(applied.sorted() == ["000_platform_outbox", "000_platform_processed_messages", "001_widgets", "002_widgets_name"])
    }

    @Test("a failing migration leaves nothing behind and is retried next time")
    func failingMigrationRollsBack() async throws {
        let admin = try adminConfiguration()
        let schema = uniqueSchema()
        try await withDatabase(admin, schema: schema) { database in
            await #expect(throws: (any Error).self) {
                try await database.migrate([Migration("001_bad", sql: "CREATE TABLE {schema}.ok (id int);\nSELECT no_such_function()")])
            }
            let applied = try await database.migrate([Migration("001_bad", sql: "CREATE TABLE {schema}.ok (id int)")])
            #expect(applied.contains("001_bad"))
        }
    }
}

@Suite("Roles and privileges", .timeLimit(.minutes(2)))
struct ProvisioningTests {
    @Test("a service's role can use its own schema and cannot read another service's tables")
    func leastPrivilege() async throws {
        let admin = try adminConfiguration()
        let provisioner = DatabaseProvisioner(admin: admin, logger: quietLogger)
        let vault = uniqueSchema("vault"), matcher = uniqueSchema("matcher")
        let vaultConfiguration = try await provisioner.provision(schema: vault, password: "pw-vault")
        let matcherConfiguration = try await provisioner.provision(schema: matcher, password: "pw-matcher")

        _ = try await withDatabase(vaultConfiguration, schema: vault) { database in
            try await database.migrate([Migration("001_keys", sql: "CREATE TABLE {schema}.keys (k bytea)")])
        }
        try await withDatabase(matcherConfiguration, schema: matcher) { database in
            try await database.migrate([])
            await #expect(throws: PSQLError.self) {
                try await database.client.query(PostgresQuery(unsafeSQL: "SELECT * FROM \(vault).keys")).collect()
            }
            await #expect(throws: PSQLError.self) {
                try await database.client.query(PostgresQuery(unsafeSQL: "CREATE SCHEMA \(uniqueSchema())")).collect()
            }
        }
    }
}
