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
    static let configuration = CommandConfiguration(commandName: "device",
                                                    abstract: "Act as a device: enroll, send inquiries and service requests, read the inbox.",
                                                    subcommands: [Enroll.self, Inquire.self, Code.self, Request.self, Chat.self, Say.self, Form.self, OpenLink.self, Inbox.self,
                                                                  Revoke.self])

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
        static let configuration = CommandConfiguration(
            abstract: "Enroll the device's public keys with ingress (with --account and --code: bound to that account).")
        @OptionGroup var options: DeviceOptions
        @Option(name: .long, help: "The customer account to bind the device to.") var account: String?
        @Option(name: .long, help: "The one-time code issued for the account (veilctl device code).") var code: String?

        func run() async throws {
            let identity = try options.identity()
            if let account, let code {
                try await options.client.enroll(identity, accountId: account, code: code)
                print("enrolled \(options.device) to account \(account)")
            } else {
                try await options.client.enroll(identity, enrollmentToken: options.enrollmentToken)
                print("enrolled \(options.device)")
            }
        }
    }

    /// Ingress's admin routes, with `VEIL_INGRESS_ADMIN_TOKEN`.
    static func admin(_ options: DeviceOptions, _ path: String, _ body: [String: String]) async throws -> Data {
        guard let token = ProcessInfo.processInfo.environment["VEIL_INGRESS_ADMIN_TOKEN"] else {
            throw ValidationError("set VEIL_INGRESS_ADMIN_TOKEN")
        }
        var request = URLRequest(url: try options.client.baseURL.appendingPathComponent(path))
        request.httpMethod = "POST"
        request.httpBody = try JSONSerialization.data(withJSONObject: body)
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        let (data, response) = try await URLSession.shared.data(for: request)
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        guard (200..<300).contains(status) else {
            throw ValidationError("ingress answered \(status): \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
        return data
    }

    struct Code: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a one-time enrollment code for an account (back office; needs VEIL_INGRESS_ADMIN_TOKEN). Prints the code.")
        @OptionGroup var options: DeviceOptions
        @Option(name: .long, help: "The customer account.") var account: String

        func run() async throws {
            let data = try await DeviceCommand.admin(options, "admin/enrollment-codes", ["accountId": account])
            print(try ContractCoding.decode(EnrollmentCode.self, from: Array(data)).code)
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a device (needs VEIL_INGRESS_ADMIN_TOKEN): its requests are refused at once.")
        @OptionGroup var options: DeviceOptions
        @Option(name: .long, help: "The device id to revoke (default: the key file's).") var deviceId: String?

        func run() async throws {
            _ = try await DeviceCommand.admin(options, "admin/devices/revoke", ["deviceId": try deviceId ?? options.identity().deviceId])
            print("revoked")
        }
    }

    struct Request: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send a service request, sealed on this device to the dispatcher.")
        @OptionGroup var options: DeviceOptions
        @Option(name: .long, help: "Category, e.g. outage, installation.") var category = "outage"
        @Option(name: .long, help: "1 (low) to 5 (urgent).") var priority = 3
        @Option(name: .long, help: "What is wrong.") var description: String
        @Option(name: .long, help: "Service region.") var region: String?
        @Option(name: .long, help: "Customer tier.") var tier: String?

        func run() async throws {
            let receipt = try await options.client.submit(try options.identity(), ServiceRequestPayload(
                category: category, priority: priority, description: description, region: region, tier: tier))
            print("\(receipt.id) \(receipt.status)")
        }
    }

    struct Chat: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Open a chat with an agent (a service request of category chat).")
        @OptionGroup var options: DeviceOptions
        @Option(name: .long, help: "The first message.") var message: String

        func run() async throws {
            let receipt = try await options.client.submit(try options.identity(), ServiceRequestPayload(
                category: "chat", priority: 3, description: message))
            print("\(receipt.id) \(receipt.status)")
        }
    }

    struct Say: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send a message in an open chat (sealed to the dispatcher).")
        @OptionGroup var options: DeviceOptions
        @Option(name: .long, help: "The chat's id (what `device chat` printed).") var chat: String
        @Option(name: .long, help: "The message.") var message: String

        func run() async throws {
            let receipt = try await options.client.submit(try options.identity(), ServiceRequestPayload(
                category: "chat", priority: 3, description: message, conversationId: chat))
            print("\(receipt.id) \(receipt.status)")
        }
    }

    struct Form: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Answer an agent's secure form: the value is sealed on this device to the key-vault (the agent never sees it).")
        @OptionGroup var options: DeviceOptions
        @Option(name: .long, help: "The form id (from `device inbox`; default: the latest form request).") var form: String?
        @Option(name: .long, help: "The value; default: read from standard input (not echoed to your shell history).") var value: String?

        func run() async throws {
            let client = try options.client, device = try options.identity()
            let requests = try await client.inbox(device).compactMap(\.form)
            guard let request = form.map({ id in requests.first { $0.formId == id } }) ?? requests.last else {
                throw ValidationError("no secure-form request in this device's inbox")
            }
            var secret = value
            if secret == nil {
                FileHandle.standardError.write(Data("\(request.kind.title): ".utf8))
                secret = readLine(strippingNewline: true)
            }
            guard let secret, !secret.isEmpty else { throw ValidationError("no value given") }
            try await client.answer(request, value: secret, by: device)
            print("form \(request.formId) (\(request.kind.title)) submitted, sealed to the key-vault")
        }
    }

    struct OpenLink: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "open-link",
                                                        abstract: "Open a channel link received by SMS: bind this app to that request.")
        @OptionGroup var options: DeviceOptions
        @Option(name: .long, help: "The link (or its token).") var link: String

        func run() async throws {
            let receipt = try await options.client.openChannel(try options.identity(), link: link)
            print("\(receipt.id) \(receipt.status); the answer arrives in the inbox (channel-opened or channel-refused)")
        }
    }

    struct Inbox: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Read and open the device's confirmations.")
        @OptionGroup var options: DeviceOptions

        func run() async throws {
            for note in try await options.client.inbox(try options.identity()) {
                print("\(note.requestId.prefix(8)) \(note.status): \(note.message)"
                      + (note.form.map { " [form \($0.formId), \($0.kind.rawValue)]" } ?? ""))
            }
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
