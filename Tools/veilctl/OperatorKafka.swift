import ArgumentParser
import Foundation
import Logging
import VeilKafka
import VeilService

/// The cluster connection every operator command shares: `--brokers` or `$KAFKA_BROKERS`,
/// with TLS and SASL from the same `KAFKA_*` variables the services read.
struct OperatorKafka: ParsableArguments {
    @Option(name: .long, help: "Bootstrap servers (default: $KAFKA_BROKERS).") var brokers: String?

    func configuration(clientID: String = "veilctl") throws -> KafkaConfiguration {
        let environment = ProcessInfo.processInfo.environment
        guard let brokers = brokers ?? environment["KAFKA_BROKERS"], !brokers.isEmpty else {
            throw ValidationError("set --brokers or KAFKA_BROKERS")
        }
        var properties: [String: String] = [:]
        for (variable, property, _) in ServiceConfiguration.kafkaPassThrough {
            if let value = environment[variable], !value.isEmpty { properties[property] = value }
        }
        return KafkaConfiguration(bootstrapServers: brokers, clientID: clientID, properties: properties)
    }

    func producer() throws -> KafkaProducer {
        var logger = Logger(label: "veilctl")
        logger.logLevel = .error
        return try KafkaProducer(configuration: ProducerConfiguration(kafka: try configuration()), logger: logger)
    }
}
