import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import VeilContracts
import VeilEnvelope
import VeilKafka
import VeilStore

/// What a service's code gets to build its handler: its configuration, database,
/// producer, metrics and logger.
public struct ServiceContext: Sendable {
    public let configuration: ServiceConfiguration
    public let database: Database
    public let producer: KafkaProducer
    /// The service's identity and the key directory: seals, signs, verifies, opens.
    public let codec: EnvelopeCodec
    public let metrics: ServiceMetrics
    public let logger: Logger
    /// Keys the key-vault granted to this service (empty unless it follows `veil.keys.grants.v1`).
    public let grants: GrantedKeys
}

/// How one of the seven executables is put together. Each `main.swift` names its
/// service, its migrations and its handler; the runtime does the rest:
/// configuration, JSON logs, metrics, health, topics, migrations, the stage loop
/// and graceful shutdown on SIGTERM.
public struct ServiceRuntime: Sendable {
    public var service: ServiceName
    public var migrations: [Migration]
    /// Builds what the service runs once topics exist and migrations ran: its stage
    /// handler, and services that run beside the stage (ingress's HTTP API, the
    /// key-vault's grant publisher), which stop before the stage on shutdown.
    public var build: @Sendable (ServiceContext) async throws -> ServiceParts
    /// Other services' schemas this one reads by a grant (from its configuration): its
    /// connections search them after its own, so its prepared statements name tables unqualified.
    public var readsSchemas: @Sendable (ServiceConfiguration) throws(ConfigurationError) -> [String]

    public init(service: ServiceName, migrations: [Migration] = [],
                readsSchemas: @escaping @Sendable (ServiceConfiguration) throws(ConfigurationError) -> [String] = { _ in [] },
                build: @escaping @Sendable (ServiceContext) async throws -> ServiceParts) {
        self.service = service
        self.migrations = migrations
        self.readsSchemas = readsSchemas
        self.build = build
    }

    /// A service whose only work is its stage handler.
    public init(service: ServiceName, migrations: [Migration] = [],
                readsSchemas: @escaping @Sendable (ServiceConfiguration) throws(ConfigurationError) -> [String] = { _ in [] },
                makeHandler: @escaping @Sendable (ServiceContext) async throws -> any MessageHandler) {
        self.init(service: service, migrations: migrations, readsSchemas: readsSchemas) { context in
            ServiceParts(handler: try await makeHandler(context))
        }
    }

    /// Runs the service until SIGTERM or SIGINT; exits non-zero on a configuration error.
    public func main() async -> Never {
        let configuration: ServiceConfiguration
        do {
            configuration = try ServiceConfiguration.load(service: service)
        } catch {
            FileHandle.standardError.write(Data("\(service.rawValue): \(error.description)\n".utf8))
            exit(2)
        }
        let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
        let service = self.service
        LoggingSystem.bootstrap { JSONLogHandler(label: $0, service: service.rawValue, level: level) }
        let logger = Logger(label: "veil.\(service.rawValue)")
        do {
            try await run(configuration: configuration, logger: logger)
            exit(0)
        } catch {
            logger.critical("service failed", metadata: ["error": "\(safeDescription(error))"])
            exit(1)
        }
    }

