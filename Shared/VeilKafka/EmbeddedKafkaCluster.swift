import CRdKafka

/// librdkafka's mock cluster: N brokers speaking the real Kafka protocol on
/// localhost TCP ports, inside this process. The development broker
/// (`veil-dev-broker`) and the Kafka layer's tests run on it.
///
/// It supports produce, fetch, consumer groups, idempotence and transactions,
/// but not the CreateTopics admin request: create topics with `createTopic`.
public final class EmbeddedKafkaCluster: @unchecked Sendable {
    private let owner: OpaquePointer
    private let cluster: OpaquePointer
    /// Comma-separated `127.0.0.1:port` list for `bootstrap.servers`.
    public let bootstrapServers: String
    public let brokerCount: Int

    public init(brokers: Int = 3) throws(KafkaError) {
        let conf = try makeRDKafkaConf(["log_level": "0", "bootstrap.servers": ""])
        owner = try makeRDKafka(RD_KAFKA_PRODUCER, conf: conf)
        guard let cluster = rd_kafka_mock_cluster_new(owner, Int32(brokers)) else {
            rd_kafka_destroy(owner)
            throw .configuration("could not start the mock cluster")
        }
        self.cluster = cluster
        brokerCount = brokers
        bootstrapServers = String(cString: rd_kafka_mock_cluster_bootstraps(cluster))
    }

    deinit {
        rd_kafka_mock_cluster_destroy(cluster)
        rd_kafka_destroy(owner)
    }

    /// Creates a topic (an existing one is left as it is).
    public func createTopic(_ name: String, partitions: Int32 = 12, replicationFactor: Int32 = 1) throws(KafkaError) {
        let err = rd_kafka_mock_topic_create(cluster, name, partitions, min(replicationFactor, Int32(brokerCount)))
        if err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS {
            throw KafkaError(rdkafka: err)
        }
    }

    /// Takes broker `id` (1-based) down: its connections close and new ones are refused.
    public func setDown(broker id: Int32) {
        rd_kafka_mock_broker_set_down(cluster, id)
    }

    /// Brings broker `id` back.
    public func setUp(broker id: Int32) {
        rd_kafka_mock_broker_set_up(cluster, id)
    }

    /// Takes every broker down.
    public func setAllDown() { (1...Int32(brokerCount)).forEach(setDown) }
    /// Brings every broker back.
    public func setAllUp() { (1...Int32(brokerCount)).forEach(setUp) }
}
