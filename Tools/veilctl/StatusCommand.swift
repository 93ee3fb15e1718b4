import ArgumentParser
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import VeilKafka
import VeilService

/// `veilctl status`: each service's health, each consumer group's lag per topic, and
/// the dead letters waiting, in one screen (or `--json` for scripts and alerts).
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show service health, consumer lag per group and topic, and dead-letter counts.",
        discussion: """
            Health is read from each service's admin port (/health/ready); name them with
            --endpoint NAME=URL (repeatable) or VEIL_STATUS_ENDPOINTS="ingress=http://host:9090,...".
            With --check, exits 1 when a service is not ready or dead letters are pending.
            """)

    @OptionGroup var kafka: OperatorKafka
    @Option(name: .long, help: "A service's admin URL, NAME=URL (repeatable).") var endpoint: [String] = []
    @Flag(name: .long, help: "Print JSON instead of tables.") var json = false
    @Flag(name: .long, help: "Exit 1 if a service is not ready or dead letters are pending.") var check = false

    struct Health: Codable {
        var service: String
        var url: String
        var ready: Bool
        var detail: String
    }

    struct Report: Codable {
        var health: [Health]
        var lag: [ConsumerLag]
        var deadLetters: [DeadLetterQueue.Summary]
    }

    func run() async throws {
        let inspector = KafkaInspector(configuration: try kafka.configuration(clientID: "veilctl-status"))
        let endpoints = try Self.endpoints(endpoint + (ProcessInfo.processInfo.environment["VEIL_STATUS_ENDPOINTS"]?
            .split(separator: ",").map(String.init) ?? []))
        async let health = Self.probe(endpoints)
        let lag = try await ConsumerLag.gather(inspector)
        let dead = try await DeadLetterQueue(inspector: inspector).summaries()
        let report = Report(health: await health, lag: lag, deadLetters: dead)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            Self.printTables(report)
        }
        if check, report.health.contains(where: { !$0.ready }) || report.deadLetters.contains(where: { $0.pending > 0 }) {
            throw ExitCode(1)
        }
    }

    static func endpoints(_ pairs: [String]) throws -> [(String, URL)] {
        var seen = Set<String>()
        return try pairs.compactMap { pair in
            let parts = pair.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let url = URL(string: parts[1]), url.scheme != nil else {
                throw ValidationError("endpoint '\(pair)' is not NAME=URL")
            }
            return seen.insert(parts[0]).inserted ? (parts[0], url) : nil
        }
    }

    static func probe(_ endpoints: [(String, URL)]) async -> [Health] {
        await withTaskGroup(of: (Int, Health).self) { group in
            for (index, (name, url)) in endpoints.enumerated() {
                group.addTask {
                    var request = URLRequest(url: url.appendingPathComponent("health/ready"))
                    request.timeoutInterval = 3
                    do {
                        let (body, response) = try await URLSession.shared.data(for: request)
                        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
                        let text = String(decoding: body.prefix(200), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                        return (index, Health(service: name, url: url.absoluteString, ready: status == 200, detail: "\(status) \(text)"))
                    } catch {
                        return (index, Health(service: name, url: url.absoluteString, ready: false, detail: "unreachable"))
                    }
                }
            }
            var all: [(Int, Health)] = []
            for await result in group { all.append(result) }
            return all.sorted { $0.0 < $1.0 }.map(\.1)
        }
    }

    static func printTables(_ report: Report) {
        func row(_ columns: [String], _ widths: [Int]) -> String {
            zip(columns, widths).map { $0.padding(toLength: max($1, $0.count), withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        if report.health.isEmpty {
            print("SERVICES  (no endpoints given: --endpoint NAME=URL or VEIL_STATUS_ENDPOINTS)")
        } else {
            print(row(["SERVICE", "READY", "URL", "DETAIL"], [20, 5, 28, 0]))
            for h in report.health { print(row([h.service, h.ready ? "yes" : "NO", h.url, h.detail], [20, 5, 28, 0])) }
        }
        print()
        print(row(["GROUP", "TOPIC", "LAG", "PARTITIONS"], [26, 36, 8, 0]))
        for l in report.lag {
            let partitions = "\(l.partitions)" + (l.uncommittedPartitions > 0 ? " (\(l.uncommittedPartitions) never committed)" : "")
            print(row([l.group, l.topic, "\(l.lag)", partitions], [26, 36, 8, 0]))
        }
        print()
        print(row(["DEAD-LETTER TOPIC", "PENDING", "KEPT", "EVER"], [40, 8, 8, 0]))
        for d in report.deadLetters { print(row([d.topic, "\(d.pending)", "\(d.kept)", "\(d.total)"], [40, 8, 8, 0])) }
        let pending = report.deadLetters.reduce(0) { $0 + $1.pending }
        if pending > 0 { print("\n\(pending) dead letters pending: veilctl dlq list <topic>, then veilctl dlq replay <topic> after the fix") }
    }
}