    /// Builds the service group and runs it. Shutdown goes in reverse order: the admin
    /// server, then the stage (stop reading, finish the batch, commit, leave the group),
    /// then the producer (flush) and the database.
    /// - Parameter shutdown: lets the caller stop the service gracefully, as SIGTERM does
    ///   (a host or a test running several services in one process).
    public func run(configuration: ServiceConfiguration, logger: Logger, shutdown: ShutdownSwitch? = nil,
                    onAdminRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let metrics = ServiceMetrics()
        let keys = KeyFolder(url: URL(fileURLWithPath: configuration.keysDirectory))
        let codec: EnvelopeCodec
        do {
            codec = EnvelopeCodec(identity: try keys.identity(service.rawValue), directory: try keys.directoryStore(),
                                  configuration: EnvelopeConfiguration(environment: ProcessInfo.processInfo.environment))
        } catch {
            throw ConfigurationError(variable: "VEIL_KEYS_DIR", reason: "cannot load keys: \(error.description)")
        }
        let database = try Database(configuration: configuration.database,
                                    schema: configuration.setting("VEIL_DATABASE_SCHEMA") ?? service.schema,
                                    alsoSearching: try readsSchemas(configuration), logger: logger)
        let producer = try KafkaProducer(configuration: ProducerConfiguration(kafka: configuration.kafka), logger: logger)
        let grants = GrantedKeys()
        let context = ServiceContext(configuration: configuration, database: database, producer: producer,
                                     codec: codec, metrics: metrics, logger: logger, grants: grants)
        var followers: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: try KeyDirectoryFollower.make(kafka: configuration.kafka, service: service,
                                                         directory: codec.directory, logger: logger)),
        ]
        if service.follows.contains(.keysGrants) {
            followers.append(.init(service: try GrantedKeys.follower(kafka: configuration.kafka, service: service,
                                                                    codec: codec, grants: grants, logger: logger)))
        }
        let started = StartupState()
        let pipeline = Pipeline(runtime: self, context: context, started: started)
        let adminServer = AdminServer(
            host: configuration.adminHost, port: configuration.adminPort,
            checks: [
                ReadinessCheck("postgres") { await database.isReachable() },
                ReadinessCheck("kafka") { await producer.isConnected() },
                ReadinessCheck("migrations") { started.isDone },
                ReadinessCheck("parts") { await started.partsReady() },
            ],
            metrics: metrics, logger: logger, onRunning: onAdminRunning)
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [
                .init(service: producer),
            ] + followers + [
                .init(service: pipeline),
                .init(service: adminServer),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        await shutdown?.attach(group)
        logger.info("service starting", metadata: ["kafka": "\(configuration.kafka.bootstrapServers)",
                                                   "database": "\(configuration.database)",
                                                   "admin.port": "\(configuration.adminPort)"])
        // The database pool outlives every part that queries it, whether the service stops
        // gracefully (SIGTERM: the group stops its parts in reverse order) or is cancelled (all
        // parts at once). Inside the group, a cancelled service shut its pool down while its
        // parts were still querying, and with postgres-nio 1.33.2 a lease that races the pool's
        // shutdown can wait for ever (docs/ARCHITECTURE.md §4; seen as a dispatcher whose
        // clock never returned, about one stop in twenty-five).
        let pool = Task { try await database.run() }
        let outcome: Result<Void, any Error>
        do {
            try await group.run()
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        pool.cancel()
        _ = await pool.result
        try outcome.get()
        logger.info("service stopped")
    }

    /// The topics a service touches, with the dead-letter topics of those it reads.
    func topics(_ configuration: ServiceConfiguration) -> [TopicSpecification] {
        let topics = Set(service.consumes + service.follows + service.produces + service.stageTopics.map(\.deadLetter))
        return topics.sorted { $0.name < $1.name }.map {
            TopicSpecification(name: $0.name, partitions: configuration.topicPartitions,
                               replicationFactor: configuration.topicReplication, config: $0.config)
        }
    }
}

/// What a service runs: its stage handler, any services beside it, and what else
/// `/health/ready` must wait for (e.g. ingress's reader of lookup replies being assigned
/// its partitions, so no lookup is answered before its reply could be read).
public struct ServiceParts: Sendable {
    public var handler: any MessageHandler
    public var services: [any Service]
    public var readiness: [ReadinessCheck]

    public init(handler: any MessageHandler, services: [any Service] = [], readiness: [ReadinessCheck] = []) {
        self.handler = handler
        self.services = services
        self.readiness = readiness
    }
}

/// Set once topics exist and migrations ran; `/health/ready` waits for it, and for the
/// checks the service's parts added.
final class StartupState: Sendable {
    private let done = Atomic<Bool>(false)
    private let partChecks = Mutex<[ReadinessCheck]>([])
    var isDone: Bool { done.load(ordering: .acquiring) }
    func markDone() { done.store(true, ordering: .releasing) }
    func add(_ checks: [ReadinessCheck]) { partChecks.withLock { $0 += checks } }

