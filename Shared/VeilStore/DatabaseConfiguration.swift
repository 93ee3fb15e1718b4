import Foundation
import PostgresNIO

/// Where a service's PostgreSQL is, parsed from a `postgres://user:password@host:port/db` URL.
public struct DatabaseConfiguration: Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    /// `sslmode=require` (or `verify-full`) in the URL turns TLS on.
    public var requireTLS: Bool
    /// Connections the pool may open.
    public var maximumConnections: Int = 8

    public init(host: String, port: Int = 5432, username: String, password: String?, database: String, requireTLS: Bool = false) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.requireTLS = requireTLS
    }

    /// Parses a libpq-style URL. The error never repeats the password.
    public init(url: String) throws(DatabaseError) {
        guard let components = URLComponents(string: url),
              components.scheme == "postgres" || components.scheme == "postgresql",
              let host = components.host, !host.isEmpty, let user = components.user else {
            throw DatabaseError(code: "database.configuration",
                                reason: "expected postgres://user:password@host:port/database")
        }
        let database = components.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        let sslmode = components.queryItems?.first { $0.name == "sslmode" }?.value
        self.init(host: host, port: components.port ?? 5432, username: user.removingPercentEncoding ?? user,
                  password: components.password?.removingPercentEncoding,
                  database: database.isEmpty ? user : database,
                  requireTLS: sslmode == "require" || sslmode == "verify-full" || sslmode == "verify-ca")
    }

    /// The same server and database as another role.
    public func asRole(_ username: String, password: String) -> DatabaseConfiguration {
        var copy = self
        copy.username = username
        copy.password = password
        return copy
    }

    public var description: String { "postgres://\(username)@\(host):\(port)/\(database)" }

    public var clientConfiguration: PostgresClient.Configuration {
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: username, password: password, database: database,
            tls: requireTLS ? .require(.makeClientConfiguration()) : .disable)
        configuration.options.maximumConnections = maximumConnections
        return configuration
    }
}

/// A database error with a stable code. Like `PSQLError`, its description stays
/// generic so that data and secrets never reach a log.
public struct DatabaseError: Error, Sendable, CustomStringConvertible {
    public var code: String
    public var reason: String
    public init(code: String, reason: String) {
        self.code = code
        self.reason = reason
    }
    public var description: String { "DatabaseError(\(code)): \(reason)" }
}
