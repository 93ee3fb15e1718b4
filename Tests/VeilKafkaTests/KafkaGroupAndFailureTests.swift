import Foundation
import Synchronization
import Testing
@testable import VeilKafka

@Suite("Consumer groups, crashes and broker failures", .timeLimit(.minutes(3)))
struct KafkaGroupAndFailureTests {
    @Test("two members share the partitions; when one leaves, the other takes them over and nothing is lost")
    func groupSharesAndTakesOver() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic(partitions: 4)
        let producer = try kafka.producer()
        let first = try kafka.consumer(group: "shared", topics: [topic])
        let second = try kafka.consumer(group: "shared", topics: [topic])

        // Wait until both members hold partitions: the group split the four between them.
        try await within(60, "both members to be assigned") {
            while first.assignment.isEmpty || second.assignment.isEmpty
                    || first.assignment.count + second.assignment.count != 4 {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        #expect(first.assignment.isDisjoint(with: second.assignment))

        try await producer.send(batch: (0..<200).map { i in
            OutgoingMessage(topic: topic, key: "k\(i % 20)".bytes, value: Array(String(i).utf8))
        })
        // The first member reads everything it is given, then leaves the group gracefully.
        let firstShare = first.assignment
        let readByFirst = try await within(30, "first member's share") { () -> [KafkaMessage] in
            var got: [KafkaMessage] = []
            while let batch = try await first.nextBatch() {
                got += batch
                first.markProcessed(batch)
                if Set(got.map(\.partition)) == Set(firstShare.map(\.partition)), got.count >= 20 { break }
            }
            return got
        }
        await first.close()

        try await producer.send(batch: (200..<300).map { i in
            OutgoingMessage(topic: topic, key: "k\(i % 20)".bytes, value: Array(String(i).utf8))
        })
        let readBySecond = try await within(60, "the rest") { () -> [KafkaMessage] in
            var got: [KafkaMessage] = []
            var seen = Set(readByFirst.map { String(decoding: $0.value, as: UTF8.self) })
            while seen.count < 300, let batch = try await second.nextBatch() {
                got += batch
                second.markProcessed(batch)
                batch.forEach { seen.insert(String(decoding: $0.value, as: UTF8.self)) }
            }
            return got
        }
        let all = Set((readByFirst + readBySecond).map { String(decoding: $0.value, as: UTF8.self) })
        #expect(all == Set((0..<300).map(String.init)))
        #expect(second.assignment.count == 4)
        await second.close()
        await producer.close()
    }

    @Test("a member killed after processing but before committing: the message is delivered again")
    func crashBeforeCommitRedelivers() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic(partitions: 1)
        let producer = try kafka.producer()
        try await producer.send(OutgoingMessage(topic: topic, value: "effect".bytes))

        let doomed = try kafka.consumer(group: "g", topics: [topic])
        let first = try await within(30, "first delivery") { try await collect(doomed, count: 1, mark: false) }
        doomed.abandon()  // processed, never marked: like a kill -9 between effect and commit

        let survivor = try kafka.consumer(group: "g", topics: [topic])
        let again = try await within(60, "redelivery") { try await collect(survivor, count: 1) }
        #expect(again.first?.offset == first.first?.offset)
        #expect(again.first?.value == "effect".bytes)
        await survivor.close()
        await producer.close()
    }

    @Test("producers wait while every broker is down and deliver everything when they return; consumers resume")
    func brokerDownAndUp() async throws {
        let kafka = try KafkaFixture(brokers: 3)
        let topic = try kafka.topic(partitions: 3)
        let producer = try kafka.producer()
        let consumer = try kafka.consumer(group: "g", topics: [topic])
        try await producer.send(batch: (0..<10).map { OutgoingMessage(topic: topic, value: Array(String($0).utf8)) })
        _ = try await within(30, "messages before the outage") { try await collect(consumer, count: 10) }
        // Committed before the outage: otherwise the member that rejoins afterwards may start
        // again from the last background commit and see some of these ten again (at least once).
        try await consumer.commit()

        kafka.cluster.setAllDown()
        let delivered = Flag()
        let sending = Task {
            try await producer.send(batch: (10..<110).map { OutgoingMessage(topic: topic, value: Array(String($0).utf8)) })
            delivered.set()
        }
        try await Task.sleep(for: .seconds(2))
        #expect(!delivered.isSet, "nothing can be acknowledged while the brokers are down")
        kafka.cluster.setAllUp()
        try await within(90, "delivery after the brokers returned") { try await sending.value }
        #expect(delivered.isSet)

        let afterwards = try await within(90, "messages after the outage") { try await collect(consumer, count: 100) }
        #expect(Set(afterwards.map { String(decoding: $0.value, as: UTF8.self) }) == Set((10..<110).map(String.init)))
        await consumer.close()
        await producer.close()
    }

