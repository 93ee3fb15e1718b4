import PostgresNIO
import Testing
import VeilCore
@testable import VeilStore

@Suite("Idempotent consumer", .timeLimit(.minutes(2)))
struct IdempotentConsumerTests {
    @Test("the same message id applies its effect once, however often it arrives")
    func appliesOnce() async throws {
        let schema = uniqueSchema()
        try await withDatabase(try adminConfiguration(), schema: schema) { database in
            try await database.migrate([Migration("001_counter", sql: "CREATE TABLE {schema}.counter (n int);\nINSERT INTO {schema}.counter VALUES (0)")])
            let id = MessageID.generate()
            var results: [Bool] = []
            for _ in 0..<3 {
                results.append(try await database.applyOnce(consumer: "c", messageID: id) { connection in
                    try await connection.run("UPDATE \(schema).counter SET n = n + 1")
                })
            }
            #expect(results == [true, false, false])
            let n = try await database.client.query(PostgresQuery(unsafeSQL: "SELECT n FROM \(schema).counter")).collect().first?.decode(Int.self)
            #expect(n == 1)
        }
    }

    @Test("an effect that fails records nothing, so the redelivery applies it")
    func failedEffectIsNotRecorded() async throws {
        let schema = uniqueSchema()
        try await withDatabase(try adminConfiguration(), schema: schema) { database in
            try await database.migrate([])
            let id = MessageID.generate()
            struct Boom: Error {}
            await #expect(throws: Boom.self) {
                try await database.applyOnce(consumer: "c", messageID: id) { _ in throw Boom() }
            }
            #expect(try await database.wasApplied(consumer: "c", messageID: id) == false)
            #expect(try await database.applyOnce(consumer: "c", messageID: id) { _ in })
        }
    }

    @Test("concurrent deliveries of one id race, and exactly one applies")
    func concurrentDeliveries() async throws {
        let schema = uniqueSchema()
        try await withDatabase(try adminConfiguration(), schema: schema) { database in
            try await database.migrate([])
            let id = MessageID.generate()
            let applied = try await withThrowingTaskGroup(of: Bool.self) { group in
                for _ in 0..<8 { group.addTask { try await database.applyOnce(consumer: "c", messageID: id) { _ in } } }
                var count = 0
                for try await ok in group where ok { count += 1 }
                return count
            }
            #expect(applied == 1)
        }
    }
}
