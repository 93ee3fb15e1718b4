import Foundation
import Synchronization
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
import VeilContracts
import VeilEnvelope
@testable import VeilKafka
@testable import VeilService

@Suite("Service runtime", .timeLimit(.minutes(2)))
struct ServiceRuntimeTests {
    let complete = [
        "KAFKA_BROKERS": "127.0.0.1:9092",
        "DATABASE_URL": "postgres://u:p@127.0.0.1:5432/veil",
        "VEIL_KEYS_DIR": "/run/secrets/veil",
    ]

    @Test("offset resets reach /metrics as a counter per topic that grows by what is new for each consumer, whatever they report cumulatively")
    func offsetResetCounter() {
        let metrics = ServiceMetrics()
        func value(_ topic: String) -> String? {
            String(decoding: metrics.render(), as: UTF8.self).split(separator: "\n")
                .first { $0.hasPrefix("veil_consumer_offset_resets_total{topic=\"\(topic)\"}") }
                .map { String($0.split(separator: " ").last!) }
        }
        let a0 = TopicPartition(topic: "a", partition: 0)
        metrics.recordOffsetResets([:], consumer: "stage-1")
        #expect(value("a") == nil, "no reset, no series")
        metrics.recordOffsetResets([a0: 1], consumer: "stage-1")
        metrics.recordOffsetResets([a0: 1], consumer: "stage-1")  // the same reset, reported again
        #expect(value("a") == "1")
        metrics.recordOffsetResets([a0: 1], consumer: "stage-2")  // another consumer's own first reset
        #expect(value("a") == "2")
        metrics.recordOffsetResets([a0: 2, TopicPartition(topic: "a", partition: 3): 1,
                                    TopicPartition(topic: "b", partition: 1): 4], consumer: "stage-1")
        #expect(value("a") == "4")
        #expect(value("b") == "4")
    }

    @Test("a complete environment loads with defaults")
    func loadsDefaults() throws {
        let configuration = try ServiceConfiguration.load(service: .matcher, environment: complete)
        #expect(configuration.adminPort == 9090)
        #expect(configuration.topicPartitions == 12)
        #expect(configuration.kafka.clientID == "veil-matcher")
        #expect(configuration.database.username == "u")
        #expect(configuration.database.maximumConnections == 8)
        var more = complete
        more["VEIL_DATABASE_MAX_CONNECTIONS"] = "24"
        #expect(try ServiceConfiguration.load(service: .matcher, environment: more).database.clientConfiguration.options.maximumConnections == 24)
    }

