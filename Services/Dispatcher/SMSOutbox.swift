import Foundation
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle
import VeilContracts
import VeilCore
import VeilService
import VeilStore

/// SMS leave through a durable outbox, like Kafka messages do (`VeilStore.Outbox`): the
/// SMS is written in the same transaction as what it announces (a channel link and its
/// chat, an agent's reply in the chat), and `SMSRelay` hands it to the gateway afterwards.
/// A gateway that is down or refuses is retried with growing pauses; after `maxAttempts`
/// the SMS is given up and the chat says so. A crash between the two steps loses nothing:
/// the row waits for the next relay, on this replica or another (`FOR UPDATE SKIP LOCKED`).
///
/// The number and the text (which may carry a one-time link) are sealed at rest under the
/// dispatcher's `sms-outbox` key and wiped once the SMS is sent.
public struct SMSOutbox: Sendable {
    let database: Database
    let provider: any SMSProvider
    let desk: ChatDesk
    let maxAttempts: Int
    /// The pause after the `n`-th failed attempt.
    let backoff: @Sendable (Int) -> Duration
    let metrics: ServiceMetrics
    let logger: Logger
    private let signal: AsyncStream<Void>.Continuation
    let signals: AsyncStream<Void>

    static let atRestPurpose = "sms-outbox"

    public static let migrations: [Migration] = [
        Migration("021_dispatch_sms_outbox", sql: """
            CREATE TABLE {schema}.sms_outbox (
                id                  uuid PRIMARY KEY,
                request_id          uuid NOT NULL REFERENCES {schema}.service_requests (id),
                message_sealed      bytea NOT NULL,   -- {to, text}, sealed at rest; emptied once sent
                at_rest_key_version integer NOT NULL,
                attempts            integer NOT NULL DEFAULT 0,
                next_attempt_at     timestamptz NOT NULL DEFAULT now(),
                last_error          text,
                created_at          timestamptz NOT NULL DEFAULT now(),
                sent_at             timestamptz,
                failed_at           timestamptz
            );
            CREATE INDEX sms_outbox_due ON {schema}.sms_outbox (next_attempt_at) WHERE sent_at IS NULL AND failed_at IS NULL;
            """),
    ]

    struct Message: Codable {
        var to: String
        var text: String
    }

    /// `base` after the first failure, doubling after each next one, at most five minutes.
    public static func doubling(from base: Duration) -> @Sendable (Int) -> Duration {
        { attempt in min(.seconds(300), base * (1 << min(max(attempt - 1, 0), 16))) }
    }

