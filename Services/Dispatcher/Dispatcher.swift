import Foundation
import Logging
import ServiceLifecycle
import VeilService
import VeilStore

/// The enterprise service desk's dispatcher: decides what a service request needs
/// (`DispatchRules`), picks a technician (`AssignmentEngine`), and keeps the queue
/// moving (offers that time out, requests that wait too long).
public enum Dispatcher {
    public static let migrations: [Migration] = AssignmentEngine.migrations + ServiceRequestIntake.migrations + ChatDesk.migrations
        + AgentAccounts.migrations + ChannelUpgrades.migrations + SMSOutbox.migrations

    /// The dispatcher process: the service-request stage beside the queue clock and the agent console.
    public static let runtime = ServiceRuntime(service: .dispatcher, migrations: migrations) { context in
        let settings = try DispatcherSettings(context.configuration)
        let engine = AssignmentEngine(database: context.database, policy: settings.policy, logger: context.logger)
        let live = LiveNotifications(database: context.database, channel: "veil_console", heartbeat: .seconds(5), logger: context.logger)
        let desk = ChatDesk(engine: engine, codec: context.codec, live: live, logger: context.logger)
        // Publishes what the console writes to the outbox (agents' messages, form requests, closed chats).
        let relay = OutboxRelay(database: context.database, producer: context.producer, batchSize: 100,
                                idleInterval: .milliseconds(50), logger: context.logger)
        let outbox = SMSOutbox(database: context.database, provider: settings.sms, desk: desk, maxAttempts: settings.smsMaxAttempts,
                               backoff: SMSOutbox.doubling(from: settings.smsRetryBase), metrics: context.metrics, logger: context.logger)
        let upgrades = ChannelUpgrades(desk: desk, sms: outbox, linkBase: settings.linkBase, linkLifetime: settings.linkLifetime)
        let intake = ServiceRequestIntake(engine: engine, rules: settings.rules, chat: desk, upgrades: upgrades, logger: context.logger)
        let clock = DispatchClock(engine: engine, metrics: context.metrics, logger: context.logger) { offers in
            for offer in offers {
                // Agents' offers have no alert: their consoles show them.
                guard let alert = try await intake.messages.alert(for: offer, codec: context.codec) else {
                    await desk.wakeConsoles()
                    continue
                }
                _ = try await context.producer.send(alert)
            }
        }
        let console = ListeningPort("console")
        let agentConsole = AgentConsole(desk: desk, accounts: AgentAccounts(engine: engine, logger: context.logger), live: live, context: context,
                                   port: settings.consolePort, adminToken: settings.adminToken, sessionLifetime: settings.sessionLifetime,
                                   secureCookie: settings.secureCookie, upgrades: upgrades, inboundSMSToken: settings.inboundSMSToken,
                                   onRunning: { console.listening(on: $0) })
        return ServiceParts(handler: ConcurrentEnvelopeStage(codec: context.codec, handler: intake, concurrency: 16),
                            services: [clock, live, agentConsole, SMSRelay(outbox: outbox), relay], readiness: [console.check])
    }
}

/// Dispatcher settings, validated at start-up.
public struct DispatcherSettings: Sendable {
    public var policy = AssignmentPolicy()
    public var rules = DispatchRules.standard
    /// The agent console's port (`VEIL_DISPATCHER_HTTP_PORT`).
    public var consolePort = 8082
    public var adminToken: String?
    public var sessionLifetime: Duration = .seconds(12 * 3600)
    public var secureCookie = false
    /// The SMS channel: `VEIL_SMS_PROVIDER` = `outbox` (development: files in `VEIL_SMS_OUTBOX_DIR`) or `http` (a gateway).
    public var sms: any SMSProvider = OutboxSMSProvider(directory: URL(fileURLWithPath: ".veil/sms-outbox"))
    public var inboundSMSToken: String?
    public var linkBase = "https://app.veil.example/link#"
    public var linkLifetime: Duration = .seconds(900)
    /// SMS retries: tries before giving up, and the first pause (doubling, at most 5 minutes).
    public var smsMaxAttempts = 8
    public var smsRetryBase: Duration = .seconds(2)

