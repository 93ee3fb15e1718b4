import ArgumentParser
import Foundation
import Logging
import VeilEnvelope
import VeilKafka
import VeilService

/// `veilctl upstream`: the first provider's side of upstream filing.
struct UpstreamCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upstream", abstract: "Export customer records, households and PINs to the key-vault (provider side).",
        subcommands: [Sample.self, Export.self, SampleHouseholds.self, Households.self, Pins.self])

    /// `veilctl upstream sample --count N --out FILE`.
    struct Sample: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a realistic synthetic customer CSV.")

        @Option(name: .long, help: "Number of customers.") var count = 10_000
        @Option(name: .long, help: "Output file (default: standard output).") var out: String?
        @Option(name: .long, help: "Random seed (same seed, same file).") var seed: UInt64 = 42

        func run() throws {
            try UpstreamCommand.write(CustomerSample.csv(count: count, seed: seed), to: out, summary: "\(count) customers")
        }
    }

    /// `veilctl upstream export customers.csv --keys DIR [--policy FILE]`.
    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Hash each customer id with kP.id, keep the columns the policy allows, and publish to veil.upstream.records.v1.")

        @Argument(help: "The customer CSV (header row first).") var file: String
        @Option(name: .long, help: "The key folder (upstream-exporter identity, provider pseudonym key, key directory).")
        var keys: String = ProcessInfo.processInfo.environment["VEIL_KEYS_DIR"] ?? ".veil/keys"
        @Option(name: .long, help: "Policy JSON: {\"idColumn\": \"customer_id\", \"allow\": [\"tier\", ...]}.") var policy: String?
        @Option(name: .long, help: "Bootstrap servers (default: $KAFKA_BROKERS).") var brokers: String?
        @Option(name: .long, help: "Records per envelope.") var batchSize = 500
        @Flag(name: .long, help: "No progress bar.") var quiet = false

        func run() async throws {
            guard let brokers = brokers ?? ProcessInfo.processInfo.environment["KAFKA_BROKERS"] else {
                throw ValidationError("set --brokers or KAFKA_BROKERS")
            }
            let exportPolicy: ExportPolicy
            if let policy {
                exportPolicy = try JSONDecoder().decode(ExportPolicy.self, from: Data(contentsOf: URL(fileURLWithPath: policy)))
            } else {
                exportPolicy = ExportPolicy()
            }
            let folder = KeyFolder(url: URL(fileURLWithPath: keys))
            guard let pseudonymKey = try folder.secret(party: KeyFolder.providerParty, name: KeyFolder.pseudonymIDKey).current else {
                throw ValidationError("no kP.id in \(keys)/\(KeyFolder.providerParty)")
            }
            let codec = EnvelopeCodec(identity: try folder.identity("upstream-exporter"), directory: try folder.directoryStore())
            let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: file)))
            var logger = Logger(label: "veilctl")
            logger.logLevel = .error
            let producer = try KafkaProducer(configuration: ProducerConfiguration(
                kafka: KafkaConfiguration(bootstrapServers: brokers, clientID: "veil-upstream-exporter")), logger: logger)
            var exporter = UpstreamExporter(codec: codec, producer: producer, pseudonymKey: pseudonymKey, policy: exportPolicy)
            exporter.batchSize = batchSize
            let quiet = self.quiet
            let summary = try await exporter.export(csv: bytes) { summary, fraction in
                guard !quiet else { return }
                ProgressBar.draw(fraction: fraction, label: "\(summary.published) records published")
            }
            await producer.close()
            if !quiet && ProgressBar.enabled { FileHandle.standardError.write(Data("\n".utf8)) }
            print(summary)
        }
    }
}

extension UpstreamCommand {
    /// Writes a generated file to `out`, or to standard output.
    static func write(_ text: String, to out: String?, summary: String) throws {
        guard let out else { return print(text, terminator: "") }
        try Data(text.utf8).write(to: URL(fileURLWithPath: out))
        FileHandle.standardError.write(Data("wrote \(summary) to \(out)\n".utf8))
    }

    /// `veilctl upstream sample-households --count N --out FILE`.
    struct SampleHouseholds: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "sample-households",
                                                        abstract: "Write a synthetic household file (tid,household_id).")
        @Option(name: .long, help: "Number of customers (TIDs).") var count = 10_000
        @Option(name: .long, help: "Output file (default: standard output).") var out: String?

        func run() throws {
            try UpstreamCommand.write(ReferenceFileExporter.sampleHouseholds(count: count), to: out, summary: "\(count) TIDs")
        }
    }

    struct Households: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "File TID → household mappings (CSV tid,household_id) in the key-vault, sealed to it on the way.")
        @Argument(help: "The household CSV.") var file: String
        @OptionGroup var options: ReferenceOptions
        func run() async throws { try await options.export(.households, file: file) }
    }

    struct Pins: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "File customers' PINs (CSV account_id,pin) as keyed verifiers in the key-vault, for secure forms.")
        @Argument(help: "The PIN CSV.") var file: String
        @OptionGroup var options: ReferenceOptions
        func run() async throws { try await options.export(.pins, file: file) }
    }

    struct ReferenceOptions: ParsableArguments {
        @Option(name: .long, help: "The key folder (upstream-exporter identity, provider pseudonym key, key directory).")
        var keys: String = ProcessInfo.processInfo.environment["VEIL_KEYS_DIR"] ?? ".veil/keys"
        @Option(name: .long, help: "Bootstrap servers (default: $KAFKA_BROKERS).") var brokers: String?
        @Flag(name: .long, help: "No progress bar.") var quiet = false

        func export(_ kind: ReferenceFileExporter.Kind, file: String) async throws {
            guard let brokers = brokers ?? ProcessInfo.processInfo.environment["KAFKA_BROKERS"] else {
                throw ValidationError("set --brokers or KAFKA_BROKERS")
            }
            let folder = KeyFolder(url: URL(fileURLWithPath: keys))
            let pseudonymKey = try? folder.secret(party: KeyFolder.providerParty, name: KeyFolder.pseudonymIDKey).current
            let codec = EnvelopeCodec(identity: try folder.identity("upstream-exporter"), directory: try folder.directoryStore())
            var logger = Logger(label: "veilctl")
            logger.logLevel = .error
            let producer = try KafkaProducer(configuration: ProducerConfiguration(
                kafka: KafkaConfiguration(bootstrapServers: brokers, clientID: "veil-upstream-exporter")), logger: logger)
            let exporter = ReferenceFileExporter(codec: codec, producer: producer, pseudonymKey: pseudonymKey ?? nil)
            let quiet = self.quiet
            let summary = try await exporter.export(kind, csv: try Array(Data(contentsOf: URL(fileURLWithPath: file)))) { summary, fraction in
                guard !quiet else { return }
                ProgressBar.draw(fraction: fraction, label: "\(summary.published) rows published")
            }
            await producer.close()
            if !quiet && ProgressBar.enabled { FileHandle.standardError.write(Data("\n".utf8)) }
            print(summary)
        }
    }
}

/// A one-line progress bar on standard error.
enum ProgressBar {
    /// Only on a terminal: logs and CI output get the summary instead.
    static let enabled = isatty(STDERR_FILENO) == 1

    static func draw(fraction: Double, label: String) {
        guard enabled else { return }
        let width = 30
        let filled = Int((min(1, max(0, fraction)) * Double(width)).rounded())
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        FileHandle.standardError.write(Data("\r[\(bar)] \(Int(fraction * 100))% \(label)   ".utf8))
    }
}
