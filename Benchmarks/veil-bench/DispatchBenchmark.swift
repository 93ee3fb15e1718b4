import ArgumentParser
import DispatcherService
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import PostgresNIO
import VeilClient
import VeilContracts
import VeilIngressClient
import VeilStore

/// `veil-bench dispatch`: assignment decisions per second with 1,000 technicians (the
/// `AssignmentEngine` against PostgreSQL, as the dispatcher runs it), and, with the
/// services running (`make bench-dispatch`), the time from a service request accepted
/// by ingress to its alert stored by the technician-alerter, at half that rate.
/// Not a test: it reports, it does not assert.
struct DispatchBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dispatch",
                                                    abstract: "Assignment decisions/s and request → alert latency (p50/p99).")

    @Option(help: "Technicians.") var technicians = 1_000
    @Option(help: "Requests decided in the decisions phase.") var requests = 5_000
    @Option(help: "Decisions in flight (dispatcher replicas × concurrency).") var concurrency = 8
    @Option(help: "Admin DATABASE_URL (default: $DATABASE_URL).") var database: String?
    @Option(help: "Ingress base URL; with it, also measure request → alert latency against the running services.") var url: String?
    @Option(help: "Admin token of ingress (default: $VEIL_INGRESS_ADMIN_TOKEN).") var adminToken: String?
    @Option(help: "Seconds of the latency phase.") var seconds: Double = 10
    @Option(help: "Request rate of the latency phase (default: half the measured decision rate, at most 200/s).") var rate: Double?
    @Flag(help: "Keep the decisions phase's schema and technicians afterwards (to EXPLAIN or pgbench its statements).") var keepSchema = false
    @Flag(help: "Skip the decisions phase (measured separately, e.g. before the services start); needs --url.") var latencyOnly = false

    func run() async throws {
        guard let url = database ?? ProcessInfo.processInfo.environment["DATABASE_URL"] else {
            throw ValidationError("set --database or DATABASE_URL")
        }
        var logger = Logger(label: "veil-bench")
        logger.logLevel = .error
        let admin = try DatabaseConfiguration(url: url)
        if latencyOnly {
            guard let base = self.url else { throw ValidationError("--latency-only needs --url") }
            try await latency(base: base, admin: admin, rate: min(200, rate ?? 100), logger: logger)
            return
        }
        let schema = "bench_dispatch_\(UUID().uuidString.prefix(6).lowercased())"
        let database = try Database(configuration: admin, schema: schema, logger: logger)
        let decisionsPerSecond = try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await database.run() }
            defer { group.cancelAll() }
            try await database.migrate(Dispatcher.migrations)
            var policy = AssignmentPolicy()
            policy.reservationTimeout = .seconds(3600)
            let engine = AssignmentEngine(database: database, policy: policy, logger: logger)
            print("== seeding \(technicians) technicians (5 skills, 20 regions, capacity 8)")
            let skills = ["network", "fiber", "installation", "tv", "voice"]
            for i in 0..<technicians {
                try await engine.upsert(Technician(id: "t\(i)", name: "T\(i)", skills: [skills[i % 5], skills[(i + 1) % 5]],
                                                   regions: ["r\(i % 20)", "r\((i + 1) % 20)"], homeRegion: "r\(i % 20)", capacity: 8))
            }
            // A running dispatcher's tables have planner statistics (autovacuum analyzes them
            // a minute after seeding); a schema seeded a moment ago has none yet.
            try await database.client.query(PostgresQuery(unsafeSQL: "ANALYZE \(schema).technicians"), logger: logger)
            print("== \(requests) decisions, \(concurrency) in flight")
            let started = ContinuousClock.now
            let offered = try await withThrowingTaskGroup(of: Int.self) { tasks in
                let perTask = requests / concurrency
                for t in 0..<concurrency {
                    tasks.addTask {
                        var made = 0
                        for i in 0..<perTask {
                            let n = t * perTask + i
                            let request = DispatchRequest(id: UUID(), category: "outage", priority: 1 + n % 5, region: "r\(n % 20)",
                                                          requiredSkills: [skills[n % 5]])
                            if try await engine.submit(request) != nil { made += 1 }
                        }
                        return made
                    }
                }
                return try await tasks.reduce(0, +)
            }
            let elapsed = (ContinuousClock.now - started).seconds
            let rate = Double(requests) / elapsed
            print(String(format: "   %.0f decisions/s (%d requests offered, %d left waiting) in %.2f s", rate, offered, requests - offered, elapsed))
            if keepSchema {
                print("   kept schema \(schema)")
            } else {
                try await database.client.query(PostgresQuery(unsafeSQL: "DROP SCHEMA \(schema) CASCADE"), logger: logger)
            }
            return rate
        }
        guard let base = self.url else { return }
        try await latency(base: base, admin: admin, rate: min(200, rate ?? decisionsPerSecond / 2), logger: logger)
    }

    /// Requests through ingress at `rate`/s for `seconds`; latency = the alerter's `created_at`
    /// of the offer's alert minus ingress's `accepted_at` of the request (one database clock).
    func latency(base: String, admin: DatabaseConfiguration, rate: Double, logger: Logger) async throws {
        guard let token = adminToken ?? ProcessInfo.processInfo.environment["VEIL_INGRESS_ADMIN_TOKEN"] else {
            throw ValidationError("set --admin-token or VEIL_INGRESS_ADMIN_TOKEN for the latency phase")
        }
        print("== seeding \(technicians) technicians with device keys in the running dispatcher (region north, skill network)")
        let dispatcherDB = try Database(configuration: admin, schema: ServiceName.dispatcher.schema, logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await dispatcherDB.run() }
            defer { group.cancelAll() }
            let engine = AssignmentEngine(database: dispatcherDB, policy: AssignmentPolicy(), logger: logger)
            for i in 0..<technicians {
                let device = DeviceIdentity(deviceId: "bench-tech-\(i)")
                try await engine.upsert(Technician(id: device.deviceId, name: "Tech \(i)", skills: ["network"], regions: ["north"],
                                                   homeRegion: "north", capacity: 1_000,
                                                   signingKey: device.signingKey.publicKey.rawRepresentation,
                                                   encryptionKey: device.encryptionKey.publicKey.rawRepresentation))
            }
        }
        let client = IngressClient(baseURL: URL(string: base)!)
        let load = try LoadClient(baseURL: base)
        defer { load.shutdown() }
        var codeRequest = URLRequest(url: URL(string: base + "/admin/enrollment-codes")!)
        codeRequest.httpMethod = "POST"
        codeRequest.httpBody = Data(#"{"accountId":"BENCH-1"}"#.utf8)
        codeRequest.setValue("application/json", forHTTPHeaderField: "Content-Type")
        codeRequest.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        let (codeBody, _) = try await URLSession.shared.data(for: codeRequest)
        let code = try ContractCoding.decode(EnrollmentCode.self, from: Array(codeBody)).code
        let device = DeviceIdentity(deviceId: "bench-phone-\(UUID().uuidString.prefix(6))")
        try await client.enroll(device, accountId: "BENCH-1", code: code)
        let dispatcher = try await client.dispatcherKey()

        print(String(format: "== request → alert latency at %.0f requests/s for %.0f s", rate, seconds))
        let interval = Duration.milliseconds(Int(1000 / rate))
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        let ids = Samples()
        let cpuBefore = ProcessCPU.snapshot()
        let wallStart = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = ContinuousClock.now
            var n = 0
            while next < end {
                let i = n
                group.addTask {
                    let signed = try device.serviceRequest(ServiceRequestPayload(category: "outage", priority: 1 + i % 5,
                                                                                 description: "bench \(i)", region: "north"),
                                                           dispatcher: dispatcher)
                    let (status, body) = try await load.send(signed)
                    if status == 202, let receipt = try? ContractCoding.decode(ServiceRequestReceipt.self, from: Array(body)) {
                        ids.strings.withLock { $0.append(receipt.id) }
                    }
                }
                n += 1
                next += interval
                try await Task.sleep(until: next)
            }
            try await group.waitForAll()
        }
        let sent = ids.strings.withLock { $0 }
        try await Task.sleep(for: .seconds(3))
        print(String(format: "   over %.1f s wall, CPU ms per request: ", (ContinuousClock.now - wallStart).seconds)
              + ProcessCPU.report(from: cpuBefore, to: ProcessCPU.snapshot(), inquiries: sent.count))
        let latencies: [Double] = try await withAdmin(admin, logger: logger) { db in
            var values: [Double] = []
            let rows = try await db.query("""
                SELECT extract(epoch FROM a.created_at - s.accepted_at)::float8 * 1000
                FROM ingress.service_requests s
                JOIN dispatcher.reservations r ON r.request_id = s.id
                JOIN technician_alerter.alerts a ON a.reservation_id = r.id
                WHERE s.id = ANY(\(sent.compactMap(UUID.init(uuidString:))))
                """, logger: logger)
            for try await value in rows.decode(Double.self) { values.append(value) }
            return values.sorted()
        }
        guard !latencies.isEmpty else {
            print("   no alerts: are technicians in region north with skill network and device keys seeded? (make bench-dispatch does)")
            return
        }
        func percentile(_ p: Double) -> Double { latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        print(String(format: "   %d requests accepted, %d alerted; p50 %.1f ms, p99 %.1f ms (target p99 < 100 ms)",
                     sent.count, latencies.count, percentile(0.5), percentile(0.99)))
    }

    func withAdmin<T: Sendable>(_ admin: DatabaseConfiguration, logger: Logger, _ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        let client = PostgresClient(configuration: admin.clientConfiguration, backgroundLogger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }
}
