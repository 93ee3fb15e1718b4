import ArgumentParser
import DispatcherService
import Foundation
import VeilClient
import VeilContracts
import VeilIngressClient
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `veilctl pos`: a till. The terminal is an enrolled device with its own keys; the
/// customer's TID is sealed on the terminal to the key-vault.
struct PosCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pos", abstract: "Act as a point-of-sale terminal.",
                                                    subcommands: [Enroll.self, Lookup.self, Sale.self])

    struct TerminalOptions: ParsableArguments {
        @Option(name: .long, help: "The terminal's id.") var terminal = "till-1"
        @Option(name: .long, help: "The terminal's key file (created if missing).") var keys: String?
        @Option(name: .long, help: "Ingress base URL.") var url = ProcessInfo.processInfo.environment["VEIL_INGRESS_URL"] ?? "http://127.0.0.1:8080"

        func identity() throws -> DeviceIdentity { try deviceIdentity(keys ?? ".veil/terminal-\(terminal).json", id: terminal) }
        var client: IngressClient {
            get throws {
                guard let base = URL(string: url) else { throw ValidationError("--url is not a URL") }
                return IngressClient(baseURL: base)
            }
        }
    }

    struct Enroll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enroll the terminal's keys with ingress.")
        @OptionGroup var options: TerminalOptions
        @Option(name: .long, help: "Enrollment token, if ingress requires one.") var enrollmentToken: String?
        func run() async throws {
            try await options.client.enroll(try options.identity(), enrollmentToken: enrollmentToken)
            print("terminal \(options.terminal) enrolled")
        }
    }

    struct Lookup: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Look a customer's household up by their TID (sealed to the key-vault).")
        @OptionGroup var options: TerminalOptions
        @Option(name: .long, help: "The customer's TID as the till read it.") var tid: String
        func run() async throws {
            let started = ContinuousClock.now
            let result = try await options.client.posLookup(try options.identity(), tid: tid)
            let ms = (ContinuousClock.now - started).components.attoseconds / 1_000_000_000_000_000
            print("household \(result.householdId)  de-identified TID \(result.deidentifiedTid)  (\(ms) ms)")
        }
    }

    struct Sale: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A whole sale: household lookup, then the transaction with the UPCs.")
        @OptionGroup var options: TerminalOptions
        @Option(name: .long, help: "The customer's TID.") var tid: String
        @Option(name: .long, help: "Comma-separated UPC/EAN codes.") var upcs: String
        func run() async throws {
            let client = try options.client, terminal = try options.identity()
            let lookup = try await client.posLookup(terminal, tid: tid)
            let receipt = try await client.posTransaction(terminal, lookup: lookup, upcs: upcs.split(separator: ",").map(String.init))
            print("household \(lookup.householdId): transaction \(receipt.transactionId) \(receipt.status) on veil.pos.transactions.v1")
        }
    }
}

/// `veilctl channel upgrade`: move a customer who texted or called to the app.
struct ChannelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "channel", abstract: "Move a customer from SMS or a call to the app.",
                                                    subcommands: [Upgrade.self])

    struct Upgrade: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Open a chat for a number and text it a one-time link to continue in the app (dispatcher admin API).")
        @Option(name: .long, help: "The number the customer came from (E.164).") var phone: String
        @Option(name: .long, help: "What they wrote or said.") var message: String
        @Option(name: .long, help: "Dispatcher base URL.") var url = ProcessInfo.processInfo.environment["VEIL_DISPATCHER_URL"] ?? "http://127.0.0.1:8082"
        @Option(name: .long, help: "Admin token (default: $VEIL_DISPATCHER_ADMIN_TOKEN).") var token: String?

        func run() async throws {
            guard let token = token ?? ProcessInfo.processInfo.environment["VEIL_DISPATCHER_ADMIN_TOKEN"] else {
                throw ValidationError("set --token or VEIL_DISPATCHER_ADMIN_TOKEN")
            }
            var request = URLRequest(url: URL(string: url + "/admin/channel-upgrades")!)
            request.httpMethod = "POST"
            request.httpBody = try JSONSerialization.data(withJSONObject: ["phoneNumber": phone, "message": message])
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
            let (data, response) = try await URLSession.shared.data(for: request)
            guard (response as? HTTPURLResponse)?.statusCode == 201 else {
                throw ValidationError("the dispatcher answered: \(String(decoding: data, as: UTF8.self))")
            }
            print(String(decoding: data, as: UTF8.self))
        }
    }
}

/// `veilctl agent add`: an agent of the chat desk, who signs in to the console.
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "agent", abstract: "Manage the agents who take chats in the console.",
                                                    subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create or update an agent and set their console password.")
        @Option(name: .long, help: "Agent id (their sign-in).") var id: String
        @Option(name: .long, help: "Display name.") var name: String
        @Option(name: .long, help: "Comma-separated skills (a rule's required skills).") var skills = ""
        @Option(name: .long, help: "Chats held at once.") var capacity = 3
        @Option(name: .long, help: "Console password (default: $VEIL_AGENT_PASSWORD).") var password: String?
        @Option(name: .long, help: "Dispatcher database URL (default: $VEIL_DATABASE_URL_DISPATCHER or $DATABASE_URL).") var database: String?

        func run() async throws {
            guard let password = password ?? ProcessInfo.processInfo.environment["VEIL_AGENT_PASSWORD"] else {
                throw ValidationError("set --password or VEIL_AGENT_PASSWORD")
            }
            let skillList = skills.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            let agent = Technician(id: id, name: name, skills: skillList, regions: [], capacity: capacity, kind: .agent)
            try await withDispatcher(database) { engine in
                try await AgentAccounts(engine: engine, logger: engine.logger).upsert(agent, password: password)
            }
            print("agent \(id): capacity \(capacity)" + (skillList.isEmpty ? "" : ", skills \(skillList.joined(separator: ","))"))
        }
    }
}
