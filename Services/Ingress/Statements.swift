import Foundation
import NIOCore
import PostgresNIO

// The statements ingress runs on every request, prepared: PostgreSQL parses and plans each
// once per connection instead of once per request. Their SQL is static and names tables
// unqualified: `Database` opens every connection with `search_path` set to the service's
// schema. Names are given explicitly (PostgreSQL compares statement names on their first
// 63 bytes; the default, the type's full name, could collide once generic).

/// The enrolled device behind a device reference.
struct EnrolledDeviceStatement: PostgresPreparedStatement {
    static let name = "veil.ingress.device"
    static let sql = """
        SELECT signing_key, encryption_key, account_ref, enrolled_at, revoked_at IS NOT NULL FROM devices WHERE device_ref = $1
        """
    static let bindingDataTypes: [PostgresDataType] = [.bytea]
    typealias Row = (ByteBuffer, ByteBuffer, ByteBuffer?, Date, Bool)

    var deviceRef: ByteBuffer

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(deviceRef) }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

/// A table of request status rows that `AcceptOnceStatement` files into.
protocol StatusTable: Sendable {
    static var name: String { get }
}

enum InquiryStatusTable: StatusTable { static let name = "inquiries" }
enum ServiceRequestStatusTable: StatusTable { static let name = "service_requests" }

/// Uses the request's nonce and files its status row (`accepted`) in one statement; a used
/// nonce inserts nothing and returns no row. Returns the acceptance time.
struct AcceptOnceStatement<Table: StatusTable>: PostgresPreparedStatement {
    static var name: String { "veil.ingress.accept.\(Table.name)" }
    static var sql: String {
        """
        WITH fresh AS (
            INSERT INTO request_nonces (device_ref, nonce) VALUES ($2, $3) ON CONFLICT DO NOTHING RETURNING device_ref)
        INSERT INTO \(Table.name) (id, device_ref, status) SELECT $1, device_ref, 'accepted' FROM fresh RETURNING accepted_at
        """
    }
    static var bindingDataTypes: [PostgresDataType] { [.uuid, .bytea, .bytea] }
    typealias Row = Date

    var id: UUID
    var deviceRef: ByteBuffer
    var nonce: ByteBuffer

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(id, deviceRef, nonce) }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

/// A till's signing key and revocation, using the request's nonce in the same statement
/// (unless the terminal is revoked): `(signing key, revoked, nonces inserted)`, no row for an
/// unknown terminal.
struct TerminalKeyUsingNonceStatement: PostgresPreparedStatement {
    static let name = "veil.ingress.terminal"
    static let sql = """
        WITH dev AS (
            SELECT signing_key, revoked_at IS NOT NULL AS revoked FROM devices WHERE device_ref = $1
        ), fresh AS (
            INSERT INTO request_nonces (device_ref, nonce)
            SELECT $1, $2 FROM dev WHERE NOT dev.revoked
            ON CONFLICT DO NOTHING RETURNING 1
        )
        SELECT signing_key, revoked, (SELECT count(*) FROM fresh)::int FROM dev
        """
    static let bindingDataTypes: [PostgresDataType] = [.bytea, .bytea]
    typealias Row = (ByteBuffer, Bool, Int)

    var terminalRef: ByteBuffer
    var nonce: ByteBuffer

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(terminalRef, nonce) }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}
