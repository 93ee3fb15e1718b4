import DispatcherService
import Foundation
import Hummingbird
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import Testing
import VeilClient
import VeilContracts
import VeilIngressClient
import VeilService
import VeilStore

extension PipelineSuites {
    @Suite("Channel enhancement: from SMS to a secure app channel with a one-time signed link", .serialized, .timeLimit(.minutes(5)))
    struct ChannelUpgradeTests {
        static let number = "+49 176 1234 5678", normalized = "+4917612345678"
        static let adminToken = "test-dispatcher-admin", inboundToken = "test-sms-inbound"

        /// `POST` JSON to the dispatcher with a bearer token.
        static func post(_ port: Int, _ path: String, _ body: [String: Any], token: String) async throws -> (Int, Data) {
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!, timeoutInterval: 30)
            request.httpMethod = "POST"
            request.httpBody = try JSONSerialization.data(withJSONObject: body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
            let (data, response) = try await URLSession.shared.boundedData(for: request)
            let status = response.statusCode
            return (status, data)
        }

        static func waitForInbox(_ world: PipelineWorld, _ device: DeviceIdentity, status: String) async throws -> CustomerNotification {
            for _ in 0..<150 {
                if let note = try await world.client.inbox(device).last(where: { $0.status == status }) { return note }
                try await Task.sleep(for: .milliseconds(200))
            }
            throw DatabaseError(code: "test.timeout", reason: "no \(status) notification reached the device")
        }

        /// The SMS in the development outbox once `count` have arrived (they leave through the dispatcher's SMS relay).
        static func waitForSMS(_ outbox: URL, count: Int) async throws -> [OutboxSMS] {
            for _ in 0..<100 {
                let sent = try OutboxSMSProvider.read(outbox)
                if sent.count >= count { return sent }
                try await Task.sleep(for: .milliseconds(100))
            }
            throw DatabaseError(code: "test.timeout", reason: "\(count) SMS did not reach the outbox")
        }

