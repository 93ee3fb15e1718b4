import ArgumentParser
import Foundation
import VeilService

/// `veilctl config variables`: the environment every service reads, from the
/// services' own definitions (the deployment checks read this, so they cannot drift).
struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Service configuration.",
                                                    subcommands: [Variables.self])

    struct Variables: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the environment variables every service reads.")

        @Flag(help: "Print JSON.")
        var json = false

        func run() throws {
            let variables = ServiceConfiguration.variables
            if json {
                let objects: [[String: Any]] = variables.map {
                    ["name": $0.name, "required": $0.required, "default": $0.defaultValue as Any? ?? NSNull(),
                     "secret": $0.secret, "help": $0.help]
                }
                let data = try JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                for v in variables {
                    let note = v.required ? "required" : "default: \(v.defaultValue ?? "unset")"
                    print("\(v.name.padding(toLength: 32, withPad: " ", startingAt: 0)) \(note.padding(toLength: 22, withPad: " ", startingAt: 0)) \(v.help)")
                }
            }
        }
    }
}
