import ArgumentParser
import DispatcherService
import Foundation
import Logging
import VeilClient
import VeilContracts
import VeilIngressClient
import VeilStore
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Runs `body` with the dispatcher's engine on its schema (`--database` or the
/// dispatcher's `DATABASE_URL`), as the admin API would.
func withDispatcher<T: Sendable>(_ url: String?, _ body: @Sendable (AssignmentEngine) async throws -> T) async throws -> T {
    guard let url = url ?? ProcessInfo.processInfo.environment["VEIL_DATABASE_URL_DISPATCHER"]
            ?? ProcessInfo.processInfo.environment["DATABASE_URL"] else {
        throw ValidationError("set --database, VEIL_DATABASE_URL_DISPATCHER or DATABASE_URL")
    }
    var logger = Logger(label: "veilctl")
    logger.logLevel = .error
    let database = try Database(configuration: try DatabaseConfiguration(url: url), schema: ServiceName.dispatcher.schema, logger: logger)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await database.run() }
        defer { group.cancelAll() }
        try await database.migrate(Dispatcher.migrations)
        return try await body(AssignmentEngine(database: database, policy: AssignmentPolicy(), logger: logger))
    }
}

/// A device key file (`{"deviceId", "signingKey", "encryptionKey"}`), created if missing.
func deviceIdentity(_ path: String, id: String) throws -> DeviceIdentity {
    let file = URL(fileURLWithPath: path)
    if let data = try? Data(contentsOf: file) {
        return try DeviceIdentity(stored: JSONDecoder().decode(DeviceIdentity.Stored.self, from: data))
    }
    let identity = DeviceIdentity(deviceId: id)
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
    try encoder.encode(identity.stored).write(to: file)
    try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file.path)
    return identity
}

/// `veilctl technician`: seed technicians, and act as a technician's app.
struct TechnicianCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "technician", abstract: "Manage technicians and act as a technician's app.",
                                                    subcommands: [Add.self, Listen.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create or update a technician in the dispatcher, with their device's public keys (the key file is created if missing).")
        @Option(name: .long, help: "Technician id.") var id: String
        @Option(name: .long, help: "Display name.") var name: String
        @Option(name: .long, help: "Comma-separated skills.") var skills: String
        @Option(name: .long, help: "Comma-separated regions served.") var regions: String
        @Option(name: .long, help: "Preferred region.") var homeRegion: String?
        @Option(name: .long, help: "Requests held at once.") var capacity = 1
        @Option(name: .long, help: "available, busy or offline.") var activity = "available"
        @Option(name: .long, help: "Shift in UTC, HH:MM-HH:MM.") var shift: String?
        @Option(name: .long, help: "The technician device's key file.") var device: String?
        @Option(name: .long, help: "Dispatcher database URL (default: $VEIL_DATABASE_URL_DISPATCHER or $DATABASE_URL).") var database: String?

        func run() async throws {
            let list = { (text: String) in text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
            let hours = shift?.split(separator: "-").map(String.init)
            guard shift == nil || hours?.count == 2 else { throw ValidationError("--shift is HH:MM-HH:MM (UTC)") }
            let identity = try device.map { try deviceIdentity($0, id: id) }
            guard identity == nil || identity?.deviceId == id else { throw ValidationError("the key file belongs to \(identity!.deviceId)") }
            let technician = Technician(id: id, name: name, skills: list(skills), regions: list(regions), homeRegion: homeRegion,
                                        capacity: capacity, activity: activity, shiftStart: hours?[0], shiftEnd: hours?[1],
                                        signingKey: identity?.signingKey.publicKey.rawRepresentation,
                                        encryptionKey: identity?.encryptionKey.publicKey.rawRepresentation)
            try await withDispatcher(database) { try await $0.upsert(technician) }
            print("technician \(id): \(list(skills).joined(separator: ",")) in \(list(regions).joined(separator: ",")), capacity \(capacity)"
                  + (identity == nil ? "" : ", device keys enrolled"))
        }
    }

    struct Listen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Act as the technician's app: fetch offers, open them, and answer (accept, then en route and completed; or decline).")
        @Option(name: .long, help: "The technician device's key file.") var device: String
        @Option(name: .long, help: "Technician-alerter base URL.") var url = ProcessInfo.processInfo.environment["VEIL_ALERTER_URL"] ?? "http://127.0.0.1:8081"
        @Option(name: .long, help: "Ingress base URL (for the dispatcher's key).") var ingress = ProcessInfo.processInfo.environment["VEIL_INGRESS_URL"] ?? "http://127.0.0.1:8080"
        @Option(name: .long, help: "Decline every Nth offer (0: never).") var declineEvery = 0
        @Option(name: .long, help: "Stop after this many seconds.") var seconds: Double = 30
        @Option(name: .long, help: "Stop after answering this many offers.") var count: Int?

        func run() async throws {
            guard let alerter = URL(string: url), let ingressURL = URL(string: ingress) else { throw ValidationError("bad URL") }
            let identity = try deviceIdentity(device, id: "")
            let client = TechnicianClient(baseURL: alerter, device: identity)
            let dispatcher = try await IngressClient(baseURL: ingressURL).dispatcherKey()
            let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
            var answered = 0
            while ContinuousClock.now < end, answered < (count ?? .max) {
                let alerts: [AlertPayload]
                do {
                    alerts = try await client.alerts()
                } catch {
                    FileHandle.standardError.write(Data("\(identity.deviceId): \(error); retrying\n".utf8))
                    try await Task.sleep(for: .seconds(1))
                    continue
                }
                for alert in alerts {
                    answered += 1
                    let decline = declineEvery > 0 && answered % declineEvery == 0
                    print("\(identity.deviceId): offer \(alert.reservationId.prefix(8)) [\(alert.category), priority \(alert.priority)] \"\(alert.description)\" → \(decline ? "decline" : "accept")")
                    if decline {
                        try await client.answer(alert, .decline, note: "not available", dispatcher: dispatcher)
                        continue
                    }
                    for action in [TechnicianAction.accept, .enRoute, .completed] {
                        try await client.answer(alert, action, note: action == .completed ? "done" : nil, dispatcher: dispatcher)
                    }
                }
                try await Task.sleep(for: .milliseconds(300))
            }
        }
    }
}

/// `veilctl dispatch stats`: the queue and the technicians' answers.
struct DispatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dispatch", abstract: "The dispatcher's queue.", subcommands: [Stats.self])

    struct Stats: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Waiting, longest wait, escalated, offers accepted/declined/timed out, mean acceptance time.")
        @Option(name: .long, help: "Dispatcher database URL (default: $VEIL_DATABASE_URL_DISPATCHER or $DATABASE_URL).") var database: String?
        @Flag(name: .long, help: "Print JSON.") var json = false

        func run() async throws {
            let s = try await withDispatcher(database) { try await $0.statistics() }
            if json {
                print(String(decoding: ContractCoding.encode(s), as: UTF8.self))
                return
            }
            print(String(format: "waiting %d (longest %.0f s, escalated %d); offered %d; assigned %d", s.waiting, s.longestWaitSeconds,
                         s.escalated, s.offered, s.assigned))
            print(String(format: "offers: accepted %d, declined %d, timed out %d; mean time to accept %.1f s", s.accepted, s.declined,
                         s.timedOut, s.averageAcceptanceSeconds))
        }
    }
}
