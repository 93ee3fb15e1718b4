import Foundation
import Hummingbird
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle
import Synchronization
import VeilStore

/// Wakes live connections (server-sent events) when a row for them is stored, on any
/// replica: the writer runs `notify(key)` (PostgreSQL `NOTIFY`), every replica `LISTEN`s
/// and wakes the streams subscribed to that key. Streams also wake every `heartbeat`, so
/// a notification lost while reconnecting is picked up at the next beat and closed
/// connections are noticed.
public final class LiveNotifications: Service, Sendable {
    let database: Database
    /// The PostgreSQL channel, e.g. `veil_alerts`.
    public let channel: String
    let heartbeat: Duration
    let logger: Logger
    private let waiters = Mutex<[String: [UUID: AsyncStream<Void>.Continuation]]>([:])

    public init(database: Database, channel: String, heartbeat: Duration = .seconds(15), logger: Logger) {
        self.database = database
        self.channel = channel
        self.heartbeat = heartbeat
        self.logger = logger
    }

    /// Announces new rows for `key` to every replica (call after the insert committed).
    public func notify(_ key: String) async throws {
        try await database.client.query("SELECT pg_notify(\(channel), \(key))", logger: logger)
    }

    /// Wake-ups for `key`: one at once, then one per notification or heartbeat.
    public func subscribe(_ key: String) -> (id: UUID, wakeUps: AsyncStream<Void>) {
        let id = UUID()
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        continuation.yield()
        waiters.withLock { $0[key, default: [:]][id] = continuation }
        let beat = heartbeat
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: beat)
                continuation.yield()
            }
        }
        continuation.onTermination = { _ in ticker.cancel() }
        return (id, stream)
    }

    public func unsubscribe(_ key: String, id: UUID) {
        let continuation = waiters.withLock { waiters -> AsyncStream<Void>.Continuation? in
            let removed = waiters[key]?.removeValue(forKey: id)
            if waiters[key]?.isEmpty == true { waiters[key] = nil }
            return removed
        }
        continuation?.finish()
    }

    func wake(_ key: String) {
        for continuation in waiters.withLock({ Array(($0[key] ?? [:]).values) }) { continuation.yield() }
    }

    /// Listens until shutdown, reconnecting after failures.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    try await self.database.client.withConnection { connection in
                        try await connection.listen(on: self.channel) { notifications in
                            for try await notification in notifications { self.wake(notification.payload) }
                        }
                    }
                } catch {
                    if Task.isCancelled { return }
                    self.logger.warning("listen failed; retrying", metadata: ["channel": "\(self.channel)", "error": "\(safeDescription(error))"])
                    try? await Task.sleep(for: .seconds(1))
                }
            }
        }
        waiters.withLock { all in
            for continuation in all.values.flatMap(\.values) { continuation.finish() }
            all = [:]
        }
    }

    /// A `text/event-stream` response: at every wake-up `fetch` returns what is new as
    /// `(id, JSON)` pairs, sent as `event: <event>` messages (a comment line when there is
    /// nothing, which also detects a closed connection). Ends after `maxDuration`.
    public func eventStream(key: String, event: String, maxDuration: Duration,
                            fetch: @escaping @Sendable () async throws -> [(id: String, json: [UInt8])]) -> Response {
        let body = ResponseBody { [self] writer in
            let (id, wakeUps) = subscribe(key)
            defer { unsubscribe(key, id: id) }
            logger.debug("live stream opened", metadata: ["event": "\(event)", "channel": "\(channel)"])
            let end = ContinuousClock.now + maxDuration
            let closer = Task { [self] in
                try? await Task.sleep(for: maxDuration)
                unsubscribe(key, id: id)
            }
            defer { closer.cancel() }
            // A graceful shutdown (SIGTERM) ends the stream: the HTTP server waits for the
            // requests in flight, and a stream left open would hold the service up to
            // `maxDuration`. The client reconnects to another replica.
            try await withGracefulShutdownHandler {
                for await _ in wakeUps {
                    guard ContinuousClock.now < end else { break }
                    let items = try await fetch()
                    if items.isEmpty {
                        try await writer.write(ByteBuffer(string: ": waiting\n\n"))
                    }
                    for item in items {
                        var buffer = ByteBuffer(string: "id: \(item.id)\nevent: \(event)\ndata: ")
                        buffer.writeBytes(item.json)
                        buffer.writeString("\n\n")
                        try await writer.write(buffer)
                    }
                }
            } onGracefulShutdown: { [self] in
                unsubscribe(key, id: id)
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }
}
