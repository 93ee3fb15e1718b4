/// Connection settings shared by producers, consumers and the admin client.
///
/// `properties` passes any librdkafka property through unchanged, which is how
/// TLS and SASL reach a real cluster (`security.protocol`, `ssl.ca.location`,
/// `sasl.mechanism`, `sasl.username`, …). Veil's own settings win over them.
public struct KafkaConfiguration: Sendable {
    /// Comma-separated `host:port` list.
    public var bootstrapServers: String
    /// Shown in broker logs and quotas; defaults to the service name.
    public var clientID: String
    /// Extra librdkafka properties (security, tuning).
    public var properties: [String: String]

    public init(bootstrapServers: String, clientID: String = "veil", properties: [String: String] = [:]) {
        self.bootstrapServers = bootstrapServers
        self.clientID = clientID
        self.properties = properties
    }

    var baseProperties: [String: String] {
        var all = properties
        all["bootstrap.servers"] = bootstrapServers
        all["client.id"] = clientID
        // Warnings included: librdkafka reports at this level what an operator must see,
        // such as a consumer whose position fell out of the log (an offset reset, counted
        // by `KafkaConsumer.offsetResets`) or one that left its group by max.poll.interval.
        all["log_level"] = all["log_level"] ?? "4"
        return all
    }

    /// The shared properties minus those only the other kind of client understands, which
    /// librdkafka would otherwise warn about ("CONFWARN … will be ignored") at every start:
    /// `KAFKA_FETCH_WAIT_MAX_MS` and `KAFKA_LINGER_MS` reach every client of a service.
    func baseProperties(for type: ClientType) -> [String: String] {
        let foreign = type == .consumer ? Self.producerOnly : Self.consumerOnly
        return baseProperties.filter { !foreign.contains($0.key) }
    }

    enum ClientType { case producer, consumer }

    static let consumerOnly: Set<String> = [
        "fetch.wait.max.ms", "fetch.min.bytes", "fetch.max.bytes", "max.partition.fetch.bytes", "fetch.error.backoff.ms",
        "queued.min.messages", "queued.max.messages.kbytes", "isolation.level", "auto.offset.reset", "session.timeout.ms",
        "heartbeat.interval.ms", "max.poll.interval.ms", "partition.assignment.strategy", "group.instance.id",
        "enable.partition.eof", "check.crcs",
    ]
    static let producerOnly: Set<String> = [
        "linger.ms", "queue.buffering.max.ms", "batch.num.messages", "batch.size", "compression.type", "compression.codec",
        "acks", "request.required.acks", "enable.idempotence", "message.timeout.ms", "delivery.timeout.ms",
        "queue.buffering.max.messages", "queue.buffering.max.kbytes", "retries", "message.send.max.retries",
        "retry.backoff.ms", "transactional.id", "transaction.timeout.ms",
    ]
}

/// Producer settings. Idempotence (acks=all, no duplicates from internal retries) is on by default.
public struct ProducerConfiguration: Sendable {
    public var kafka: KafkaConfiguration
    /// `enable.idempotence`; implies acks=all.
    public var idempotent: Bool = true
    /// How long librdkafka may batch messages before sending (`linger.ms`).
    public var lingerMilliseconds: Int = 5
    /// The local queue bound. When it is full, `send` waits (backpressure) instead of failing.
    public var maxQueuedMessages: Int = 100_000
    /// How long librdkafka keeps trying to deliver a message before reporting failure
    /// (`delivery.timeout.ms`). Long by default so a broker restart is ridden out.
    public var deliveryTimeoutMilliseconds: Int = 300_000
    /// Set to use transactions (only for real Kafka clusters; see docs/ARCHITECTURE.md).
    public var transactionalID: String? = nil

    public init(kafka: KafkaConfiguration) { self.kafka = kafka }

    var properties: [String: String] {
        var p = kafka.baseProperties(for: .producer)
        p["enable.idempotence"] = idempotent ? "true" : "false"
        if idempotent { p["acks"] = "all" }
        p["linger.ms"] = p["linger.ms"] ?? String(lingerMilliseconds)
        p["queue.buffering.max.messages"] = String(maxQueuedMessages)
        p["delivery.timeout.ms"] = String(deliveryTimeoutMilliseconds)
        if let transactionalID {
            p["transactional.id"] = transactionalID
            // librdkafka requires delivery.timeout.ms <= transaction.timeout.ms.
            p["transaction.timeout.ms"] = String(max(60_000, deliveryTimeoutMilliseconds))
        }
        return p
    }
}

/// Consumer-group settings. Offsets are stored only for processed messages and
/// committed from there; nothing unprocessed is ever committed.
public struct ConsumerConfiguration: Sendable {
    public enum OffsetReset: String, Sendable { case earliest, latest }

    public var kafka: KafkaConfiguration
    public var groupID: String
    public var topics: [String]
    public var offsetReset: OffsetReset = .earliest
    public var sessionTimeoutMilliseconds: Int = 10_000
    /// How often stored (processed) offsets are committed in the background.
    public var commitIntervalMilliseconds: Int = 1_000
    /// Messages fetched but not yet taken by the application; the poll thread waits beyond it.
    public var maxBufferedMessages: Int = 10_000
    /// The most messages handed over in one batch. A consumer that has fallen behind gets
    /// everything queued up to this; one that keeps up gets each fetch as it comes.
    public var maxBatchSize: Int = 500
    /// Read only committed transactional messages.
    public var readCommitted: Bool = true
    /// Start every assigned partition at its end as of the assignment, ignoring committed
    /// offsets: for per-process followers that want only what is produced from now on. The
    /// end is asked of the broker before the assignment is applied, so once `assignment`
    /// lists a partition nothing produced to it afterwards is skipped (with
    /// `offsetReset = .latest` alone the end is resolved later and messages produced in
    /// between are missed).
    public var startsAtEnd: Bool = false

    public init(kafka: KafkaConfiguration, groupID: String, topics: [String]) {
        self.kafka = kafka
        self.groupID = groupID
        self.topics = topics
    }

    var properties: [String: String] {
        var p = kafka.baseProperties(for: .consumer)
        p["group.id"] = groupID
        p["auto.offset.reset"] = offsetReset.rawValue
        p["enable.auto.offset.store"] = "false"
        p["enable.auto.commit"] = "true"
        p["auto.commit.interval.ms"] = String(commitIntervalMilliseconds)
        p["session.timeout.ms"] = String(sessionTimeoutMilliseconds)
        p["isolation.level"] = readCommitted ? "read_committed" : "read_uncommitted"
        p["enable.partition.eof"] = "false"
        // librdkafka 2.0.2 checks queued.min.messages against the consumer's whole
        // (forwarded) queue, not one partition's: once 100,000 messages are buffered,
        // every partition stops fetching and the broker threads sleep up to ~1 s before
        // looking again (measured with veil-bench kafka: a ~0.87 s stall per ~200,000
        // messages). Memory stays bounded by queued.max.messages.kbytes (64 MB).
        p["queued.min.messages"] = p["queued.min.messages"] ?? "10000000"
        p["fetch.error.backoff.ms"] = p["fetch.error.backoff.ms"] ?? "50"
        return p
    }
}
