import ArgumentParser
import CKafkaBaseline
import Foundation
import Logging
import VeilKafka
import VeilService
import Synchronization

/// `veil-bench kafka`: produce and consume throughput of VeilKafka against a plain C
/// loop over librdkafka, same broker, message count and size, in one run.
struct KafkaBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kafka",
                                                    abstract: "VeilKafka vs. a plain librdkafka C loop.")

    @Option(help: "Bootstrap servers of a real cluster (default: an in-process embedded cluster).")
    var brokers: String?
    /// The embedded (mock) cluster keeps at most 5 MB per partition and drops older
    /// data, so messages are spread evenly (message i to partition i % partitions).
    @Option(help: "Partitions of the benchmark topics (the embedded cluster keeps 5 MB per partition).")
    var partitions: Int32 = 128
    @Option(help: "Messages per run.")
    var messages: Int = 1_000_000
    @Option(help: "Payload bytes per message.")
    var size: Int = 256
    /// librdkafka 2.0.2 stops fetching once its pre-fetch queue holds this much and looks
    /// again only after up to a second (measured: 0.2–0.6 s gaps, one to three per million,
    /// on either side, whichever drains slower than the in-process broker fills). The stalls
    /// decided which side won a round, not the layers' cost, so both sides get a bound large
    /// enough (1 GB) that neither reaches it. Services keep librdkafka's 64 MB: none reads
    /// faster than 64 MB a second, which is when a stall could empty the queue.
    @Option(help: "librdkafka's pre-fetch bound for both consumers, queued.max.messages.kbytes (its default: 65536).")
    var fetchQueueKbytes: Int = 1_048_576
    /// This machine is a shared VM: one round of either side can take twice its usual time
    /// (measured: C's consume 0.36–1.07 s, VeilKafka's 0.33–1.10 s for the same million).
    /// The best of several rounds is each side's cost without that interference; the
    /// median is printed beside it so a reader sees the spread.
    @Option(help: "Rounds (even, so each side goes first as often); the best of each side is reported, with the median beside it.")
    var rounds: Int = 8
    @Flag(help: "Measure producing only (for quicker comparisons of producer changes).")
    var produceOnly = false

    func run() async throws {
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        print("veil-bench kafka: \(messages) messages of \(size) bytes, brokers \(brokers ?? "embedded, a fresh cluster per round"), \(rounds) round(s)")

        guard rounds >= 2, rounds % 2 == 0 else { throw ValidationError("--rounds must be even (each side goes first as often)") }
        var times = (cProduce: [Double](), veilProduce: [Double](), cConsume: [Double](), veilConsume: [Double](), veilCopies: [Double]())
        for round in 1...rounds {
            // The embedded cluster keeps what it was sent in this process's memory (two topics of
            // 256 MB a round at the defaults), and each round on one cluster ran slower than the
            // one before: the best rounds fell on whoever went first in round 1, on the emptiest
            // cluster. A fresh cluster per round starts every round alike.
            let embedded = brokers == nil ? try EmbeddedKafkaCluster(brokers: 3) : nil
            let bootstrap = brokers ?? embedded!.bootstrapServers
            defer { withExtendedLifetime(embedded) {} }
            let tag = UUID().uuidString.prefix(8)
            let cTopic = "bench.c.\(tag)", veilTopic = "bench.veil.\(tag)"
            if let embedded {
                try embedded.createTopic(cTopic, partitions: partitions)
                try embedded.createTopic(veilTopic, partitions: partitions)
            } else {
                try await KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: bootstrap), logger: logger)
                    .ensureTopics([cTopic, veilTopic].map { TopicSpecification(name: $0, partitions: partitions) })
            }

            // The two sides take turns going first (the embedded cluster runs in this
            // process and fills as it goes, so whoever goes second meets a fuller cluster).
            // Both consumers read the same records, the C producer's topic, each with a
            // group of its own, so consuming compares the layers, not how the producers batched.
            let order = round % 2 == 1 ? ["C", "Veil"] : ["Veil", "C"]
            var cProduce = 0.0, veilProduce = 0.0, cConsume = 0.0, veilConsume = 0.0, veilCopies = 0.0
            progress("round \(round):")
            let debug = ProcessInfo.processInfo.environment["VEIL_BENCH_DEBUG"] != nil
            for side in order {
                progress(" producing with \(side)")
                let cpu = processCPUSeconds()
                defer { if debug { progress(String(format: " [cpu %.2fs]", processCPUSeconds() - cpu)) } }
                if side == "C" {
                    cProduce = veil_baseline_produce(bootstrap, cTopic, Int64(messages), size, partitions)
                    guard cProduce > 0 else { throw ValidationError("baseline produce failed") }
                } else {
                    veilProduce = try await produceWithVeil(bootstrap, topic: veilTopic, logger: logger)
                }
                progress(String(format: " %.2fs;", side == "C" ? cProduce : veilProduce))
            }
            // Three readers of the same records: the C loop, VeilKafka's lent batches
            // (`withNextBatch`, the layer's zero-copy read) and its owned copies (`nextBatch`,
            // each message copied into a `KafkaMessage`). Who reads first rotates by round.
            let readers = ["C", "Veil", "Veil copies"]
            let consumeOrder = (0..<3).map { readers[($0 + round - 1) % 3] }
            for side in produceOnly ? [] : consumeOrder {
                progress(" consuming with \(side)")
                let cpu = processCPUSeconds(), faults = processMinorFaults()
                defer { if debug { progress(String(format: " [cpu %.2fs, %d page faults]", processCPUSeconds() - cpu, processMinorFaults() - faults)) } }
                if side == "C" {
                    cConsume = veil_baseline_consume(bootstrap, cTopic, "bench.c.\(tag)", Int64(messages), Int32(fetchQueueKbytes))
                    guard cConsume > 0 else { throw ValidationError("baseline consume failed") }
                } else if side == "Veil" {
                    veilConsume = try await consumeWithVeil(bootstrap, topic: cTopic, group: "bench.veil.\(tag)", lent: true, logger: logger)
                } else {
                    veilCopies = try await consumeWithVeil(bootstrap, topic: cTopic, group: "bench.copies.\(tag)", lent: false, logger: logger)
                }
                progress(String(format: " %.2fs;", side == "C" ? cConsume : side == "Veil" ? veilConsume : veilCopies))
            }
            progress("\n")
            times.cProduce.append(cProduce); times.veilProduce.append(veilProduce)
            times.cConsume.append(cConsume); times.veilConsume.append(veilConsume); times.veilCopies.append(veilCopies)
        }
        let n = Double(messages)
        func rate(_ seconds: Double) -> String { String(format: "%10.0f msg/s %7.1f MB/s", n / seconds, n * Double(size) / seconds / 1e6) }
        func median(_ values: [Double]) -> Double {
            let sorted = values.sorted()
            return (sorted[(sorted.count - 1) / 2] + sorted[sorted.count / 2]) / 2
        }
        func line(_ name: String, _ c: [Double], _ veil: [Double]) -> String {
            let best = (c: c.min()!, veil: veil.min()!)
            return "\(name.padding(toLength: 16, withPad: " ", startingAt: 0))\(rate(best.c))   \(rate(best.veil))   " + String(format: "%.2f", best.c / best.veil)
                + String(format: "     (medians: C %.2f s, Veil %.2f s, ratio %.2f)", median(c), median(veil), median(c) / median(veil))
        }
        print("")
        print("best of \(rounds) rounds")
        print("                plain librdkafka (C)          VeilKafka                     ratio (target >= 0.90)")
        print(line("produce", times.cProduce, times.veilProduce))
        if !produceOnly {
            print(line("consume", times.cConsume, times.veilConsume))
            print(line("consume, copies", times.cConsume, times.veilCopies))
            print("(consume: lent batches, withNextBatch; consume, copies: nextBatch, each message copied into a KafkaMessage)")
        }
    }

    private func produceWithVeil(_ bootstrap: String, topic: String, logger: Logger) async throws -> Double {
        var configuration = ProducerConfiguration(kafka: KafkaConfiguration(bootstrapServers: bootstrap, clientID: "bench"))
        configuration.maxQueuedMessages = 100_000
        let producer = try KafkaProducer(configuration: configuration, logger: logger)
        let payload = [UInt8](repeating: UInt8(ascii: "x"), count: size)
        let start = ContinuousClock.now
        // One send over a lazily built sequence: messages stream into librdkafka, one wait at the end.
        let partitions = self.partitions
        try await producer.send(batch: (0..<messages).lazy.map { i in
            OutgoingMessage(topic: topic, value: payload, partition: Int32(i % Int(partitions)))
        })
        let elapsed = ContinuousClock.now - start
        await producer.close()
        return elapsed.seconds
    }

    /// Reads the million with lent batches (`withNextBatch`) or owned copies (`nextBatch`),
    /// summing the payloads' sizes either way and marking each batch processed.
    private func consumeWithVeil(_ bootstrap: String, topic: String, group: String, lent: Bool, logger: Logger) async throws -> Double {
        let kafka = KafkaConfiguration(bootstrapServers: bootstrap, clientID: "bench",
                                       properties: ["queued.max.messages.kbytes": String(fetchQueueKbytes)])
        let configuration = ConsumerConfiguration(kafka: kafka, groupID: group, topics: [topic])
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        // One watchdog for the whole run (not a timer per batch, which the C loop does not pay
        // for either): no batch for 30 s ends the reading with an error.
        let progressMark = Atomic<Int>(0)
        let watchdog = Task {
            var seen = -1
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(30))
                let now = progressMark.load(ordering: .relaxed)
                if now == seen { consumer.stopReading(); return true }
                seen = now
            }
            return false
        }
        var received = 0, bytes = 0, batches = 0
        var start: ContinuousClock.Instant?
        var gaps: [String] = []
        var last = ContinuousClock.now
        func arrived(_ count: Int) {
            if start == nil { start = .now }
            let now = ContinuousClock.now
            if now - last > .milliseconds(200) { gaps.append("\(received)@\((now - last).seconds)") }
            last = now
            received += count
            batches += 1
        }
        if lent {
            while received < messages, let _ = try await consumer.withNextBatch({ batch in
                arrived(batch.count)
                for message in batch { bytes += message.value.count }
                consumer.markProcessed(batch)
            }) { progressMark.store(batches, ordering: .relaxed) }
        } else {
            while received < messages, let batch = try await consumer.nextBatch() {
                arrived(batch.count)
                for message in batch { bytes += message.value.count }
                consumer.markProcessed(batch)
                progressMark.store(batches, ordering: .relaxed)
            }
        }
        let elapsed = ContinuousClock.now - (start ?? .now)
        watchdog.cancel()
        await consumer.close()
        guard received >= messages else {
            throw ValidationError("no message for 30 s after \(received): did the broker drop old segments? raise --partitions")
        }
        precondition(bytes == received * size)
        if ProcessInfo.processInfo.environment["VEIL_BENCH_DEBUG"] != nil { progress(" [\(batches) batches, gaps \(gaps)]") }
        return elapsed.seconds
    }
}

/// User and system CPU seconds of this process so far (every thread: the embedded
/// cluster's and librdkafka's too).
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Minor page faults of this process so far (fresh memory touched for the first time).
func processMinorFaults() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_minflt
}

/// Progress on standard error, unbuffered, so a long run shows where it is.
func progress(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}


