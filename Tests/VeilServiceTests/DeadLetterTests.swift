import Foundation
import Synchronization
import Testing
import VeilKafka
@testable import VeilService

/// Fails permanently on "poison", always transiently on "flaky", and passes the rest on.
struct PickyStage: MessageHandler {
    let attempts = Attempts()
    func handle(_ input: KafkaMessage, message: KafkaMessage) async throws -> [OutgoingMessage] {
        let text = String(decoding: message.value, as: UTF8.self)
        attempts.count(text)
        switch text {
        case "poison": throw StageError.permanent("test.malformed", "cannot parse")
        case "flaky": throw StageError.transient("test.unavailable", "dependency down")
        default: return [OutgoingMessage(topic: message.topic + ".out", value: message.value)]
        }
    }
}

final class Attempts: Sendable {
    private let counts = Mutex<[String: Int]>([:])
    func count(_ key: String) { counts.withLock { $0[key, default: 0] += 1 } }
    subscript(_ key: String) -> Int { counts.withLock { $0[key] ?? 0 } }
}

@Suite("Dead letters", .timeLimit(.minutes(2)))
struct DeadLetterTests {
    @Test("a poison message goes to <topic>.dlq with its reason, and the partition keeps going")
    func poisonMessage() async throws {
        let kafka = try Kafka()
        let topic = try kafka.topic("stage")
        try kafka.cluster.createTopic(topic + ".out", partitions: 1)
        let producer = try kafka.producer()
        try await producer.send(batch: ["one", "poison", "flaky", "two"].map {
            OutgoingMessage(topic: topic, key: Array("k".utf8), value: Array($0.utf8), headers: [KafkaHeader(name: "ce_id", string: "id-\($0)")])
        })
        let consumer = try kafka.consumer(group: "stage", topic: topic)
        let stage = PickyStage()
        let runner = StageRunner(name: "picky", consumer: consumer, producer: producer, handler: stage,
                                 metrics: ServiceMetrics(), maxAttempts: 3, retryBackoff: .milliseconds(10), logger: quietLogger)
        let running = Task { try await runner.run() }

        let outputs = try await read(try kafka.consumer(group: "o", topic: topic + ".out"), count: 2)
        #expect(outputs.map { String(decoding: $0.value, as: UTF8.self) } == ["one", "two"])

        let dead = try await read(try kafka.consumer(group: "d", topic: topic + ".dlq"), count: 2)
        let poison = try #require(dead.first { $0.value == Array("poison".utf8) })
        #expect(poison.headerString("veil_dlq_code") == "test.malformed")
        #expect(poison.headerString("veil_dlq_reason") == "cannot parse")
        #expect(poison.headerString("veil_dlq_topic") == topic)
        #expect(poison.headerString("veil_dlq_attempts") == "1")
        #expect(poison.headerString("ce_id") == "id-poison", "original headers are kept")
        #expect(poison.key == Array("k".utf8))
        let flaky = try #require(dead.first { $0.value == Array("flaky".utf8) })
        #expect(flaky.headerString("veil_dlq_code") == "test.unavailable")
        #expect(flaky.headerString("veil_dlq_attempts") == "3")
        #expect(stage.attempts["flaky"] == 3, "transient failures are retried up to the limit")
        #expect(stage.attempts["poison"] == 1, "permanent failures are not retried")

        running.cancel()
        _ = try? await running.value
        await producer.close()
    }
}
