import Foundation
import Testing
import VeilIngressClient
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A server that completes TCP handshakes (the kernel does, from the listen backlog)
/// and never reads or answers: the worst peer a client can meet.
private final class SilentServer: Sendable {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 16) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            throw URLError(.cannotConnectToHost)
        }
        self.fd = fd
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    /// Whether a client connected (a handshake waits in the backlog), without blocking.
    func hasConnection() -> Bool {
        _ = fcntl(fd, F_SETFL, O_NONBLOCK)
        let client = accept(fd, nil, nil)
        if client >= 0 { close(client) }
        return client >= 0
    }

    deinit { close(fd) }
}

@Suite("Client requests end by their deadline, whatever the server does", .timeLimit(.minutes(2)))
struct BoundedExchangeTests {
    @Test("a server that accepts the connection and never answers: the request fails as timed out")
    func silentServer() async throws {
        let server = try SilentServer()
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(server.port)/v1/keys/key-vault")!, timeoutInterval: 1)
        request.httpMethod = "GET"
        do {
            _ = try await URLSession.shared.boundedData(for: request, grace: 1)
            Issue.record("a silent server produced an answer")
        } catch let error as URLError {
            #expect(error.code == .timedOut)
        }
    }

    @Test("cancelling the caller ends a request the server never answers, with CancellationError")
    func cancelled() async throws {
        let server = try SilentServer()
        let request = URLRequest(url: URL(string: "http://127.0.0.1:\(server.port)/slow")!, timeoutInterval: 600)
        let call = Task { try await URLSession.shared.boundedData(for: request) }
        try await Task.sleep(for: .milliseconds(200))
        call.cancel()
        await #expect(throws: CancellationError.self) { try await call.value }
    }

    @Test("a caller cancelled before the request starts gets CancellationError and no request is sent")
    func cancelledFirst() async throws {
        let server = try SilentServer()
        let request = URLRequest(url: URL(string: "http://127.0.0.1:\(server.port)/never")!, timeoutInterval: 600)
        let call = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await URLSession.shared.boundedData(for: request)
        }
        await #expect(throws: CancellationError.self) { try await call.value }
        try await Task.sleep(for: .milliseconds(300))
        #expect(!server.hasConnection())
    }
}
