import ArgumentParser

/// Veil's operator CLI.
@main
struct Veilctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "veilctl",
        abstract: "Operate Veil: database roles, keys, topics and dead letters.",
        subcommands: Self.available)
}
