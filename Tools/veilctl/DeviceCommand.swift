import ArgumentParser
import Foundation
import VeilClient
import VeilIngressClient
import VeilService
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `veilctl device`: a device's side, through the client library.
struct DeviceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "device", abstract: "Act as a device: enroll, send inquiries.",
                                                    subcommands: [Enroll.self, Inquire.self])

    struct DeviceOptions: ParsableArguments {
        @Option(name: .long, help: "The device's key file (created if missing).") var device = ".veil/device.json"
        @Option(name: .long, help: "Ingress base URL.") var url = ProcessInfo.processInfo.environment["VEIL_INGRESS_URL"] ?? "http://127.0.0.1:8080"
        @Option(name: .long, help: "Enrollment token, if ingress requires one.") var enrollmentToken: String?

        func identity() throws -> DeviceIdentity {
            let file = URL(fileURLWithPath: device)
            if let data = try? Data(contentsOf: file) {
                return try DeviceIdentity(stored: JSONDecoder().decode(DeviceIdentity.Stored.self, from: data))
            }
            let identity = DeviceIdentity(deviceId: "device-" + UUID().uuidString.lowercased())
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
            try encoder.encode(identity.stored).write(to: file)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file.path)
            return identity
        }

        var client: IngressClient {
            get throws {
                guard let base = URL(string: url) else { throw ValidationError("--url is not a URL") }
                let configuration = URLSessionConfiguration.ephemeral
                configuration.httpMaximumConnectionsPerHost = 64
                return IngressClient(baseURL: base, session: URLSession(configuration: configuration))
            }
        }
    }

    struct Enroll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enroll the device's public keys with ingress.")
        @OptionGroup var options: DeviceOptions

        func run() async throws {
            let identity = try options.identity()
            try await options.client.enroll(identity, enrollmentToken: options.enrollmentToken)
            print("enrolled \(options.device)")
        }
    }

    struct Inquire: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send signed inquiries: one for --user-id, or --count of them for ids from a customer CSV.")
        @OptionGroup var options: DeviceOptions
        @Option(name: .long, help: "The user id (E.164 number or customer number).") var userId: String?
        @Option(name: .long, help: "A customer CSV to take user ids from (first column).") var usersFrom: String?
        @Option(name: .long, help: "How many inquiries to send with --users-from.") var count = 1
        @Option(name: .long, help: "Of those, how many for customers that were never filed.") var unknown = 0
        @Option(name: .long, help: "Requests in flight.") var concurrency = 16
        @Option(name: .long, help: "Channel.") var channel = "app"

        func run() async throws {
            let identity = try options.identity()
            let client = try options.client
            try await client.enroll(identity, enrollmentToken: options.enrollmentToken)
            if let userId {
                let status = try await client.inquire(identity, userId: userId, channel: channel)
                print("\(status.id) \(status.status)")
                return
            }
            guard let usersFrom else { throw ValidationError("give --user-id or --users-from") }
            var reader = CSVReader(Array(try Data(contentsOf: URL(fileURLWithPath: usersFrom))))
            _ = reader.next()
            var known: [String] = []
            while let row = reader.next(), let id = row.first, !id.isEmpty { known.append(id) }
            guard !known.isEmpty else { throw ValidationError("\(usersFrom) has no customers") }
            var users: [String] = (0..<max(0, count - unknown)).map { known[$0 % known.count] }
            users += (0..<min(unknown, count)).map { "X\(90_000_000 + $0)" }
            users.shuffle()
            let total = users.count
            let started = ContinuousClock.now
            let results = try await InquiryLoad(client: client, device: identity, channel: channel, concurrency: concurrency)
                .send(users) { done in
                    if done % 50 == 0 || done == total {
                        ProgressBar.draw(fraction: Double(done) / Double(total), label: "\(done)/\(total) inquiries answered")
                    }
                }
            let seconds = (ContinuousClock.now - started).seconds
            if ProgressBar.enabled { FileHandle.standardError.write(Data("\n".utf8)) }
            print("inquiries sent: \(users.count) (\(users.count - min(unknown, count)) for filed customers, \(min(unknown, count)) unknown)")
            print("accepted: \(results.accepted); failed: \(results.failed.values.reduce(0, +)) \(results.failed.isEmpty ? "" : "\(results.failed)")")
            print(String(format: "rate: %.0f inquiries/s; latency p50 %.1f ms, p99 %.1f ms", Double(users.count) / seconds,
                         results.percentile(0.5), results.percentile(0.99)))
        }
    }
}

/// Sends many inquiries with bounded concurrency, recording latencies.
struct InquiryLoad: Sendable {
    let client: IngressClient
    let device: DeviceIdentity
    let channel: String
    let concurrency: Int

    struct Results: Sendable {
        var accepted = 0
        var failed: [String: Int] = [:]
        var latencies: [Double] = []

        func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return 0 }
            let sorted = latencies.sorted()
            return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
        }
    }

    func send(_ users: [String], progress: @Sendable (Int) -> Void) async throws -> Results {
        try await withThrowingTaskGroup(of: (Double, Result<String, IngressClient.Failure>).self) { group in
            var results = Results()
            var next = 0
            func add() {
                let user = users[next]
                next += 1
                group.addTask {
                    let start = ContinuousClock.now
                    do {
                        let status = try await client.inquire(device, userId: user, channel: channel)
                        return ((ContinuousClock.now - start).seconds * 1000, .success(status.id))
                    } catch let failure as IngressClient.Failure {
                        return ((ContinuousClock.now - start).seconds * 1000, .failure(failure))
                    }
                }
            }
            while next < min(concurrency, users.count) { add() }
            while let (latency, result) = try await group.next() {
                results.latencies.append(latency)
                switch result {
                case .success: results.accepted += 1
                case .failure(let failure): results.failed[failure.code, default: 0] += 1
                }
                progress(results.latencies.count)
                if next < users.count { add() }
            }
            return results
        }
    }
}
