import PostgresNIO
import VeilKafka

/// A description of an error that is safe to log: codes and states, never values.
///
/// `String(describing:)` of a postgres-nio transaction error includes the SQL and
/// the server's message, which can quote row values; Veil handles identifiers, so
/// logs get this instead.
public func safeDescription(_ error: any Error) -> String {
    switch error {
    case let e as KafkaError:
        return e.description
    case let e as DatabaseError:
        return e.description
    case let e as PSQLError:
        return "PSQLError(\(e.code)\(e.serverInfo?[.sqlState].map { ", sqlState: \($0)" } ?? ""))"
    case let e as PostgresTransactionError:
        if let inner = e.closureError { return safeDescription(inner) }
        if let inner = e.beginError { return "begin failed: " + safeDescription(inner) }
        if let inner = e.commitError { return "commit failed: " + safeDescription(inner) }
        return "PostgresTransactionError"
    case let e as any CustomStringConvertible where e is SafelyDescribable:
        return e.description
    default:
        return String(describing: type(of: error))
    }
}

/// Errors whose `description` holds no data, only codes and reasons Veil wrote.
public protocol SafelyDescribable {}
