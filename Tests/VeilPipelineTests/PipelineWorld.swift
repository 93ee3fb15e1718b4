import AnonymizerService
import DispatcherService
import TechnicianAlerterService
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import IngressService
import KeyVaultService
import Logging
import MatcherService
import MergerService
import NIOCore
import PostgresNIO
import Synchronization
import Testing
import VeilClient
import VeilIngressClient
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// The pipeline tests share the services' fixed schemas and roles (as deployed), so
/// they run one at a time: every suite below is nested in this serialized one.
@Suite("Inquiry pipeline on the embedded stack", .serialized)
struct PipelineSuites {}

/// Every log line the in-process services wrote, formatted exactly as in production (JSON lines).
final class LogCapture: Sendable {
    private let lines = Mutex<[String]>([])

    func logger(_ service: ServiceName) -> Logger {
        var logger = Logger(label: "veil.\(service.rawValue)") { label in
            JSONLogHandler(label: label, service: service.rawValue, level: .debug) { [self] line in
                let text = String(decoding: line, as: UTF8.self)
                lines.withLock { $0.append(text) }
                if ProcessInfo.processInfo.environment["VEIL_TEST_LOG"] != nil { FileHandle.standardError.write(line) }
            }
        }
        logger.logLevel = .debug
        return logger
    }

    var all: [String] { lines.withLock { $0 } }
    func plant(_ line: String) { lines.withLock { $0.append(line) } }
}

/// The inquiry pipeline on the embedded stack: a fresh mock Kafka cluster with every
/// topic, the five services in this process with their own provisioned database roles
/// and a fresh development key set, exactly as their executables wire them.
final class PipelineWorld: Sendable {
    static let inquiryServices: [ServiceName] = [.ingress, .anonymizer, .keyVault, .matcher, .merger]
    /// Every service with a schema and role in these tests.
    static let provisioned: [ServiceName] = inquiryServices + [.dispatcher, .technicianAlerter]

    let cluster: EmbeddedKafkaCluster
    let keys: KeyFolder
    let logs = LogCapture()
    let admin: DatabaseConfiguration
    let roles: [ServiceName: DatabaseConfiguration]
    let ingressURL: URL
    private let tasks = Mutex<[ServiceName: Task<Void, any Error>]>([:])
    private let switches = Mutex<[ServiceName: ShutdownSwitch]>([:])
    private let adminPorts = Mutex<[ServiceName: Int]>([:])
    /// Extra replicas (`startReplica`), stopped with the world.
    private let replicas = Mutex<[(ServiceName, Task<Void, any Error>)]>([])
    let environment: [ServiceName: [String: String]]

    private init(cluster: EmbeddedKafkaCluster, keys: KeyFolder, admin: DatabaseConfiguration, roles: [ServiceName: DatabaseConfiguration],
                 ingressPort: Int, environment: [ServiceName: [String: String]]) {
        self.cluster = cluster
        self.keys = keys
        self.admin = admin
        self.roles = roles
        self.ingressURL = URL(string: "http://127.0.0.1:\(ingressPort)")!
        self.environment = environment
    }

