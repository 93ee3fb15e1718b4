import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import KeyVaultService
import Logging
import PostgresNIO
import Synchronization
import Testing
import VeilClient
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// The customers of these tests: ids, and the fields the default policy exports.
struct Customers {
    let csv: String
    let rows: [String: [String: String]]

    init(count: Int, seed: UInt64 = 7) {
        csv = CustomerSample.csv(count: count, seed: seed)
        var reader = CSVReader(Array(csv.utf8))
        let header = reader.next()!
        let exported = ExportPolicy().exportedColumns(of: header)
        var rows: [String: [String: String]] = [:]
        while let row = reader.next(), row.count == header.count {
            var fields: [String: String] = [:]
            for column in exported { fields[column] = row[header.firstIndex(of: column)!] }
            rows[row[0]] = fields
        }
        self.rows = rows
    }
}

extension PipelineSuites {
    @Suite("Inquiry pipeline end to end", .serialized, .timeLimit(.minutes(5)))
    struct InquiryPipelineTests {
        @Test("every inquiry yields exactly one insight; matched ones carry the customer's record, unknown ones say so")
        func endToEnd() async throws {
            let world = try await PipelineWorld.start()
            defer { Task { await world.stop() } }
            let customers = Customers(count: 300)
            let summary = try await world.export(csv: customers.csv)
            #expect(summary.published == 300)
            try await world.waitUntilFiled(300)
            let filed = try await world.metrics(.keyVault).split(separator: "\n").first { $0.hasPrefix("veil_records_filed_total ") }
            #expect(filed.flatMap { Double($0.split(separator: " ")[1]) }.map { $0 >= 300 } == true,
                    "the vault counts what it filed (at least once: a redelivered batch counts again)")

            let device = DeviceIdentity(deviceId: "device-e2e-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(device)
            var sent: [String: String] = [:]  // inquiry id → user id
            let known = customers.rows.keys.sorted().prefix(40)
            let unknown = (0..<10).map { "X9\($0)0000" }
            for user in known + unknown {
                let status = try await world.client.inquire(device, userId: user, appData: ["screen": "billing"])
                #expect(status.status == "accepted")
                sent[status.id] = user
            }

            let insights = try await world.insights(count: sent.count)
            #expect(insights.count == sent.count, "exactly one output per inquiry")
            #expect(Set(insights.map(\.inquiryId)) == Set(sent.keys))
            for insight in insights {
                let user = try #require(sent[insight.inquiryId])
                if let fields = customers.rows[user] {
                    #expect(insight.matched, "\(user) was filed")
                    #expect(insight.record == fields.filter { !$0.value.isEmpty }, "the record of \(user)")
                } else {
                    #expect(!insight.matched && insight.record == nil, "\(user) was never filed")
                }
                #expect(insight.appData == ["screen": "billing"] && insight.channel == "app")
                #expect(insight.anonymizedDeviceId.count == 32)
            }
            // The same customer always gets the same token; different customers different ones.
            let tokens = Dictionary(grouping: insights.filter(\.matched), by: { sent[$0.inquiryId]! }).mapValues { Set($0.map(\.matchToken)) }
            #expect(tokens.values.allSatisfy { $0.count == 1 })
            #expect(Set(tokens.values.flatMap { $0 }).count == tokens.count)

            // The status endpoint knows every inquiry.
            let (status, _) = try await URLSession.shared.boundedData(for: URLRequest(url: world.ingressURL.appendingPathComponent("v1/inquiries/\(sent.keys.first!)")))
            #expect(String(decoding: status, as: UTF8.self).contains("accepted"))

            // Nothing was dead-lettered on the way.
            let deadLetters = [Topic.inquiriesReceived, .inquiriesAnonymized, .inquiriesTokenized, .inquiriesMatched].map(\.deadLetter.name)
            #expect(try await world.readAll(deadLetters, firstWait: .seconds(8)).isEmpty, "nothing dead-lettered")
            // The merger saved each insight once.
            #expect(try await world.adminCount("SELECT count(*) FROM merger.insights") == sent.count)
            await world.stop()
        }

