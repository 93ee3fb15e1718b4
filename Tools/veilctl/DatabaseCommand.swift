import ArgumentParser
import Foundation
import Logging
import VeilContracts
import VeilStore

/// `veilctl db provision`: one role and one schema per service, least privilege.
struct DatabaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "db", abstract: "Database roles and schemas.",
                                                    subcommands: [Provision.self])

    struct Provision: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create each service's role and schema, and print the DATABASE_URL each service should use.")

        @Option(help: "Administrative PostgreSQL URL (defaults to $DATABASE_URL).")
        var adminURL: String?

        @Option(help: "Services to provision (default: all seven).")
        var service: [String] = []

        @Option(help: "Password of each role is PREFIX-<service>. Use real secrets in production.")
        var passwordPrefix: String = "veil-dev"

        @Flag(help: "Print shell `export` lines, VEIL_DATABASE_URL_<SERVICE>=...")
        var exports = false

        func run() async throws {
            guard let url = adminURL ?? ProcessInfo.processInfo.environment["DATABASE_URL"] else {
                throw ValidationError("set --admin-url or DATABASE_URL")
            }
            let services = try service.isEmpty ? ServiceName.allCases : service.map { name in
                guard let s = ServiceName(rawValue: name) else { throw ValidationError("unknown service \(name)") }
                return s
            }
            var logger = Logger(label: "veilctl")
            logger.logLevel = .error
            let provisioner = DatabaseProvisioner(admin: try DatabaseConfiguration(url: url), logger: logger)
            for service in services {
                let password = "\(passwordPrefix)-\(service.rawValue)"
                let configuration = try await provisioner.provision(schema: service.schema, password: password)
                let serviceURL = "postgres://\(configuration.username):\(password)@\(configuration.host):\(configuration.port)/\(configuration.database)"
                if exports {
                    print("export VEIL_DATABASE_URL_\(service.schema.uppercased())=\(serviceURL)")
                } else {
                    print("\(service.rawValue): role \(configuration.username), schema \(service.schema)")
                }
            }
        }
    }
}
