import Foundation
import VeilContracts
import VeilKafka
import VeilStore

/// One environment variable a service reads. The list in `ServiceConfiguration.variables`
/// is the single source for the README, docker-compose and Kubernetes checks.
public struct ConfigurationVariable: Sendable, Hashable {
    public let name: String
    public let required: Bool
    public let defaultValue: String?
    public let help: String
    /// Holds a secret: its value is never printed.
    public let secret: Bool

    public init(_ name: String, required: Bool = false, default defaultValue: String? = nil, secret: Bool = false, _ help: String) {
        self.name = name
        self.required = required
        self.defaultValue = defaultValue
        self.help = help
        self.secret = secret
    }
}

/// A configuration problem, naming the variable at fault. Services print it and exit non-zero.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public let variable: String
    public let reason: String
    public var description: String { "configuration error: \(variable) \(reason)" }

    public init(variable: String, reason: String) {
        self.variable = variable
        self.reason = reason
    }
}

/// Everything a Veil service needs to start, read from the environment and validated.
public struct ServiceConfiguration: Sendable {
    public var service: ServiceName
    public var kafka: KafkaConfiguration
    public var database: DatabaseConfiguration
    public var adminHost: String
    public var adminPort: Int
    public var logLevel: String
    public var topicPartitions: Int32
    public var topicReplication: Int32
    /// Attempts before a message that keeps failing goes to the dead-letter topic.
    public var maxAttempts: Int
    /// The most messages a stage takes from its consumer at once (`VEIL_STAGE_MAX_BATCH`).
    public var stageMaxBatch: Int
    /// Create missing topics at start-up (off where topics are managed elsewhere).
    public var createTopics: Bool
    /// Where the service's keys and the signed key directory are mounted.
    public var keysDirectory: String
    /// `fetch.wait.max.ms` for consumers of topics a caller waits on (`KAFKA_REPLY_FETCH_WAIT_MAX_MS`).
    public var replyFetchWaitMilliseconds: Int?
    /// The environment it was read from, for the service-specific settings below.
    public var environment: [String: String] = [:]

    /// The Kafka settings for a consumer of `topics`: with the shorter reply fetch wait
    /// when a caller waits on any of them and `KAFKA_REPLY_FETCH_WAIT_MAX_MS` is set.
    public func kafka(consuming topics: [Topic]) -> KafkaConfiguration {
        var kafka = self.kafka
        if let replyFetchWaitMilliseconds, topics.contains(where: \.callerWaits) {
            kafka.properties["fetch.wait.max.ms"] = String(replyFetchWaitMilliseconds)
        }
        return kafka
    }

    /// A service-specific setting: its value, or its default from `variables`.
    public func setting(_ name: String) -> String? {
        let v = environment[name] ?? Self.variables.first { $0.name == name }?.defaultValue
        return v?.isEmpty == true ? nil : v
    }

