import Foundation
import Synchronization
import Testing
import VeilCore
import VeilEnvelope
import VeilKafka
@testable import VeilService

/// The anonymizer's shape: open the part addressed to it, forward the merger's part
/// unopened, publish to the key-vault under an id derived from the input's.
struct ForwardingStage: EnvelopeHandler {
    func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        guard let pseudonym = envelope.payload("pseudonym"), let access = envelope.part("access-info") else {
            throw StageError.permanent("test.missing_part", "pseudonym or access info missing")
        }
        return [try codec.message(EnvelopeDraft(
            id: .derived(from: envelope.header.id, stage: "anonymizer"), type: "veil.inquiry.anonymized.v1",
            parts: [.sealed("encrypted-id", payload: pseudonym.reversed(), to: ["key-vault"]), .forwarded(access)]),
            topic: "veil.inquiries.anonymized.v1", key: message.key)]
    }
}

@Suite("Envelopes over Kafka", .timeLimit(.minutes(2)))
struct EnvelopeOverKafkaTests {
    let keys: KeyFolder

    init() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-keys-\(UUID())")
        keys = try KeyFolder.createDevelopmentKeys(at: url)
    }

    func codec(_ party: String) throws -> EnvelopeCodec {
        EnvelopeCodec(identity: try keys.identity(party), directory: try keys.directoryStore())
    }

    @Test("a stage verifies, opens its part, forwards the part it cannot open, and the final recipient opens it; tampered and replayed messages never take effect")
    func stageOverKafka() async throws {
        let kafka = try Kafka()
        for topic in ["veil.inquiries.received.v1", "veil.inquiries.received.v1.dlq", "veil.inquiries.anonymized.v1"] {
            try kafka.cluster.createTopic(topic, partitions: 1)
        }
        let ingress = try codec("ingress")
        let producer = try kafka.producer()
        func inquiry(_ pseudonym: String) throws -> OutgoingMessage {
            try ingress.message(EnvelopeDraft(type: "veil.inquiry.received.v1", parts: [
                .sealed("pseudonym", payload: Array(pseudonym.utf8), to: ["anonymizer"]),
                .sealed("access-info", payload: Array("channel=app".utf8), to: ["merger"]),
            ]), topic: "veil.inquiries.received.v1", key: Array("inq-\(pseudonym)".utf8))
        }
        let good = try inquiry("P-1")
        var tampered = try inquiry("P-2")
        tampered.value[tampered.value.count / 2] ^= 0x01
        try await producer.send(batch: [good, tampered, good])  // the third is a replay of the first

        let metrics = ServiceMetrics()
        let stage = StageRunner(name: "anonymizer", consumer: try kafka.consumer(group: "anonymizer", topic: "veil.inquiries.received.v1"),
                                producer: producer, handler: EnvelopeStage(codec: try codec("anonymizer"), handler: ForwardingStage()),
                                metrics: metrics, logger: quietLogger)
        let running = Task { try await stage.run() }
        defer { running.cancel() }

        let outputs = try await read(try kafka.consumer(group: "vault", topic: "veil.inquiries.anonymized.v1"), count: 1)
        let output = try #require(outputs.first)
        #expect(output.headerString("ce_type") == "veil.inquiry.anonymized.v1")
        #expect(output.headerString("ce_source") == "anonymizer")
        #expect(output.key == Array("inq-P-1".utf8))

        let vault = try codec("key-vault").verifier.verify(output.value, topic: output.topic)
        #expect(vault.payload("encrypted-id") == Array("1-P".utf8))
        #expect(vault.payload("access-info") == nil, "the vault cannot open the merger's part")
        let merger = EnvelopeVerifier(identity: try keys.identity("merger"), directory: try keys.directoryStore())
        let forwarded = try merger.verify(output.value, topic: output.topic)
        #expect(forwarded.payload("access-info") == Array("channel=app".utf8), "the merger opens it end to end")

        let dead = try await read(try kafka.consumer(group: "dlq", topic: "veil.inquiries.received.v1.dlq"), count: 1)
        #expect(dead.first?.headerString("veil_dlq_code")?.hasPrefix("envelope.") == true)
        #expect(dead.first?.value == tampered.value)
        // The replay was dropped as a duplicate: no second output, no dead letter.
        #expect((try? await read(try kafka.consumer(group: "vault2", topic: "veil.inquiries.anonymized.v1"), count: 2, seconds: 3)) == nil)
        let exposition = String(decoding: metrics.render(), as: UTF8.self)
        #expect(exposition.contains(#"veil_duplicates_dropped_total{topic="veil.inquiries.received.v1"} 1"#))
        await producer.close()
    }

    @Test("a batch's outputs sealed at once across cores come back in input order, each with its topic and key and opening for its recipient; one that cannot be sealed fails alone")
    func batchOfOutputs() async throws {
        let matcher = try codec("matcher")
        var outputs: [(draft: EnvelopeDraft, topic: String, key: [UInt8]?)] = (0..<40).map { i in
            (EnvelopeDraft(id: .derived(from: .generate(), stage: "matcher"), type: "veil.inquiry.matched.v1",
                           parts: [.sealed("match", payload: Array("record-\(i)".utf8), to: ["merger"])]),
             "veil.inquiries.matched.v1", Array("inq-\(i)".utf8))
        }
        outputs[7].draft = EnvelopeDraft(type: "veil.inquiry.matched.v1", parts: [.sealed("match", payload: [1], to: ["nobody"])])
        let sealed = await matcher.messages(outputs)
        #expect(sealed.count == 40)
        let merger = try codec("merger").verifier
        for (i, result) in sealed.enumerated() {
            if i == 7 {
                #expect(throws: EnvelopeError.self) { try result.get() }
                continue
            }
            let message = try result.get()
            #expect(message.topic == "veil.inquiries.matched.v1" && message.key == Array("inq-\(i)".utf8))
            let opened = try merger.verify(message.value, topic: message.topic)
            #expect(opened.payload("match") == Array("record-\(i)".utf8))
            #expect(opened.header.id == outputs[i].draft.id, "the draft's (derived) id, so a retry repeats it")
        }
    }

    @Test("a directory published on veil.keys.directory.v1 is installed; one with a bad signature is refused")
    func directoryFollower() async throws {
        let kafka = try Kafka()
        try kafka.cluster.createTopic("veil.keys.directory.v1", partitions: 1)
        let store = try keys.directoryStore()
        #expect(store.serial == 1)
        _ = try keys.rotate("matcher")
        let next = try SignedKeyDirectory(serialized: Array(Data(contentsOf: keys.url.appendingPathComponent(KeyFolder.directoryFile))))
        var forged = next.serialized()
        forged[forged.count - 5] ^= 0x01

        let follower = try KeyDirectoryFollower.make(kafka: kafka.configuration, service: .merger, directory: store, logger: quietLogger)
        let running = Task { try await follower.run() }
        defer { running.cancel() }
        let producer = try kafka.producer()
        try await producer.send(OutgoingMessage(topic: "veil.keys.directory.v1", key: Array("directory".utf8), value: forged))
        try await Task.sleep(for: .seconds(2))
        #expect(store.serial == 1, "a forged directory is refused")
        try await producer.send(OutgoingMessage(topic: "veil.keys.directory.v1", key: Array("directory".utf8), value: next.serialized()))
        for _ in 0..<100 where store.serial == 1 { try await Task.sleep(for: .milliseconds(100)) }
        #expect(store.serial > 1)
        await producer.close()
    }
}

