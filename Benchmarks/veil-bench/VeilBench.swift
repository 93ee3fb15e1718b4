import ArgumentParser

/// Veil's benchmarks. Each compares a Veil layer with its bare baseline measured in
/// the same run on the same machine, and prints both and their ratio.
@main
struct VeilBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "veil-bench",
        abstract: "Benchmarks Veil's layers against their bare baselines.",
        subcommands: benchmarks)
}
