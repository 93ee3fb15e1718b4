import Foundation
import Logging
import ServiceLifecycle
import VeilContracts
import VeilKafka

/// Reads a topic that every replica must see in full (the key directory, key grants):
/// each process reads with its own consumer group from the beginning of the topic,
/// and hands every message to `apply` in order.
public struct TopicFollower: Service {
    let consumer: KafkaConsumer
    let apply: @Sendable ([KafkaMessage]) async -> Void

    public init(kafka: KafkaConfiguration, service: ServiceName, topic: Topic, logger: Logger,
                apply: @escaping @Sendable ([KafkaMessage]) async -> Void) throws(KafkaError) {
        // veil.keys.directory.v1 → veil.<service>.directory.<random>; veil.keys.grants.v1 → ….grants.…
        let parts = topic.name.split(separator: ".")
        let suffix = parts.count >= 2 ? parts[parts.count - 2] : "follow"
        var configuration = ConsumerConfiguration(kafka: kafka, groupID: "\(service.consumerGroup).\(suffix).\(UUID().uuidString.prefix(8))",
                                                  topics: [topic.name])
        configuration.offsetReset = .earliest
        // Rare messages: long polls are fine (and cheap on the mock cluster, which always waits the full time).
        configuration.kafka.properties["fetch.wait.max.ms"] = "500"
        configuration.maxBatchSize = 64
        consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        self.apply = apply
    }

    public func run() async throws {
        let consumer = self.consumer
        try await withGracefulShutdownHandler {
            while let batch = try await consumer.nextBatch() {
                await apply(batch)
                consumer.markProcessed(batch)
            }
        } onGracefulShutdown: {
            consumer.stopReading()
        }
        await consumer.close()
    }
}