    @Test("a consumer whose brokers are all gone still closes, giving up on the group after its close timeout instead of hanging")
    func closeWithoutBrokers() async throws {
        let kafka = try KafkaFixture(brokers: 1)
        let topic = try kafka.topic(partitions: 2)
        let producer = try kafka.producer()
        let consumer = try kafka.consumer(group: "g", topics: [topic])
        try await producer.send(batch: (0..<5).map { OutgoingMessage(topic: topic, value: Array(String($0).utf8)) })
        _ = try await within(30, "messages before the outage") { try await collect(consumer, count: 5) }
        await producer.close()

        kafka.cluster.setAllDown()
        try await within(60, "close with every broker down") { await consumer.close(timeout: .seconds(2)) }
    }

    @Test("closing a producer while other tasks keep sending: every send returns, delivered or failed with kafka.closed, none waits forever")
    func closeWhileSending() async throws {
        let kafka = try KafkaFixture(brokers: 1)
        let topic = try kafka.topic(partitions: 2)
        for round in 0..<10 {
            let producer = try kafka.producer()
            let senders = (0..<4).map { sender in
                Task { () -> (delivered: Int, refused: Int) in
                    var delivered = 0, refused = 0
                    for i in 0..<10_000 {
                        do {
                            try await producer.send(OutgoingMessage(topic: topic, value: Array("\(round)-\(sender)-\(i)".utf8)))
                            delivered += 1
                        } catch {
                            refused += 1
                            if refused > 3 { break }
                        }
                    }
                    return (delivered, refused)
                }
            }
            try await Task.sleep(for: .milliseconds(50 + 20 * round))
            await producer.close(timeout: .seconds(5))
            // Returning at all is the point: a send whose message reached librdkafka as the
            // producer closed used to wait for a delivery report that never came.
            let outcomes = try await within(60, "every send of round \(round) to return") {
                var all: [(delivered: Int, refused: Int)] = []
                for sender in senders { all.append(await sender.value) }
                return all
            }
            #expect(outcomes.allSatisfy { $0.delivered == 10_000 || $0.refused > 0 })
        }
    }

    @Test("closing a producer while batches are being sent into a full queue: every batch returns, delivered or failed, none waits forever")
    func closeWhileSendingBatches() async throws {
        // Batch senders keep the 1,000-message queue full, so at the close some wait for
        // space and some are between offers: each must end, none spin or wait for ever.
        let kafka = try KafkaFixture(brokers: 1)
        let topic = try kafka.topic(partitions: 2)
        for round in 0..<10 {
            let producer = try kafka.producer { $0.maxQueuedMessages = 1_000 }
            let senders = (0..<3).map { sender in
                Task { () -> (delivered: Int, failed: Int) in
                    var delivered = 0, failed = 0
                    for batch in 0..<20 {
                        let messages = (0..<2_000).lazy.map { OutgoingMessage(topic: topic, value: Array("\(round)-\(sender)-\(batch)-\($0)".utf8)) }
                        do {
                            try await producer.send(batch: messages)
                            delivered += 1
                        } catch {
                            failed += 1
                            break
                        }
                    }
                    return (delivered, failed)
                }
            }
            try await Task.sleep(for: .milliseconds(50 + 20 * round))
            await producer.close(timeout: .seconds(5))
            let outcomes = try await within(60, "every batch of round \(round) to return") {
                var all: [(delivered: Int, failed: Int)] = []
                for sender in senders { all.append(await sender.value) }
                return all
            }
            #expect(outcomes.allSatisfy { $0.delivered == 20 || $0.failed == 1 })
        }
    }