    @Test("each missing or bad variable is named in the error", arguments: [
        ("KAFKA_BROKERS", nil, "is required"),
        ("DATABASE_URL", nil, "is required"),
        ("DATABASE_URL", "mysql://x", "postgres://"),
        ("KAFKA_BROKERS", "nocolon", "host:port"),
        ("VEIL_ADMIN_PORT", "http", "integer"),
        ("VEIL_LOG_LEVEL", "loud", "one of"),
        ("VEIL_CREATE_TOPICS", "maybe", "true or false"),
        ("VEIL_KEYS_DIR", nil, "is required"),
        ("KAFKA_LINGER_MS", "-1", "integer in 0...900000"),
        ("KAFKA_QUEUED_MAX_KBYTES", "lots", "integer"),
        ("KAFKA_QUEUED_MAX_KBYTES", "0", "integer in 1...2097151"),
        ("VEIL_DATABASE_MAX_CONNECTIONS", "0", "integer in 1...1000"),
        ("VEIL_DATABASE_MAX_CONNECTIONS", "many", "integer"),
        ("VEIL_STAGE_MAX_BATCH", "0", "integer in 1...10000"),
    ] as [(String, String?, String)])
    func badVariable(variable: String, value: String?, message: String) throws {
        var environment = complete
        environment[variable] = value
        #expect {
            _ = try ServiceConfiguration.load(service: .matcher, environment: environment)
        } throws: { error in
            let error = error as? ConfigurationError
            return error?.variable == variable && error?.description.contains(message) == true
        }
    }

    @Test("TLS and SASL settings pass through to librdkafka")
    func securityPassThrough() throws {
        var environment = complete
        environment["KAFKA_SECURITY_PROTOCOL"] = "sasl_ssl"
        environment["KAFKA_SASL_MECHANISM"] = "SCRAM-SHA-512"
        environment["KAFKA_SASL_USERNAME"] = "veil-matcher"
        environment["KAFKA_SSL_CA_LOCATION"] = "/etc/kafka/ca.pem"
        let kafka = try ServiceConfiguration.load(service: .matcher, environment: environment).kafka
        #expect(kafka.properties["security.protocol"] == "sasl_ssl")
        #expect(kafka.properties["sasl.mechanism"] == "SCRAM-SHA-512")
        #expect(kafka.properties["sasl.username"] == "veil-matcher")
        #expect(kafka.properties["ssl.ca.location"] == "/etc/kafka/ca.pem")
    }

    @Test("fetch, linger and prefetch settings reach only the clients that understand them")
    func tuningPassThrough() throws {
        var environment = complete
        environment["KAFKA_FETCH_WAIT_MAX_MS"] = "5"
        environment["KAFKA_LINGER_MS"] = "0"
        environment["KAFKA_QUEUED_MAX_KBYTES"] = "262144"
        let kafka = try ServiceConfiguration.load(service: .matcher, environment: environment).kafka
        let consumer = kafka.baseProperties(for: .consumer), producer = kafka.baseProperties(for: .producer)
        #expect(consumer["queued.max.messages.kbytes"] == "262144" && consumer["fetch.wait.max.ms"] == "5")
        #expect(consumer["linger.ms"] == nil)
        #expect(producer["linger.ms"] == "0")
        #expect(producer["queued.max.messages.kbytes"] == nil && producer["fetch.wait.max.ms"] == nil)
    }

    @Test("the reply fetch wait reaches only consumers of topics a caller waits on, and is validated")
    func replyFetchWait() throws {
        var environment = complete
        environment["KAFKA_FETCH_WAIT_MAX_MS"] = "5"
        let unset = try ServiceConfiguration.load(service: .keyVault, environment: environment)
        #expect(unset.kafka(consuming: ServiceName.keyVault.stageTopics).properties["fetch.wait.max.ms"] == "5")

        environment["KAFKA_REPLY_FETCH_WAIT_MAX_MS"] = "1"
        let vault = try ServiceConfiguration.load(service: .keyVault, environment: environment)
        // The vault's stage reads the lookups a till waits on; the matcher's stage does not.
        #expect(ServiceName.keyVault.stageTopics.contains(Topic.posLookups))
        #expect(vault.kafka(consuming: ServiceName.keyVault.stageTopics).baseProperties(for: .consumer)["fetch.wait.max.ms"] == "1")
        #expect(vault.kafka(consuming: [Topic.posLookupReplies]).properties["fetch.wait.max.ms"] == "1")
        #expect(vault.kafka(consuming: ServiceName.matcher.stageTopics).properties["fetch.wait.max.ms"] == "5")
        #expect(vault.kafka.properties["fetch.wait.max.ms"] == "5")

        environment["KAFKA_REPLY_FETCH_WAIT_MAX_MS"] = "soon"
        #expect(throws: ConfigurationError.self) { try ServiceConfiguration.load(service: .keyVault, environment: environment) }
        do {
            _ = try ServiceConfiguration.load(service: .keyVault, environment: environment)
        } catch {
            #expect(error.variable == "KAFKA_REPLY_FETCH_WAIT_MAX_MS")
        }
    }

    @Test("a service started without KAFKA_BROKERS exits non-zero naming the variable")
    func executableRefusesBadConfiguration() throws {
        let binary = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent(".build/debug/matcher")
        try #require(FileManager.default.isExecutableFile(atPath: binary.path), "build the services first (make test does)")
        let process = Process()
        process.executableURL = binary
        process.environment = ["DATABASE_URL": "postgres://u:p@127.0.0.1:5432/veil", "PATH": "/usr/bin:/bin"]
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = Pipe()
        try process.run()
        process.waitUntilExit()
        let output = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 2)
        #expect(output.contains("KAFKA_BROKERS"))
    }

    @Test("a running service is live, becomes ready once Kafka, PostgreSQL and migrations are, and serves metrics")
    func healthAndMetrics() async throws {
        let kafka = try Kafka()
        for topic in Topic.allWithDeadLetters { try kafka.cluster.createTopic(topic.name, partitions: 2) }
        let database = try adminDatabase()
        var environment = complete
        environment["KAFKA_BROKERS"] = kafka.cluster.bootstrapServers
        environment["DATABASE_URL"] = "postgres://\(database.username):\(database.password ?? "")@\(database.host):\(database.port)/\(database.database)"
        environment["VEIL_ADMIN_PORT"] = "0"
        environment["VEIL_DATABASE_SCHEMA"] = uniqueName("runtime")  // not the merger's own schema, which other tests reset
        environment["VEIL_ADMIN_HOST"] = "127.0.0.1"
        let keys = FileManager.default.temporaryDirectory.appendingPathComponent("veil-keys-\(UUID())")
        try KeyFolder.createDevelopmentKeys(at: keys)
        environment["VEIL_KEYS_DIR"] = keys.path
        let configuration = try ServiceConfiguration.load(service: .merger, environment: environment)
        let port = PortBox()
        let runtime = ServiceRuntime(service: .merger) { context in
            EnvelopeStage(codec: context.codec, handler: UnsupportedEnvelopeHandler())
        }
        let running = Task { try await runtime.run(configuration: configuration, logger: quietLogger) { port.set($0) } }
        defer { running.cancel() }

        let base = try await port.wait()
        #expect(try await get("http://127.0.0.1:\(base)/health/live").status == 200)
        var ready = try await get("http://127.0.0.1:\(base)/health/ready")
        for _ in 0..<100 where ready.status != 200 {
            try await Task.sleep(for: .milliseconds(200))
            ready = try await get("http://127.0.0.1:\(base)/health/ready")
        }
        #expect(ready.status == 200)
        #expect(ready.body.contains("ready"))

        let producer = try kafka.producer()
        try await producer.send(OutgoingMessage(topic: Topic.inquiriesMatched.name, value: Array("x".utf8)))
        await producer.close()
        var metrics = ""
        for _ in 0..<100 where !(metrics.contains("veil_dead_letters_total") && metrics.contains("veil_processing_duration_seconds")) {
            try await Task.sleep(for: .milliseconds(200))
            metrics = try await get("http://127.0.0.1:\(base)/metrics").body
        }
        #expect(metrics.contains(#"veil_messages_in_total{topic="veil.inquiries.matched.v1"} "#), "at least once; a start-up rebalance may redeliver")
        #expect(metrics.contains("veil_processing_duration_seconds"))
        #expect(metrics.contains(#"veil_errors_total{code="envelope.malformed"}"#), "a bare value is not an envelope")
    }
}

final class PortBox: Sendable {
    private let value = Mutex<Int?>(nil)
    func set(_ port: Int) { value.withLock { $0 = port } }
    func wait() async throws -> Int {
        for _ in 0..<300 {
            if let port = value.withLock({ $0 }) { return port }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw ConfigurationError(variable: "VEIL_ADMIN_PORT", reason: "server did not start")
    }
}

func get(_ url: String) async throws -> (status: Int, body: String) {
    let (data, response) = try await URLSession.shared.data(from: URL(string: url)!)
    return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}
