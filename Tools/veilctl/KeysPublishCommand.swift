import ArgumentParser
import Foundation
import Logging
import VeilContracts
import VeilEnvelope
import VeilKafka

extension KeysCommand {
    /// `veilctl keys publish --dir DIR`: puts the signed key directory on the compacted
    /// `veil.keys.directory.v1`, where every running service picks it up (until the
    /// key-vault publishes it itself).
    struct Publish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish the signed key directory on veil.keys.directory.v1 for running services.")

        @Option(name: .long, help: "The key folder (with key-directory.json).")
        var dir: String

        @Option(name: .long, help: "Bootstrap servers (default: $KAFKA_BROKERS).")
        var brokers: String?

        func run() async throws {
            guard let brokers = brokers ?? ProcessInfo.processInfo.environment["KAFKA_BROKERS"] else {
                throw ValidationError("set --brokers or KAFKA_BROKERS")
            }
            let folder = KeyFolder(url: URL(fileURLWithPath: dir))
            let signed = try SignedKeyDirectory(serialized: Array(Data(contentsOf: folder.url.appendingPathComponent(KeyFolder.directoryFile))))
            let serial = try folder.directoryStore().serial  // refuses a directory whose signature does not verify
            var logger = Logger(label: "veilctl")
            logger.logLevel = .error
            let producer = try KafkaProducer(configuration: ProducerConfiguration(kafka: KafkaConfiguration(bootstrapServers: brokers, clientID: "veilctl")),
                                             logger: logger)
            let report = try await producer.send(OutgoingMessage(topic: Topic.keysDirectory.name, key: Array("directory".utf8),
                                                                 value: signed.serialized()))
            await producer.close()
            print("published key directory serial \(serial) to \(report.topic)[\(report.partition)]@\(report.offset)")
        }
    }
}
