import Logging
import PostgresNIO

/// Creates one login role and one schema per service, with least privilege: a
/// service's role owns its own schema and nothing else, so it cannot read another
/// service's tables (the matcher cannot read the key-vault's keys). Runs with an
/// administrative connection (`veilctl db provision`, the local stack, tests).
public struct DatabaseProvisioner: Sendable {
    let admin: DatabaseConfiguration
    let logger: Logger

    public init(admin: DatabaseConfiguration, logger: Logger) {
        self.admin = admin
        self.logger = logger
    }

    /// The role name of a service's schema (`key_vault` → `veil_key_vault`).
    public static func role(forSchema schema: String) -> String { "veil_\(schema)" }

    /// Creates (or updates the password of) the service's role and its schema.
    /// - Returns: the configuration the service should use to connect.
    @discardableResult
    public func provision(schema: String, password: String) async throws -> DatabaseConfiguration {
        guard Database.isIdentifier(schema) else {
            throw DatabaseError(code: "database.configuration", reason: "schema must match [a-z_][a-z0-9_]*")
        }
        let role = Self.role(forSchema: schema)
        let database = admin.database
        let quotedPassword = "'" + password.replacingOccurrences(of: "'", with: "''") + "'"
        let client = PostgresClient(configuration: admin.clientConfiguration, backgroundLogger: logger)
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            try await client.withTransaction(logger: logger) { connection in
                // Roles, and the grants on the database and the public schema, are cluster-wide:
                // concurrent provisioning (replicas, parallel tests) takes turns.
                try await connection.query("SELECT pg_advisory_xact_lock(hashtext('veil.provision'))", logger: logger)
                let exists = try await connection.query("SELECT 1 FROM pg_roles WHERE rolname = \(role)", logger: logger)
                    .collect().isEmpty == false
                let verb = exists ? "ALTER" : "CREATE"
                for sql in [
                    "\(verb) ROLE \(role) LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD \(quotedPassword)",
                    "CREATE SCHEMA IF NOT EXISTS \(schema) AUTHORIZATION \(role)",
                    "REVOKE ALL ON SCHEMA public FROM PUBLIC",
                    "REVOKE ALL ON DATABASE \"\(database)\" FROM PUBLIC",
                    "GRANT CONNECT ON DATABASE \"\(database)\" TO \(role)",
                    "ALTER ROLE \(role) SET search_path = \(schema)",
                ] {
                    try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger)
                }
            }
        }
        logger.info("database role provisioned", metadata: ["role": "\(role)", "schema": "\(schema)"])
        return admin.asRole(role, password: password)
    }
}
