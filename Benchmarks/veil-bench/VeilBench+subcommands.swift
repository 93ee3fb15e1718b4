import ArgumentParser

extension VeilBench {
    static let benchmarks: [any ParsableCommand.Type] = [KafkaBenchmark.self, EnvelopeBenchmark.self, ContractCodingBenchmark.self, PipelineBenchmark.self, DispatchBenchmark.self, PosBenchmark.self]
}
