import Foundation
import Testing
import VeilContracts
import VeilIngressClient
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

extension PipelineSuites {
    @Suite("Services say ready only when they are, and stop when told", .serialized, .timeLimit(.minutes(5)))
    struct ServiceLifecycleTests {
        /// Twelve rounds, because both defects this guards against were races: the console's
        /// port refused a caller that trusted `/health/ready`, and about one cancelled
        /// dispatcher in twenty-five never stopped (its clock's query raced the pool's shutdown).
        @Test("once /health/ready says ready the dispatcher's console answers, and a dispatcher cancelled right after stops at once — twelve rounds")
        func readyThenKilled() async throws {
            for _ in 0..<12 {
                let port = try freePort()
                let world = try await PipelineWorld.start([.dispatcher], settings: ["VEIL_DISPATCHER_HTTP_PORT": String(port)])
                let login = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/console/login")!, timeoutInterval: 10)
                let (_, response) = try await URLSession.shared.boundedData(for: login)
                #expect(response.statusCode == 200)
                await world.kill(.dispatcher)  // fails the test, naming the service, if it takes a minute
                await world.stop()
            }
        }

        @Test("a graceful shutdown (SIGTERM) ends the devices' open live streams, so ingress stops at once rather than when they would have ended")
        func gracefulShutdownEndsLiveStreams() async throws {
            let world = try await PipelineWorld.start([.ingress])
            defer { Task { await world.stop() } }
            let device = DeviceIdentity(deviceId: "phone-live-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(device)
            // A stream that would stay open five minutes.
            let stream = Task { try await world.client.inboxStream(device, seconds: 300) }
            try await waitForLog(world, service: .ingress, containing: "live stream opened")
            #expect(await world.shutDown(.ingress, within: .seconds(30)), "ingress waited for the open stream")
            // The stream was open (a refused or broken connection would throw) and ended cleanly, empty.
            let delivered = try await stream.value
            #expect(delivered.isEmpty)
        }

        @Test("SIGTERM stops each of the seven services promptly after real work, one after another, upstream first")
        func everyServiceShutsDownGracefully() async throws {
            let consolePort = try freePort(), alerterPort = try freePort()
            let world = try await PipelineWorld.start(PipelineWorld.provisioned, settings: [
                "VEIL_DISPATCHER_HTTP_PORT": String(consolePort), "VEIL_ALERTER_HTTP_PORT": String(alerterPort),
            ])
            defer { Task { await world.stop() } }
            let customers = Customers(count: 20)
            _ = try await world.export(csv: customers.csv)
            try await world.waitUntilFiled(20)
            let device = DeviceIdentity(deviceId: "device-stop-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(device)
            for user in customers.rows.keys.sorted().prefix(5) { _ = try await world.client.inquire(device, userId: user) }
            #expect(try await world.insights(count: 5, idle: .seconds(10)).count == 5)
            for service: ServiceName in [.ingress, .anonymizer, .keyVault, .matcher, .merger, .dispatcher, .technicianAlerter] {
                #expect(await world.shutDown(service, within: .seconds(30)), "\(service.rawValue) stops on SIGTERM")
            }
        }

        @Test("the ingress and the technicians' API are ready only once their HTTP ports listen")
        func apisListenWhenReady() async throws {
            let alerterPort = try freePort()
            let world = try await PipelineWorld.start([.ingress, .technicianAlerter], settings: ["VEIL_ALERTER_HTTP_PORT": String(alerterPort)])
            defer { Task { await world.stop() } }
            for url in [world.ingressURL.appendingPathComponent("v1/keys/key-vault"),
                        URL(string: "http://127.0.0.1:\(alerterPort)/v1/technicians/nobody/alerts")!] {
                // Any HTTP answer will do: the port listens. (A refused connection throws.)
                let (_, response) = try await URLSession.shared.boundedData(for: URLRequest(url: url, timeoutInterval: 10))
                #expect(response.statusCode > 0)
            }
            await world.stop()
        }
    }
}
