import Foundation
import VeilContracts
import VeilEnvelope
import VeilKafka

/// The headers a stage adds to a dead-lettered message (`StageRunner.deadLetter`),
/// and the one a replay adds. Documented for operators in docs/asyncapi.yaml.
public enum DeadLetterHeader {
    /// The stable error code, e.g. `envelope.open_failed`.
    public static let code = "veil_dlq_code"
    /// A short reason, never a payload.
    public static let reason = "veil_dlq_reason"
    /// The stage that gave up, e.g. `matcher`.
    public static let stage = "veil_dlq_stage"
    /// Where the message was read from.
    public static let topic = "veil_dlq_topic"
    public static let partition = "veil_dlq_partition"
    public static let offset = "veil_dlq_offset"
    /// How many times it was handled.
    public static let attempts = "veil_dlq_attempts"
    /// The original record's create time (ms since the epoch).
    public static let timestamp = "veil_dlq_timestamp"
    /// On a replayed message: `<dlq topic>/<partition>/<offset>` it was replayed from.
    public static let replayedFrom = "veil_replayed_from"
}

/// One message on a `<topic>.dlq` topic, with why it failed and where it came from.
/// Shows headers only: the value is the original envelope, sealed, and stays so.
public struct DeadLetter: Sendable {
    /// The dead-letter record itself.
    public let record: KafkaMessage

    public init(_ record: KafkaMessage) { self.record = record }

    public var code: String { record.headerString(DeadLetterHeader.code) ?? "unknown" }
    public var reason: String { record.headerString(DeadLetterHeader.reason) ?? "" }
    public var stage: String { record.headerString(DeadLetterHeader.stage) ?? "" }
    public var attempts: Int { record.headerString(DeadLetterHeader.attempts).flatMap { Int($0) } ?? 0 }
    /// The topic it was read from (the dead-letter topic's name without `.dlq` if absent).
    public var sourceTopic: String {
        record.headerString(DeadLetterHeader.topic) ?? String(record.topic.dropLast(record.topic.hasSuffix(".dlq") ? 4 : 0))
    }
    public var sourcePartition: Int32? { record.headerString(DeadLetterHeader.partition).flatMap { Int32($0) } }
    public var sourceOffset: Int64? { record.headerString(DeadLetterHeader.offset).flatMap { Int64($0) } }
    /// The original record's create time; for older dead letters, the envelope's created-at.
    public var originalTimestampMilliseconds: Int64? {
        if let stored = record.headerString(DeadLetterHeader.timestamp).flatMap({ Int64($0) }), stored > 0 { return stored }
        return envelopeHeader.map { Int64(clamping: $0.createdAtMilliseconds) }
    }
    /// The message id (the envelope's, mirrored in `ce_id`).
    public var messageID: String? { envelopeHeader?.id.description ?? record.headerString("ce_id") }
    public var type: String? { envelopeHeader?.type ?? record.headerString("ce_type") }
    public var producer: String? { envelopeHeader?.producer ?? record.headerString("ce_source") }
    /// The envelope header, if the value parses as an envelope (its signature is not
    /// checked here: this is for display, and the consumer verifies on replay).
    public var envelopeHeader: EnvelopeHeader? { try? Envelope(parsing: record.value).header }
    /// `<dlq topic>/<partition>/<offset>`.
    public var coordinates: String { "\(record.topic)/\(record.partition)/\(record.offset)" }

    /// The message to put back on its source topic: the original key, value and
    /// headers (so the same id, which consumers drop if they applied it already), on
    /// its original partition and with its original record time, so the consumer
    /// judges its freshness exactly as it judged the original.
    public func replayMessage(sourcePartitions: Int32?) -> OutgoingMessage {
        var headers = record.headers.filter { !$0.name.hasPrefix("veil_dlq_") && $0.name != DeadLetterHeader.replayedFrom }
        headers.append(KafkaHeader(name: DeadLetterHeader.replayedFrom, string: coordinates))
        let partition = sourcePartition.flatMap { p in sourcePartitions.map { p < $0 ? p : nil } ?? nil }
        return OutgoingMessage(topic: sourceTopic, key: record.key, value: record.value, headers: headers,
                               partition: partition, timestampMilliseconds: originalTimestampMilliseconds)
    }
}

/// The dead-letter topics of a cluster: counts, listing, and replay after a fix.
///
/// Replay progress is kept as committed offsets of `replayGroup` on each dead-letter
/// topic (no service reads them), so `replayPending` puts back only what was not
/// replayed before. Replaying keeps each message's id: whatever a consumer already
/// applied is dropped as a duplicate, so replaying twice applies nothing twice.
public struct DeadLetterQueue: Sendable {
    public let inspector: KafkaInspector
    /// The bookkeeping group whose committed offsets mark what was replayed.
    public let replayGroup: String

    public init(inspector: KafkaInspector, replayGroup: String = "veil.ops.dlq-replay") {
        self.inspector = inspector
        self.replayGroup = replayGroup
    }

