import ArgumentParser

extension VeilBench {
    static let benchmarks: [any ParsableCommand.Type] = [KafkaBenchmark.self, EnvelopeBenchmark.self, PipelineBenchmark.self, DispatchBenchmark.self, PosBenchmark.self]
}
