import CRdKafka

/// A consumed message lent by librdkafka, not copied: valid only inside the body of
/// `KafkaConsumer.withNextBatch(_:)`, which destroys the message when the body returns.
/// Reading a view's bytes copies nothing and parses no header until one is asked for;
/// `copy()` makes an owned `KafkaMessage` of a message worth keeping past the body.
///
/// For readers that look at every message but keep few (a follower that skips what is not
/// addressed to it) or that decode straight from the bytes.
public struct KafkaMessageView {
    let pointer: UnsafeMutablePointer<rd_kafka_message_t>

    public var partition: Int32 { pointer.pointee.partition }
    public var offset: Int64 { pointer.pointee.offset }

    /// The topic's name (a new `String` each time: read it once per batch if you need it).
    public var topic: String { pointer.pointee.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "" }

    /// The payload's bytes, librdkafka's own: do not keep the pointer past the body.
    public var value: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: pointer.pointee.payload, count: pointer.pointee.payload == nil ? 0 : pointer.pointee.len)
    }

    /// The key's bytes, or `nil` for a message without a key. Do not keep the pointer past the body.
    public var key: UnsafeRawBufferPointer? {
        pointer.pointee.key.map { UnsafeRawBufferPointer(start: $0, count: pointer.pointee.key_len) }
    }

    /// The value of the last header with this name, or `nil` if there is none (or it has no value).
    public func header(_ name: String) -> UnsafeRawBufferPointer? {
        var headers: OpaquePointer?
        guard rd_kafka_message_headers(pointer, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR, let headers else { return nil }
        var value: UnsafeRawPointer?
        var size = 0
        guard rd_kafka_header_get_last(headers, name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR, let value else { return nil }
        return UnsafeRawBufferPointer(start: value, count: size)
    }

    /// Milliseconds since the Unix epoch, or -1 if the broker gave none.
    public var timestampMilliseconds: Int64 {
        var type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        return rd_kafka_message_timestamp(pointer, &type)
    }

    /// An owned copy, headers included, that outlives the body and the consumer.
    public func copy() -> KafkaMessage {
        KafkaMessage(copying: pointer, topic: topic)
    }
}

/// The messages lent to one `KafkaConsumer.withNextBatch(_:)` body, in fetch order.
public struct KafkaBatchView: RandomAccessCollection {
    let fetched: [FetchedMessage]

    public var startIndex: Int { fetched.startIndex }
    public var endIndex: Int { fetched.endIndex }
    public subscript(position: Int) -> KafkaMessageView { KafkaMessageView(pointer: fetched[position].pointer) }
}
