import Foundation
import Synchronization
import Testing
@testable import VeilKafka

@Suite("Producing and consuming", .timeLimit(.minutes(2)))
struct KafkaRoundTripTests {
    @Test("a message keeps its key, value and headers from producer to consumer")
    func roundTrip() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic()
        let producer = try kafka.producer()
        let report = try await producer.send(OutgoingMessage(
            topic: topic, key: "inquiry-1".bytes, value: [0, 1, 2, 255],
            headers: [KafkaHeader(name: "ce_id", string: "abc"), KafkaHeader(name: "empty", value: nil)]))
        #expect(report.topic == topic)
        #expect(report.offset >= 0)

        let consumer = try kafka.consumer(group: "g", topics: [topic])
        let received = try await within(30, "the message") { try await collect(consumer, count: 1) }
        let message = try #require(received.first)
        #expect(message.key == "inquiry-1".bytes)
        #expect(message.value == [0, 1, 2, 255])
        #expect(message.headerString("ce_id") == "abc")
        #expect(message.headers.contains(KafkaHeader(name: "empty", value: nil)))
        #expect(message.partition == report.partition && message.offset == report.offset)
        await consumer.close()
        await producer.close()
    }

    @Test("messages with the same key arrive in the order they were sent")
    func orderingPerKey() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic(partitions: 6)
        let producer = try kafka.producer()
        let keys = (0..<5).map { "customer-\($0)" }
        try await producer.send(batch: (0..<500).map { i in
            OutgoingMessage(topic: topic, key: keys[i % keys.count].bytes, value: Array(String(i).utf8))
        })
        let consumer = try kafka.consumer(group: "g", topics: [topic])
        let received = try await within(30, "500 messages") { try await collect(consumer, count: 500) }
        #expect(received.count == 500)
        for key in keys {
            let sequence = received.filter { $0.key == key.bytes }.map { Int(String(decoding: $0.value, as: UTF8.self))! }
            #expect(sequence == sequence.sorted(), "order broken for \(key)")
            #expect(sequence.count == 100)
            #expect(Set(received.filter { $0.key == key.bytes }.map(\.partition)).count == 1)
        }
        await consumer.close()
        await producer.close()
    }

    @Test("a consumer that starts at the end reads everything produced once its assignment is listed, and nothing from before")
    func startsAtEnd() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic(partitions: 4)
        let producer = try kafka.producer()
        try await producer.send(batch: (0..<20).map { OutgoingMessage(topic: topic, value: [0], partition: Int32($0 % 4)) })
        let consumer = try kafka.consumer(group: "follower", topics: [topic]) {
            $0.offsetReset = .latest
            $0.startsAtEnd = true
        }
        try await within(30, "the assignment") {
            while consumer.assignment.count < 4 { try await Task.sleep(for: .milliseconds(5)) }
        }
        // At once, as a till's first lookup may follow the replica's readiness.
        try await producer.send(batch: (0..<4).map { OutgoingMessage(topic: topic, value: [1], partition: Int32($0)) })
        let received = try await within(30, "the new messages") { try await collect(consumer, count: 4) }
        #expect(received.map(\.value) == Array(repeating: [1], count: 4))
        #expect(Set(received.map(\.partition)) == [0, 1, 2, 3])
        await consumer.close()
        await producer.close()
    }

    @Test("a consumer that falls behind takes everything queued at once, up to its batch size, in order")
    func batchesGrowWhenBehind() async throws {
        let kafka = try KafkaFixture(brokers: 1)
        let topic = try kafka.topic(partitions: 1)
        let producer = try kafka.producer { $0.lingerMilliseconds = 0 }
        // Each message sent and acknowledged alone is a message set of its own, and the
        // development broker answers a fetch with one message set per partition: the poll
        // thread hands the messages over in many small parts.
        for i in 0..<60 { _ = try await producer.send(OutgoingMessage(topic: topic, value: Array(String(i).utf8))) }
        let consumer = try kafka.consumer(group: "g", topics: [topic]) { $0.maxBatchSize = 25 }
        try await within(30, "60 buffered messages") {
            while consumer.context.buffered.messages < 60 { try await Task.sleep(for: .milliseconds(20)) }
        }
        let handOffs = consumer.context.buffered.handOffs
        try #require(handOffs > 5, "the messages arrived in \(handOffs) parts: too few to tell merged batches from unmerged ones")

        var sizes: [Int] = [], values: [Int] = []
        while values.count < 60, let batch = try await consumer.nextBatch() {
            sizes.append(batch.count)
            values += batch.map { Int(String(decoding: $0.value, as: UTF8.self))! }
            consumer.markProcessed(batch)
        }
        #expect(values == Array(0..<60), "in partition order, each once")
        #expect(sizes.allSatisfy { $0 <= 25 }, "never beyond maxBatchSize: \(sizes)")
        // Queued parts are joined while they fit, so two consecutive batches together exceed 25.
        #expect(sizes.count <= 5, "\(handOffs) hand-offs taken as \(sizes)")
        await consumer.close()
        await producer.close()
    }

    /// The poll thread hands librdkafka's messages over uncopied and the reader copies them;
    /// librdkafka's destroy waits for every message it handed out, so a consumer that let
    /// buffered ones leak would never finish closing.
    @Test("messages still buffered when a consumer closes or is abandoned are let go; taken ones stay readable")
    func bufferedMessagesAtClose() async throws {
        let kafka = try KafkaFixture(brokers: 1)
        let topic = try kafka.topic(partitions: 1)
        let producer = try kafka.producer()
        try await producer.send(batch: (0..<200).map { OutgoingMessage(topic: topic, value: Array(String($0).utf8)) })
        for ending in ["close", "abandon"] {
            let consumer = try kafka.consumer(group: ending, topics: [topic]) { $0.maxBatchSize = 10 }
            let first = try await within(30, "a first batch") { try #require(try await consumer.nextBatch()) }
            try await within(30, "buffered messages") {
                while consumer.context.buffered.messages < 150 { try await Task.sleep(for: .milliseconds(20)) }
            }
            try await within(20, "the consumer to \(ending) with 150 messages buffered") {
                if ending == "close" { await consumer.close() } else { consumer.abandon() }
            }
            #expect(consumer.context.buffered.messages == 0)
            // Copies: readable after their client is gone.
            #expect(first.map { String(decoding: $0.value, as: UTF8.self) } == (0..<10).map(String.init), "after \(ending)")
            #expect(first.allSatisfy { $0.topic == topic })
        }
        await producer.close()
    }

    @Test("a lent batch reads keys, values and headers in place, copies on request, and commits what it marks")
    func lentBatches() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic(partitions: 3)
        let producer = try kafka.producer()
        func message(_ i: Int) -> OutgoingMessage {
            let key: [UInt8]? = i % 5 == 0 ? nil : "k\(i)".bytes
            let headers = [KafkaHeader(name: "n", string: "\(i)"), KafkaHeader(name: "n", string: "last-\(i)")]
            return OutgoingMessage(topic: topic, key: key, value: "\(i)".bytes, headers: headers, partition: Int32(i % 3))
        }
        try await producer.send(batch: (0..<30).map(message))
        /// What a body read from one view, in place, and the copy it made.
        struct Read: Sendable {
            var value: [UInt8], key: [UInt8]?, lastHeader: [UInt8]?, absentHeader: Bool
            var topic: String, stamped: Bool, copy: KafkaMessage, partition: Int32, offset: Int64
        }
        let consumer = try kafka.consumer(group: "lent", topics: [topic])
        var reads: [Read] = []
        while reads.count < 30 {
            reads += try await within(30, "a lent batch") {
                try #require(try await consumer.withNextBatch { batch in
                    batch.map { view in
                        Read(value: Array(view.value), key: view.key.map { Array($0) }, lastHeader: view.header("n").map { Array($0) },
                             absentHeader: view.header("absent") == nil, topic: view.topic, stamped: view.timestampMilliseconds > 0,
                             copy: view.copy(), partition: view.partition, offset: view.offset)
                    }
                })
            }
        }
        var ends: [TopicPartition: Int64] = [:]
        for read in reads {
            let i = Int(String(decoding: read.value, as: UTF8.self))!
            let sent = message(i)
            #expect(read.key == sent.key && read.partition == sent.partition)
            #expect(read.lastHeader == "last-\(i)".bytes, "the last header of that name")
            #expect(read.absentHeader && read.topic == topic && read.stamped)
            #expect(read.copy.value == sent.value && read.copy.key == sent.key && read.copy.headers == sent.headers)
            #expect(read.copy.offset == read.offset && read.copy.topic == topic)
            let partition = TopicPartition(topic: topic, partition: read.partition)
            ends[partition] = max(ends[partition] ?? 0, read.offset + 1)
        }
        #expect(reads.map { Int(String(decoding: $0.value, as: UTF8.self))! }.sorted() == Array(0..<30))
        try await consumer.commit()
        #expect(try await consumer.committedOffsets(Array(ends.keys)).values.allSatisfy { $0 < 0 }, "nothing marked, nothing committed")
        await consumer.close()

        // The same group again: everything is redelivered; marking the lent batches commits their ends.
        let again = try kafka.consumer(group: "lent", topics: [topic])
        var marked = 0
        while marked < 30 {
            marked += try await within(30, "a lent batch to mark") {
                try #require(try await again.withNextBatch { batch in
                    #expect(again.markProcessed(batch))
                    return batch.count
                })
            }
        }
        try await again.commit()
        #expect(try await again.committedOffsets(Array(ends.keys)) == ends)
        await again.close()
        // The copies outlive their client.
        #expect(reads.map { String(decoding: $0.copy.value, as: UTF8.self) }.sorted() == (0..<30).map(String.init).sorted())
        await producer.close()
    }

    /// librdkafka's destroy waits for every message it handed out: a lent batch must be let
    /// go however its body ends, or the consumer never finishes closing.
    @Test("a lent batch is let go when its body throws, and reading ends when the consumer stops")
    func lentBatchBodyThrows() async throws {
        struct Refused: Error {}
        let kafka = try KafkaFixture(brokers: 1)
        let topic = try kafka.topic(partitions: 1)
        let producer = try kafka.producer()
        try await producer.send(batch: (0..<20).map { OutgoingMessage(topic: topic, value: [UInt8($0)]) })
        let consumer = try kafka.consumer(group: "g", topics: [topic])
        await #expect(throws: Refused.self) {
            _ = try await within(30, "a lent batch") { try await consumer.withNextBatch { _ in throw Refused() } }
        }
        consumer.stopReading()
        let after = try await within(30, "the end of reading") { try await consumer.withNextBatch { $0.count } }
        #expect(after == nil, "no batch once reading stopped")
        try await within(20, "the consumer to close after a body threw") { await consumer.close() }
        await producer.close()
    }

    @Test("the consumer's messages can be read as an AsyncSequence")
    func asyncSequence() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic()
        let producer = try kafka.producer()
        try await producer.send(batch: (0..<50).map { OutgoingMessage(topic: topic, value: [UInt8($0)]) })
        let consumer = try kafka.consumer(group: "g", topics: [topic])
        let values = try await within(30, "50 messages") {
            var values: Set<UInt8> = []
            for try await message in consumer.messages {
                values.insert(message.value[0])
                consumer.markProcessed(message)
                if values.count == 50 { break }
            }
            return values
        }
        #expect(values == Set(0..<50))
        await consumer.close()
        await producer.close()
    }

    @Test("a full local queue makes send wait instead of failing")
    func backpressure() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic()
        let producer = try kafka.producer { $0.maxQueuedMessages = 10 }
        try await producer.send(batch: (0..<2_000).map { OutgoingMessage(topic: topic, value: Array(repeating: UInt8($0 % 256), count: 100)) })
        let consumer = try kafka.consumer(group: "g", topics: [topic])
        let received = try await within(30, "2000 messages") { try await collect(consumer, count: 2_000) }
        #expect(received.count == 2_000)
        await consumer.close()
        await producer.close()
    }

    /// Past `BatchSend.bulkThreshold` messages a batch serves its own delivery reports and the
    /// poll thread stops blocking; other senders' reports must still come, and the producer
    /// must leave that mode however the batch ends.
    @Test("a bulk batch serves its own reports: a single send beside it is acknowledged, and bulk mode ends with the batch, also when closing cuts it short")
    func bulkBatches() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic()
        let producer = try kafka.producer()
        let seenInBulk = Atomic<Int>(-1)
        let batch = Task {
            try await producer.send(batch: (0..<200_000).lazy.map { i in
                if i == 5_000 { seenInBulk.store(producer.context.bulkSenders.load(ordering: .relaxed), ordering: .relaxed) }
                return OutgoingMessage(topic: topic, value: Array(String(i).utf8))
            })
        }
        try await within(30, "the batch's 5,000th message") {
            while seenInBulk.load(ordering: .relaxed) < 0 { try await Task.sleep(for: .milliseconds(1)) }
        }
        #expect(seenInBulk.load(ordering: .relaxed) == 1, "in bulk mode after 1,024 messages")
        let single = try await within(30, "a single send beside the bulk batch") {
            try await producer.send(OutgoingMessage(topic: topic, value: "single".bytes))
        }
        #expect(single.topic == topic && single.offset >= 0)
        try await within(60, "the bulk batch, every message acknowledged") { try await batch.value }
        #expect(producer.context.bulkSenders.load(ordering: .relaxed) == 0)

        await producer.close()

        // Cut short by close while it waits for queue space (nothing is delivered, the queue
        // holds 2,000): the batch returns with an error and leaves bulk mode.
        kafka.cluster.setAllDown()
        let cutting = try kafka.producer { $0.maxQueuedMessages = 2_000 }
        let cut = Task {
            try await cutting.send(batch: (0..<50_000).lazy.map { OutgoingMessage(topic: topic, value: [UInt8($0 % 256)]) })
        }
        try await within(30, "the second batch to fill the queue in bulk mode") {
            while cutting.inFlightCount < 2_000 || cutting.context.bulkSenders.load(ordering: .relaxed) == 0 {
                try await Task.sleep(for: .milliseconds(5))
            }
        }
        await cutting.close(timeout: .milliseconds(200))
        let outcome = try await within(30, "the cut batch to return") { await cut.result }
        #expect(throws: KafkaError.self) { try outcome.get() }
        #expect(cutting.context.bulkSenders.load(ordering: .relaxed) == 0)
    }

    @Test("closing the producer ends a send that waits for queue space with an error, instead of leaving it suspended")
    func closeEndsWaitingSend() async throws {
        let kafka = try KafkaFixture(brokers: 1)
        let topic = try kafka.topic(partitions: 1)
        kafka.cluster.setAllDown()  // nothing is delivered: the local queue stays full
        let producer = try kafka.producer { $0.maxQueuedMessages = 10 }
        let sending = Task { try await producer.send(batch: (0..<100).map { OutgoingMessage(topic: topic, value: [UInt8($0)]) }) }
        try await within(30, "a full queue") {
            while producer.inFlightCount < 10 { try await Task.sleep(for: .milliseconds(10)) }
        }
        await producer.close(timeout: .milliseconds(200))
        let outcome = try await within(30, "the waiting send to end") { await sending.result }
        #expect(throws: KafkaError.self) { try outcome.get() }
    }

    @Test("a service's shared properties reach only the clients that understand them: no \"will be ignored\" warnings at start")
    func propertiesByClientType() async throws {
        let kafka = try KafkaFixture(brokers: 1)
        let topic = try kafka.topic(partitions: 1)
        let shared = KafkaConfiguration(bootstrapServers: kafka.cluster.bootstrapServers, clientID: "t",
                                        properties: ["fetch.wait.max.ms": "5", "linger.ms": "1"])
        let producerConfiguration = ProducerConfiguration(kafka: shared)
        let consumerConfiguration = ConsumerConfiguration(kafka: shared, groupID: "g", topics: [topic])
        #expect(producerConfiguration.properties["linger.ms"] == "1")
        #expect(producerConfiguration.properties["fetch.wait.max.ms"] == nil)
        #expect(consumerConfiguration.properties["fetch.wait.max.ms"] == "5")
        #expect(consumerConfiguration.properties["linger.ms"] == nil)
        #expect(consumerConfiguration.properties["log_level"] == "4", "warnings such as offset resets reach the log")

        let logs = RecordedLogs()
        let producer = try KafkaProducer(configuration: producerConfiguration, logger: logs.logger())
        let consumer = try KafkaConsumer(configuration: consumerConfiguration, logger: logs.logger())
        _ = try await producer.send(OutgoingMessage(topic: topic, value: "one".bytes))
        _ = try await within(30, "the message") { try await collect(consumer, count: 1) }
        await consumer.close()
        await producer.close()
        let ignored = logs.all.filter { $0.message.contains("will be ignored") }
        #expect(ignored.isEmpty, "\(ignored.map(\.message))")
    }

    @Test("an invalid librdkafka property is a configuration error naming it")
    func badConfiguration() throws {
        var configuration = ProducerConfiguration(kafka: KafkaConfiguration(bootstrapServers: "127.0.0.1:1",
                                                                            properties: ["no.such.property": "1"]))
        configuration.idempotent = true
        #expect {
            _ = try KafkaProducer(configuration: configuration, logger: .init(label: "t"))
        } throws: { error in
            let error = error as? KafkaError
            return error?.code == "kafka.configuration" && error?.reason.contains("no.such.property") == true
                && error?.isFatal == true
        }
    }

    @Test("stored offsets are committed and seen by the group")
    func commitAfterProcessing() async throws {
        let kafka = try KafkaFixture()
        let topic = try kafka.topic(partitions: 1)
        let producer = try kafka.producer()
        try await producer.send(batch: (0..<10).map { OutgoingMessage(topic: topic, value: [UInt8($0)]) })
        let consumer = try kafka.consumer(group: "g", topics: [topic])
        let received = try await within(30, "10 messages") { try await collect(consumer, count: 10, mark: false) }
        // Only the first five are processed; the commit must not go beyond them.
        consumer.markProcessed(received[4])
        try await consumer.commit()
        let committed = try await consumer.committedOffsets([TopicPartition(topic: topic, partition: 0)])
        #expect(committed[TopicPartition(topic: topic, partition: 0)] == received[4].offset + 1)
        await consumer.close()
        await producer.close()
    }
}