    public init(database: Database, provider: any SMSProvider, desk: ChatDesk, maxAttempts: Int = 8,
                backoff: @escaping @Sendable (Int) -> Duration = SMSOutbox.doubling(from: .seconds(2)), metrics: ServiceMetrics, logger: Logger) {
        self.database = database
        self.provider = provider
        self.desk = desk
        self.maxAttempts = max(1, maxAttempts)
        self.backoff = backoff
        self.metrics = metrics
        self.logger = logger
        (signals, signal) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Queues an SMS within the caller's transaction; call `wake()` after it committed.
    func enqueue(to number: String, text: String, request requestID: UUID, on connection: PostgresConnection) async throws {
        guard let key = desk.codec.identity.atRestKey(Self.atRestPurpose) else {
            throw AssignmentError.invalid("no encryption key to derive the SMS outbox key from")
        }
        let id = UUID()
        let sealed = try VersionedKey(version: key.version, key: key.key)
            .seal(ContractCoding.encode(Message(to: number, text: text)), aad: Array(id.uuidString.lowercased().utf8))
        try await connection.query("""
            INSERT INTO \(unescaped: database.table("sms_outbox")) (id, request_id, message_sealed, at_rest_key_version)
            VALUES (\(id), \(requestID), \(ByteBuffer(bytes: sealed)), \(Int32(key.version)))
            """, logger: logger)
    }

    enum Outcome: String { case sent, retried, failed }

    /// `veil_sms_total{outcome}` on the dispatcher's `/metrics`.
    private func count(_ outcome: Outcome) {
        metrics.count("sms", help: "SMS sent, retried and given up, by outcome", label: ("outcome", outcome.rawValue))
    }

    /// Tells the relay that something was queued.
    func wake() { signal.yield() }

    /// Sends what is due, one SMS per transaction, up to `limit`; returns how many were tried.
    @discardableResult
    public func deliverDue(limit: Int = 50) async throws -> Int {
        var tried = 0
        while tried < limit, try await deliverOne() { tried += 1 }
        return tried
    }

    private func deliverOne() async throws -> Bool {
        let outbox = database.table("sms_outbox")
        let (tried, gaveUp): (Bool, UUID?) = try await database.transaction { connection in
            let rows = try await connection.query("""
                SELECT id, request_id, message_sealed, at_rest_key_version, attempts FROM \(unescaped: outbox)
                WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
                ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED
                """, logger: logger).collect()
            guard let row = rows.first else { return (false, nil) }
            let (id, requestID, sealed, version, attempts) = try row.decode((UUID, UUID, ByteBuffer, Int32, Int32).self)
            let failure: String?
            do {
                guard let key = desk.codec.identity.atRestKey(Self.atRestPurpose, version: UInt32(version)) else {
                    throw AssignmentError.invalid("the SMS outbox key version \(version) is gone")
                }
                let plain = try VersionedKey(version: UInt32(version), key: key.key)
                    .open(Array(sealed.readableBytesView), aad: Array(id.uuidString.lowercased().utf8))
                let message = try ContractCoding.decode(Message.self, from: plain)
                try await provider.send(to: message.to, text: message.text)
                failure = nil
            } catch let error as AssignmentError {
                failure = error.reason  // ours, e.g. "the SMS gateway answered 503": no number, no text
            } catch {
                failure = safeDescription(error)
            }
            guard let failure else {
                try await connection.query("""
                    UPDATE \(unescaped: outbox) SET sent_at = now(), attempts = attempts + 1, message_sealed = '\\x'::bytea, last_error = NULL
                    WHERE id = \(id)
                    """, logger: logger)
                count(.sent)
                return (true, nil)
            }
            let attempt = Int(attempts) + 1
            if attempt >= maxAttempts {
                try await connection.query("""
                    UPDATE \(unescaped: outbox) SET failed_at = now(), attempts = \(Int32(attempt)), message_sealed = '\\x'::bytea,
                        last_error = \(failure) WHERE id = \(id)
                    """, logger: logger)
                try await desk.insertMessage(requestID, sender: "system", agentID: nil,
                                             text: "An SMS to the customer could not be delivered after \(attempt) attempts (\(failure)).",
                                             id: UUID(), on: connection)
                count(.failed)
                logger.error("SMS given up", metadata: ["sms.id": "\(id)", "request.id": "\(requestID)", "attempts": "\(attempt)",
                                                        "error": "\(failure)"])
                return (true, requestID)
            }
            let pause = backoff(attempt).seconds
            try await connection.query("""
                UPDATE \(unescaped: outbox) SET attempts = \(Int32(attempt)), last_error = \(failure),
                    next_attempt_at = now() + make_interval(secs => \(pause))
                WHERE id = \(id)
                """, logger: logger)
            count(.retried)
            logger.warning("SMS not delivered; will retry", metadata: ["sms.id": "\(id)", "attempt": "\(attempt)", "error": "\(failure)"])
            return (true, nil)
        }
        if gaveUp != nil { await desk.wakeConsoles() }
        return tried
    }
}

/// Delivers the SMS outbox: at once when something is queued, and every `interval` for
/// retries and for rows another replica left behind. Stops at a graceful shutdown.
public struct SMSRelay: Service {
    let outbox: SMSOutbox
    let interval: Duration

    public init(outbox: SMSOutbox, interval: Duration = .seconds(1)) {
        self.outbox = outbox
        self.interval = interval
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                // The ticker turns the interval into signals, so one loop serves both.
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: interval)
                        outbox.wake()
                    }
                }
                group.addTask {
                    for await _ in outbox.signals {
                        do {
                            try await outbox.deliverDue()
                        } catch {
                            outbox.logger.warning("SMS relay pass failed", metadata: ["error": "\(safeDescription(error))"])
                        }
                    }
                }
                await group.next()
                group.cancelAll()
            }
        }
    }
}
