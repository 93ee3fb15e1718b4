import Crypto
import _CryptoExtras
import Foundation
import Logging
import NIOCore
import PostgresNIO
import VeilCore
import VeilStore

/// Agents' sign-in: passwords kept as PBKDF2-SHA256 hashes (210,000 rounds, random
/// salt), sessions as the SHA-256 of a random 256-bit token (the cookie holds the token;
/// a dump of the table cannot be replayed as a cookie); five wrong passwords in a row lock
/// the sign-in for 15 minutes (setting a new password unlocks it).
public struct AgentAccounts: Sendable {
    let engine: AssignmentEngine
    let logger: Logger
    static let rounds = 210_000

    public init(engine: AssignmentEngine, logger: Logger) {
        self.engine = engine
        self.logger = logger
    }

    var database: Database { engine.database }

    public static let migrations: [Migration] = [
        Migration("017_dispatch_agent_accounts", sql: """
            CREATE TABLE {schema}.agent_credentials (
                agent_id      text PRIMARY KEY REFERENCES {schema}.technicians (id),
                password_hash bytea NOT NULL,          -- PBKDF2-SHA256, never the password
                salt          bytea NOT NULL,
                rounds        integer NOT NULL,
                updated_at    timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE {schema}.console_sessions (
                token_hash bytea PRIMARY KEY,          -- SHA-256 of the cookie's token
                agent_id   text NOT NULL REFERENCES {schema}.technicians (id),
                expires_at timestamptz NOT NULL
            );
            CREATE INDEX console_sessions_expiry ON {schema}.console_sessions (expires_at);
            """),
        Migration("019_dispatch_agent_lockout", sql: """
            -- Five wrong passwords in a row lock an agent's sign-in for a while.
            ALTER TABLE {schema}.agent_credentials ADD COLUMN failed_attempts integer NOT NULL DEFAULT 0;
            ALTER TABLE {schema}.agent_credentials ADD COLUMN locked_until timestamptz;
            """),
    ]

    /// Wrong passwords in a row before the sign-in is locked, and for how long.
    static let maxFailedSignIns = 5
    static let lockout: Double = 15 * 60

    /// Creates or updates an agent (a worker of kind `agent`) and sets their password.
    public func upsert(_ agent: Technician, password: String) async throws {
        guard password.count >= 8, password.utf8.count <= 256 else {
            throw AssignmentError.invalid("the password must have 8 to 256 characters")
        }
        var agent = agent
        agent.kind = .agent
        try await engine.upsert(agent)
        let salt = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let hash = try Self.hash(password, salt: salt, rounds: Self.rounds)
        try await database.client.query("""
            INSERT INTO \(unescaped: database.table("agent_credentials")) (agent_id, password_hash, salt, rounds)
            VALUES (\(agent.id), \(ByteBuffer(bytes: hash)), \(ByteBuffer(bytes: salt)), \(Self.rounds))
            ON CONFLICT (agent_id) DO UPDATE SET password_hash = EXCLUDED.password_hash, salt = EXCLUDED.salt,
                rounds = EXCLUDED.rounds, updated_at = now(), failed_attempts = 0, locked_until = NULL
            """, logger: logger)
    }

    static func hash(_ password: String, salt: [UInt8], rounds: Int) throws -> [UInt8] {
        try KDF.Insecure.PBKDF2.deriveKey(from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: 32,
                                          rounds: rounds).withUnsafeBytes { Array($0) }
    }

    /// Checks the password; on success opens a session and returns its token (for the cookie).
    public func signIn(_ agentID: String, password: String, lifetime: Duration) async throws -> String? {
        let rows = try await database.client.query("""
            SELECT c.password_hash, c.salt, c.rounds, coalesce(c.locked_until > now(), false)
            FROM \(unescaped: database.table("agent_credentials")) c
            JOIN \(unescaped: database.table("technicians")) t ON t.id = c.agent_id
            WHERE c.agent_id = \(agentID) AND t.kind = 'agent'
            """, logger: logger).collect()
        // Unknown agents cost the same hash as known ones: the timing does not tell them apart.
        let (stored, salt, rounds, locked) = try rows.first?.decode((ByteBuffer, ByteBuffer, Int, Bool).self)
            ?? (ByteBuffer(bytes: [UInt8](repeating: 0, count: 32)), ByteBuffer(bytes: [UInt8](repeating: 0, count: 16)), Self.rounds, false)
        let given = try Self.hash(password, salt: Array(salt.readableBytesView), rounds: rounds)
        let equal = ConstantTime.equal(given, stored.readableBytesView)
        let credentials = database.table("agent_credentials")
        guard !rows.isEmpty, equal, !locked else {
            if !rows.isEmpty && !locked {
                try await database.client.query("""
                    UPDATE \(unescaped: credentials) SET failed_attempts = failed_attempts + 1,
                        locked_until = CASE WHEN failed_attempts + 1 >= \(Self.maxFailedSignIns)
                                            THEN now() + make_interval(secs => \(Self.lockout)) ELSE locked_until END
                    WHERE agent_id = \(agentID)
                    """, logger: logger)
            }
            logger.notice("console sign-in refused", metadata: ["agent": "\(agentID)", "locked": "\(locked)"])
            return nil
        }
        try await database.client.query("""
            UPDATE \(unescaped: credentials) SET failed_attempts = 0, locked_until = NULL WHERE agent_id = \(agentID)
            """, logger: logger)
        var generator = SystemRandomNumberGenerator()
        let token = Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        try await database.client.query("""
            INSERT INTO \(unescaped: database.table("console_sessions")) (token_hash, agent_id, expires_at)
            VALUES (\(ByteBuffer(bytes: Array(SHA256.hash(data: Array(token.utf8))))), \(agentID),
                    now() + make_interval(secs => \(lifetime.seconds)))
            """, logger: logger)
        try await database.client.query("""
            DELETE FROM \(unescaped: database.table("console_sessions")) WHERE expires_at < now()
            """, logger: logger)
        logger.info("console sign-in", metadata: ["agent": "\(agentID)"])
        return token
    }

    /// The agent a session token belongs to, if it is live.
    public func agent(forSession token: String) async throws -> String? {
        guard !token.isEmpty, token.utf8.count <= 128 else { return nil }
        let rows = try await database.client.query("""
            SELECT agent_id FROM \(unescaped: database.table("console_sessions"))
            WHERE token_hash = \(ByteBuffer(bytes: Array(SHA256.hash(data: Array(token.utf8))))) AND expires_at > now()
            """, logger: logger).collect()
        return try rows.first?.decode(String.self)
    }

    public func signOut(_ token: String) async throws {
        try await database.client.query("""
            DELETE FROM \(unescaped: database.table("console_sessions")) WHERE token_hash = \(ByteBuffer(bytes: Array(SHA256.hash(data: Array(token.utf8)))))
            """, logger: logger)
    }
}
