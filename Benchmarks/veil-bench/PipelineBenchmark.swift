import ArgumentParser
import AsyncHTTPClient
import NIOCore
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import Synchronization
import VeilClient
import VeilIngressClient
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService

/// `veil-bench pipeline`: the inquiry pipeline end to end against running services
/// (`make bench-pipeline` starts them), next to the crypto-only bound measured in the
/// same run: the same signatures, seals, opens and HMACs per inquiry in a plain loop
/// on all cores, without HTTP, Kafka or PostgreSQL.
///
/// 1. crypto-only bound (inquiries/s);
/// 2. maximum end-to-end throughput: closed loop on HTTP, counting insights that reach
///    the output topic per second after a warm-up;
/// 3. latency at half that rate (open loop): from the HTTP request to the insight on
///    `veil.insights.v1`, p50 and p99;
/// 4. upstream filing: records/s from the start of an export until the key-vault has filed them all.
struct PipelineBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pipeline",
                                                    abstract: "End-to-end inquiry throughput and latency against the crypto-only bound.")

    @Option(help: "Ingress base URL.") var url = "http://127.0.0.1:18080"
    @Option(help: "The key folder the services use.") var keys: String
    @Option(help: "Bootstrap servers (default: $KAFKA_BROKERS).") var brokers: String?
    @Option(help: "Seconds of each end-to-end phase.") var seconds: Double = 15
    @Option(help: "HTTP requests in flight for the throughput phase.") var concurrency = 48
    @Option(help: "Customers to file first (and to ask about).") var customers = 10_000
    @Option(help: "Records for the filing measurement (0: skip).") var filingRecords = 100_000
    @Option(help: "The key-vault's metrics, to count filed records (veil_records_filed_total).")
    var vaultMetrics = "http://127.0.0.1:9203/metrics"
    @Flag(help: "Only measure ingress: accepted inquiries/s and HTTP latency (closed loop).") var ingressOnly = false
    @Flag(help: "Only measure upstream filing (for profiling it).") var filingOnly = false
    @Option(help: "The open loop's rate (default: half the measured maximum).") var latencyRate: Double?
    @Flag(help: "Also read the four inner topics and print each hop's p50/p90/p99 in the open loop (record timestamps, ms).")
    var hops = false

    func run() async throws {
        guard let brokers = brokers ?? ProcessInfo.processInfo.environment["KAFKA_BROKERS"] else {
            throw ValidationError("set --brokers or KAFKA_BROKERS")
        }
        let folder = KeyFolder(url: URL(fileURLWithPath: keys))
        // The same fetch wait as the services (the local stack sets 5 ms for the mock cluster).
        let fetchWait = ProcessInfo.processInfo.environment["KAFKA_FETCH_WAIT_MAX_MS"].map { ["fetch.wait.max.ms": $0] } ?? [:]
        let kafka = KafkaConfiguration(bootstrapServers: brokers, clientID: "veil-bench", properties: fetchWait)
        var logger = Logger(label: "veil-bench")
        logger.logLevel = .error

        if ingressOnly {
            let device = DeviceIdentity(deviceId: "bench-device-\(UUID().uuidString.prefix(8))")
            try await IngressClient(baseURL: URL(string: url)!).enroll(device)
            let client = try LoadClient(baseURL: url)
            defer { client.shutdown() }
            let latencies = Samples()
            let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
            let concurrency = self.concurrency
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<concurrency {
                    group.addTask {
                        while ContinuousClock.now < end {
                            let start = ContinuousClock.now
                            _ = try await client.inquire(device, userId: "C00000001")
                            let ms = (ContinuousClock.now - start).seconds * 1000
                            latencies.values.withLock { $0.append(ms) }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let sorted = latencies.values.withLock { $0 }.sorted()
            print(String(format: "ingress only: %.0f accepted/s, p50 %.1f ms, p99 %.1f ms", Double(sorted.count) / seconds,
                         sorted[sorted.count / 2], sorted[sorted.count * 99 / 100]))
            return
        }
        var bound = 0.0
        if !filingOnly {
            print("== crypto-only bound (all \(ProcessInfo.processInfo.activeProcessorCount) cores, 3 s)")
            bound = try await CryptoBound(folder: folder).run(seconds: 3)
            print(String(format: "   %.0f inquiries/s", bound))
        }

        if filingRecords > 0 {
            print("== upstream filing of \(filingRecords) records")
            let (rate, usage) = try await filing(folder: folder, kafka: kafka, logger: logger, count: filingRecords, offset: customers)
            // The exporter (this process, `veil-bench`) stands in for the upstream provider's machine.
            print("   CPU µs per record: " + usage)
            print(String(format: "   %.0f records/s filed (export start → last record in PostgreSQL)", rate))
        }
        if filingOnly { return }

        print("== filing \(customers) customers to ask about")
        _ = try await filing(folder: folder, kafka: kafka, logger: logger, count: customers, offset: 0)

        let device = DeviceIdentity(deviceId: "bench-device-\(UUID().uuidString.prefix(8))")
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpMaximumConnectionsPerHost = max(64, concurrency * 2)
        configuration.timeoutIntervalForRequest = 30
        try await IngressClient(baseURL: URL(string: url)!, session: URLSession(configuration: configuration)).enroll(device)
        // The load generator shares the two cores with the services: a NIO client costs far less than URLSession.
        let client = try LoadClient(baseURL: url)
        defer { client.shutdown() }
        let users = (0..<customers).map { CustomerSample.customerID($0) }

        let tracker = try CompletionTracker(kafka: kafka, hops: hops, logger: logger)
        let reading = Task { try await tracker.run() }
        defer { reading.cancel() }
        try await Task.sleep(for: .seconds(3))  // the tracker joins its group

        print("== maximum throughput: closed loop, \(concurrency) requests in flight, \(Int(seconds)) s")
        let cpuBefore = ProcessCPU.snapshot()
        let completedBefore = tracker.completedCount
        let maxRate = try await closedLoop(client: client, device: device, users: users, tracker: tracker)
        print(String(format: "   %.0f inquiries/s end to end (HTTP request → insight on veil.insights.v1)", maxRate))
        print("   CPU ms per inquiry: " + ProcessCPU.report(from: cpuBefore, to: ProcessCPU.snapshot(),
                                                         inquiries: tracker.completedCount - completedBefore))
        // Let the pipeline drain what ingress accepted beyond what it could answer.
        let drainDeadline = ContinuousClock.now + .seconds(120)
        while tracker.pending > 0 && ContinuousClock.now < drainDeadline { try await Task.sleep(for: .milliseconds(200)) }

        let rate = latencyRate ?? maxRate / 2
        print(String(format: "== latency at half the maximum: open loop at %.0f inquiries/s, %d s", rate, Int(seconds)))
        let (p50, p99, completed, sent, ids) = try await openLoop(client: client, device: device, users: users, tracker: tracker, rate: rate)
        print(String(format: "   p50 %.1f ms, p99 %.1f ms (%d of %d completed)", p50, p99, completed, sent))
        if hops { print(tracker.hopReport(of: ids)) }

        print("\n| measure | value | target |\n|---|---|---|")
        print(String(format: "| crypto-only bound | %.0f inquiries/s | |", bound))
        print(String(format: "| end-to-end throughput | %.0f inquiries/s (%.2f of the bound) | ≥ 0.5 |", maxRate, maxRate / bound))
        print(String(format: "| latency at %.0f/s | p50 %.1f ms, p99 %.1f ms | p99 < 50 ms |", rate, p50, p99))
    }

    // MARK: Phases

    func closedLoop(client: LoadClient, device: DeviceIdentity, users: [String], tracker: CompletionTracker) async throws -> Double {
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        let warmup = ContinuousClock.now + .milliseconds(Int(seconds * 200))
        let counter = Counter(), failures = Counter()
        let concurrency = self.concurrency
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var i = worker
                    while ContinuousClock.now < end {
                        let user = users[i % users.count]
                        i += concurrency
                        let sent = ContinuousClock.now
                        do {
                            let id = try await client.inquire(device, userId: user)
                            tracker.expect(id, sentAt: sent)
                            counter.value.add(1, ordering: .relaxed)
                        } catch {
                            failures.value.add(1, ordering: .relaxed)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        if failures.value.load(ordering: .relaxed) > 0 { print("   \(failures.value.load(ordering: .relaxed)) requests failed") }
        // Completions in the measured window (after warm-up), per second.
        try await Task.sleep(for: .seconds(2))
        let done = tracker.completions(between: warmup, and: end)
        return Double(done) / (end - warmup).seconds
    }

    func openLoop(client: LoadClient, device: DeviceIdentity, users: [String], tracker: CompletionTracker,
                  rate: Double) async throws -> (Double, Double, Int, Int, [String]) {
        let interval = Duration.nanoseconds(Int64(1e9 / max(1, rate)))
        let start = ContinuousClock.now
        let total = Int(rate * seconds)
        var ids: [String] = []
        try await withThrowingTaskGroup(of: String?.self) { group in
            for i in 0..<total {
                let due = start + interval * i
                try await Task.sleep(until: due, clock: .continuous)
                let user = users[i % users.count]
                group.addTask {
                    let sent = ContinuousClock.now
                    guard let id = try? await client.inquire(device, userId: user) else { return nil }
                    tracker.expect(id, sentAt: sent)
                    return id
                }
            }
            for try await id in group { if let id { ids.append(id) } }
        }
        try await Task.sleep(for: .seconds(3))
        let latencies = tracker.latencies(of: ids).sorted()
        guard !latencies.isEmpty else { return (0, 0, 0, total, ids) }
        func percentile(_ p: Double) -> Double { latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        return (percentile(0.5), percentile(0.99), latencies.count, total, ids)
    }

    /// Exports `count` synthetic customers starting at `offset` and waits until all are filed:
    /// records/s, and each process's CPU per record from the export's start to the end.
    func filing(folder: KeyFolder, kafka: KafkaConfiguration, logger: Logger, count: Int, offset: Int) async throws -> (Double, String) {
        var csv = CustomerSample.csv(count: offset + count)
        if offset > 0 {  // keep the header, drop the first `offset` customers
            var lines = csv.split(separator: "\n", omittingEmptySubsequences: false)
            lines.removeSubrange(1...offset)
            csv = lines.joined(separator: "\n")
        }
        let before = try await countFiled()
        let producer = try KafkaProducer(configuration: ProducerConfiguration(kafka: kafka), logger: logger)
        let codec = EnvelopeCodec(identity: try folder.identity("upstream-exporter"), directory: try folder.directoryStore())
        let key = try folder.secret(party: KeyFolder.providerParty, name: KeyFolder.pseudonymIDKey).current!
        let cpuBefore = ProcessCPU.snapshot()
        let started = ContinuousClock.now
        let summary = try await UpstreamExporter(codec: codec, producer: producer, pseudonymKey: key, policy: ExportPolicy())
            .export(csv: Array(csv.utf8))
        await producer.close()
        // Waits while the count moves; 30 s without progress is a lost batch, reported rather than waited on forever.
        var last = -1, lastMove = ContinuousClock.now
        while case let filed = try await countFiled(), filed < before + summary.published {
            if filed != last { (last, lastMove) = (filed, ContinuousClock.now) }
            if ContinuousClock.now - lastMove > .seconds(30) {
                throw ValidationError("filing stalled: \(filed - before) of \(summary.published) records filed, no progress for 30 s")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let rate = Double(summary.published) / (ContinuousClock.now - started).seconds
        return (rate, ProcessCPU.report(from: cpuBefore, to: ProcessCPU.snapshot(), inquiries: summary.published,
                                        unit: "µs CPU per record", scale: 1_000_000))
    }

    /// The vault's own count of filed records: a scrape costs next to nothing, where
    /// `count(*)` over the growing table (and a psql process per poll) took a quarter
    /// of the machine the filing was measured on.
    func countFiled() async throws -> Int {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: vaultMetrics), timeout: .seconds(5))
        let body = String(buffer: try await response.body.collect(upTo: 1 << 22))
        let line = body.split(separator: "\n").first { $0.hasPrefix("veil_records_filed_total ") }
        return line.flatMap { Double($0.split(separator: " ")[1]) }.map { Int($0) } ?? 0
    }
}

/// Reads `veil.insights.v1` (keys only: the key is the inquiry id) and records when
/// each expected inquiry completed. With `hops`, also the four topics before it, each
/// record's timestamp by inquiry id, for the time each hop took (`hopReport`).
final class CompletionTracker: Sendable {
    /// The topics an inquiry passes, in order; the last is the output.
    static let path = [Topic.inquiriesReceived, .inquiriesAnonymized, .inquiriesTokenized, .inquiriesMatched, .insights].map(\.name)

    let consumer: KafkaConsumer
    private let state = Mutex<(sent: [String: ContinuousClock.Instant], done: [String: ContinuousClock.Instant])>(([:], [:]))
    /// Per topic of `path`: inquiry id → record timestamp (ms); the last entry is when this reader got the insight.
    private let stamps = Mutex<[[String: Int64]]>(Array(repeating: [:], count: CompletionTracker.path.count + 1))
    let hops: Bool

    init(kafka: KafkaConfiguration, hops: Bool = false, logger: Logger) throws {
        self.hops = hops
        var configuration = ConsumerConfiguration(kafka: kafka, groupID: "veil-bench.\(UUID().uuidString.prefix(8))",
                                                  topics: hops ? Self.path : [Topic.insights.name])
        configuration.offsetReset = .latest
        consumer = try KafkaConsumer(configuration: configuration, logger: logger)
    }

    func run() async throws {
        let output = Self.path.count - 1
        while let batch = try await consumer.nextBatch() {
            let now = ContinuousClock.now
            state.withLock { state in
                for message in batch where message.topic == Topic.insights.name {
                    guard let key = message.key else { continue }
                    state.done[String(decoding: key, as: UTF8.self)] = now
                }
            }
            if hops {
                let wall = Int64(Date().timeIntervalSince1970 * 1000)
                stamps.withLock { stamps in
                    for message in batch {
                        guard let key = message.key, let hop = Self.path.firstIndex(of: message.topic) else { continue }
                        let id = String(decoding: key, as: UTF8.self)
                        stamps[hop][id] = message.timestampMilliseconds
                        if hop == output { stamps[output + 1][id] = wall }
                    }
                }
            }
            consumer.markProcessed(batch)
        }
    }

    /// Each hop's p50/p90/p99 over `ids` (the open loop's inquiries), from record timestamps
    /// (ms, the producing client's clock: every process here reads the same one).
    func hopReport(of ids: [String]) -> String {
        let names = ["received", "anonymized", "tokenized", "matched", "insight", "read"]
        return stamps.withLock { stamps in
            var lines = ["   per hop, from record timestamps (ms):"]
            func line(_ label: String, _ from: Int, _ to: Int) {
                let values = ids.compactMap { id -> Int64? in
                    guard let a = stamps[from][id], let b = stamps[to][id] else { return nil }
                    return b - a
                }.sorted()
                guard !values.isEmpty else { return lines.append("     \(label): no records") }
                func p(_ q: Double) -> Int64 { values[min(values.count - 1, Int(Double(values.count) * q))] }
                lines.append("     \(label.padding(toLength: 26, withPad: " ", startingAt: 0)) p50 \(p(0.5)), p90 \(p(0.9)), p99 \(p(0.99)) (\(values.count))")
            }
            for hop in 0..<names.count - 1 { line("\(names[hop]) → \(names[hop + 1])", hop, hop + 1) }
            line("received → read (all)", 0, names.count - 1)
            return lines.joined(separator: "\n")
        }
    }

    var completedCount: Int { state.withLock { $0.done.count } }
    /// Accepted inquiries not answered yet.
    var pending: Int { state.withLock { state in state.sent.keys.filter { state.done[$0] == nil }.count } }

    func expect(_ id: String, sentAt: ContinuousClock.Instant) { state.withLock { $0.sent[id] = sentAt } }

    func completions(between start: ContinuousClock.Instant, and end: ContinuousClock.Instant) -> Int {
        state.withLock { state in state.done.values.filter { $0 >= start && $0 <= end }.count }
    }

    func latencies(of ids: [String]) -> [Double] {
        state.withLock { state in
            ids.compactMap { id in
                guard let sent = state.sent[id], let done = state.done[id] else { return nil }
                return (done - sent).seconds * 1000
            }
        }
    }
}

/// The crypto of one inquiry, every step, in a plain loop: the device's signature;
/// ingress's verification, two HMACs, two seals and a signature; the anonymizer's
/// verification, open, HMAC, seal and signature; the key-vault's; the matcher's; the
/// merger's (with the record's two AEAD opens); the provider's verification and open.
struct CryptoBound: Sendable {
    let folder: KeyFolder

    func run(seconds: Double) async throws -> Double {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let directory = try folder.directoryStore()
        func codec(_ party: String) throws -> EnvelopeCodec {
            EnvelopeCodec(identity: try folder.identity(party), directory: directory)
        }
        let codecs = try ["ingress", "anonymizer", "key-vault", "matcher", "merger"].map(codec)
        let reader = InsightReader(identity: try folder.identity("provider-demo"), directory: directory)
        let kP = VersionedKey.generate(version: 1), kT = VersionedKey.generate(version: 1), k2 = VersionedKey.generate(version: 1)
        let recordKey = VersionedKey.generate(version: 1)
        let record = try RecordCipher.seal(["tier": "gold", "plan": "contract-l", "city": "Berlin", "household_size": "3",
                                            "customer_since": "2019-04-01", "preferred_channel": "app", "lifetime_value_eur": "4711",
                                            "region": "north"], with: recordKey)
        let access = ContractCoding.encode(AccessInfo(anonymizedDeviceId: Data(count: 32), deviceKeyVersion: 1, channel: "app",
                                                      receivedAt: Date(), appVersion: "1.0.0", region: nil, appData: [:]))
        let device = DeviceIdentity(deviceId: "bench")
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<cores {
                group.addTask {
                    var n = 0
                    while ContinuousClock.now < end {
                        try Self.inquiry(codecs: codecs, reader: reader, device: device, kP: kP, kT: kT, k2: k2, recordKey: recordKey,
                                         record: record, access: access)
                        n += 1
                    }
                    return n
                }
            }
            return try await group.reduce(0, +)
        }
        return Double(total) / seconds
    }

    static func inquiry(codecs: [EnvelopeCodec], reader: InsightReader, device: DeviceIdentity, kP: VersionedKey, kT: VersionedKey,
                        k2: VersionedKey, recordKey: VersionedKey, record: EncryptedRecord, access: [UInt8]) throws {
        let (ingress, anonymizer, vault, matcher, merger) = (codecs[0], codecs[1], codecs[2], codecs[3], codecs[4])
        let request = try device.inquiry(userId: "+4915112345678", channel: "app", appVersion: "1.0.0")
        guard DeviceRequestSignature.isValid(signature: request.signature, publicKey: device.signingKey.publicKey,
                                             method: "POST", path: request.path, body: request.body) else { throw BenchError.failed }
        let p = kP.hash(Array("+4915112345678".utf8))
        _ = kP.hash(Array("device".utf8))
        func pass(_ draft: EnvelopeDraft, _ from: EnvelopeCodec, _ to: EnvelopeCodec, _ topic: String) throws -> VerifiedEnvelope {
            let message = try from.message(draft, topic: topic, key: nil)
            return try to.verifier.verify(message.value, topic: topic)
        }
        let received = try pass(EnvelopeDraft(type: MessageType.inquiryReceived, parts: [
            .sealed(PartLabel.pseudonym, payload: p, to: ["anonymizer"]), .sealed(PartLabel.accessInfo, payload: access, to: ["merger"]),
        ]), ingress, anonymizer, Topic.inquiriesReceived.name)
        let a = kT.hash(received.payload(PartLabel.pseudonym)!)
        let accessPart = received.part(PartLabel.accessInfo)!
        let anonymized = try pass(EnvelopeDraft(type: MessageType.inquiryAnonymized, parts: [
            .sealed(PartLabel.encryptedID, payload: a, to: ["key-vault"]), .forwarded(accessPart),
        ]), anonymizer, vault, Topic.inquiriesAnonymized.name)
        let token = k2.hash(anonymized.payload(PartLabel.encryptedID)!)
        let tokenized = try pass(EnvelopeDraft(type: MessageType.inquiryTokenized, parts: [
            .sealed(PartLabel.matchToken, payload: token, to: ["matcher"]), .forwarded(accessPart),
        ]), vault, matcher, Topic.inquiriesTokenized.name)
        let match = ContractCoding.encode(MatchPayload(token: Data(tokenized.payload(PartLabel.matchToken)!), matchKeyVersion: 1, record: record))
        let matched = try pass(EnvelopeDraft(type: MessageType.inquiryMatched, parts: [
            .sealed(PartLabel.match, payload: match, to: ["merger"]), .forwarded(accessPart),
        ]), matcher, merger, Topic.inquiriesMatched.name)
        _ = try RecordCipher.open(record, with: KeyRing([recordKey]))
        guard matched.payload(PartLabel.accessInfo) != nil else { throw BenchError.failed }
        let insight = ContractCoding.encode(Insight(inquiryId: "x", matched: true, matchToken: Data(token), matchKeyVersion: 1,
                                                    access: try ContractCoding.decode(AccessInfo.self, from: access),
                                                    record: ["tier": "gold"], mergedAt: Date()))
        let output = try merger.message(EnvelopeDraft(type: MessageType.insightPublished, parts: [
            .sealed(PartLabel.insight, payload: insight, to: ["provider-demo"]),
        ]), topic: Topic.insights.name, key: nil)
        _ = try reader.read(output.value)
    }
}

enum BenchError: Error { case failed, status(Int) }

/// The load generator's requests, on `LeanHTTPClient`.
struct LoadClient: Sendable {
    let http: LeanHTTPClient

    init(baseURL: String) throws {
        http = try LeanHTTPClient(baseURL: baseURL)
    }

    /// Sends a signed inquiry; returns its id on 202.
    func inquire(_ device: DeviceIdentity, userId: String) async throws -> String {
        let signed = try device.inquiry(userId: userId, channel: "app", appVersion: "1.0.0")
        let (status, body) = try await send(signed)
        guard status == 202 else { throw BenchError.status(status) }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        return try decoder.decode(InquiryStatus.self, from: body).id
    }

    /// Sends a signed request and returns the status and body.
    func send(_ signed: SignedRequest) async throws -> (Int, Data) {
        let response = try await http.execute(.POST, signed.path, headers: [("Content-Type", "application/json"),
                                                                           (DeviceRequestSignature.header, signed.signature)],
                                              body: signed.body)
        return (response.status, Data(response.body.readableBytesView))
    }

    func shutdown() { http.shutdown() }
}

final class Samples: Sendable {
    let values = Mutex<[Double]>([])
    let strings = Mutex<[String]>([])
}

final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

/// CPU time (user + system) of the processes on this machine, from /proc.
///
/// Snapshots are keyed by process id and only grouped by name in the report: a kernel
/// worker renames itself after the work item it runs (`kworker/u8:2-events_unbound`,
/// then `kworker/u8:2-flush-254:0`), so matching snapshots by name counted such a thread's
/// whole lifetime as used during the run (up to 1.3 ms "per request" that were not).
enum ProcessCPU {
    struct Usage: Sendable {
        var name: String
        var seconds: Double
    }

    static func snapshot() -> [Int32: Usage] {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        var usage: [Int32: Usage] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { continue }
            let name = String(stat[stat.index(after: open)..<close])
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { continue }
            usage[pid] = Usage(name: name, seconds: (user + system) / ticks)
        }
        return usage
    }

    /// The name a process is reported under: kernel workers together, whatever they run now.
    static func group(_ name: String) -> String {
        name.hasPrefix("kworker/") ? "kernel workers" : name
    }

    /// Milliseconds of CPU per inquiry (or per `unit`, scaled by `scale`: 1,000,000 for µs)
    /// for each process name that used at least 1% of the total.
    /// A process started during the run counts from zero.
    static func report(from before: [Int32: Usage], to after: [Int32: Usage], inquiries: Int,
                       unit: String = "ms CPU per inquiry", scale: Double = 1000) -> String {
        guard inquiries > 0 else { return "" }
        var used: [String: Double] = [:]
        for (pid, now) in after {
            let delta = now.seconds - (before[pid]?.seconds ?? 0)
            if delta > 0 { used[group(now.name), default: 0] += delta }
        }
        let total = used.values.reduce(0, +)
        return used.filter { $0.value > total * 0.01 }.sorted { $0.value > $1.value }
            .map { String(format: "%@ %.2f", $0.key, $0.value * scale / Double(inquiries)) }.joined(separator: ", ")
            + String(format: " (total %.2f %@)", total * scale / Double(inquiries), unit)
    }
}
