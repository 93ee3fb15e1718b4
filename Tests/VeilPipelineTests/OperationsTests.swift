import Foundation
import Testing
import VeilClient
import VeilContracts
import VeilEnvelope
import VeilKafka
import VeilService

/// Runs the built `veilctl` (the operator's binary, not its library) against the world's broker.
func veilctl(_ arguments: [String], brokers: String) throws -> (status: Int32, output: String) {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let candidates = ["debug", "release"].map { root.appendingPathComponent(".build/\($0)/veilctl") }
    guard let binary = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
        Issue.record("veilctl is not built: run `swift build` (make test does)")
        throw CancellationError()
    }
    let process = Process()
    process.executableURL = binary
    process.arguments = arguments
    process.environment = ["KAFKA_BROKERS": brokers, "PATH": "/usr/bin:/bin"]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self))
}

extension PipelineSuites {
    @Suite("Operating the pipeline: status, dead letters and replay", .serialized, .timeLimit(.minutes(5)))
    struct OperationsTests {
        /// The operator's story: the matcher's keys are rotated and the directory published
        /// before the matcher was restarted with them, so inquiries sealed to the new key
        /// dead-letter. `veilctl status` shows them; after the restart, `veilctl dlq replay`
        /// puts them back with their ids and each is answered exactly once, however often
        /// it is replayed.
        @Test("a dead-lettered inquiry is replayed after the fix and applied once; status shows lag and dead letters")
        func replayAfterFix() async throws {
            let world = try await PipelineWorld.start()
            defer { Task { await world.stop() } }
            let brokers = world.cluster.bootstrapServers
            let customers = Customers(count: 20)
            _ = try await world.export(csv: customers.csv)
            try await world.waitUntilFiled(20)

            // The mistake: a new matcher key published while the running matcher lacks it.
            let version = try world.keys.rotate("matcher")
            let published = try veilctl(["keys", "publish", "--dir", world.keys.url.path], brokers: brokers)
            #expect(published.status == 0, "\(published.output)")
            try await waitForLog(world, service: .keyVault, containing: "\"serial\":\"\(try world.keys.directoryStore().serial)\"")

            let device = DeviceIdentity(deviceId: "device-ops-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(device)
            var sent: [String: String] = [:]
            for user in customers.rows.keys.sorted().prefix(3) {
                sent[try await world.client.inquire(device, userId: user).id] = user
            }
            let dlq = Topic.inquiriesTokenized.deadLetter.name
            let dead = try await world.readAll([dlq], count: 3, timeout: .seconds(60))
            #expect(dead.count == 3)
            #expect(dead.allSatisfy { $0.headerString(DeadLetterHeader.code) == "envelope.open_failed" },
                    "sealed to matcher v\(version), which the running matcher does not hold")

            // status: the dead letters are pending; every stage group has caught up.
            let status = try veilctl(["status", "--json"], brokers: brokers)
            #expect(status.status == 0, "\(status.output)")
            let report = try JSONDecoder().decode(StatusReport.self, from: Data(status.output.utf8))
            #expect(report.deadLetters.first { $0.topic == dlq }?.pending == 3)
            #expect(report.lag.contains { $0.group == "veil.matcher" && $0.topic == Topic.inquiriesTokenized.name })
            #expect(report.lag.filter { $0.group == "veil.matcher" }.allSatisfy { $0.lag == 0 }, "dead-lettered is not lag")
            let check = try veilctl(["status", "--check"], brokers: brokers)
            #expect(check.status == 1, "--check fails while dead letters are pending")

            let listed = try veilctl(["dlq", "list", dlq], brokers: brokers)
            #expect(listed.output.components(separatedBy: "envelope.open_failed").count - 1 == 3, "\(listed.output)")
            #expect(listed.output.contains("pending"))
            for user in sent.values { #expect(!listed.output.contains(user), "no raw user id in the operator's view") }
            let first = try #require(listed.output.split(separator: "\n").first { $0.hasPrefix(dlq + "/") }.map { String($0.split(separator: " ")[0]) })
            let shown = try veilctl(["dlq", "show", first], brokers: brokers)
            #expect(shown.output.contains("veil.inquiry.tokenized.v1") && shown.output.contains("sealed envelope"), "\(shown.output)")

            // The fix: restart the matcher with the rotated key folder; then replay.
            await world.kill(.matcher)
            try await world.startService(.matcher)
            let replay = try veilctl(["dlq", "replay", dlq], brokers: brokers)
            #expect(replay.status == 0 && replay.output.contains("replayed 3 dead letters"), "\(replay.output)")

            let insights = try await world.insights(count: 3, idle: .seconds(10), timeout: .seconds(60))
            #expect(Set(insights.map(\.inquiryId)) == Set(sent.keys), "every inquiry answered after the replay")
            let allMatched = insights.allSatisfy { $0.matched }
            #expect(allMatched)

            // Replaying again: nothing pending; forcing one message again applies nothing twice.
            let again = try veilctl(["dlq", "replay", dlq], brokers: brokers)
            #expect(again.output.contains("replayed 0 dead letters"), "\(again.output)")
            let forced = try veilctl(["dlq", "replay", "--message", first], brokers: brokers)
            #expect(forced.status == 0, "\(forced.output)")
            let all = try await world.readAll([Topic.insights.name], idle: .seconds(5), timeout: .seconds(30))
            #expect(all.count == 3, "the forced replay was dropped as a duplicate: one insight per inquiry")
            let saved = try await world.adminCount("SELECT count(*) FROM merger.insights")
            #expect(saved == 3)

            let after = try JSONDecoder().decode(StatusReport.self,
                                                 from: Data(try veilctl(["status", "--json"], brokers: brokers).output.utf8))
            #expect(after.deadLetters.first { $0.topic == dlq }?.pending == 0)
            #expect(after.deadLetters.first { $0.topic == dlq }?.kept == 3, "replayed letters stay for the record until retention")
        }
    }
}

/// `veilctl status --json`, as a script would read it.
struct StatusReport: Decodable {
    struct Lag: Decodable { var group: String; var topic: String; var lag: Int }
    struct Dead: Decodable { var topic: String; var pending: Int; var kept: Int }
    var lag: [Lag]
    var deadLetters: [Dead]
}

func waitForLog(_ world: PipelineWorld, service: ServiceName, containing text: String) async throws {
    for _ in 0..<200 {
        if world.logs.all.contains(where: { $0.contains("\"service\":\"\(service.rawValue)\"") && $0.contains(text) }) { return }
        try await Task.sleep(for: .milliseconds(100))
    }
    Issue.record("\(service.rawValue) never logged \(text)")
}
