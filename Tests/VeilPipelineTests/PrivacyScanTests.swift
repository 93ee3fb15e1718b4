import Foundation
import KeyVaultService
import Logging
import PostgresNIO
import Testing
import VeilClient
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// Looks for forbidden values — raw user ids, raw device ids, `P` and `A` — in any
/// encoding (raw bytes, hex in either case, base64 with and without padding,
/// base64url) in a set of byte strings.
struct PrivacyScanner {
    struct Needle {
        let label: String
        let bytes: [UInt8]
    }
    private var needles: [UInt64: [Needle]] = [:]
    private(set) var count = 0

    mutating func forbid(_ value: [UInt8], as label: String) {
        let base64 = Data(value).base64EncodedString()
        let unpadded = base64.replacingOccurrences(of: "=", with: "")
        let url = unpadded.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        let hex = value.map { String(format: "%02x", $0) }.joined()
        let encodings: [(String, [UInt8])] = [
            ("raw", value), ("hex", Array(hex.utf8)), ("HEX", Array(hex.uppercased().utf8)),
            ("base64", Array(unpadded.utf8)), ("base64url", Array(url.utf8)),
        ]
        for (encoding, bytes) in encodings where bytes.count >= 8 {
            needles[Self.prefix(bytes, 0), default: []].append(Needle(label: "\(label) (\(encoding))", bytes: bytes))
            count += 1
        }
    }

    /// The labels of every forbidden value found in `haystack`.
    func scan(_ haystack: [UInt8]) -> Set<String> {
        guard haystack.count >= 8 else { return [] }
        var found = Set<String>()
        for start in 0...(haystack.count - 8) {
            guard let candidates = needles[Self.prefix(haystack, start)] else { continue }
            for needle in candidates where start + needle.bytes.count <= haystack.count
                && haystack[start..<(start + needle.bytes.count)].elementsEqual(needle.bytes) {
                found.insert(needle.label)
            }
        }
        return found
    }

    static func prefix(_ bytes: [UInt8], _ start: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in start..<(start + 8) { value = value << 8 | UInt64(bytes[i]) }
        return value
    }
}

