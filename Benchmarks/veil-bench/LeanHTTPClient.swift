import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The load generator's HTTP/1.1 client: keep-alive connections straight on SwiftNIO, one
/// request in flight on each, a new connection when none is idle. The load generator shares
/// the two cores with the services it measures, so its cost is interference: AsyncHTTPClient
/// (its pool state machine, request bags, tracing hooks and async bridging) took 0.44–0.50 ms
/// of CPU per request here, about as much as the ingress's own handling of a bare GET.
/// A till or a phone sends from its own hardware.
final class LeanHTTPClient: Sendable {
    struct Response: Sendable {
        var status: Int
        var body: ByteBuffer
    }

    enum Failure: Error { case closed, timedOut, badURL(String) }

    private let host: String
    private let port: Int
    private let timeout: TimeAmount
    private let group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    private let idle = Mutex<[any Channel]>([])

    init(baseURL: String, timeout: TimeAmount = .seconds(30)) throws {
        guard let url = URL(string: baseURL), let host = url.host, let port = url.port ?? (url.scheme == "http" ? 80 : nil) else {
            throw Failure.badURL(baseURL)
        }
        self.host = host
        self.port = port
        self.timeout = timeout
    }

    /// Sends one request and collects its whole response.
    func execute(_ method: HTTPMethod, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil) async throws -> Response {
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers.add(name: "Host", value: "\(host):\(port)")
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        head.headers.add(name: "Content-Length", value: "\(body?.count ?? 0)")
        let payload = body.map { ByteBuffer(bytes: $0) }
        let channel = try await connection()
        do {
            let response = try await Self.send(head, payload, on: channel, timeout: timeout).get()
            if channel.isActive { idle.withLock { $0.append(channel) } }
            return response
        } catch {
            channel.close(promise: nil)
            throw error
        }
    }

    func shutdown() {
        for channel in idle.withLock({ channels in defer { channels.removeAll() }; return channels }) { channel.close(promise: nil) }
    }

    private func connection() async throws -> any Channel {
        while let channel = idle.withLock({ $0.popLast() }) {
            if channel.isActive { return channel }
        }
        return try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector())
                }
            }
            .connect(host: host, port: port).get()
    }

    private static func send(_ head: HTTPRequestHead, _ body: ByteBuffer?, on channel: any Channel,
                             timeout: TimeAmount) -> EventLoopFuture<Response> {
        channel.eventLoop.flatSubmit {
            let collector: ResponseCollector
            do { collector = try channel.pipeline.syncOperations.handler(type: ResponseCollector.self) } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
            let promise = channel.eventLoop.makePromise(of: Response.self)
            collector.expect(promise, timeout: timeout, on: channel)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            return promise.futureResult
        }
    }
}

/// Collects the one response in flight on a connection (on its event loop).
private final class ResponseCollector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    private var promise: EventLoopPromise<LeanHTTPClient.Response>?
    private var deadline: Scheduled<Void>?
    private var status = 0
    private var body = ByteBuffer()

    func expect(_ promise: EventLoopPromise<LeanHTTPClient.Response>, timeout: TimeAmount, on channel: any Channel) {
        self.promise = promise
        deadline = channel.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
            self?.finish(.failure(LeanHTTPClient.Failure.timedOut))
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            body.clear()
        case .body(var part):
            body.writeBuffer(&part)
        case .end:
            finish(.success(LeanHTTPClient.Response(status: status, body: body)))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failure(LeanHTTPClient.Failure.closed))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failure(error))
        context.close(promise: nil)
    }

    private func finish(_ result: Result<LeanHTTPClient.Response, any Error>) {
        deadline?.cancel()
        deadline = nil
        guard let promise else { return }
        self.promise = nil
        promise.completeWith(result)
    }
}
