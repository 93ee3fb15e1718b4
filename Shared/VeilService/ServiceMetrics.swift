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
    /// Counters and histograms resolved once per name and label value: the registry's
    /// lookup builds strings and takes a lock, which showed up per message.
    private let counters = Mutex<[String: Counter]>([:])
    private let histograms = Mutex<[String: DurationHistogram]>([:])
    private let gauges = Mutex<[String: Gauge]>([:])
    /// Offset resets already counted, per consumer (its stage name) and partition.
    private let reportedResets = Mutex<[String: [TopicPartition: Int]]>([:])

    private func counter(_ descriptor: MetricNameDescriptor, _ label: (String, String)? = nil) -> Counter {
        let key = descriptor.metricName + "|" + (label?.1 ?? "")
        if let existing = counters.withLock({ $0[key] }) { return existing }
        let made = registry.makeCounter(descriptor: descriptor, labels: label.map { [$0] } ?? [])
        counters.withLock { $0[key] = made }
        return made
    }

    public init() {}

    /// Messages consumed from `topic`.
    public func messageIn(topic: String, count: Int = 1) {
        counter(Self.messagesIn, ("topic", topic)).increment(by: Int64(count))
    }

    /// Messages produced to `topic`.
    public func messageOut(topic: String, count: Int = 1) {
        counter(Self.messagesOut, ("topic", topic)).increment(by: Int64(count))
    }

    /// A failure, by its stable error code.
    public func error(code: String) {
        counter(Self.errors, ("code", code)).increment()
    }

    /// A duplicate (an id already applied) dropped without effect.
    public func duplicateDropped(topic: String) {
        counter(Self.duplicates, ("topic", topic)).increment()
    }

    /// A message sent to a dead-letter topic.
    public func deadLettered(topic: String) {
        counter(Self.deadLetters, ("topic", topic)).increment()
    }

    /// Time from taking a message to having its effects acknowledged.
    public func processing(_ duration: Duration, topic: String) {
        let histogram = histograms.withLock { $0[topic] } ?? {
            let made = registry.makeDurationHistogram(descriptor: Self.processingDuration, labels: [("topic", topic)],
                                                      buckets: Self.latencyBuckets)
            histograms.withLock { $0[topic] = made }
            return made
        }()
        histogram.record(duration)
    }

    /// One consumed batch: how many messages the stage took at once.
    public func batch(size: Int) {
        counter(Self.batches).increment()
        counter(Self.batchedMessages).increment(by: Int64(size))
    }

    /// A service's own counter, `veil_<name>_total` (e.g. `count("sms", label: ("outcome", "sent"))`).
    /// Resolved once per name and label value, like the stage counters.
    public func count(_ name: String, help: String, label: (String, String)? = nil, by amount: Int = 1) {
        counter(MetricNameDescriptor(namespace: "veil", metricName: name, unitName: "total", helpText: help), label)
            .increment(by: Int64(amount))
    }

    /// A service's own gauge, `veil_<name>`, set to `value`.
    public func set(_ name: String, help: String, to value: Double) {
        let key = "gauge|" + name
        let gauge = gauges.withLock { $0[key] } ?? {
            let made = registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "veil", metricName: name, unitName: "", helpText: help))
            gauges.withLock { $0[key] = made }
            return made
        }()
        gauge.set(value)
    }

    /// Consumer lag per partition.
    public func recordLag(_ lag: [TopicPartition: Int64]) {
        lagGauges.withLock { gauges in
            for (tp, value) in lag {
                let gauge = gauges[tp] ?? registry.makeGauge(
                    descriptor: Self.consumerLag, labels: [("topic", tp.topic), ("partition", String(tp.partition))])
                gauges[tp] = gauge
                gauge.set(Double(value))
            }
        }
    }

    /// The offset resets of the consumer named `consumer` so far (`KafkaConsumer.offsetResets()`,
    /// cumulative): `veil_consumer_offset_resets_total{topic}` grows by what is new since that
    /// consumer's last report. Any increase means messages were skipped: the consumer fell
    /// behind the broker's retention.
    public func recordOffsetResets(_ resets: [TopicPartition: Int], consumer: String) {
        let new: [(String, Int)] = reportedResets.withLock { reportedByConsumer in
            var reported = reportedByConsumer[consumer, default: [:]]
            var new: [(String, Int)] = []
            for (tp, total) in resets where total > reported[tp, default: 0] {
                new.append((tp.topic, total - reported[tp, default: 0]))
                reported[tp] = total
            }
            reportedByConsumer[consumer] = reported
            return new
        }
        for (topic, delta) in new {
            count("consumer_offset_resets", help: "Consumer positions reset because they fell out of the log (messages skipped)",
                  label: ("topic", topic), by: delta)
        }
    }

    /// The exposition text.
    public func render() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }

    static var messagesIn: MetricNameDescriptor { MetricNameDescriptor(namespace: "veil", metricName: "messages_in", unitName: "total",
                                                 helpText: "Messages consumed, by topic") }
    static var messagesOut: MetricNameDescriptor { MetricNameDescriptor(namespace: "veil", metricName: "messages_out", unitName: "total",
                                                  helpText: "Messages produced and acknowledged, by topic") }
    static var errors: MetricNameDescriptor { MetricNameDescriptor(namespace: "veil", metricName: "errors", unitName: "total",
                                             helpText: "Failures, by stable error code") }
    static var duplicates: MetricNameDescriptor { MetricNameDescriptor(namespace: "veil", metricName: "duplicates_dropped", unitName: "total",
                                                 helpText: "Messages dropped as duplicates of already applied ids") }
    static var deadLetters: MetricNameDescriptor { MetricNameDescriptor(namespace: "veil", metricName: "dead_letters", unitName: "total",
                                                  helpText: "Messages sent to <topic>.dlq, by source topic") }
    static var processingDuration: MetricNameDescriptor { MetricNameDescriptor(namespace: "veil", metricName: "processing_duration", unitName: "seconds",
                                                         helpText: "From taking a message to its outputs being acknowledged") }
    static var batches: MetricNameDescriptor { MetricNameDescriptor(namespace: "veil", metricName: "stage_batches", unitName: "total",
                                              helpText: "Batches the stage took from its consumer") }
    static var batchedMessages: MetricNameDescriptor { MetricNameDescriptor(namespace: "veil", metricName: "stage_batched_messages", unitName: "total",
                                                      helpText: "Messages in those batches (divide by veil_stage_batches_total for the mean size)") }
    static var consumerLag: MetricNameDescriptor { MetricNameDescriptor(namespace: "veil", metricName: "consumer_lag", unitName: "messages",
                                                  helpText: "Messages behind the high watermark, per partition") }

    static let latencyBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(5),
    ]
}
