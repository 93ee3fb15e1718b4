import Foundation
import Logging
import PostgresNIO
import Testing
import VeilClient
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilIngressClient
import VeilKafka
import VeilService
import VeilStore

extension PipelineWorld {
    /// Files a household or PIN file as the provider would (`veilctl upstream households|pins`).
    func exportReference(_ kind: ReferenceFileExporter.Kind, csv: String) async throws -> UpstreamExporter.Summary {
        var quiet = Logger(label: "test")
        quiet.logLevel = .error
        let producer = try KafkaProducer(configuration: ProducerConfiguration(kafka: kafkaConfiguration), logger: quiet)
        let codec = EnvelopeCodec(identity: try keys.identity("upstream-exporter"), directory: try keys.directoryStore())
        var exporter = ReferenceFileExporter(codec: codec, producer: producer,
                                             pseudonymKey: try keys.secret(party: KeyFolder.providerParty, name: KeyFolder.pseudonymIDKey).current)
        exporter.batchSize = 50
        let summary = try await exporter.export(kind, csv: Array(csv.utf8))
        await producer.close()
        return summary
    }

    /// Polls `sql` (a count) until it reaches `count`.
    func waitForCount(_ sql: String, atLeast count: Int, seconds: Int = 30) async throws {
        for _ in 0..<(seconds * 10) {
            if try await adminCount(sql) >= count { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("timed out waiting for \(count) from \(sql)")
        throw DatabaseError(code: "test.timeout", reason: sql)
    }
}

extension PipelineSuites {
    @Suite("Point of sale: household lookups through the key-vault, till transactions", .serialized, .timeLimit(.minutes(5)))
    struct PointOfSaleTests {
        static let households = 60

        /// The provider's sample household file and what it maps: TID → HHID.
        static func sampleHouseholds() -> (file: String, mapping: [String: String]) {
            let file = ReferenceFileExporter.sampleHouseholds(count: households)
            let mapping = Dictionary(uniqueKeysWithValues: file.split(separator: "\n").dropFirst().map {
                let columns = $0.split(separator: ","); return (String(columns[0]), String(columns[1]))
            })
            return (file, mapping)
        }

        @Test("a till looks a household up by the customer's TID and records a sale; an unknown TID and a replayed lookup are refused; the raw TID is in no topic, table or log")
        func lookupAndSale() async throws {
            let world = try await PipelineWorld.start([.ingress, .keyVault])
            defer { Task { await world.stop() } }
            let (file, mapping) = Self.sampleHouseholds()
            let summary = try await world.exportReference(.households, csv: file + "tid-without-household\n,HH-1\n")
            #expect(summary.published == Self.households)
            #expect(summary.rejected.values.reduce(0, +) == 2)
            try await world.waitForCount("SELECT count(*) FROM key_vault.households", atLeast: Self.households)
            // Filing the same file again changes nothing (the mapping rows keep their filing time).
            let filedAt = try await world.adminStrings("SELECT max(filed_at)::text FROM key_vault.households")
            _ = try await world.exportReference(.households, csv: file)
            try await Task.sleep(for: .seconds(1))
            #expect(try await world.adminCount("SELECT count(*) FROM key_vault.households") == Self.households)
            #expect(try await world.adminStrings("SELECT max(filed_at)::text FROM key_vault.households") == filedAt)

            let till = DeviceIdentity(deviceId: "till-0042")
            try await world.client.enroll(till)
            let vault = try await world.client.vaultKey()
            let tid = ReferenceFileExporter.sampleTID(7)
            let lookup = try await world.client.posLookup(till, tid: tid, vault: vault)
            #expect(lookup.householdId == mapping[tid])
            #expect(Data(base64Encoded: lookup.deidentifiedTid)?.count == 32)
            // The de-identified TID is stable per customer (analytics can join on it) and differs between customers.
            #expect(try await world.client.posLookup(till, tid: tid, vault: vault).deidentifiedTid == lookup.deidentifiedTid)
            let other = try await world.client.posLookup(till, tid: ReferenceFileExporter.sampleTID(8), vault: vault)
            #expect(other.deidentifiedTid != lookup.deidentifiedTid)

            // Unknown TID: a clear 404; a replayed lookup: refused before anything is published.
            await #expect(throws: IngressClient.Failure.self) { _ = try await world.client.posLookup(till, tid: "6274999999999999", vault: vault) }
            do {
                _ = try await world.client.posLookup(till, tid: "6274999999999999", vault: vault)
            } catch { #expect(problemCode(error) == "pos_household_not_found") }
            let signed = try till.posLookup(tid: tid, vault: vault)
            _ = try await world.client.posLookup(signed)
            do {
                _ = try await world.client.posLookup(signed)
                Issue.record("a replayed lookup was answered")
            } catch { #expect(problemCode(error) == "replayed_nonce") }
            // A stranger (not enrolled) is refused; a TID sealed to someone else than the vault is refused.
            do {
                _ = try await world.client.posLookup(DeviceIdentity(deviceId: "till-stranger"), tid: tid, vault: vault)
                Issue.record("an unknown terminal was answered")
            } catch { #expect(problemCode(error) == "unknown_device") }
            let dispatcherKey = try await world.client.dispatcherKey()
            do {
                _ = try await world.client.posLookup(till, tid: tid, vault: dispatcherKey)
                Issue.record("a TID sealed to the dispatcher was forwarded")
            } catch { #expect(problemCode(error) == "invalid_field") }
            let lookupsPublished = try await world.readAll([Topic.posLookups.name], idle: .seconds(2)).count
            #expect(lookupsPublished == 6, "the refused lookups published nothing")

            // The sale: UPCs by household and de-identified TID, sealed to the downstream provider.
            let receipt = try await world.client.posTransaction(till, lookup: lookup, upcs: ["036000291452", "4006381333931"])
            do {
                _ = try await world.client.posTransaction(till, lookup: lookup, upcs: ["not-a-upc"])
                Issue.record("a bad UPC was accepted")
            } catch { #expect(problemCode(error) == "invalid_field") }
            // A sale for a household this till did not look up (same token, another HHID) is refused.
            let forged = try till.sign(PosTransactionRequest(terminalId: till.deviceId, timestamp: DeviceRequestSignature.milliseconds(Date()),
                                                             nonce: DeviceRequestSignature.newNonce(), deidentifiedTid: lookup.deidentifiedTid,
                                                             householdId: other.householdId, upcs: ["036000291452"],
                                                             lookupToken: lookup.lookupToken),
                                       path: "/v1/pos/transactions")
            let (forgedStatus, forgedBody) = try await world.client.send(forged)
            #expect(forgedStatus == 403 && String(decoding: forgedBody, as: UTF8.self).contains("pos_lookup_token_refused"))
            let published = try await world.readAll([Topic.posTransactions.name], count: 1, idle: .seconds(2))
            #expect(published.count == 1)
            let provider = EnvelopeCodec(identity: try world.keys.identity("provider-demo"), directory: try world.keys.directoryStore())
            let opened = try #require(try await provider.verify(published).first?.get())
            let record = try ContractCoding.decode(PosTransactionRecord.self, from: try #require(opened.payload(PartLabel.posTransaction)))
            #expect(record.transactionId == receipt.transactionId)
            #expect(record.householdId == mapping[tid])
            #expect(record.deidentifiedTid.base64EncodedString() == lookup.deidentifiedTid)
            #expect(record.upcs == ["036000291452", "4006381333931"])
            // Ingress (and anyone without the provider's key) cannot open it.
            let ingress = EnvelopeCodec(identity: try world.keys.identity("ingress"), directory: try world.keys.directoryStore())
            switch await ingress.verify(published).first {
            case .failure(let error): #expect(error.code == "envelope.not_a_recipient")
            default: Issue.record("ingress could open the transaction")
            }

            // No raw TID anywhere: every topic, the two services' tables, every log line.
            var scanner = PrivacyScanner()
            for tid in mapping.keys { scanner.forbid(Array(tid.utf8), as: "TID \(tid)") }
            scanner.forbid(Array("6274999999999999".utf8), as: "unknown TID")
            let scan = PrivacyScanTests()
            let clean = try await scan.scanAll(world, scanner, schemas: ["ingress", "key_vault"])
            #expect(clean.sources > 5)
            #expect(clean.findings.isEmpty, "found: \(clean.findings.sorted())")
            world.logs.plant(#"{"msg":"debug","tid":"\#(tid)"}"#)
            #expect(try await scan.scanAll(world, scanner, schemas: ["ingress"]).findings.contains("log: TID \(tid) (raw)"))
            await world.stop()
        }

        @Test("two ingress replicas each answer their own tills, and each verifies only the replies to its own lookups")
        func twoReplicas() async throws {
            let world = try await PipelineWorld.start([.ingress, .keyVault])
            defer { Task { await world.stop() } }
            let (file, mapping) = Self.sampleHouseholds()
            _ = try await world.exportReference(.households, csv: file)
            try await world.waitForCount("SELECT count(*) FROM key_vault.households", atLeast: Self.households)
            let second = try await world.startReplica(of: .ingress)
            let replicas = [(client: world.client, till: DeviceIdentity(deviceId: "till-first")),
                            (client: IngressClient(baseURL: second.api), till: DeviceIdentity(deviceId: "till-second"))]
            for replica in replicas { try await replica.client.enroll(replica.till) }
            let vault = try await world.client.vaultKey()
            let lookupsEach = 5
            for n in 0..<lookupsEach {
                for replica in replicas {
                    let tid = ReferenceFileExporter.sampleTID(n + 1)
                    #expect(try await replica.client.posLookup(replica.till, tid: tid, vault: vault).householdId == mapping[tid])
                }
            }
            func replies(_ exposition: String, _ outcome: String) -> Int {
                exposition.split(separator: "\n").first { $0.hasPrefix("veil_pos_replies_total{outcome=\"\(outcome)\"}") }
                    .flatMap { $0.split(separator: " ").last }.flatMap { Int($0) } ?? 0
            }
            // A replica answers its till as soon as its own reply is read; the other replica's
            // follower may read (and skip) that reply a moment later.
            func expositions() async throws -> [String] {
                [try await world.metrics(.ingress), try await world.metrics(adminPort: second.adminPort)]
            }
            let deadline = ContinuousClock.now + .seconds(10)
            var latest = try await expositions()
            while latest.contains(where: { replies($0, "skipped") < lookupsEach }), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
                latest = try await expositions()
            }
            for exposition in latest {
                #expect(replies(exposition, "answered") == lookupsEach)
                #expect(replies(exposition, "skipped") == lookupsEach, "the other replica's replies are not verified here")
                #expect(replies(exposition, "rejected") == 0 && replies(exposition, "late") == 0)
            }
            await world.stop()
        }

        @Test("when the key-vault does not answer in time, the till gets 504 pos_vault_timeout, not a hang")
        func vaultTimeout() async throws {
            let world = try await PipelineWorld.start([.ingress], settings: ["VEIL_POS_LOOKUP_TIMEOUT_MS": "400"])
            defer { Task { await world.stop() } }
            let till = DeviceIdentity(deviceId: "till-timeout")
            try await world.client.enroll(till)
            let started = ContinuousClock.now
            do {
                _ = try await world.client.posLookup(till, tid: ReferenceFileExporter.sampleTID(1))
                Issue.record("answered without a key-vault")
            } catch { #expect(problemCode(error) == "pos_vault_timeout") }
            // Not a timing assertion: only that the answer came back at all, well before the test's limit.
            #expect(ContinuousClock.now - started < .seconds(60))
            await world.stop()
        }
    }
}
