import ArgumentParser
import Foundation
import Logging
import Synchronization
import VeilClient
import VeilContracts
import VeilEnvelope
import VeilKafka

/// `veilctl consume insights`: what a downstream provider runs (or builds on, with
/// the `VeilClient` library): verify and open `veil.insights.v1`, print JSON lines.
struct ConsumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "consume", abstract: "Read an output topic as a downstream provider.",
                                                    subcommands: [Insights.self])

    struct Insights: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify and open veil.insights.v1 with a provider's key; print one JSON object per line.")

        @Option(name: .long, help: "The key folder holding the provider's keys and the signed key directory.")
        var keys: String = ProcessInfo.processInfo.environment["VEIL_KEYS_DIR"] ?? ".veil/keys"
        @Option(name: .long, help: "The provider (a party in the key folder).") var provider = "provider-demo"
        @Option(name: .long, help: "Bootstrap servers (default: $KAFKA_BROKERS).") var brokers: String?
        @Option(name: .long, help: "Consumer group (default: a new one, reading from the beginning).") var group: String?
        @Option(name: .long, help: "Stop after this many insights.") var count: Int?
        @Option(name: .long, help: "Stop after this many seconds without a new message.") var idle: Double = 10
        @Flag(name: .long, help: "Print only the summary.") var summaryOnly = false

        func run() async throws {
            guard let brokers = brokers ?? ProcessInfo.processInfo.environment["KAFKA_BROKERS"] else {
                throw ValidationError("set --brokers or KAFKA_BROKERS")
            }
            let folder = KeyFolder(url: URL(fileURLWithPath: keys))
            let reader = InsightReader(identity: try folder.identity(provider), directory: try folder.directoryStore())
            var logger = Logger(label: "veilctl")
            logger.logLevel = .error
            var configuration = ConsumerConfiguration(kafka: KafkaConfiguration(bootstrapServers: brokers, clientID: "veilctl-consume"),
                                                      groupID: group ?? "veilctl.\(provider).\(UUID().uuidString.prefix(8))",
                                                      topics: [Topic.insights.name])
            configuration.offsetReset = .earliest
            let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
            var matched = 0, unmatched = 0, refused: [String: Int] = [:]
            // Stop after `idle` seconds without a message (or once `count` arrived).
            let lastMessage = Mutex(ContinuousClock.now)
            let idle = Duration.milliseconds(Int(self.idle * 1000))
            let watchdog = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(200))
                    if ContinuousClock.now - lastMessage.withLock({ $0 }) > idle { consumer.stopReading(); return }
                }
            }
            defer { watchdog.cancel() }
            reading: while let batch = try await consumer.nextBatch() {
                lastMessage.withLock { $0 = .now }
                for message in batch {
                    do {
                        let at = Date(timeIntervalSince1970: Double(message.timestampMilliseconds) / 1000)
                        let insight = try reader.read(message.value, topic: message.topic, receivedAt: at)
                        if insight.matched { matched += 1 } else { unmatched += 1 }
                        if !summaryOnly { print(String(decoding: ContractCoding.encode(insight), as: UTF8.self)) }
                    } catch {
                        refused[(error as? EnvelopeError)?.code ?? "\(error)", default: 0] += 1
                    }
                    if let count, matched + unmatched >= count { break reading }
                }
                consumer.markProcessed(batch)
            }
            await consumer.close()
            var summary = "insights: \(matched + unmatched) (matched \(matched), unmatched \(unmatched))"
            if !refused.isEmpty { summary += "; refused: \(refused.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: ", "))" }
            FileHandle.standardError.write(Data((summary + "\n").utf8))
        }
    }
}
