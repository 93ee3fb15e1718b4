import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle
import VeilCore
import VeilKafka

/// A message written to the outbox in the same transaction as the effect that caused it.
public struct OutboxMessage: Sendable {
    public var id: MessageID
    public var message: OutgoingMessage

    public init(id: MessageID, message: OutgoingMessage) {
        self.id = id
        self.message = message
    }
}

extension Database {
    /// Writes messages to the outbox on `connection` (inside the caller's transaction).
    /// A message id already in the outbox is ignored, so a retried effect adds nothing.
    public func enqueue(_ messages: [OutboxMessage], on connection: PostgresConnection) async throws {
        let table = self.table("outbox")
        for entry in messages {
            let m = entry.message
            try await connection.query(PostgresQuery(
                unsafeSQL: "INSERT INTO \(table) (message_id, topic, key, value, headers) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
                binds: try bindings(entry.id.uuid, m.topic, m.key.map { ByteBuffer(bytes: $0) }, ByteBuffer(bytes: m.value),
                                    ByteBuffer(bytes: HeaderCodec.encode(m.headers)))), logger: logger)
        }
    }

    /// Messages written but not yet acknowledged by Kafka.
    public func outboxBacklog() async throws -> Int {
        let rows = try await client.query(PostgresQuery(unsafeSQL: "SELECT count(*) FROM \(table("outbox")) WHERE published_at IS NULL"),
                                          logger: logger)
        for try await count in rows.decode(Int.self) { return count }
        return 0
    }
}

/// Moves outbox rows to Kafka: a batch is claimed (`FOR UPDATE SKIP LOCKED`, so
/// several replicas share the work), sent, and marked published only after the
/// broker acknowledged it, all in one transaction. A crash before the mark sends
/// the rows again with the same message ids, which consumers drop as duplicates.
/// Published rows are kept for `retention` (to look at what left, and when), then
/// deleted about once a minute.
public final class OutboxRelay: Service, Sendable {
    let database: Database
    let producer: KafkaProducer
    let batchSize: Int
    let idleInterval: Duration
    let retention: Duration
    let logger: Logger

    public init(database: Database, producer: KafkaProducer, batchSize: Int = 500,
                idleInterval: Duration = .milliseconds(100), retention: Duration = .seconds(3600), logger: Logger) {
        self.database = database
        self.producer = producer
        self.batchSize = batchSize
        self.idleInterval = idleInterval
        self.retention = retention
        self.logger = logger
    }

    /// Deletes up to `limit` rows published more than `retention` ago; returns how many.
    @discardableResult
    public func purgePublished(limit: Int = 10_000) async throws -> Int {
        let table = database.table("outbox")
        let rows = try await database.client.query(PostgresQuery(unsafeSQL: """
            DELETE FROM \(table) WHERE seq IN (
                SELECT seq FROM \(table) WHERE published_at < now() - make_interval(secs => $1) ORDER BY seq LIMIT $2)
            RETURNING seq
            """, binds: try bindings(retention.seconds, limit)), logger: logger).collect()
        return rows.count
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var lastPurge = ContinuousClock.now
            while !Task.isCancelled {
                do {
                    if ContinuousClock.now - lastPurge > .seconds(60) {
                        lastPurge = .now
                        try await self.purgePublished()
                    }
                    if try await self.relayOnce() == 0 { try? await Task.sleep(for: self.idleInterval) }
                } catch is CancellationError {
                    return
                } catch {
                    self.logger.warning("outbox relay failed; retrying", metadata: ["error": "\(String(describing: type(of: error)))"])
                    try? await Task.sleep(for: .seconds(1))
                }
            }
        }
    }

    /// Relays one batch. Returns the number of rows published.
    @discardableResult
    public func relayOnce() async throws -> Int {
        let table = database.table("outbox")
        let producer = self.producer
        let batchSize = self.batchSize
        return try await database.transaction { connection in
            var seqs: [Int64] = []
            var messages: [OutgoingMessage] = []
            let rows = try await connection.query(PostgresQuery(
                unsafeSQL: "SELECT seq, topic, key, value, headers FROM \(table) WHERE published_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                binds: try bindings(batchSize)), logger: logger)
            for try await (seq, topic, key, value, headers) in rows.decode((Int64, String, ByteBuffer?, ByteBuffer, ByteBuffer).self) {
                seqs.append(seq)
                messages.append(OutgoingMessage(topic: topic, key: key.map { Array($0.readableBytesView) },
                                                value: Array(value.readableBytesView),
                                                headers: HeaderCodec.decode(Array(headers.readableBytesView))))
            }
            guard !seqs.isEmpty else { return 0 }
            try await producer.send(batch: messages)
            try await connection.query(PostgresQuery(
                unsafeSQL: "UPDATE \(table) SET published_at = now() WHERE seq = ANY($1)", binds: try bindings(seqs)), logger: logger)
            return seqs.count
        }
    }
}

/// Kafka headers as stored in the outbox: count, then (name length, name, value length or -1, value).
enum HeaderCodec {
    static func encode(_ headers: [KafkaHeader]) -> [UInt8] {
        var out: [UInt8] = []
        append(UInt32(headers.count), to: &out)
        for header in headers {
            let name = Array(header.name.utf8)
            append(UInt32(name.count), to: &out)
            out += name
            if let value = header.value {
                append(UInt32(value.count), to: &out)
                out += value
            } else {
                append(UInt32.max, to: &out)
            }
        }
        return out
    }

    static func decode(_ bytes: [UInt8]) -> [KafkaHeader] {
        var index = 0
        func read() -> UInt32? {
            guard index + 4 <= bytes.count else { return nil }
            defer { index += 4 }
            return bytes[index..<index + 4].reduce(0) { $0 << 8 | UInt32($1) }
        }
        func take(_ n: Int) -> [UInt8]? {
            guard n >= 0, index + n <= bytes.count else { return nil }
            defer { index += n }
            return Array(bytes[index..<index + n])
        }
        guard let count = read() else { return [] }
        var headers: [KafkaHeader] = []
        for _ in 0..<count {
            guard let nameLength = read(), let name = take(Int(nameLength)), let valueLength = read() else { break }
            if valueLength == UInt32.max {
                headers.append(KafkaHeader(name: String(decoding: name, as: UTF8.self), value: nil))
            } else if let value = take(Int(valueLength)) {
                headers.append(KafkaHeader(name: String(decoding: name, as: UTF8.self), value: value))
            }
        }
        return headers
    }

    private static func append(_ value: UInt32, to out: inout [UInt8]) {
        out += [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }
}