    static func start(_ services: [ServiceName] = inquiryServices, settings: [String: String] = [:]) async throws -> PipelineWorld {
        guard let url = ProcessInfo.processInfo.environment["DATABASE_URL"] else {
            Issue.record("DATABASE_URL is not set: run the tests with `make test`, which starts PostgreSQL")
            throw DatabaseError(code: "test.no_database", reason: "DATABASE_URL not set")
        }
        let admin = try DatabaseConfiguration(url: url)
        let quiet = { var logger = Logger(label: "test"); logger.logLevel = .error; return logger }()
        try await withAdmin(admin) { client in
            for service in provisioned {
                try await client.query(PostgresQuery(unsafeSQL: "DROP SCHEMA IF EXISTS \(service.schema) CASCADE"), logger: quiet)
            }
        }
        var roles: [ServiceName: DatabaseConfiguration] = [:]
        let provisioner = DatabaseProvisioner(admin: admin, logger: quiet)
        for service in provisioned {
            roles[service] = try await provisioner.provision(schema: service.schema, password: "test-\(service.schema)")
        }
        let cluster = try EmbeddedKafkaCluster(brokers: 1)
        for topic in Topic.allWithDeadLetters { try cluster.createTopic(topic.name, partitions: 4) }
        let keysURL = FileManager.default.temporaryDirectory.appendingPathComponent("veil-keys-\(UUID().uuidString.prefix(8))")
        let keys = try KeyFolder.createDevelopmentKeys(at: keysURL)
        let port = try freePort()
        var environment: [ServiceName: [String: String]] = [:]
        for service in services {
            let role = roles[service]!
            environment[service] = [
                "KAFKA_BROKERS": cluster.bootstrapServers,
                "DATABASE_URL": "postgres://\(role.username):\(role.password ?? "")@\(role.host):\(role.port)/\(role.database)",
                "VEIL_KEYS_DIR": keysURL.path, "VEIL_ADMIN_HOST": "127.0.0.1", "VEIL_ADMIN_PORT": "0",
                "VEIL_CREATE_TOPICS": "false", "VEIL_HTTP_PORT": String(port), "VEIL_VAULT_KEY_REFRESH_SECONDS": "1",
                "VEIL_MAX_ATTEMPTS": "3", "KAFKA_FETCH_WAIT_MAX_MS": "5",
            ].merging(settings) { $1 }
        }
        let world = PipelineWorld(cluster: cluster, keys: keys, admin: admin, roles: roles, ingressPort: port, environment: environment)
        for service in services { try await world.startService(service) }
        if services.contains(.ingress) { try await world.waitForIngress() }
        return world
    }

    static func runtime(_ service: ServiceName) -> ServiceRuntime {
        switch service {
        case .ingress: Ingress.runtime
        case .anonymizer: Anonymizer.runtime
        case .keyVault: KeyVault.runtime
        case .matcher: Matcher.runtime
        case .merger: Merger.runtime
        case .dispatcher: Dispatcher.runtime
        case .technicianAlerter: TechnicianAlerter.runtime
        }
    }

    /// Starts one service and waits until `/health/ready` answers 200.
    func startService(_ service: ServiceName) async throws {
        let shutdown = ShutdownSwitch()
        let (task, adminPort) = try launch(service, environment: environment[service]!, shutdown: shutdown)
        tasks.withLock { $0[service] = task }
        switches.withLock { $0[service] = shutdown }
        let port = try await waitUntilReady(service, adminPort: adminPort)
        adminPorts.withLock { $0[service] = port }
    }

    /// Starts one more replica of `service` with its own HTTP and admin ports (the same
    /// database role, keys and broker, as replicas of a deployment share them), waits until
    /// it is ready and returns its HTTP base URL and admin port. It stops with the world.
    func startReplica(of service: ServiceName) async throws -> (api: URL, adminPort: Int) {
        let httpPort = try freePort()
        var settings = environment[service]!
        settings["VEIL_HTTP_PORT"] = String(httpPort)
        let (task, adminPort) = try launch(service, environment: settings, shutdown: ShutdownSwitch())
        replicas.withLock { $0.append((service, task)) }
        let port = try await waitUntilReady(service, adminPort: adminPort)
        return (URL(string: "http://127.0.0.1:\(httpPort)")!, port)
    }

    /// The admin port a starting service reports once it listens.
    private final class AdminPort: Sendable {
        let port = Mutex<Int>(0)
    }

    private func launch(_ service: ServiceName, environment: [String: String], shutdown: ShutdownSwitch) throws
        -> (Task<Void, any Error>, AdminPort) {
        let configuration = try ServiceConfiguration.load(service: service, environment: environment)
        let adminPort = AdminPort()
        let logger = logs.logger(service)
        let task = Task {
            try await Self.runtime(service).run(configuration: configuration, logger: logger, shutdown: shutdown) { port in
                adminPort.port.withLock { $0 = port }
            }
        }
        return (task, adminPort)
    }

