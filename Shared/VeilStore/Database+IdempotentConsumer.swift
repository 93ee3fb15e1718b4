import Foundation
import PostgresNIO
import VeilCore

extension Database {
    /// Applies an effect exactly once per message id, whatever the broker redelivers.
    ///
    /// The effect and the row saying "`consumer` applied `messageID`" commit in one
    /// transaction: either both happen or neither does. A redelivered (or replayed)
    /// message finds the row and its effect is skipped.
    /// - Returns: `true` if the effect ran now, `false` if it had been applied before.
    @discardableResult
    public func applyOnce(consumer: String, messageID: MessageID,
                          _ effect: (PostgresConnection) async throws -> Void) async throws -> Bool {
        let table = self.table("processed_messages")
        return try await transaction { connection in
            let inserted = try await connection.query(PostgresQuery(
                unsafeSQL: "INSERT INTO \(table) (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
                binds: try bindings(consumer, messageID.uuid)), logger: logger).collect()
            guard !inserted.isEmpty else { return false }
            try await effect(connection)
            return true
        }
    }

    /// Whether `consumer` already applied `messageID`.
    public func wasApplied(consumer: String, messageID: MessageID) async throws -> Bool {
        let rows = try await client.query(PostgresQuery(
            unsafeSQL: "SELECT 1 FROM \(table("processed_messages")) WHERE consumer = $1 AND message_id = $2",
            binds: try bindings(consumer, messageID.uuid)), logger: logger).collect()
        return !rows.isEmpty
    }
}
