import ArgumentParser
import Foundation
import Logging
import NIOCore
import PostgresNIO
import Synchronization
import VeilClient
import VeilContracts
import VeilEnvelope
import VeilIngressClient
import VeilKafka
import VeilService
import VeilStore

/// `veil-bench pos`: point-of-sale lookup latency through ingress and the key-vault
/// (HTTP → Kafka request → vault → Kafka reply → HTTP answer), open loop at a fixed rate,
/// against running services. Baseline in the same run: the bare ingress HTTP round trip
/// (`GET /v1/keys/key-vault`) at the same rate, the floor any lookup pays.
struct PosBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pos",
                                                    abstract: "Point-of-sale lookup latency p50/p99 at a fixed rate (target p99 < 20 ms at 500/s).")
    @Option(help: "Ingress base URL.") var url = "http://127.0.0.1:18080"
    @Option(help: "Households (TIDs) to file first.") var households = 20_000
    @Option(help: "Lookups per second.") var rate: Double = 500
    @Option(help: "Seconds of measurement (after 2 s of warm-up).") var seconds: Double = 10
    @Option(help: "The key folder (upstream-exporter identity), default $VEIL_KEYS_DIR.") var keys: String?
    @Option(help: "Bootstrap servers, default $KAFKA_BROKERS.") var brokers: String?
    @Option(help: "Admin DATABASE_URL (to wait for the filing), default $DATABASE_URL.") var database: String?

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        guard let keysPath = keys ?? environment["VEIL_KEYS_DIR"], let brokers = brokers ?? environment["KAFKA_BROKERS"],
              let databaseURL = database ?? environment["DATABASE_URL"] else {
            throw ValidationError("set --keys/VEIL_KEYS_DIR, --brokers/KAFKA_BROKERS and --database/DATABASE_URL")
        }
        var logger = Logger(label: "veil-bench")
        logger.logLevel = .error
        let folder = KeyFolder(url: URL(fileURLWithPath: keysPath))

        print("== filing \(households) households (veilctl upstream households)")
        let producer = try KafkaProducer(configuration: ProducerConfiguration(
            kafka: KafkaConfiguration(bootstrapServers: brokers, clientID: "veil-bench-pos")), logger: logger)
        let exporter = ReferenceFileExporter(codec: EnvelopeCodec(identity: try folder.identity("upstream-exporter"),
                                                                  directory: try folder.directoryStore()),
                                             producer: producer, pseudonymKey: nil)
        _ = try await exporter.export(.households, csv: Array(ReferenceFileExporter.sampleHouseholds(count: households).utf8))
        await producer.close()
        let admin = try DatabaseConfiguration(url: databaseURL)
        let client = PostgresClient(configuration: admin.clientConfiguration, backgroundLogger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            for _ in 0..<600 {
                let filed = try await client.query("SELECT count(*)::int FROM key_vault.households", logger: logger)
                    .collect().first?.decode(Int.self) ?? 0
                if filed >= households { return }
                try await Task.sleep(for: .milliseconds(200))
            }
            throw ValidationError("the key-vault did not file the households in 2 minutes")
        }

        let ingress = IngressClient(baseURL: URL(string: url)!)
        let terminal = DeviceIdentity(deviceId: "bench-till-\(UUID().uuidString.prefix(6))")
        try await ingress.enroll(terminal)
        let vault = try await ingress.vaultKey()
        let load = try LoadClient(baseURL: url)
        defer { load.shutdown() }

        // Baseline: the HTTP round trip alone, same rate, same client.
        let baselineCPU = ProcessCPU.snapshot()
        let baseline = try await openLoop(rate: rate, seconds: min(seconds, 5)) { _ in
            let response = try await load.http.execute(.GET, "/v1/keys/key-vault")
            return response.status == 200 ? nil : "status \(response.status)"
        }
        let baselineUsage = ProcessCPU.report(from: baselineCPU, to: ProcessCPU.snapshot(), inquiries: baseline.latencies.count)
        report("baseline: ingress HTTP round trip (GET /v1/keys/key-vault)", baseline)
        print("   CPU ms per request: " + baselineUsage)

        // The till seals and signs on its own hardware, not on the server's cores: each phase's
        // lookups are sealed and signed before it starts (fresh nonces, timestamps well within
        // the ingress's clock skew), so the load generator's CPU is mostly its HTTP client.
        let count = households
        let warmUp = try Self.signedLookups(terminal, vault, (0..<Int(rate * 2) + 1).map { $0 % count })
        _ = try await openLoop(rate: rate, seconds: 2) { i in try await Self.lookup(load, warmUp[i % warmUp.count]) }
        let lookups = try Self.signedLookups(terminal, vault, (0..<Int(rate * seconds) + 1).map { ($0 * 7919) % count })
        let cpuBefore = ProcessCPU.snapshot()
        let measured = try await openLoop(rate: rate, seconds: seconds) { i in try await Self.lookup(load, lookups[i % lookups.count]) }
        let usage = ProcessCPU.report(from: cpuBefore, to: ProcessCPU.snapshot(), inquiries: measured.latencies.count)
        report("POS lookup through ingress and the key-vault (target p99 < 20 ms)", measured)
        print("   CPU ms per lookup: " + usage)
    }

    static func signedLookups(_ terminal: DeviceIdentity, _ vault: PublishedEncryptionKey, _ households: [Int]) throws -> [SignedRequest] {
        try households.map { try terminal.posLookup(tid: ReferenceFileExporter.sampleTID($0), vault: vault) }
    }

    static func lookup(_ load: LoadClient, _ signed: SignedRequest) async throws -> String? {
        let (status, body) = try await load.send(signed)
        guard status == 200 else {
            let code = (try? JSONSerialization.jsonObject(with: body) as? [String: Any])?["code"] as? String
            return code ?? "status \(status)"
        }
        return nil
    }

    struct Run {
        var latencies: [Double]
        var errors: [String: Int]
        var seconds: Double
    }

    /// Starts `body` every 1/rate s regardless of how long earlier calls take (open loop, so
    /// a slow answer cannot hide queueing); latency = start of the call → its answer.
    func openLoop(rate: Double, seconds: Double, _ body: @escaping @Sendable (Int) async throws -> String?) async throws -> Run {
        final class Collected: Sendable {
            let latencies = Mutex<[Double]>([])
            let errors = Mutex<[String: Int]>([:])
            /// (ms since the phase started, latency ms) per answered call, for `VEIL_BENCH_TIMELINE`.
            let timeline = Mutex<[(Double, Double)]>([])
        }
        let collected = Collected()
        let interval = Duration.nanoseconds(Int64(1e9 / rate))
        let started = ContinuousClock.now
        let end = started + .milliseconds(Int(seconds * 1000))
        await withTaskGroup(of: Void.self) { group in
            var next = started, n = 0
            while next < end {
                let i = n
                group.addTask {
                    let begin = ContinuousClock.now
                    do {
                        if let error = try await body(i) {
                            collected.errors.withLock { $0[error, default: 0] += 1 }
                        } else {
                            let elapsed = (ContinuousClock.now - begin).seconds * 1000
                            collected.latencies.withLock { $0.append(elapsed) }
                            collected.timeline.withLock { $0.append(((begin - started).seconds * 1000, elapsed)) }
                        }
                    } catch {
                        collected.errors.withLock { $0["\(type(of: error))", default: 0] += 1 }
                    }
                }
                n += 1
                next += interval
                try? await Task.sleep(until: next)
            }
        }
        if let path = ProcessInfo.processInfo.environment["VEIL_BENCH_TIMELINE"] {
            // One line per answered call, appended per phase: when it started and how long it took,
            // to tell a steady queue from stalls.
            let lines = collected.timeline.withLock { $0.sorted { $0.0 < $1.0 } }.map { String(format: "%.2f %.2f\n", $0.0, $0.1) }
            let text = "# phase at \(rate)/s: start_ms latency_ms\n" + lines.joined()
            if let handle = FileHandle(forWritingAtPath: path) {
                handle.seekToEndOfFile(); handle.write(Data(text.utf8)); try? handle.close()
            } else {
                _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
            }
        }
        return Run(latencies: collected.latencies.withLock { $0.sorted() }, errors: collected.errors.withLock { $0 },
                   seconds: (ContinuousClock.now - started).seconds)
    }

    func report(_ title: String, _ run: Run) {
        func percentile(_ p: Double) -> Double { run.latencies.isEmpty ? .nan : run.latencies[min(run.latencies.count - 1, Int(Double(run.latencies.count) * p))] }
        print("== \(title)")
        print(String(format: "   %d answered at %.0f/s; p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms", run.latencies.count,
                     Double(run.latencies.count) / run.seconds, percentile(0.5), percentile(0.9), percentile(0.99), run.latencies.last ?? .nan))
        if !run.errors.isEmpty { print("   errors: " + run.errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")) }
    }
}