/// Fails permanently until `fixed` is set; then forwards to `<topic>.out` under a derived id.
struct FixableStage: EnvelopeHandler {
    let switches = Attempts()  // "fixed" counts once the bug is fixed
    var fixed: Bool { switches["fixed"] > 0 }
    func fix() { switches.count("fixed") }
    let applied = Attempts()
    func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        guard fixed else { throw StageError.permanent("test.not_fixed", "the bug is still there") }
        applied.count(envelope.header.id.description)
        return [OutgoingMessage(topic: message.topic + ".out", key: message.key, value: Array(envelope.header.id.description.utf8))]
    }
}

@Suite("Replaying dead letters", .timeLimit(.minutes(2)))
struct DeadLetterReplayTests {
    @Test("a replay after the fix is applied by the same running stage, keeps its original time (not stale though older than the skew), and a second replay is dropped")
    func replayKeepsIdAndTime() async throws {
        let keys = try KeyFolder.createDevelopmentKeys(at: FileManager.default.temporaryDirectory.appendingPathComponent("veil-keys-\(UUID())"))
        let kafka = try Kafka()
        let topic = "veil.inquiries.received.v1"
        for name in [topic, topic + ".dlq", topic + ".out"] { try kafka.cluster.createTopic(name, partitions: 1) }
        let producer = try kafka.producer()
        let ingress = EnvelopeCodec(identity: try keys.identity("ingress"), directory: try keys.directoryStore())
        let sent = try ingress.message(EnvelopeDraft(type: "veil.inquiry.received.v1", parts: [
            .sealed("pseudonym", payload: [1, 2, 3], to: ["anonymizer"]),
        ]), topic: topic, key: Array("inq-1".utf8))
        try await producer.send(sent)

        // A two-second freshness window, so the replay below comes later than it allows.
        let codec = EnvelopeCodec(identity: try keys.identity("anonymizer"), directory: try keys.directoryStore(),
                                  configuration: EnvelopeConfiguration(maxClockSkew: .seconds(2)))
        let handler = FixableStage()
        let stage = StageRunner(name: "anonymizer", consumer: try kafka.consumer(group: "anonymizer", topic: topic), producer: producer,
                                handler: EnvelopeStage(codec: codec, handler: handler), metrics: ServiceMetrics(), logger: quietLogger)
        let running = Task { try await stage.run() }
        defer { running.cancel() }
        let dead = try await read(try kafka.consumer(group: "dlq", topic: topic + ".dlq"), count: 1)
        #expect(dead.first?.headerString(DeadLetterHeader.code) == "test.not_fixed")

        try await Task.sleep(for: .seconds(3))  // older than the skew now
        handler.fix()
        let queue = DeadLetterQueue(inspector: KafkaInspector(configuration: kafka.configuration))
        let replayed = try await queue.replayPending(topic + ".dlq", producer: producer)
        #expect(replayed.letters.count == 1)
        let outputs = try await read(try kafka.consumer(group: "out", topic: topic + ".out"), count: 1)
        #expect(outputs.first?.value == Array(try Envelope(parsing: sent.value).header.id.description.utf8), "applied under its original id")

        // Pending is empty now; forcing the same letter again is dropped as a duplicate.
        #expect(try await queue.replayPending(topic + ".dlq", producer: producer).letters.isEmpty)
        try await queue.replay(try #require(replayed.letters.first), producer: producer)
        try await Task.sleep(for: .seconds(2))
        #expect((try? await read(try kafka.consumer(group: "out2", topic: topic + ".out"), count: 2, seconds: 3)) == nil)
        #expect(try await queue.summaries([topic + ".dlq"]).first?.pending == 0)
        await producer.close()
    }
}

/// Records the order it handled each key's messages in; the first message of key "slow" takes a while.
struct OrderRecordingStage: EnvelopeHandler {
    let seen = SeenOrder()
    func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        let key = String(decoding: message.key ?? [], as: UTF8.self)
        let payload = String(decoding: envelope.payload("pseudonym") ?? [], as: UTF8.self)
        if payload == "slow-1" { try await Task.sleep(for: .milliseconds(300)) }
        seen.append(key, payload)
        return [OutgoingMessage(topic: message.topic + ".out", key: message.key, value: Array(payload.utf8))]
    }
}

