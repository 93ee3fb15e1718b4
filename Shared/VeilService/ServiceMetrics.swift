import Prometheus
import Synchronization
import VeilKafka

/// The metrics every service exposes on `/metrics` (Prometheus text format).
///
/// A registry per service instance rather than the global `MetricsSystem`, so that
/// several services can run in one test process without sharing counters.
public final class ServiceMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let lagGauges = Mutex<[TopicPartition: Gauge]>([:])

    public init() {}

    /// Messages consumed from `topic`.
    public func messageIn(topic: String, count: Int = 1) {
        registry.makeCounter(name: "veil_messages_in_total", labels: [("topic", topic)]).increment(by: Int64(count))
    }

    /// Messages produced to `topic`.
    public func messageOut(topic: String, count: Int = 1) {
        registry.makeCounter(name: "veil_messages_out_total", labels: [("topic", topic)]).increment(by: Int64(count))
    }

    /// A failure, by its stable error code.
    public func error(code: String) {
        registry.makeCounter(name: "veil_errors_total", labels: [("code", code)]).increment()
    }

    /// A message sent to a dead-letter topic.
    public func deadLettered(topic: String) {
        registry.makeCounter(name: "veil_dead_letters_total", labels: [("topic", topic)]).increment()
    }

    /// Time from taking a message to having its effects acknowledged.
    public func processing(_ duration: Duration, topic: String) {
        registry.makeDurationHistogram(name: "veil_processing_duration_seconds", labels: [("topic", topic)],
                                       buckets: Self.latencyBuckets).record(duration)
    }

    /// Consumer lag per partition.
    public func recordLag(_ lag: [TopicPartition: Int64]) {
        lagGauges.withLock { gauges in
            for (tp, value) in lag {
                let gauge = gauges[tp] ?? registry.makeGauge(
                    name: "veil_consumer_lag", labels: [("topic", tp.topic), ("partition", String(tp.partition))])
                gauges[tp] = gauge
                gauge.set(Double(value))
            }
        }
    }

    /// The exposition text.
    public func render() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }

    static let latencyBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(5),
    ]
}
