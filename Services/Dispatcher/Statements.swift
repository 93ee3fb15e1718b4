import Foundation
import NIOCore
import PostgresNIO

// The dispatcher's statements on a request's way (filing it, deciding, alerting, confirming),
// prepared: PostgreSQL parses and plans each once per connection. Tables are unqualified:
// `Database` opens connections with `search_path` set to the dispatcher's schema.

/// `submit_request` as a prepared statement: parsed and planned once per connection
/// instead of at every decision (the statement a dispatcher runs most;
/// `Deploy/local/pgbench-dispatch.sh` compares both). The name is unqualified: the
/// database's connections search its schema first (`Database`).
struct SubmitRequestStatement: PostgresPreparedStatement {
    static let name = "veil.dispatcher.submit"
    static let sql = """
        SELECT technician_id, expires_at FROM submit_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        """
    static let bindingDataTypes: [PostgresDataType] = [.uuid, .text, .int4, .text, .textArray, .text, .uuid,
                                                       .float8, .float8, .float8]
    typealias Row = (String, Date)

    var request: UUID
    var category: String
    var priority: Int32
    var region: String?
    var skills: [String]
    var kind: String
    var reservation: UUID
    var timeoutSeconds: Double
    var loadWeight: Double
    var regionWeight: Double

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 10)
        bindings.append(request)
        bindings.append(category)
        bindings.append(priority)
        bindings.append(region)
        bindings.append(skills)
        bindings.append(kind)
        bindings.append(reservation)
        bindings.append(timeoutSeconds)
        bindings.append(loadWeight)
        bindings.append(regionWeight)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row {
        try row.decode(Row.self)
    }
}

/// Files an opened service request (idempotent by id: a redelivery inserts nothing).
struct FileServiceRequestStatement: PostgresPreparedStatement {
    static let name = "veil.dispatcher.file-request"
    static let sql = """
        INSERT INTO service_requests (id, account_ref, device_ref, device_encryption_key, category, priority, region, tier,
            description_sealed, at_rest_key_version, action, rule, assertion)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb)
        ON CONFLICT (id) DO NOTHING
        """
    static let bindingDataTypes: [PostgresDataType] = [.uuid, .bytea, .bytea, .bytea, .text, .int8, .text, .text,
                                                       .bytea, .int4, .text, .text, .text]
    typealias Row = Void

    var id: UUID
    var accountRef: ByteBuffer
    var deviceRef: ByteBuffer
    var deviceEncryptionKey: ByteBuffer
    var category: String
    var priority: Int
    var region: String?
    var tier: String?
    var descriptionSealed: ByteBuffer
    var atRestKeyVersion: Int32
    var action: String
    var rule: String?
    var assertionJSON: String

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 13)
        bindings.append(id)
        bindings.append(accountRef)
        bindings.append(deviceRef)
        bindings.append(deviceEncryptionKey)
        bindings.append(category)
        bindings.append(priority)
        bindings.append(region)
        bindings.append(tier)
        bindings.append(descriptionSealed)
        bindings.append(atRestKeyVersion)
        bindings.append(action)
        bindings.append(rule)
        bindings.append(assertionJSON)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws {}
}

/// What an offer's alert carries: the technician's device keys and the filed request.
struct AlertContentStatement: PostgresPreparedStatement {
    static let name = "veil.dispatcher.alert"
    static let sql = """
        SELECT t.device_signing_key, t.device_encryption_key, s.category, s.priority, s.region, s.description_sealed,
               s.at_rest_key_version, s.assertion::text
        FROM technicians t, service_requests s
        WHERE t.id = $1 AND s.id = $2
        """
    static let bindingDataTypes: [PostgresDataType] = [.text, .uuid]
    typealias Row = (ByteBuffer?, ByteBuffer?, String, Int, String?, ByteBuffer, Int32, String)

    var technicianID: String
    var requestID: UUID

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(technicianID, requestID) }
    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

/// The customer's device behind a filed request (none for a request opened by SMS).
struct RequestDeviceStatement: PostgresPreparedStatement {
    static let name = "veil.dispatcher.request-device"
    static let sql = "SELECT device_ref, device_encryption_key FROM service_requests WHERE id = $1"
    static let bindingDataTypes: [PostgresDataType] = [.uuid]
    typealias Row = (ByteBuffer?, ByteBuffer?)

    var requestID: UUID

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(requestID) }
    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}