    @Test("transaction calls succeed against the embedded broker")
    func transactions() async throws {
        let kafka = try KafkaFixture()
        let input = try kafka.topic("in", partitions: 1)
        let output = try kafka.topic("out", partitions: 1)
        let seed = try kafka.producer()
        try await seed.send(OutgoingMessage(topic: input, value: "x".bytes))
        await seed.close()

        let consumer = try kafka.consumer(group: "tx", topics: [input])
        let message = try #require(try await within(30, "input") { try await collect(consumer, count: 1, mark: false) }.first)
        let producer = try kafka.producer { $0.transactionalID = "veil-test-\(UUID())" }
        try await producer.initTransactions()
        try await producer.beginTransaction()
        try await producer.send(OutgoingMessage(topic: output, value: "y".bytes))
        try await producer.sendOffsetsToTransaction([message.topicPartition: message.offset + 1], consumer: consumer)
        try await producer.commitTransaction()

        try await producer.beginTransaction()
        try await producer.send(OutgoingMessage(topic: output, value: "z".bytes))
        try await producer.abortTransaction()

        // The committed transaction's message is there. (The mock cluster neither hides
        // the aborted one from read_committed readers nor is relied on to.)
        let reader = try kafka.consumer(group: "reader", topics: [output])
        let outputs = try await within(30, "the committed output") { try await collect(reader, count: 1) }
        #expect(outputs.first?.value == "y".bytes)
        await reader.close()
        await consumer.close()
        await producer.close()
    }

    @Test("ensureTopics finds existing topics and creates none of them again")
    func adminSeesExistingTopics() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic(partitions: 5)
        let admin = KafkaAdmin(configuration: kafka.kafka, logger: kafka.logger)
        let existing = try await admin.existingTopics()
        #expect(existing[topic] == 5)
        let created = try await admin.ensureTopics([TopicSpecification(name: topic, partitions: 5)])
        #expect(created.isEmpty)
    }

    @Test("a member that fell behind the broker's retention: the skip is counted per partition and logged as a warning, and reading goes on from the log start")
    func positionOutOfTheLog() async throws {
        let kafka = try KafkaFixture(brokers: 1)
        let topic = try kafka.topic(partitions: 1)
        let producer = try kafka.producer()
        try await producer.send(batch: (0..<10).map { OutgoingMessage(topic: topic, value: Array("early \($0)".utf8)) })
        let first = try kafka.consumer(group: "g", topics: [topic])
        _ = try await within(30, "the first ten") { try await collect(first, count: 10) }
        try await first.commit()
        await first.close()
        #expect(first.offsetResets().isEmpty, "reading from a committed offset in the log resets nothing")

        // While the group is away, 8 MB arrive: the embedded broker keeps 5 MB per
        // partition and drops the oldest message sets, so offset 10 leaves the log.
        let payload = [UInt8](repeating: UInt8(ascii: "x"), count: 1_024)
        try await producer.send(batch: (0..<8_000).map { _ in OutgoingMessage(topic: topic, value: payload) })
        await producer.close()

        let logs = RecordedLogs()
        let second = try KafkaConsumer(configuration: {
            var configuration = ConsumerConfiguration(kafka: kafka.kafka, groupID: "g", topics: [topic])
            configuration.sessionTimeoutMilliseconds = 6_000
            return configuration
        }(), logger: logs.logger())
        let resumed = try await within(60, "reading after the reset") { try await collect(second, count: 1) }
        let tp = TopicPartition(topic: topic, partition: 0)
        #expect(resumed.first.map { $0.offset > 10 } == true, "the messages between offset 10 and the new log start are gone")
        #expect(second.offsetResets() == [tp: 1])
        let warnings = logs.all.filter { $0.level == .warning && $0.metadata["kafka.event"] == "offset_reset" }
        #expect(warnings.count == 1)
        #expect(warnings.first?.metadata["topic"] == topic)
        #expect(warnings.first?.metadata["partition"] == "0")
        await second.close()
    }
}

final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}