    /// An integer setting within `range`.
    public func integer(_ name: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let n = setting(name).flatMap({ Int($0) }), range.contains(n) else {
            throw ConfigurationError(variable: name, reason: "must be an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return n
    }

    /// A boolean setting.
    public func boolean(_ name: String) throws(ConfigurationError) -> Bool {
        switch setting(name)?.lowercased() {
        case "true", "1", "yes": return true
        case "false", "0", "no": return false
        default: throw ConfigurationError(variable: name, reason: "must be true or false")
        }
    }

    /// The variables every service reads.
    public static let variables: [ConfigurationVariable] = [
        ConfigurationVariable("KAFKA_BROKERS", required: true, "Kafka bootstrap servers, host:port[,host:port]"),
        ConfigurationVariable("DATABASE_URL", required: true, secret: true,
                              "postgres://user:password@host:port/db[?sslmode=require] for the service's own role"),
        ConfigurationVariable("VEIL_DATABASE_SCHEMA",
                              "The service's schema (default: its name, e.g. key_vault); its role must own it"),
        ConfigurationVariable("VEIL_DATABASE_MAX_CONNECTIONS", default: "8",
                              "Connections each replica's PostgreSQL pool may open (mind max_connections across replicas)"),
        ConfigurationVariable("VEIL_ADMIN_HOST", default: "0.0.0.0", "Address of the health and metrics server"),
        ConfigurationVariable("VEIL_ADMIN_PORT", default: "9090", "Port of /health/live, /health/ready and /metrics"),
        ConfigurationVariable("VEIL_LOG_LEVEL", default: "info", "trace, debug, info, notice, warning, error or critical"),
        ConfigurationVariable("VEIL_TOPIC_PARTITIONS", default: "12", "Partitions of topics created at start-up"),
        ConfigurationVariable("VEIL_TOPIC_REPLICATION", default: "1", "Replication factor of topics created at start-up"),
        ConfigurationVariable("VEIL_MAX_ATTEMPTS", default: "5", "Attempts before a failing message goes to <topic>.dlq"),
        ConfigurationVariable("VEIL_STAGE_MAX_BATCH", default: "256",
                              "Most messages a stage takes at once; a stage that falls behind takes everything queued up to this"),
        ConfigurationVariable("VEIL_CREATE_TOPICS", default: "true", "Create missing topics at start-up"),
        ConfigurationVariable("VEIL_KEYS_DIR", required: true,
                              "Folder with <service>/signing.vN.key, encryption.vN.key and key-directory.json (mounted secret)"),
        ConfigurationVariable("VEIL_ENVELOPE_MAX_BYTES", default: "1000000", "Largest envelope accepted"),
        ConfigurationVariable("VEIL_ENVELOPE_MAX_PARTS", default: "8", "Most sealed parts in one envelope"),
        ConfigurationVariable("VEIL_ENVELOPE_MAX_RECIPIENTS", default: "16", "Most recipients of one part"),
        ConfigurationVariable("VEIL_ENVELOPE_MAX_STRING_BYTES", default: "64", "Longest type, producer or key id"),
        ConfigurationVariable("VEIL_ENVELOPE_MAX_CLOCK_SKEW_SECONDS", default: "300",
                              "Allowed distance between an envelope's created-at and its Kafka timestamp"),
        // Service-specific settings.
        ConfigurationVariable("VEIL_HTTP_PORT", default: "8080", "ingress: port of the device API (/v1/...)"),
        ConfigurationVariable("VEIL_INGRESS_MAX_BODY_BYTES", default: "65536", "ingress: largest request body accepted"),
        ConfigurationVariable("VEIL_INGRESS_CLOCK_SKEW_SECONDS", default: "300",
                              "ingress: allowed distance between a device request's timestamp and now"),
        ConfigurationVariable("VEIL_INGRESS_REGION", "ingress: the region it serves, passed to the merger in the access info"),
        ConfigurationVariable("VEIL_ENROLLMENT_TOKEN", secret: true,
                              "ingress: if set, POST /v1/devices requires it in the Veil-Enrollment-Token header"),
        ConfigurationVariable("VEIL_INGRESS_ADMIN_TOKEN", secret: true,
                              "ingress: bearer token of /admin/enrollment-codes and /admin/devices/revoke (unset: those routes refuse)"),
        ConfigurationVariable("VEIL_ENROLLMENT_CODE_TTL_SECONDS", default: "900", "ingress: how long a one-time enrollment code is valid"),
        ConfigurationVariable("VEIL_POS_LOOKUP_TIMEOUT_MS", default: "2000",
                              "ingress: how long a point-of-sale lookup waits for the key-vault before answering 504 pos_vault_timeout"),
        ConfigurationVariable("VEIL_POS_PROVIDERS", default: "provider-demo",
                              "ingress: downstream providers the till transactions on veil.pos.transactions.v1 are sealed to (comma-separated)"),
        ConfigurationVariable("VEIL_VAULT_MASTER_KEY_FILE",
                              "key-vault: the master key file (base64 of 32 bytes); default <VEIL_KEYS_DIR>/key-vault/master.v1.secret"),
        ConfigurationVariable("VEIL_VAULT_KEY_REFRESH_SECONDS", default: "2",
                              "key-vault: how often replicas re-read key versions (rotations by another process)"),
        ConfigurationVariable("VEIL_RECORDS_SCHEMA", default: "key_vault",
                              "matcher: the schema holding the filed records (read-only grant on two tables)"),
        ConfigurationVariable("VEIL_MERGER_PROVIDERS", default: "provider-demo",
                              "merger: downstream providers the insights are sealed to (comma-separated key-directory parties)"),
        ConfigurationVariable("VEIL_MERGER_PUBLISH", default: "true", "merger: publish insights on veil.insights.v1"),
        ConfigurationVariable("VEIL_MERGER_SAVE", default: "true", "merger: save insights in its schema for future inquiries"),
        ConfigurationVariable("VEIL_ALERTER_HTTP_PORT", default: "8081",
                              "technician-alerter: port of the technician API (/v1/technicians/{id}/alerts, /answers)"),
        ConfigurationVariable("VEIL_DISPATCHER_HTTP_PORT", default: "8082",
                              "dispatcher: port of the agent console (/console), its admin API (/admin/agents, /admin/channel-upgrades) and the SMS webhook (/sms/inbound)"),
        ConfigurationVariable("VEIL_DISPATCHER_ADMIN_TOKEN", secret: true,
                              "dispatcher: bearer token of /admin/agents and /admin/channel-upgrades (unset: those routes refuse)"),
        ConfigurationVariable("VEIL_CONSOLE_SESSION_HOURS", default: "12", "dispatcher: how long an agent's console sign-in lasts"),
        ConfigurationVariable("VEIL_CONSOLE_SECURE_COOKIE", default: "false",
                              "dispatcher: mark the console's session cookie Secure (set true behind TLS)"),
        ConfigurationVariable("VEIL_SMS_PROVIDER", default: "outbox",
                              "dispatcher: how SMS (channel links, agents' texts) are sent: outbox (development: JSON files) or http (a gateway)"),
        ConfigurationVariable("VEIL_SMS_OUTBOX_DIR", default: ".veil/sms-outbox", "dispatcher: the development SMS outbox's directory"),
        ConfigurationVariable("VEIL_SMS_GATEWAY_URL", "dispatcher: the SMS gateway's URL (POST {to, text}) when VEIL_SMS_PROVIDER=http"),
        ConfigurationVariable("VEIL_SMS_GATEWAY_TOKEN", secret: true, "dispatcher: bearer token for the SMS gateway"),
        ConfigurationVariable("VEIL_SMS_INBOUND_TOKEN", secret: true,
                              "dispatcher: bearer token the SMS gateway's inbound webhook (POST /sms/inbound) must send (unset: refused)"),
        ConfigurationVariable("VEIL_CHANNEL_LINK_BASE", default: "https://app.veil.example/link#",
                              "dispatcher: the app link the one-time token is appended to (after #, so web servers never log it)"),
        ConfigurationVariable("VEIL_CHANNEL_LINK_TTL_SECONDS", default: "900", "dispatcher: how long an SMS channel link can be opened"),
        ConfigurationVariable("VEIL_SMS_MAX_ATTEMPTS", default: "8",
                              "dispatcher: tries per SMS before it is given up (and the chat says so)"),
        ConfigurationVariable("VEIL_SMS_RETRY_BASE_MS", default: "2000",
                              "dispatcher: pause after the first failed SMS attempt, doubling per attempt up to 5 minutes"),
        ConfigurationVariable("VEIL_DISPATCH_RULES_FILE",
                              "dispatcher: JSON rules deciding what a request needs (technician, agent, none); default: built-in rules"),
        ConfigurationVariable("VEIL_DISPATCH_RESERVATION_TIMEOUT_SECONDS", default: "60",
                              "dispatcher: how long a technician has to answer an offer before the next candidate gets it"),
        ConfigurationVariable("VEIL_DISPATCH_ESCALATE_AFTER_SECONDS", default: "600",
                              "dispatcher: a request nobody could take for this long is escalated (flagged, priority + 1)"),
        ConfigurationVariable("VEIL_DISPATCH_AGING_SECONDS", default: "300",
                              "dispatcher: waiting time that counts as one more priority level when ordering the queue"),
        ConfigurationVariable("VEIL_DISPATCH_LOAD_WEIGHT", default: "1.0", "dispatcher: ranking weight of a technician's load"),
        ConfigurationVariable("VEIL_DISPATCH_REGION_WEIGHT", default: "0.5",
                              "dispatcher: ranking weight of serving outside the technician's home region"),
        ConfigurationVariable("KAFKA_FETCH_WAIT_MAX_MS",
                              "Longest a fetch waits for data (librdkafka default 500). Real Kafka answers as soon as data arrives; librdkafka's mock cluster waits the full time, so the local stack sets 5"),
        ConfigurationVariable("KAFKA_REPLY_FETCH_WAIT_MAX_MS",
                              "KAFKA_FETCH_WAIT_MAX_MS for the consumers a caller waits on (the key-vault's stage, which answers point-of-sale lookups, and ingress's lookup replies); default: KAFKA_FETCH_WAIT_MAX_MS. Only librdkafka's mock cluster needs it (the local stack sets 1): it holds an empty fetch for the whole wait, a real broker answers when data arrives"),
        ConfigurationVariable("KAFKA_LINGER_MS", "How long the producer batches before sending (default 5)"),
        ConfigurationVariable("KAFKA_QUEUED_MAX_KBYTES",
                              "Per consumer, most kilobytes fetched ahead of processing (librdkafka default 65536). A consumer whose prefetch reaches it pauses fetching for a fixed back-off (librdkafka 2.0.2), so a consumer that falls behind in bursts stalls less with more, at the cost of memory"),
        ConfigurationVariable("KAFKA_SECURITY_PROTOCOL", "plaintext, ssl, sasl_plaintext or sasl_ssl"),
        ConfigurationVariable("KAFKA_SASL_MECHANISM", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
        ConfigurationVariable("KAFKA_SASL_USERNAME", "SASL user (one principal per service)"),
        ConfigurationVariable("KAFKA_SASL_PASSWORD", secret: true, "SASL password"),
        ConfigurationVariable("KAFKA_SSL_CA_LOCATION", "CA certificate file for the brokers' TLS"),
        ConfigurationVariable("KAFKA_SSL_CERTIFICATE_LOCATION", "Client certificate file (mutual TLS)"),
        ConfigurationVariable("KAFKA_SSL_KEY_LOCATION", "Client private key file (mutual TLS)"),
    ]

    /// librdkafka properties taken from the environment.
    /// `numbers`: for numeric properties, the range librdkafka 2.0.2 accepts.
    public static let kafkaPassThrough: [(variable: String, property: String, numbers: ClosedRange<Int>?)] = [
        ("KAFKA_FETCH_WAIT_MAX_MS", "fetch.wait.max.ms", 0...300_000),
        ("KAFKA_LINGER_MS", "linger.ms", 0...900_000),
        ("KAFKA_QUEUED_MAX_KBYTES", "queued.max.messages.kbytes", 1...2_097_151),
        ("KAFKA_SECURITY_PROTOCOL", "security.protocol", nil),
        ("KAFKA_SASL_MECHANISM", "sasl.mechanism", nil),
        ("KAFKA_SASL_USERNAME", "sasl.username", nil),
        ("KAFKA_SASL_PASSWORD", "sasl.password", nil),
        ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location", nil),
        ("KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location", nil),
        ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location", nil),
    ]

    /// Reads and validates the environment.
    /// - Throws: `ConfigurationError` naming the first missing or bad variable.
    public static func load(service: ServiceName,
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> ServiceConfiguration {
        func value(_ name: String) -> String? {
            let v = environment[name] ?? variables.first { $0.name == name }?.defaultValue
            return v?.isEmpty == true ? nil : v
        }
        func required(_ name: String) throws(ConfigurationError) -> String {
            guard let v = value(name) else { throw ConfigurationError(variable: name, reason: "is required but not set") }
            return v
        }
        func integer(_ name: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
            let text = value(name) ?? ""
            guard let n = Int(text), range.contains(n) else {
                throw ConfigurationError(variable: name, reason: "must be an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            return n
        }
        func boolean(_ name: String) throws(ConfigurationError) -> Bool {
            switch value(name)?.lowercased() {
            case "true", "1", "yes": return true
            case "false", "0", "no": return false
            default: throw ConfigurationError(variable: name, reason: "must be true or false")
            }
        }

        let brokers = try required("KAFKA_BROKERS")
        guard brokers.split(separator: ",").allSatisfy({ $0.contains(":") }) else {
            throw ConfigurationError(variable: "KAFKA_BROKERS", reason: "must be host:port[,host:port]")
        }
        var properties: [String: String] = [:]
        for (variable, property, numbers) in kafkaPassThrough {
            guard let v = value(variable) else { continue }
            // A number librdkafka would refuse only when the client is created: named here instead.
            if let numbers { _ = try integer(variable, in: numbers) }
            properties[property] = v
        }
        var database: DatabaseConfiguration
        do { database = try DatabaseConfiguration(url: try required("DATABASE_URL")) } catch let error as ConfigurationError {
            throw error
        } catch {
            throw ConfigurationError(variable: "DATABASE_URL", reason: "must look like postgres://user:password@host:port/database")
        }
        database.maximumConnections = try integer("VEIL_DATABASE_MAX_CONNECTIONS", in: 1...1_000)
        let level = value("VEIL_LOG_LEVEL") ?? "info"
        guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(level) else {
            throw ConfigurationError(variable: "VEIL_LOG_LEVEL", reason: "must be one of trace, debug, info, notice, warning, error, critical")
        }
        return ServiceConfiguration(
            service: service,
            kafka: KafkaConfiguration(bootstrapServers: brokers, clientID: "veil-\(service.rawValue)", properties: properties),
            database: database,
            adminHost: value("VEIL_ADMIN_HOST") ?? "0.0.0.0",
            adminPort: try integer("VEIL_ADMIN_PORT", in: 0...65535),
            logLevel: level,
            topicPartitions: Int32(try integer("VEIL_TOPIC_PARTITIONS", in: 1...10_000)),
            topicReplication: Int32(try integer("VEIL_TOPIC_REPLICATION", in: 1...10)),
            maxAttempts: try integer("VEIL_MAX_ATTEMPTS", in: 1...100),
            stageMaxBatch: try integer("VEIL_STAGE_MAX_BATCH", in: 1...10_000),
            createTopics: try boolean("VEIL_CREATE_TOPICS"),
            keysDirectory: try required("VEIL_KEYS_DIR"),
            replyFetchWaitMilliseconds: value("KAFKA_REPLY_FETCH_WAIT_MAX_MS") == nil
                ? nil : try integer("KAFKA_REPLY_FETCH_WAIT_MAX_MS", in: 0...300_000),
            environment: environment)
    }
}

extension ConfigurationError: SafelyDescribable {}