    public init(_ configuration: ServiceConfiguration) throws {
        consolePort = try configuration.integer("VEIL_DISPATCHER_HTTP_PORT", in: 0...65535)
        adminToken = configuration.setting("VEIL_DISPATCHER_ADMIN_TOKEN")
        sessionLifetime = .seconds(3600 * (try configuration.integer("VEIL_CONSOLE_SESSION_HOURS", in: 1...720)))
        secureCookie = configuration.setting("VEIL_CONSOLE_SECURE_COOKIE") == "true"
        inboundSMSToken = configuration.setting("VEIL_SMS_INBOUND_TOKEN")
        linkBase = configuration.setting("VEIL_CHANNEL_LINK_BASE") ?? linkBase
        linkLifetime = .seconds(try configuration.integer("VEIL_CHANNEL_LINK_TTL_SECONDS", in: 30...604_800))
        smsMaxAttempts = try configuration.integer("VEIL_SMS_MAX_ATTEMPTS", in: 1...50)
        smsRetryBase = .milliseconds(try configuration.integer("VEIL_SMS_RETRY_BASE_MS", in: 10...600_000))
        switch configuration.setting("VEIL_SMS_PROVIDER") ?? "outbox" {
        case "outbox":
            sms = OutboxSMSProvider(directory: URL(fileURLWithPath: configuration.setting("VEIL_SMS_OUTBOX_DIR") ?? ".veil/sms-outbox"))
        case "http":
            guard let url = configuration.setting("VEIL_SMS_GATEWAY_URL"), URL(string: url)?.scheme?.hasPrefix("http") == true else {
                throw ConfigurationError(variable: "VEIL_SMS_GATEWAY_URL", reason: "must be the gateway's http(s) URL when VEIL_SMS_PROVIDER=http")
            }
            sms = HTTPSMSGateway(url: url, token: configuration.setting("VEIL_SMS_GATEWAY_TOKEN"))
        case let other:
            throw ConfigurationError(variable: "VEIL_SMS_PROVIDER", reason: "must be outbox or http, not \(other)")
        }
        policy.reservationTimeout = .seconds(try configuration.integer("VEIL_DISPATCH_RESERVATION_TIMEOUT_SECONDS", in: 1...86_400))
        policy.escalateAfter = .seconds(try configuration.integer("VEIL_DISPATCH_ESCALATE_AFTER_SECONDS", in: 1...604_800))
        policy.agingStep = .seconds(try configuration.integer("VEIL_DISPATCH_AGING_SECONDS", in: 1...604_800))
        for (name, keyPath) in [("VEIL_DISPATCH_LOAD_WEIGHT", \AssignmentPolicy.loadWeight), ("VEIL_DISPATCH_REGION_WEIGHT", \.regionWeight)] {
            guard let value = configuration.setting(name).flatMap(Double.init), value >= 0, value <= 100 else {
                throw ConfigurationError(variable: name, reason: "must be a number from 0 to 100")
            }
            policy[keyPath: keyPath] = value
        }
        if let file = configuration.setting("VEIL_DISPATCH_RULES_FILE") {
            do {
                rules = try DispatchRules.load(from: URL(fileURLWithPath: file))
            } catch {
                throw ConfigurationError(variable: "VEIL_DISPATCH_RULES_FILE", reason: "cannot read the rules: \(error)")
            }
        }
    }
}

/// Once a second: time out unanswered offers and offer those requests onwards,
/// escalate requests that waited too long, offer waiting requests to technicians who
/// became free; every ten seconds, publish the queue statistics as gauges.
public struct DispatchClock: Service {
    let engine: AssignmentEngine
    let metrics: ServiceMetrics
    let logger: Logger
    let interval: Duration
    /// Publishes the alerts of the offers a tick made.
    let publish: @Sendable ([Reservation]) async throws -> Void

    public init(engine: AssignmentEngine, metrics: ServiceMetrics, logger: Logger, interval: Duration = .seconds(1),
                publish: @escaping @Sendable ([Reservation]) async throws -> Void = { _ in }) {
        self.engine = engine
        self.metrics = metrics
        self.logger = logger
        self.interval = interval
        self.publish = publish
    }

    public func run() async throws {
        // Stops at a graceful shutdown (SIGTERM) as well as on cancellation.
        await cancelWhenGracefulShutdown { await self.tick() }
    }

    private func tick() async {
        var ticks = 0
        while !Task.isCancelled {
            do {
                try await publish(try await engine.expireReservations())
                let escalated = try await engine.escalate()
                if !escalated.isEmpty { logger.warning("requests escalated", metadata: ["count": "\(escalated.count)"]) }
                try await publish(try await engine.offerWaiting())
                // The statistics scan the request and reservation tables: every 10th tick is enough for gauges.
                ticks += 1
                guard ticks % 10 == 1 else { try? await Task.sleep(for: interval); continue }
                let s = try await engine.statistics()
                let gauges: [(String, String, Double)] = [
                    ("dispatch_waiting", "Service requests waiting for a technician", Double(s.waiting)),
                    ("dispatch_longest_wait_seconds", "How long the oldest waiting request has waited", s.longestWaitSeconds),
                    ("dispatch_escalated", "Escalated requests not yet assigned", Double(s.escalated)),
                    ("dispatch_offered", "Requests with an open offer", Double(s.offered)),
                    ("dispatch_assigned", "Requests assigned and not yet completed", Double(s.assigned)),
                    ("dispatch_reservations_accepted", "Offers accepted (all time)", Double(s.accepted)),
                    ("dispatch_reservations_declined", "Offers declined (all time)", Double(s.declined)),
                    ("dispatch_reservations_timed_out", "Offers that timed out (all time)", Double(s.timedOut)),
                    ("dispatch_average_acceptance_seconds", "Mean time from offer to acceptance", s.averageAcceptanceSeconds),
                ]
                for (name, help, value) in gauges { metrics.set(name, help: help, to: value) }
            } catch {
                logger.warning("dispatch clock tick failed", metadata: ["error": "\(safeDescription(error))"])
            }
            try? await Task.sleep(for: interval)
        }
    }
}
