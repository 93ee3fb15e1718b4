import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// What `/health/ready` asks before answering 200: each check names a dependency.
public struct ReadinessCheck: Sendable {
    public let name: String
    public let check: @Sendable () async -> Bool

    public init(_ name: String, _ check: @escaping @Sendable () async -> Bool) {
        self.name = name
        self.check = check
    }
}

/// Whether a service's own HTTP server (the ingress API, the agent console, the
/// technicians' API) is listening yet: give `listening(on:)` to the server's `onRunning`
/// and `check` to the service's readiness, so `/health/ready` does not say ready while
/// that port still refuses connections. (The parts start concurrently; a caller that
/// trusted readiness could reach the port before the server bound it.)
public final class ListeningPort: Sendable {
    private let listening = Atomic<Bool>(false)
    public let name: String

    public init(_ name: String) { self.name = name }

    /// For the server's `onRunning` (which passes the bound port).
    public func listening(on _: Int) { listening.store(true, ordering: .releasing) }
    public var isListening: Bool { listening.load(ordering: .acquiring) }
    public var check: ReadinessCheck { ReadinessCheck(name) { self.isListening } }
}

/// The admin port: `/health/live`, `/health/ready` and `/metrics`.
public struct AdminServer: Service {
    let host: String
    let port: Int
    let checks: [ReadinessCheck]
    let metrics: ServiceMetrics
    let logger: Logger
    let onRunning: @Sendable (Int) async -> Void

    public init(host: String, port: Int, checks: [ReadinessCheck], metrics: ServiceMetrics, logger: Logger,
                onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) {
        self.host = host
        self.port = port
        self.checks = checks
        self.metrics = metrics
        self.logger = logger
        self.onRunning = onRunning
    }

    public func run() async throws {
        let router = Router()
        let checks = self.checks, metrics = self.metrics
        router.get("/health/live") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"status":"live"}"#)))
        }
        router.get("/health/ready") { _, _ in
            var failing: [String] = []
            for check in checks where !(await check.check()) { failing.append(check.name) }
            let body = failing.isEmpty
                ? #"{"status":"ready"}"#
                : #"{"status":"not ready","failing":[\#(failing.map { "\"\($0)\"" }.joined(separator: ","))]}"#
            return Response(status: failing.isEmpty ? .ok : .serviceUnavailable,
                            headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: .init(byteBuffer: ByteBuffer(bytes: metrics.render())))
        }
        let onRunning = self.onRunning
        let app = Application(router: router, configuration: .init(address: .hostname(host, port: port)),
                              onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
                              logger: logger)
        try await app.run()
    }
}