        @Test("re-filing the same records changes nothing; a changed record is updated")
        func refilingIsIdempotent() async throws {
            let world = try await PipelineWorld.start([.keyVault])
            defer { Task { await world.stop() } }
            let customers = Customers(count: 50)
            _ = try await world.export(csv: customers.csv)
            try await world.waitUntilFiled(50)
            let snapshot = "SELECT encode(customer_ref, 'hex') || md5(record_ciphertext) FROM key_vault.filed_records"
            let tokens = "SELECT encode(token, 'hex') FROM key_vault.match_tokens"
            let before = Set(try await world.adminStrings(snapshot)), tokensBefore = Set(try await world.adminStrings(tokens))
            #expect(before.count == 50 && tokensBefore.count == 50)

            _ = try await world.export(csv: customers.csv)
            var lines = customers.csv.split(separator: "\n").map(String.init)
            lines[1] += "-changed"  // the first customer's region
            _ = try await world.export(csv: lines.joined(separator: "\n") + "\n")
            try await Task.sleep(for: .seconds(3))
            let after = Set(try await world.adminStrings(snapshot))
            #expect(after.count == 50)
            #expect(before.subtracting(after).count == 1, "only the changed record was rewritten")
            #expect(Set(try await world.adminStrings(tokens)) == tokensBefore, "tokens unchanged")

        // Bad rows are counted with their reason and not published.
        let header = CustomerSample.header.joined(separator: ",")
        let bad = try await world.export(csv: header + "\n" + lines[2] + "\n,x,x,x,x,x,x,x,x,x,x,x,x,x,x,x\nC1,too,few\n")
        #expect(bad.read == 3 && bad.published == 1)
        #expect(bad.rejected == ["empty customer_id": 1, "wrong number of columns": 1])
        #expect(!bad.exportedColumns.contains { ["first_name", "last_name", "phone", "email", "street", "postcode"].contains($0) })
            await world.stop()
        }

