import Foundation
import Testing
@testable import VeilKafka

@Suite("Inspecting a cluster as an operator", .timeLimit(.minutes(2)))
struct KafkaInspectorTests {
    @Test("watermarks, a live group's committed offsets, committing for a tool's group, and reading a range without joining")
    func inspect() async throws {
        let fixture = try KafkaFixture(brokers: 1)
        let topic = try fixture.topic("inspect", partitions: 2)
        let producer = try fixture.producer()
        try await producer.send(batch: (0..<10).map {
            OutgoingMessage(topic: topic, key: Array("k\($0)".utf8), value: Array("v\($0)".utf8), partition: Int32($0 % 2))
        })
        let inspector = KafkaInspector(configuration: fixture.kafka)
        let partitions = try await inspector.topicPartitions([topic, "missing.topic"])
        #expect(partitions == [TopicPartition(topic: topic, partition: 0), TopicPartition(topic: topic, partition: 1)])
        let marks = try await inspector.watermarks(partitions)
        #expect(marks.values.map(\.count) == [5, 5])

        // A real group member processes three messages of partition 0 and commits.
        let consumer = try fixture.consumer(group: "live", topics: [topic])
        let got = try await collect(consumer, count: 10, mark: false)
        consumer.markProcessed(got.filter { $0.partition == 0 }.sorted { $0.offset < $1.offset }[2])
        try await consumer.commit()
        let committed = try await inspector.committedOffsets(group: "live", partitions)
        #expect(committed == [TopicPartition(topic: topic, partition: 0): 3], "partition 1 never committed: left out")
        await consumer.close()

        // A tool's own bookkeeping group.
        try await inspector.commit(group: "tool", [TopicPartition(topic: topic, partition: 1): 4])
        #expect(try await inspector.committedOffsets(group: "tool", partitions) == [TopicPartition(topic: topic, partition: 1): 4])

        let range = try await inspector.read(TopicPartition(topic: topic, partition: 1), offsets: 1..<3)
        #expect(range.map(\.offset) == [1, 2])
        #expect(range.map { String(decoding: $0.value, as: UTF8.self) } == ["v3", "v5"])
        #expect(try await inspector.read(TopicPartition(topic: topic, partition: 1), offsets: 5..<9, timeout: .seconds(5)).isEmpty,
                "nothing past the high watermark: returns at the end of the partition")
        await producer.close()
    }

    @Test("a message produced with an explicit record time keeps it")
    func explicitTimestamp() async throws {
        let fixture = try KafkaFixture(brokers: 1)
        let topic = try fixture.topic("time", partitions: 1)
        let producer = try fixture.producer()
        let then: Int64 = 1_700_000_000_123
        try await producer.send(OutgoingMessage(topic: topic, value: [1], timestampMilliseconds: then))
        try await producer.send(OutgoingMessage(topic: topic, value: [2], headers: [KafkaHeader(name: "h", string: "x")], timestampMilliseconds: then + 1))
        let read = try await KafkaInspector(configuration: fixture.kafka).read(TopicPartition(topic: topic, partition: 0), offsets: 0..<2)
        #expect(read.map(\.timestampMilliseconds) == [then, then + 1])
        await producer.close()
    }
}
