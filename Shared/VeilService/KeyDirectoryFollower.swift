import Foundation
import Logging
import ServiceLifecycle
import VeilContracts
import VeilEnvelope
import VeilKafka

/// Follows the compacted `veil.keys.directory.v1` topic and installs each newer
/// signed key directory, so rotations and retirements reach running services.
/// A directory with a bad signature (or an older serial) is refused and logged.
///
/// Every replica must see every directory, so each process reads with its own
/// consumer group from the beginning of the (compacted) topic.
public struct KeyDirectoryFollower: Service {
    let consumer: KafkaConsumer
    let directory: KeyDirectoryStore
    let logger: Logger

    public init(kafka: KafkaConfiguration, service: ServiceName, directory: KeyDirectoryStore, logger: Logger) throws(KafkaError) {
        var configuration = ConsumerConfiguration(kafka: kafka, groupID: "\(service.consumerGroup).directory.\(UUID().uuidString.prefix(8))",
                                                  topics: [Topic.keysDirectory.name])
        configuration.offsetReset = .earliest
        configuration.maxBatchSize = 16
        consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        self.directory = directory
        self.logger = logger
    }

    public func run() async throws {
        let consumer = self.consumer
        try await withGracefulShutdownHandler {
            while let batch = try await consumer.nextBatch() {
                for message in batch { install(message) }
                consumer.markProcessed(batch)
            }
        } onGracefulShutdown: {
            consumer.stopReading()
        }
        await consumer.close()
    }

    func install(_ message: KafkaMessage) {
        do {
            let signed = try SignedKeyDirectory(serialized: message.value)
            if try directory.accept(signed) {
                logger.notice("key directory installed", metadata: ["serial": "\(directory.serial)"])
            }
        } catch {
            logger.error("key directory refused", metadata: ["error.code": "\(error.code)", "offset": "\(message.offset)"])
        }
    }
}
