import VeilContracts
import VeilKafka

/// How far each service's consumer group is behind on each topic it reads, from the
/// group's committed offsets and the partitions' high watermarks (what
/// `veilctl status` shows, and what an autoscaler on lag would use).
public struct ConsumerLag: Sendable, Hashable, Codable {
    public var service: String
    public var group: String
    public var topic: String
    /// Messages written but not yet committed by the group, summed over partitions.
    public var lag: Int64
    /// Partitions the group has never committed (counted from the low watermark).
    public var uncommittedPartitions: Int
    public var partitions: Int

    /// The lag of every service's stage group on every topic it consumes that exists.
    public static func gather(_ inspector: KafkaInspector,
                              services: [ServiceName] = ServiceName.allCases) async throws(KafkaError) -> [ConsumerLag] {
        var result: [ConsumerLag] = []
        for service in services where !service.stageTopics.isEmpty {
            let partitions = try await inspector.topicPartitions(service.stageTopics.map(\.name))
            guard !partitions.isEmpty else { continue }
            let marks = try await inspector.watermarks(partitions)
            let committed = try await inspector.committedOffsets(group: service.consumerGroup, partitions)
            for topic in service.stageTopics.map(\.name) {
                let mine = partitions.filter { $0.topic == topic }
                guard !mine.isEmpty else { continue }
                var lag: Int64 = 0, uncommitted = 0
                for p in mine {
                    let mark = marks[p] ?? Watermarks(low: 0, high: 0)
                    if committed[p] == nil { uncommitted += 1 }
                    lag += max(0, mark.high - max(mark.low, committed[p] ?? mark.low))
                }
                result.append(ConsumerLag(service: service.rawValue, group: service.consumerGroup, topic: topic, lag: lag,
                                          uncommittedPartitions: uncommitted, partitions: mine.count))
            }
        }
        return result
    }
}