    /// Whether every check the parts added passes.
    func partsReady() async -> Bool {
        for check in partChecks.withLock({ $0 }) where !(await check.check()) { return false }
        return true
    }
}

/// Start-up work, then the stage loop: topics, migrations, join the consumer group.
struct Pipeline: Service {
    let runtime: ServiceRuntime
    let context: ServiceContext
    let started: StartupState

    func run() async throws {
        let configuration = context.configuration, logger = context.logger
        if configuration.createTopics {
            try await retrying("create topics", logger: logger) {
                try await KafkaAdmin(configuration: configuration.kafka, logger: logger).ensureTopics(runtime.topics(configuration))
            }
        }
        try await retrying("migrate", logger: logger) { try await context.database.migrate(runtime.migrations) }
        let parts = try await runtime.build(context)
        started.add(parts.readiness)
        let services = parts.services
        let handler = parts.handler
        if services.isEmpty {
            try await runStage(handler)
            return
        }
        // The side services run as a child group: on shutdown they stop first (no new
        // requests), then the stage finishes its batch.
        try await withThrowingTaskGroup(of: Void.self) { group in
            let sideGroup = ServiceGroup(configuration: ServiceGroupConfiguration(
                services: services.map { .init(service: $0) }, logger: logger))
            group.addTask { try await sideGroup.run() }
            group.addTask { try await runStage(handler) }
            try await group.next()
            try await group.next()
        }
    }

    private func runStage<Handler: MessageHandler>(_ handler: Handler) async throws {
        let configuration = context.configuration, logger = context.logger
        var consumerConfiguration = ConsumerConfiguration(kafka: configuration.kafka(consuming: runtime.service.stageTopics),
                                                          groupID: runtime.service.consumerGroup,
                                                          topics: runtime.service.stageTopics.map(\.name))
        consumerConfiguration.maxBatchSize = configuration.stageMaxBatch
        let consumer = try KafkaConsumer(configuration: consumerConfiguration, logger: logger)
        started.markDone()
        logger.info("service ready", metadata: ["group": "\(runtime.service.consumerGroup)",
                                                "topics": "\(runtime.service.stageTopics.map(\.name))"])
        let stage = StageRunner(name: runtime.service.rawValue, consumer: consumer, producer: context.producer,
                                handler: handler, metrics: context.metrics, maxAttempts: configuration.maxAttempts,
                                logger: logger)
        try await stage.run()
    }

    /// Dependencies may come up after the service (compose, Kubernetes): keep trying
    /// until they answer or shutdown is requested.
    private func retrying(_ what: String, logger: Logger, _ body: () async throws -> Void) async throws {
        var attempt = 0
        while true {
            do {
                try await body()
                return
            } catch {
                attempt += 1
                if attempt >= 60 || Task.isCancelled || Task.isShuttingDownGracefully { throw error }
                logger.warning("start-up step failed; retrying", metadata: ["step": "\(what)", "attempt": "\(attempt)",
                                                                           "error": "\(safeDescription(error))"])
                try await Task.sleep(for: .seconds(1))
            }
        }
    }
}

/// Shuts a running service down gracefully, as SIGTERM does: its parts stop in reverse
/// order, the stage finishes and commits its batch, live streams end. For a process that
/// runs several services (tests) or embeds one, where a signal would stop them all.
public final class ShutdownSwitch: Sendable {
    private let state = Mutex<(group: ServiceGroup?, requested: Bool)>((nil, false))

    public init() {}

    func attach(_ group: ServiceGroup) async {
        let requested = state.withLock { state in
            state.group = group
            return state.requested
        }
        if requested { await group.triggerGracefulShutdown() }
    }

    /// Requests the shutdown; a service still starting shuts down as soon as it can.
    public func shutDown() async {
        let group = state.withLock { state in
            state.requested = true
            return state.group
        }
        await group?.triggerGracefulShutdown()
    }
}
