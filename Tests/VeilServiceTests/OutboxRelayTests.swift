import Foundation
import PostgresNIO
import Testing
import VeilCore
import VeilKafka
@testable import VeilService
import VeilStore

@Suite("Transactional outbox", .timeLimit(.minutes(2)))
struct OutboxRelayTests {
    @Test("the relay delivers every row exactly once across a relay restart")
    func exactlyOnceAcrossRestart() async throws {
        let kafka = try Kafka()
        let topic = try kafka.topic("outbox", partitions: 3)
        try await withDatabase(schema: uniqueName("outbox")) { database in
            try await database.migrate([])
            let ids = (0..<300).map { _ in MessageID.generate() }
            try await database.transaction { connection in
                try await database.enqueue(ids.enumerated().map { i, id in
                    OutboxMessage(id: id, message: OutgoingMessage(
                        topic: topic, key: Array("k\(i % 7)".utf8), value: Array(String(i).utf8),
                        headers: [KafkaHeader(name: "ce_id", string: id.description), KafkaHeader(name: "nil", value: nil)]))
                }, on: connection)
            }
            // A retried effect writes the same ids again: nothing is added.
            try await database.transaction { connection in
                try await database.enqueue([OutboxMessage(id: ids[0], message: OutgoingMessage(topic: topic, value: [1]))], on: connection)
            }
            #expect(try await database.outboxBacklog() == 300)

            let firstProducer = try kafka.producer()
            let first = OutboxRelay(database: database, producer: firstProducer, batchSize: 100, logger: quietLogger)
            #expect(try await first.relayOnce() == 100)
            #expect(try await first.relayOnce() == 100)
            await firstProducer.close()  // the relay is restarted here

            let secondProducer = try kafka.producer()
            let second = OutboxRelay(database: database, producer: secondProducer, batchSize: 100, logger: quietLogger)
            #expect(try await second.relayOnce() == 100)
            #expect(try await second.relayOnce() == 0)
            #expect(try await database.outboxBacklog() == 0)

            let consumer = try kafka.consumer(group: "reader", topic: topic)
            let messages = try await read(consumer, count: 300)
            // Nothing more arrives: each row was published once.
            let extra = try? await read(consumer, count: 1, seconds: 2)
            #expect(extra == nil)
            #expect(messages.count == 300)
            #expect(Set(messages.compactMap(\.messageID)) == Set(ids))
            #expect(messages.first?.headers.contains(KafkaHeader(name: "nil", value: nil)) == true)
            await consumer.close()

            // Published rows stay for the retention, then go; nothing unpublished is ever purged.
            try await database.transaction { connection in
                try await database.enqueue([OutboxMessage(id: .generate(), message: OutgoingMessage(topic: topic, value: [2]))], on: connection)
            }
            #expect(try await second.purgePublished() == 0, "published a moment ago, kept for an hour")
            let purging = OutboxRelay(database: database, producer: secondProducer, retention: .zero, logger: quietLogger)
            #expect(try await purging.purgePublished() == 300)
            #expect(try await database.outboxBacklog() == 1)
            await secondProducer.close()
        }
    }

    @Test("several relays share the backlog without publishing a row twice")
    func concurrentRelays() async throws {
        let kafka = try Kafka()
        let topic = try kafka.topic("outbox", partitions: 3)
        try await withDatabase(schema: uniqueName("outbox")) { database in
            try await database.migrate([])
            let ids = (0..<400).map { _ in MessageID.generate() }
            try await database.transaction { connection in
                try await database.enqueue(ids.map { id in
                    OutboxMessage(id: id, message: OutgoingMessage(topic: topic, value: [0], headers: [KafkaHeader(name: "ce_id", string: id.description)]))
                }, on: connection)
            }
            let producer = try kafka.producer()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<3 {
                    group.addTask {
                        let relay = OutboxRelay(database: database, producer: producer, batchSize: 50, logger: quietLogger)
                        while try await relay.relayOnce() > 0 {}
                    }
                }
                try await group.waitForAll()
            }
            let messages = try await read(try kafka.consumer(group: "r", topic: topic), count: 400)
            #expect(messages.count == 400)
            #expect(Set(messages.compactMap(\.messageID)).count == 400)
            await producer.close()
        }
    }
}
