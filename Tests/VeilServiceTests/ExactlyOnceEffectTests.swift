import Foundation
import PostgresNIO
import Testing
import VeilCore
import VeilKafka
@testable import VeilService
import VeilStore

/// A stage that turns each input into one output whose id is derived from the input's.
struct UppercaseStage: MessageHandler {
    func handle(_ input: KafkaMessage, message: KafkaMessage) async throws -> [OutgoingMessage] {
        guard let id = message.messageID else { throw StageError.permanent("test.no_id", "missing ce_id") }
        let output = MessageID.derived(from: id, stage: "uppercase")
        return [OutgoingMessage(topic: message.topic + ".out", key: message.key,
                                value: Array(String(decoding: message.value, as: UTF8.self).uppercased().utf8),
                                headers: [KafkaHeader(name: "ce_id", string: output.description)])]
    }
}

@Suite("Exactly-once effects without broker transactions", .timeLimit(.minutes(3)))
struct ExactlyOnceEffectTests {
    @Test("killed after the effect but before the commit: redelivered, and the effect is applied once")
    func crashBetweenEffectAndCommit() async throws {
        let kafka = try Kafka()
        let topic = try kafka.topic("effects")
        let schema = uniqueName("svc")
        try await withDatabase(schema: schema) { database in
            try await database.migrate([Migration("001_counter", sql: "CREATE TABLE {schema}.counter (n int);\nINSERT INTO {schema}.counter VALUES (0)")])
            let producer = try kafka.producer()
            try await producer.send(OutgoingMessage(topic: topic, value: Array("hello".utf8),
                                                    headers: [KafkaHeader(name: "ce_id", string: MessageID.generate().description)]))
            let apply: @Sendable (KafkaMessage) async throws -> Bool = { message in
                try await database.applyOnce(consumer: "counter", messageID: message.messageID!) { connection in
                    try await connection.run("UPDATE \(database.table("counter")) SET n = n + 1")
                }
            }
            let doomed = try kafka.consumer(group: "g", topic: topic)
            let first = try #require(try await doomed.nextBatch()?.first)
            #expect(try await apply(first))
            doomed.abandon()  // the process dies before storing the offset

            let survivor = try kafka.consumer(group: "g", topic: topic)
            let again = try #require(try await read(survivor, count: 1).first)
            #expect(again.offset == first.offset, "the uncommitted message is delivered again")
            #expect(try await apply(again) == false, "and its effect is not applied twice")
            #expect(try await counterValue(database, table: "counter") == 1)
            await survivor.close()
            await producer.close()
        }
    }

    @Test("consume-transform-produce crashing between producing and committing: the same id again, applied once downstream")
    func crashBetweenProduceAndCommit() async throws {
        let kafka = try Kafka()
        let input = try kafka.topic("in")
        try kafka.cluster.createTopic(input + ".out", partitions: 1)
        let producer = try kafka.producer()
        let inputID = MessageID.generate()
        try await producer.send(OutgoingMessage(topic: input, value: Array("abc".utf8),
                                                headers: [KafkaHeader(name: "ce_id", string: inputID.description)]))

        // First attempt: transform and produce, then die before the input's offset is stored.
        let doomed = try kafka.consumer(group: "stage", topic: input)
        let batch = try #require(try await doomed.nextBatch())
        try await producer.send(batch: try await UppercaseStage().handle(batch[0], message: batch[0]))
        doomed.abandon()

        // After the restart the stage loop processes the redelivered input normally.
        let restarted = try kafka.consumer(group: "stage", topic: input)
        let runner = StageRunner(name: "uppercase", consumer: restarted, producer: producer, handler: UppercaseStage(),
                                 metrics: ServiceMetrics(), logger: quietLogger)
        let redelivered = try await read(restarted, count: 1)
        try await runner.process(redelivered)

        let downstream = try kafka.consumer(group: "next", topic: input + ".out")
        let outputs = try await read(downstream, count: 2)
        #expect(outputs.count == 2, "the output was produced twice")
        #expect(Set(outputs.compactMap(\.messageID)) == [MessageID.derived(from: inputID, stage: "uppercase")],
                "with the same derived id both times")

        let schema = uniqueName("next")
        try await withDatabase(schema: schema) { database in
            try await database.migrate([])
            var applied = 0
            for output in outputs where try await database.applyOnce(consumer: "next", messageID: output.messageID!, { _ in }) {
                applied += 1
            }
            #expect(applied == 1, "the next consumer applies it once")
        }
        await restarted.close()
        await downstream.close()
        await producer.close()
    }
}