        @Test("k2 rotation during a run: no inquiry is lost or mismatched, and tokens switch version")
        func matchKeyRotationDuringRun() async throws {
            let world = try await PipelineWorld.start()
            defer { Task { await world.stop() } }
            let customers = Customers(count: 200)
            _ = try await world.export(csv: customers.csv)
            try await world.waitUntilFiled(200)
            let device = DeviceIdentity(deviceId: "device-rotation")
            try await world.client.enroll(device)
            let users = customers.rows.keys.sorted()

            let sent = Mutex<[String: String]>([:])
            let client = world.client
            let sender = Task {
                for i in 0..<120 {
                    let user = users[i % users.count]
                    let status = try await client.inquire(device, userId: user)
                    sent.withLock { $0[status.id] = user }
                    try await Task.sleep(for: .milliseconds(40))
                }
            }
            // Rotate with the vault's own role and master key, while inquiries flow.
            try await Task.sleep(for: .milliseconds(800))
            let configuration = try ServiceConfiguration.load(service: .keyVault, environment: world.environment[.keyVault]!)
            var quiet = Logger(label: "rotation")
            quiet.logLevel = .error
            let database = try Database(configuration: configuration.database, schema: "key_vault", logger: quiet)
            let running = Task { try await database.run() }
            let store = VaultKeyStore(database: database, master: try VaultKeyStore.masterKey(configuration), logger: quiet)
            let rotation = MatchKeyRotation(store: store, refresh: .seconds(1), logger: quiet)
            let version = try await rotation.rotate(batchSize: 50)
            #expect(version == 2)
            try await sender.value

            let expected = sent.withLock { $0 }
            let insights = try await world.insights(count: expected.count)
            #expect(insights.count == expected.count, "no inquiry lost")
            #expect(insights.allSatisfy { $0.matched }, "no inquiry mismatched")
            for insight in insights { #expect(insight.record == customers.rows[expected[insight.inquiryId]!]) }
            let versions = Set(insights.map(\.matchKeyVersion))
            #expect(versions == [1, 2], "inquiries before and after the switch")

            // After retiring version 1, new inquiries still match (with version 2 tokens only).
            #expect(try await rotation.retirePrevious() == 200)
            #expect(try await world.adminCount("SELECT count(*) FROM key_vault.match_tokens") == 200)
            try await Task.sleep(for: .seconds(2))  // replicas re-read the keys
            let late = try await client.inquire(device, userId: users[0])
            let all = try await world.insights(count: expected.count + 1)
            let last = try #require(all.first { $0.inquiryId == late.id })
            #expect(last.matched && last.matchKeyVersion == 2)
            running.cancel()
            await world.stop()
        }

        @Test("a service killed mid-stream loses nothing and duplicates nothing downstream")
        func crashMidStream() async throws {
            let world = try await PipelineWorld.start()
            defer { Task { await world.stop() } }
            let customers = Customers(count: 100)
            _ = try await world.export(csv: customers.csv)
            try await world.waitUntilFiled(100)
            let device = DeviceIdentity(deviceId: "device-crash")
            try await world.client.enroll(device)
            var sent: [String: String] = [:]
            for (i, user) in customers.rows.keys.sorted().enumerated().prefix(60) {
                if i == 20 { await world.kill(.matcher) }
                if i == 40 { try await world.startService(.matcher) }
                let status = try await world.client.inquire(device, userId: user)
                sent[status.id] = user
            }
            try await Self.expectEachInsightOnce(world, sent: sent)
            await world.stop()
        }

        /// Every inquiry of `sent` arrives (a restarted or surviving member may first wait out
        /// the killed one's session) and none twice: the whole topic, read again, holds one
        /// insight per inquiry. A crash is not a failure of the messages in hand: nothing was
        /// dead-lettered for it.
        static func expectEachInsightOnce(_ world: PipelineWorld, sent: [String: String],
                                          sourceLocation: SourceLocation = #_sourceLocation) async throws {
            let insights = try await world.insights(count: sent.count, idle: .seconds(40))
            #expect(insights.count == sent.count, "no inquiry lost", sourceLocation: sourceLocation)
            let everything = try await world.readAll([Topic.insights.name], idle: .seconds(5))
            #expect(everything.count == sent.count, "no inquiry duplicated downstream", sourceLocation: sourceLocation)
            let deadLetters = [Topic.inquiriesTokenized, .inquiriesMatched].map(\.deadLetter.name)
            #expect(try await world.readAll(deadLetters, firstWait: .seconds(5)).isEmpty, "nothing dead-lettered by the crash",
                    sourceLocation: sourceLocation)
            #expect(Set(insights.map(\.inquiryId)) == Set(sent.keys), sourceLocation: sourceLocation)
            #expect(insights.allSatisfy { $0.matched }, sourceLocation: sourceLocation)
        }

        @Test("with two matcher replicas, killing one mid-stream hands its partitions to the other: nothing lost, nothing duplicated")
        func replicaTakesOver() async throws {
            let world = try await PipelineWorld.start()
            defer { Task { await world.stop() } }
            let customers = Customers(count: 100)
            _ = try await world.export(csv: customers.csv)
            try await world.waitUntilFiled(100)
            _ = try await world.startReplica(of: .matcher)
            let device = DeviceIdentity(deviceId: "device-replicas")
            try await world.client.enroll(device)
            var sent: [String: String] = [:]
            for (i, user) in customers.rows.keys.sorted().enumerated().prefix(60) {
                // The group shares the topic's four partitions between the two; from here on the
                // survivor gets the killed member's too, once the group notices it is gone.
                if i == 20 { await world.kill(.matcher) }
                let status = try await world.client.inquire(device, userId: user)
                sent[status.id] = user
            }
            try await Self.expectEachInsightOnce(world, sent: sent)
            await world.stop()
        }
    }
}