        @Test("technicians are managed through the dispatcher's admin API (bearer token): create with device keys, change activity, read the statistics; bad input and a wrong token are refused")
        func technicianAdminAPI() async throws {
            let port = try freePort()
            let world = try await PipelineWorld.start([.dispatcher], settings: [
                "VEIL_DISPATCHER_HTTP_PORT": String(port), "VEIL_DISPATCHER_ADMIN_TOKEN": Self.adminToken,
            ])
            defer { Task { await world.stop() } }
            let device = DeviceIdentity(deviceId: "tech-api")
            let technician: [String: Any] = [
                "id": "tech-api", "name": "Api Tester", "skills": ["network"], "regions": ["north", "south"], "homeRegion": "north",
                "capacity": 2, "activity": "available", "shiftStart": "06:00", "shiftEnd": "22:00",
                "signingKey": device.signingKey.publicKey.rawRepresentation.base64EncodedString(),
                "encryptionKey": device.encryptionKey.publicKey.rawRepresentation.base64EncodedString(),
            ]
            #expect(try await Self.post(port, "/admin/technicians", technician, token: Self.adminToken).0 == 200)
            #expect(try await world.adminStrings("""
                SELECT skills::text || ' ' || capacity || ' ' || activity || ' ' || (device_encryption_key IS NOT NULL)::text
                FROM dispatcher.technicians WHERE id = 'tech-api'
                """) == ["{network} 2 available true"])
            #expect(try await Self.post(port, "/admin/technicians/tech-api/activity", ["activity": "offline"], token: Self.adminToken).0 == 200)
            #expect(try await world.adminStrings("SELECT activity FROM dispatcher.technicians WHERE id = 'tech-api'") == ["offline"])
            #expect(try await Self.post(port, "/admin/technicians/tech-api/activity", ["activity": "asleep"], token: Self.adminToken).0 == 400)
            var bad = technician
            bad["shiftStart"] = "25:00"
            #expect(try await Self.post(port, "/admin/technicians", bad, token: Self.adminToken).0 == 400)
            #expect(try await Self.post(port, "/admin/technicians", technician, token: "wrong").0 == 401)
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/admin/dispatch/stats")!)
            request.setValue("Bearer \(Self.adminToken)", forHTTPHeaderField: "Authorization")
            let (data, response) = try await URLSession.shared.boundedData(for: request)
            let status = response.statusCode
            #expect(status == 200)
            #expect(try JSONSerialization.jsonObject(with: data) as? [String: Any] != nil)
            await world.stop()
        }

        @Test("the link sent over the SMS outbox opens an app channel bound to the same request and account; the agent reaches the app and still texts; a reused or expired link is refused; the number is in no table, topic or log")
        func smsToApp() async throws {
            let consolePort = try freePort()
            let outbox = FileManager.default.temporaryDirectory.appendingPathComponent("veil-sms-\(UUID().uuidString.prefix(8))")
            let world = try await PipelineWorld.start([.ingress, .dispatcher], settings: [
                "VEIL_INGRESS_ADMIN_TOKEN": PipelineWorld.adminToken, "VEIL_DISPATCHER_HTTP_PORT": String(consolePort),
                "VEIL_DISPATCHER_ADMIN_TOKEN": Self.adminToken, "VEIL_SMS_INBOUND_TOKEN": Self.inboundToken,
                "VEIL_SMS_PROVIDER": "outbox", "VEIL_SMS_OUTBOX_DIR": outbox.path,
            ])
            var console = ConsoleSession(port: consolePort)
            defer { Task { [console] in await console.shutdown(); await world.stop(); try? FileManager.default.removeItem(at: outbox) } }
            try await world.withDispatch { engine in
                try await AgentAccounts(engine: engine, logger: engine.logger)
                    .upsert(Technician(id: ChatScene.agent, name: "Maria Lopez", skills: [], regions: [], capacity: 3), password: ChatScene.password)
            }

            // The customer texted the hotline; the back office moves them to the app.
            let (status, body) = try await Self.post(consolePort, "/admin/channel-upgrades",
                                                     ["phoneNumber": Self.number, "message": "Internet down since this morning"],
                                                     token: Self.adminToken)
            #expect(status == 201)
            let requestID = try #require(try JSONSerialization.jsonObject(with: body) as? [String: Any])["requestId"] as? String
            let sent = try await Self.waitForSMS(outbox, count: 1)
            #expect(sent.count == 1 && sent.first?.to == Self.normalized)
            let link = try #require(sent.first?.text.split(separator: " ").last.map(String.init))
            #expect(link.hasPrefix("https://app.veil.example/link#"))
            #expect(ChannelLink.parse(link)?.claims.requestId == requestID)

            // The app (enrolled to the customer's account) opens it: bound to the same request.
            let account = "CUST-55120"
            let phone = DeviceIdentity(deviceId: "phone-sms-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(phone, accountId: account, code: try await world.enrollmentCode(for: account))
            _ = try await world.client.openChannel(phone, link: link)
            let opened = try await Self.waitForInbox(world, phone, status: "channel-opened")
            #expect(opened.requestId == requestID)
            let bound = try await world.adminStrings("""
                SELECT encode(account_ref, 'hex') || ':' || (device_ref IS NOT NULL)::text FROM dispatcher.service_requests WHERE id = '\(requestID ?? "")'
                """)
            #expect(bound.first?.hasSuffix(":true") == true)

            // The agent takes the chat: messages and commands reach the app; texts still reach the phone.
            try await console.signIn(ChatScene.agent, ChatScene.password)
            let panel = try await console.waitForPanel(containing: "data-request-id=\"\(requestID ?? "")\"")
            let reservation = try #require(ConsoleSession.reservation(in: panel, for: requestID ?? ""))
            #expect(try await console.post("/console/offers/\(reservation)/accept").0 == 303)
            let chat = try await console.waitForPanel(containing: "data-channel=\"sms\"")
            #expect(chat.contains("via SMS, app connected"))
            #expect(chat.contains("[SMS] Internet down since this morning"))
            #expect(try await console.post("/console/chats/\(requestID ?? "")/messages", ["text": "Thanks, I see you in the app now."]).0 == 303)
            #expect(try await console.post("/console/chats/\(requestID ?? "")/command", ["command": "open-diagnostics"]).0 == 303)
            #expect(try await console.post("/console/chats/\(requestID ?? "")/sms", ["text": "We also wrote to you in the app."]).0 == 303)
            let command = try await Self.waitForInbox(world, phone, status: "command")
            #expect(command.message == "open-diagnostics" && command.requestId == requestID)
            #expect(try await Self.waitForInbox(world, phone, status: "message").message == "Thanks, I see you in the app now.")
            #expect(try await Self.waitForSMS(outbox, count: 2).last?.text == "We also wrote to you in the app.")
            // The customer answers by SMS too: the gateway's webhook files it in the chat.
            let (inbound, _) = try await Self.post(consolePort, "/sms/inbound", ["from": Self.normalized, "text": "ok, running it"],
                                                   token: Self.inboundToken)
            #expect(inbound == 200)
            _ = try await console.waitForPanel(containing: "[SMS] ok, running it")
            #expect(try await Self.post(consolePort, "/sms/inbound", ["from": Self.normalized, "text": "x"], token: "wrong").0 == 401)

            // The same link again (another device): refused. An expired link: refused.
            let other = DeviceIdentity(deviceId: "phone-other-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(other, accountId: "CUST-9", code: try await world.enrollmentCode(for: "CUST-9"))
            _ = try await world.client.openChannel(other, link: link)
            let reused = try await Self.waitForInbox(world, other, status: "channel-refused")
            #expect(reused.requestId == requestID)
            let (shortStatus, _) = try await Self.post(consolePort, "/admin/channel-upgrades",
                                                       ["phoneNumber": "+4915155501234", "message": "call me", "ttlSeconds": 1],
                                                       token: Self.adminToken)
            #expect(shortStatus == 201)
            let expiring = try #require(try await Self.waitForSMS(outbox, count: 3).last(where: { $0.to == "+4915155501234" })?.text
                .split(separator: " ").last.map(String.init))
            try await Task.sleep(for: .seconds(2))
            let late = DeviceIdentity(deviceId: "phone-late-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(late, accountId: "CUST-10", code: try await world.enrollmentCode(for: "CUST-10"))
            _ = try await world.client.openChannel(late, link: expiring)
            _ = try await Self.waitForInbox(world, late, status: "channel-refused")
            // A forged link (claims changed, signature kept) is refused too.
            let parts = link.split(separator: "#").last!.split(separator: ".")
            var claims = try #require(ChannelLink.parse(link)?.claims)
            claims.expiresAtMs += 86_400_000
            let forged = "https://app.veil.example/link#" + Data(ContractCoding.encode(claims)).base64EncodedString()
                .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
                + "." + parts[1]
            let forger = DeviceIdentity(deviceId: "phone-forger-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(forger, accountId: "CUST-11", code: try await world.enrollmentCode(for: "CUST-11"))
            _ = try await world.client.openChannel(forger, link: forged)
            _ = try await Self.waitForInbox(world, forger, status: "channel-refused")

            // The number is kept only sealed and keyed: not in any table, topic or log (the outbox is the SMS network's side).
            var scanner = PrivacyScanner()
            scanner.forbid(Array(Self.normalized.utf8), as: "phone number")
            scanner.forbid(Array("+4915155501234".utf8), as: "second phone number")
            let scan = try await PrivacyScanTests().scanAll(world, scanner, schemas: ["ingress", "dispatcher"])
            #expect(scan.findings.isEmpty, "found: \(scan.findings.sorted())")
            await console.shutdown()
            await world.stop()
        }

        /// A stand-in SMS gateway: answers `failures` tries with 503, then 200, and keeps what it accepted.
        actor FakeGateway {
            var failures: Int
            var tries = 0
            var accepted: [[String: String]] = []
            init(failures: Int) { self.failures = failures }
            func setFailures(_ n: Int) { failures = n; tries = 0 }
            func take(_ body: [String: String]) -> Bool {
                tries += 1
                guard tries > failures else { return false }
                accepted.append(body)
                return true
            }
        }

        @Test("an SMS waits in the dispatcher's outbox while the gateway refuses: retried until it is accepted, sent once, then emptied; a gateway that keeps refusing gets it given up after the configured tries, and the chat says so")
        func smsRetries() async throws {
            let gatewayPort = try freePort(), consolePort = try freePort()
            let gateway = FakeGateway(failures: 2)
            let router = Router()
            router.post("/sms") { request, context -> Response in
                let body = try await request.decode(as: [String: String].self, context: context)
                return Response(status: await gateway.take(body) ? .ok : .serviceUnavailable)
            }
            let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: gatewayPort)))
            let server = Task { try await app.runService() }
            let world = try await PipelineWorld.start([.dispatcher], settings: [
                "VEIL_DISPATCHER_HTTP_PORT": String(consolePort), "VEIL_DISPATCHER_ADMIN_TOKEN": Self.adminToken,
                "VEIL_SMS_PROVIDER": "http", "VEIL_SMS_GATEWAY_URL": "http://127.0.0.1:\(gatewayPort)/sms",
                "VEIL_SMS_RETRY_BASE_MS": "100", "VEIL_SMS_MAX_ATTEMPTS": "3",
            ])
            defer { Task { await world.stop(); server.cancel() } }
            func outboxRow(_ requestID: String) async throws -> String? {
                try await world.adminStrings("""
                    SELECT attempts || ' ' || (sent_at IS NOT NULL)::text || ' ' || (failed_at IS NOT NULL)::text || ' ' || length(message_sealed)
                    FROM dispatcher.sms_outbox WHERE request_id = '\(requestID)'
                    """).first
            }
            func waitForRow(_ requestID: String, _ done: (String) -> Bool) async throws -> String {
                for _ in 0..<100 {
                    if let row = try await outboxRow(requestID), done(row) { return row }
                    try await Task.sleep(for: .milliseconds(100))
                }
                throw DatabaseError(code: "test.timeout", reason: "the SMS of \(requestID) did not settle: \(try await outboxRow(requestID) ?? "no row")")
            }

            // The gateway refuses twice: the upgrade is answered at once (queued), the SMS arrives on the third try.
            let (status, body) = try await Self.post(consolePort, "/admin/channel-upgrades", ["phoneNumber": Self.number, "message": "No signal"],
                                                     token: Self.adminToken)
            #expect(status == 201)
            let requestID = try #require(try JSONSerialization.jsonObject(with: body) as? [String: Any])["requestId"] as? String ?? ""
            #expect(try await waitForRow(requestID) { $0.hasPrefix("3 true") } == "3 true false 0")
            let accepted = await gateway.accepted
            #expect(accepted.count == 1 && accepted.first?["to"] == Self.normalized)
            #expect(accepted.first?["text"]?.contains("https://app.veil.example/link#") == true)
            try await Task.sleep(for: .milliseconds(500))
            #expect(await gateway.accepted.count == 1, "sent once, not again")

            // A gateway that keeps refusing: given up after three tries; the agent's chat shows it.
            await gateway.setFailures(1_000)
            let (second, secondBody) = try await Self.post(consolePort, "/admin/channel-upgrades",
                                                           ["phoneNumber": "+4915155509876", "message": "Still no signal"], token: Self.adminToken)
            #expect(second == 201)
            let failedID = try #require(try JSONSerialization.jsonObject(with: secondBody) as? [String: Any])["requestId"] as? String ?? ""
            #expect(try await waitForRow(failedID) { $0.hasSuffix("true 0") } == "3 false true 0")
            #expect(await gateway.tries == 3)
            #expect(try await world.adminStrings("""
                SELECT count(*)::text FROM dispatcher.chat_messages WHERE request_id = '\(failedID)' AND sender = 'system'
                """) == ["1"])
            #expect(try await world.adminStrings("SELECT last_error FROM dispatcher.sms_outbox WHERE request_id = '\(failedID)'")
                    == ["the SMS gateway answered 503"])
            // Operators see the same on the dispatcher's /metrics: one sent, four retries (two per SMS), one given up.
            let metrics = try await world.metrics(.dispatcher)
            #expect(metrics.contains(#"veil_sms_total{outcome="sent"} 1"#))
            #expect(metrics.contains(#"veil_sms_total{outcome="retried"} 4"#))
            #expect(metrics.contains(#"veil_sms_total{outcome="failed"} 1"#))
            await world.stop()
            server.cancel()
        }
    }
}