    /// Every dead-letter topic a stage writes (those of the topics stages consume).
    public static var topics: [String] {
        var seen = Set<String>()
        return ServiceName.allCases.flatMap(\.stageTopics).map(\.deadLetter.name).filter { seen.insert($0).inserted }
    }

    /// How many dead letters one topic keeps, and how many were replayed.
    public struct Summary: Sendable, Hashable, Codable {
        public var topic: String
        /// Messages kept (high - low watermark, summed over partitions).
        public var kept: Int64
        /// Ever written (the high watermarks): survives retention, for alerting on growth.
        public var total: Int64
        /// Kept messages not replayed yet.
        public var pending: Int64
    }

    /// A summary of each dead-letter topic that exists.
    public func summaries(_ topics: [String] = DeadLetterQueue.topics) async throws(KafkaError) -> [Summary] {
        let partitions = try await inspector.topicPartitions(topics)
        let marks = try await inspector.watermarks(partitions)
        let replayed = try await inspector.committedOffsets(group: replayGroup, partitions)
        var byTopic: [String: Summary] = [:]
        for p in partitions {
            let mark = marks[p] ?? Watermarks(low: 0, high: 0)
            let start = max(mark.low, replayed[p] ?? mark.low)
            byTopic[p.topic, default: Summary(topic: p.topic, kept: 0, total: 0, pending: 0)].kept += mark.count
            byTopic[p.topic]!.total += mark.high
            byTopic[p.topic]!.pending += max(0, mark.high - start)
        }
        return topics.compactMap { byTopic[$0] }
    }

    /// The dead letters kept on `topic` (oldest first, up to `limit`), each with whether it was replayed.
    public func list(_ topic: String, limit: Int = 100) async throws(KafkaError) -> [(letter: DeadLetter, replayed: Bool)] {
        let partitions = try await inspector.topicPartitions([topic])
        guard !partitions.isEmpty else { throw .unknownTopic(topic) }
        let marks = try await inspector.watermarks(partitions)
        let replayed = try await inspector.committedOffsets(group: replayGroup, partitions)
        var result: [(letter: DeadLetter, replayed: Bool)] = []
        for p in partitions {
            guard let mark = marks[p], mark.count > 0, result.count < limit else { continue }
            let end = min(mark.high, mark.low + Int64(limit - result.count))
            for record in try await inspector.read(p, offsets: mark.low..<end) {
                result.append((DeadLetter(record), record.offset < (replayed[p] ?? mark.low)))
            }
        }
        return result.sorted { ($0.letter.record.timestampMilliseconds, $0.letter.record.offset) < ($1.letter.record.timestampMilliseconds, $1.letter.record.offset) }
    }

    /// One dead letter by its coordinates.
    public func find(_ topic: String, partition: Int32, offset: Int64) async throws(KafkaError) -> DeadLetter? {
        try await inspector.read(TopicPartition(topic: topic, partition: partition), offsets: offset..<(offset + 1)).first.map(DeadLetter.init)
    }

    /// What a replay did.
    public struct Replayed: Sendable {
        public var letters: [DeadLetter] = []
    }

    /// Puts back every dead letter of `topic` not replayed before, partition by
    /// partition: each partition's messages are acknowledged by the broker before its
    /// replay offset is committed, so an interrupted replay repeats at most the
    /// unacknowledged part (and the consumers drop what they already applied).
    public func replayPending(_ topic: String, producer: KafkaProducer,
                              progress: @Sendable (Int) -> Void = { _ in }) async throws(KafkaError) -> Replayed {
        let partitions = try await inspector.topicPartitions([topic])
        guard !partitions.isEmpty else { throw .unknownTopic(topic) }
        let marks = try await inspector.watermarks(partitions)
        let replayed = try await inspector.committedOffsets(group: replayGroup, partitions)
        var done = Replayed()
        for p in partitions {
            guard let mark = marks[p] else { continue }
            let start = max(mark.low, replayed[p] ?? mark.low)
            guard start < mark.high else { continue }
            let letters = try await inspector.read(p, offsets: start..<mark.high).map(DeadLetter.init)
            try await send(letters, producer: producer)
            try await inspector.commit(group: replayGroup, [p: mark.high])
            done.letters += letters
            progress(done.letters.count)
        }
        return done
    }

    /// Puts back one dead letter, whether or not it was replayed before (its id is
    /// kept, so a consumer that applied it drops it). Replay bookkeeping is unchanged.
    public func replay(_ letter: DeadLetter, producer: KafkaProducer) async throws(KafkaError) {
        try await send([letter], producer: producer)
    }

    private func send(_ letters: [DeadLetter], producer: KafkaProducer) async throws(KafkaError) {
        let sources = try await inspector.partitions(of: Array(Set(letters.map(\.sourceTopic))))
        try await producer.send(batch: letters.map { $0.replayMessage(sourcePartitions: sources[$0.sourceTopic]) })
    }
}
