import ArgumentParser
import Dispatch
import Foundation
import VeilContracts
import VeilKafka

/// The embedded development broker: librdkafka's mock cluster (real Kafka protocol
/// on localhost TCP) with every Veil topic created, its bootstrap address written
/// to a file for the local scripts. `make demo` and `make test` start it when
/// `KAFKA_BROKERS` is unset.
@main
struct DevBroker: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "veil-dev-broker",
        abstract: "Runs an embedded Kafka-protocol broker cluster for development and tests.")

    @Option(help: "Number of brokers in the cluster.")
    var brokers: Int = 3

    @Option(help: "Partitions of each Veil topic.")
    var partitions: Int32 = 12

    @Option(help: "File to write the bootstrap address to (written once the cluster is up).")
    var addressFile: String?

    @Option(help: "Extra topics to create (name:partitions), repeatable.")
    var topic: [String] = []

    func run() throws {
        let cluster = try EmbeddedKafkaCluster(brokers: brokers)
        for topic in Topic.allWithDeadLetters {
            try cluster.createTopic(topic.name, partitions: partitions, replicationFactor: Int32(min(3, brokers)))
        }
        for spec in topic {
            let parts = spec.split(separator: ":")
            try cluster.createTopic(String(parts[0]), partitions: parts.count > 1 ? Int32(parts[1]) ?? partitions : partitions)
        }
        if let addressFile {
            let temporary = addressFile + ".tmp"
            try Data((cluster.bootstrapServers + "\n").utf8).write(to: URL(fileURLWithPath: temporary))
            guard rename(temporary, addressFile) == 0 else { throw ValidationError("cannot write \(addressFile)") }
        }
        FileHandle.standardOutput.write(Data("veil-dev-broker: \(brokers) brokers at \(cluster.bootstrapServers), \(Topic.allWithDeadLetters.count) topics\n".utf8))

        let stop = DispatchSemaphore(value: 0)
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { stop.signal() }
            source.resume()
            sources.append(source)
        }
        stop.wait()
        if let addressFile { try? FileManager.default.removeItem(atPath: addressFile) }
        print("veil-dev-broker: stopped")
        withExtendedLifetime((cluster, sources)) {}
    }
}