final class SeenOrder: Sendable {
    private let entries = Mutex<[(String, String)]>([])
    func append(_ key: String, _ value: String) { entries.withLock { $0.append((key, value)) } }
    var all: [(String, String)] { entries.withLock { $0 } }
}

@Suite("Concurrent envelope stage", .timeLimit(.minutes(2)))
struct ConcurrentEnvelopeStageTests {
    @Test("messages of one key are handled in order, other keys meanwhile; outputs keep the message order")
    func perKeyOrder() async throws {
        let keys = try KeyFolder.createDevelopmentKeys(at: FileManager.default.temporaryDirectory.appendingPathComponent("veil-keys-\(UUID())"))
        let ingress = EnvelopeCodec(identity: try keys.identity("ingress"), directory: try keys.directoryStore())
        let anonymizer = EnvelopeCodec(identity: try keys.identity("anonymizer"), directory: try keys.directoryStore())
        let topic = "veil.inquiries.received.v1"
        let batch = try [("slow", "slow-1"), ("fast", "fast-1"), ("slow", "slow-2"), ("fast", "fast-2"), ("slow", "slow-3")]
            .enumerated().map { offset, item in
                let message = try ingress.message(EnvelopeDraft(type: "veil.inquiry.received.v1", parts: [
                    .sealed("pseudonym", payload: Array(item.1.utf8), to: ["anonymizer"]),
                ]), topic: topic, key: Array(item.0.utf8))
                return KafkaMessage(topic: topic, partition: 0, offset: Int64(offset), key: message.key, value: message.value,
                                    timestampMilliseconds: Int64(Date().timeIntervalSince1970 * 1000))
            }
        let handler = OrderRecordingStage()
        let stage = ConcurrentEnvelopeStage(codec: anonymizer, handler: handler, concurrency: 4)
        let prepared = await stage.prepare(batch)
        var outputs: [String] = []
        for (message, input) in zip(batch, prepared) {
            for output in try await stage.handle(try input.get(), message: message) { outputs.append(String(decoding: output.value, as: UTF8.self)) }
        }
        let seen = handler.seen.all
        #expect(seen.filter { $0.0 == "slow" }.map(\.1) == ["slow-1", "slow-2", "slow-3"], "one key, in order")
        #expect(seen.firstIndex { $0.1 == "fast-2" }! < seen.firstIndex { $0.1 == "slow-1" }!, "the other key did not wait")
        #expect(outputs == ["slow-1", "fast-1", "slow-2", "fast-2", "slow-3"], "outputs in message order")
    }
}