    private func waitUntilReady(_ service: ServiceName, adminPort: AdminPort) async throws -> Int {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            let port = adminPort.port.withLock { $0 }
            if port > 0, let (_, response) = try? await URLSession.shared.boundedData(for: URLRequest(url: URL(string: "http://127.0.0.1:\(port)/health/ready")!, timeoutInterval: 10)),
               response.statusCode == 200 {
                return port
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw DatabaseError(code: "test.not_ready", reason: "\(service.rawValue) did not become ready")
    }

    /// The service's `/metrics` exposition.
    func metrics(_ service: ServiceName) async throws -> String {
        try await metrics(adminPort: try #require(adminPorts.withLock { $0[service] }))
    }

    /// The `/metrics` exposition on an admin port (a replica's, from `startReplica`).
    func metrics(adminPort port: Int) async throws -> String {
        let (body, _) = try await URLSession.shared.boundedData(for: URLRequest(url: URL(string: "http://127.0.0.1:\(port)/metrics")!))
        return String(decoding: body, as: UTF8.self)
    }

    func waitForIngress() async throws {
        for _ in 0..<100 {
            if let (_, response) = try? await URLSession.shared.boundedData(for: URLRequest(url: ingressURL.appendingPathComponent("v1/inquiries/none"), timeoutInterval: 10)),
               response.statusCode == 404 { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw DatabaseError(code: "test.not_ready", reason: "ingress API not listening")
    }

    /// Stops one service abruptly (its task is cancelled: no graceful drain). A service
    /// that has not returned a minute after being cancelled is a defect: the test fails
    /// naming it and showing its last log lines (which parts of its service group
    /// finished), instead of suspending the whole test run with it.
    func kill(_ service: ServiceName) async {
        switches.withLock { _ = $0.removeValue(forKey: service) }
        guard let task = tasks.withLock({ $0.removeValue(forKey: service) }) else { return }
        task.cancel()
        if await !finishes(within: .seconds(60), { _ = await task.result }) {
            recordStuck(service, "did not stop within 60 s of being cancelled")
        }
    }

    private func recordStuck(_ service: ServiceName, _ what: String) {
        let own = logs.all.filter { $0.contains("\"service\":\"\(service.rawValue)\"") }.suffix(40)
        Issue.record("\(service.rawValue) \(what); its last log lines:\n\(own.joined(separator: "\n"))")
    }

    /// Stops one service as SIGTERM does (graceful: parts in reverse order, the stage
    /// finishes and commits its batch). Returns whether it stopped within `limit`; the
    /// test fails, naming it, if not.
    @discardableResult
    func shutDown(_ service: ServiceName, within limit: Duration = .seconds(60)) async -> Bool {
        guard let task = tasks.withLock({ $0.removeValue(forKey: service) }),
              let shutdown = switches.withLock({ $0.removeValue(forKey: service) }) else { return false }
        await shutdown.shutDown()
        if await !finishes(within: limit, { _ = await task.result }) {
            recordStuck(service, "did not shut down within \(limit)")
            task.cancel()
            return false
        }
        return true
    }

    func stop() async {
        let extra = replicas.withLock { replicas in
            defer { replicas.removeAll() }
            return replicas
        }
        for (service, task) in extra {
            task.cancel()
            if await !finishes(within: .seconds(60), { _ = await task.result }) {
                recordStuck(service, "(an extra replica) did not stop within 60 s of being cancelled")
            }
        }
        for service in tasks.withLock({ Array($0.keys) }) { await kill(service) }
        try? FileManager.default.removeItem(at: keys.url)
    }

    // MARK: Acting as the provider, devices and the downstream provider

    var client: IngressClient { IngressClient(baseURL: ingressURL) }

    /// Exports a customer CSV as the first provider would (`veilctl upstream export`).
    func export(csv: String) async throws -> UpstreamExporter.Summary {
        var quiet = Logger(label: "test")
        quiet.logLevel = .error
        let producer = try KafkaProducer(configuration: ProducerConfiguration(kafka: kafkaConfiguration), logger: quiet)
        let codec = EnvelopeCodec(identity: try keys.identity("upstream-exporter"), directory: try keys.directoryStore())
        let key = try keys.secret(party: KeyFolder.providerParty, name: KeyFolder.pseudonymIDKey).current!
        var exporter = UpstreamExporter(codec: codec, producer: producer, pseudonymKey: key, policy: ExportPolicy())
        exporter.batchSize = 100
        let summary = try await exporter.export(csv: Array(csv.utf8))
        await producer.close()
        return summary
    }

    var kafkaConfiguration: KafkaConfiguration { KafkaConfiguration(bootstrapServers: cluster.bootstrapServers, clientID: "test") }

    /// Waits until the vault filed `count` records.
    func waitUntilFiled(_ count: Int) async throws {
        for _ in 0..<300 {
            if try await adminCount("SELECT count(*) FROM key_vault.filed_records") >= count { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw DatabaseError(code: "test.timeout", reason: "records not filed")
    }

    func adminCount(_ sql: String) async throws -> Int {
        try await Self.withAdmin(admin) { client in
            try await client.query(PostgresQuery(unsafeSQL: sql)).collect().first?.decode(Int.self) ?? 0
        }
    }

    /// Reads every message of `topics` from the beginning until `count` arrived, or `idle`
    /// passed without one after the first (`firstWait` before it), or `timeout`.
    func readAll(_ topics: [String], count: Int = .max, idle: Duration = .seconds(3), firstWait: Duration? = nil,
                 timeout: Duration = .seconds(90)) async throws -> [KafkaMessage] {
        var quiet = Logger(label: "test")
        quiet.logLevel = .error
        var configuration = ConsumerConfiguration(kafka: kafkaConfiguration, groupID: "test.\(UUID().uuidString.prefix(8))", topics: topics)
        configuration.offsetReset = .earliest
        let consumer = try KafkaConsumer(configuration: configuration, logger: quiet)
        let last = Mutex<ContinuousClock.Instant?>(nil)
        let started = ContinuousClock.now
        let firstWait = firstWait ?? timeout
        let watchdog = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(100))
                let now = ContinuousClock.now
                let quiet = last.withLock { $0 }.map { now - $0 > idle } ?? (now - started > firstWait)
                if quiet || now - started > timeout { consumer.stopReading(); return }
            }
        }
        var messages: [KafkaMessage] = []
        while messages.count < count, let batch = try await consumer.nextBatch() {
            last.withLock { $0 = .now }
            messages += batch
            consumer.markProcessed(batch)
        }
        watchdog.cancel()
        await consumer.close()
        return messages
    }

    /// The insights on `veil.insights.v1`, opened with the demo provider's key.
    func insights(count: Int, idle: Duration = .seconds(20), timeout: Duration = .seconds(90)) async throws -> [Insight] {
        let reader = InsightReader(identity: try keys.identity("provider-demo"), directory: try keys.directoryStore())
        return try await readAll([Topic.insights.name], count: count, idle: idle, timeout: timeout).map { message in
            try reader.read(message.value, topic: message.topic,
                            receivedAt: Date(timeIntervalSince1970: Double(message.timestampMilliseconds) / 1000))
        }
    }

    /// The first column of every row, as text.
    func adminStrings(_ sql: String) async throws -> [String] {
        try await Self.withAdmin(admin) { client in
            var values: [String] = []
            for try await value in try await client.query(PostgresQuery(unsafeSQL: sql)).decode(String.self) { values.append(value) }
            return values
        }
    }

    static func withAdmin<T: Sendable>(_ admin: DatabaseConfiguration, _ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        var quiet = Logger(label: "test")
        quiet.logLevel = .error
        let client = PostgresClient(configuration: admin.clientConfiguration, backgroundLogger: quiet)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }

    /// Runs `body` connected as `service`'s own role.
    func asRole<T: Sendable>(_ service: ServiceName, _ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        try await Self.withAdmin(roles[service]!, body)
    }
}

/// Whether `body` returns within `limit`. Does not wait for a `body` that does not:
/// it is left running, so a stuck await cannot stall the caller.
func finishes(within limit: Duration, _ body: @escaping @Sendable () async -> Void) async -> Bool {
    let (outcome, continuation) = AsyncStream<Bool>.makeStream(bufferingPolicy: .bufferingOldest(1))
    let work = Task {
        await body()
        continuation.yield(true)
    }
    let timer = Task {
        try? await Task.sleep(for: limit)
        continuation.yield(false)
    }
    var iterator = outcome.makeAsyncIterator()
    let finished = await iterator.next() ?? false
    timer.cancel()
    _ = work
    return finished
}

/// A TCP port nobody listens on right now, for a server a test starts itself, chosen
/// below the kernel's ephemeral range (32768–60999 here). A port the kernel handed out
/// (bind to 0) can be handed out again, before the test's server binds it, to one of the
/// mock brokers or clients that other tests start at the same time; a test's HTTP request
/// would then reach a server that never answers HTTP. (Suspected when CI runs hung; the
/// hang's cause turned out to be a database pool closed under running queries, see
/// docs/ARCHITECTURE.md §4, but the rule stands.)
func freePort() throws -> Int {
    for _ in 0..<200 {
        let candidate = Int.random(in: 20_000..<32_000)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(candidate).bigEndian
        let length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 }
        }
        if bound { return candidate }
    }
    throw DatabaseError(code: "test.port", reason: "no free port below the ephemeral range")
}