extension PipelineSuites {
    @Suite("Privacy: no raw id, P or A in any topic, table or log", .serialized, .timeLimit(.minutes(5)))
    struct PrivacyScanTests {
        @Test("after an end-to-end run, every topic, table and log is free of raw ids, P and A — and a planted one is found")
        func scanEverything() async throws {
            let world = try await PipelineWorld.start()
            defer { Task { await world.stop() } }
            let customers = Customers(count: 100)
            _ = try await world.export(csv: customers.csv)
            try await world.waitUntilFiled(100)

            // Inquiries by phone number and by customer number, from two devices.
            let devices = [DeviceIdentity(deviceId: "IMEI-356938035643809"), DeviceIdentity(deviceId: "device-7f3c9a1e-privacy")]
            for device in devices { try await world.client.enroll(device) }
            let users = Array(customers.rows.keys.sorted().prefix(20)) + ["+4915112345678", "+4917099887766", "X77700011"]
            for (i, user) in users.enumerated() { _ = try await world.client.inquire(devices[i % 2], userId: user) }
            _ = try await world.insights(count: users.count)

            // What must never appear: the raw values, P and A.
            let idKey = try world.keys.secret(party: KeyFolder.providerParty, name: KeyFolder.pseudonymIDKey).current!
            let kT = try await vaultThirdPartyKey(world)
            var scanner = PrivacyScanner()
            for user in users {
                let p = idKey.hash(Array(user.utf8))
                scanner.forbid(Array(user.utf8), as: "user id \(user)")
                scanner.forbid(p, as: "P of \(user)")
                scanner.forbid(kT.hash(p), as: "A of \(user)")
            }
            for device in devices { scanner.forbid(Array(device.deviceId.utf8), as: "device id \(device.deviceId)") }

            let clean = try await scanAll(world, scanner)
            #expect(clean.sources > 15, "scanned topics, tables and logs (\(clean.sources) sources)")
            #expect(clean.findings.isEmpty, "found: \(clean.findings.sorted())")

            // Plant one value in each kind of place: the scan must find all three.
            let p = idKey.hash(Array(users[0].utf8)), a = kT.hash(p)
            let hex = p.map { String(format: "%02x", $0) }.joined()
            try await PipelineWorld.withAdmin(world.admin) { client in
                try await client.query(PostgresQuery(unsafeSQL: "CREATE TABLE merger.planted (note text)"))
                try await client.query(PostgresQuery(unsafeSQL: "INSERT INTO merger.planted VALUES ('\(hex)')"))
            }
            let producer = try KafkaProducer(configuration: ProducerConfiguration(kafka: world.kafkaConfiguration), logger: Logger(label: "test"))
            _ = try await producer.send(OutgoingMessage(topic: Topic.inquiriesMatched.deadLetter.name, value: Array("x".utf8),
                                                        headers: [KafkaHeader(name: "note", value: a)]))
            await producer.close()
            world.logs.plant(#"{"msg":"oops","user":"\#(users[1])"}"#)
            let planted = try await scanAll(world, scanner)
            #expect(planted.findings.contains { $0.hasPrefix("table merger.planted: P of \(users[0]) (hex)") })
            #expect(planted.findings.contains { $0.hasPrefix("topic \(Topic.inquiriesMatched.deadLetter.name): A of \(users[0]) (raw)") })
            #expect(planted.findings.contains { $0.hasPrefix("log: user id \(users[1]) (raw)") })
            await world.stop()
        }

        /// kT as the vault holds it (read with the vault's role and master key).
        func vaultThirdPartyKey(_ world: PipelineWorld) async throws -> VersionedKey {
            let configuration = try ServiceConfiguration.load(service: .keyVault, environment: world.environment[.keyVault]!)
            var quiet = Logger(label: "test")
            quiet.logLevel = .error
            let database = try Database(configuration: configuration.database, schema: "key_vault", logger: quiet)
            let running = Task { try await database.run() }
            defer { running.cancel() }
            let store = VaultKeyStore(database: database, master: try VaultKeyStore.masterKey(configuration), logger: quiet)
            try await store.reload()
            return try #require(store.keys.current(.thirdPartyHash))
        }

        /// Every message of every topic (keys, headers, values), every row of every table of
        /// the services' schemas, every log line.
        func scanAll(_ world: PipelineWorld, _ scanner: PrivacyScanner,
                     schemas: [String] = ["ingress", "anonymizer", "key_vault", "matcher", "merger"]) async throws -> (findings: Set<String>, sources: Int) {
            var findings = Set<String>()
            var sources = 0
            let messages = try await world.readAll(Topic.allWithDeadLetters.map(\.name), idle: .seconds(3), firstWait: .seconds(10))
            for message in messages {
                var parts = [message.value, message.key ?? []]
                for header in message.headers { parts += [Array(header.name.utf8), header.value ?? []] }
                for part in parts { for label in scanner.scan(part) { findings.insert("topic \(message.topic): \(label)") } }
            }
            sources += Set(messages.map(\.topic)).count
            let tables = try await world.adminStrings("""
                SELECT table_schema || '.' || table_name FROM information_schema.tables
                WHERE table_schema IN (\(schemas.map { "'\($0)'" }.joined(separator: ", "))) AND table_type = 'BASE TABLE'
                """)
            for table in tables {
                for row in try await world.adminStrings("SELECT to_jsonb(t)::text FROM \(table) t") {
                    for label in scanner.scan(Array(row.utf8)) { findings.insert("table \(table): \(label)") }
                }
            }
            sources += tables.count
            for line in world.logs.all { for label in scanner.scan(Array(line.utf8)) { findings.insert("log: \(label)") } }
            sources += world.logs.all.isEmpty ? 0 : 1
            return (findings, sources)
        }
    }
}
