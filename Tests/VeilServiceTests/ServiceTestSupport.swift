import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing
import VeilCore
import VeilKafka
@testable import VeilService
import VeilStore

var quietLogger: Logger {
    var logger = Logger(label: "test")
    logger.logLevel = ProcessInfo.processInfo.environment["VEIL_TEST_LOG"] == nil ? .critical : .debug
    return logger
}

func adminDatabase() throws -> DatabaseConfiguration {
    guard let url = ProcessInfo.processInfo.environment["DATABASE_URL"] else {
        Issue.record("DATABASE_URL is not set: run the tests with `make test`, which starts PostgreSQL")
        throw DatabaseError(code: "test.no_database", reason: "DATABASE_URL not set")
    }
    return try DatabaseConfiguration(url: url)
}

func uniqueName(_ prefix: String) -> String { "\(prefix)_\(UUID().uuidString.prefix(8).lowercased())" }

/// An embedded cluster plus helpers to make clients on it.
struct Kafka {
    let cluster: EmbeddedKafkaCluster
    init() throws { cluster = try EmbeddedKafkaCluster(brokers: 1) }
    var configuration: KafkaConfiguration { KafkaConfiguration(bootstrapServers: cluster.bootstrapServers, clientID: "test") }

    func topic(_ name: String, partitions: Int32 = 1) throws -> String {
        let full = uniqueName(name)
        try cluster.createTopic(full, partitions: partitions)
        try cluster.createTopic(full + ".dlq", partitions: 1)
        return full
    }

    func producer() throws -> KafkaProducer {
        try KafkaProducer(configuration: ProducerConfiguration(kafka: configuration), logger: quietLogger)
    }

    func consumer(group: String, topic: String) throws -> KafkaConsumer {
        var c = ConsumerConfiguration(kafka: configuration, groupID: group, topics: [topic])
        c.sessionTimeoutMilliseconds = 6_000
        return try KafkaConsumer(configuration: c, logger: quietLogger)
    }
}

func withDatabase<T: Sendable>(schema: String, _ body: @Sendable (Database) async throws -> T) async throws -> T {
    let database = try Database(configuration: try adminDatabase(), schema: schema, logger: quietLogger)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await database.run() }
        defer { group.cancelAll() }
        return try await body(database)
    }
}

/// Reads `count` messages (marking them processed) with a deadline. A time-out says what
/// did arrive (offsets), what the consumer was assigned and its lag, so a failure explains itself.
func read(_ consumer: KafkaConsumer, count: Int, seconds: Double = 60) async throws -> [KafkaMessage] {
    final class Seen: Sendable { let offsets = Mutex<[Int64]>([]) }
    let seen = Seen()
    return try await withThrowingTaskGroup(of: [KafkaMessage]?.self) { group in
        group.addTask {
            var got: [KafkaMessage] = []
            while got.count < count, let batch = try await consumer.nextBatch() {
                got += batch
                seen.offsets.withLock { $0 += batch.map(\.offset) }
                consumer.markProcessed(batch)
            }
            return got
        }
        group.addTask {
            try? await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let result = try await group.next(), let messages = result else {
            throw DatabaseError(code: "test.timeout", reason: "expected \(count) messages; got offsets \(seen.offsets.withLock { $0 }), "
                                + "assigned \(consumer.assignment.map(\.description).sorted()), lag \(consumer.lag())")
        }
        return messages
    }
}

func counterValue(_ database: Database, table: String) async throws -> Int {
    try await database.client.query(PostgresQuery(unsafeSQL: "SELECT n FROM \(database.table(table))")).collect().first?.decode(Int.self) ?? -1
}

extension KafkaMessage {
    var messageID: MessageID? { headerString("ce_id").flatMap(MessageID.init) }
}

extension PostgresConnection {
    /// Runs test SQL (schema names are interpolated, hence unsafeSQL).
    func run(_ sql: String) async throws {
        try await query(PostgresQuery(unsafeSQL: sql), logger: quietLogger)
    }
}
