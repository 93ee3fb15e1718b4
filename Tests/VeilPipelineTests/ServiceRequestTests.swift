import DispatcherService
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import PostgresNIO
import Testing
import VeilClient
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilIngressClient
import VeilKafka
import VeilService
import VeilStore

extension PipelineWorld {
    static let adminToken = "test-admin-token"

    /// `POST /admin/...` with the admin bearer token (or `token`); returns status and body.
    func admin(_ path: String, _ body: [String: String], token: String? = PipelineWorld.adminToken) async throws -> (Int, Data) {
        var request = URLRequest(url: ingressURL.appendingPathComponent(path))
        request.httpMethod = "POST"
        request.httpBody = try JSONSerialization.data(withJSONObject: body)
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        let (data, response) = try await URLSession.shared.boundedData(for: request)
        let status = response.statusCode
        return (status, data)
    }

    func enrollmentCode(for account: String) async throws -> String {
        let (status, body) = try await admin("admin/enrollment-codes", ["accountId": account])
        #expect(status == 201)
        return try ContractCoding.decode(EnrollmentCode.self, from: Array(body)).code
    }

    /// The dispatcher's engine, on the dispatcher's schema as an administrator.
    func withDispatch<T: Sendable>(_ body: @Sendable (AssignmentEngine) async throws -> T) async throws -> T {
        var logger = Logger(label: "test")
        logger.logLevel = .error
        let database = try Database(configuration: admin, schema: ServiceName.dispatcher.schema, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await database.run() }
            defer { group.cancelAll() }
            return try await body(AssignmentEngine(database: database, policy: AssignmentPolicy(), logger: logger))
        }
    }
}

func problemCode(_ error: any Error) -> String { (error as? IngressClient.Failure)?.code ?? "\(error)" }

extension PipelineSuites {
    @Suite("Service requests: enrollment with a one-time code, sealed requests, the dispatcher", .serialized, .timeLimit(.minutes(5)))
    struct ServiceRequestTests {
        static let description = "Fibre down since 9am, the router blinks red at Elm Street 12"

        @Test("a device enrolled with a one-time code sends a request sealed to the dispatcher; the dispatcher files it and offers it to a technician; nobody else can read it")
        func endToEnd() async throws {
            let world = try await PipelineWorld.start([.ingress, .dispatcher], settings: ["VEIL_INGRESS_ADMIN_TOKEN": PipelineWorld.adminToken])
            defer { Task { await world.stop() } }
            try await world.withDispatch { engine in
                try await engine.upsert(Technician(id: "tech-ana", name: "Ana", skills: ["network"], regions: ["north"], capacity: 2))
            }
            let account = "CUST-778812"
            let code = try await world.enrollmentCode(for: account)
            let device = DeviceIdentity(deviceId: "phone-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(device, accountId: account, code: code)

            let receipt = try await world.client.submit(device, ServiceRequestPayload(
                category: "outage", priority: 3, description: Self.description, region: "north", tier: "gold"))
            #expect(receipt.status == "accepted")

            var filed = 0
            for _ in 0..<100 where filed == 0 {
                filed = try await world.adminCount("SELECT count(*) FROM dispatcher.service_requests WHERE id = '\(receipt.id)'")
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(filed == 1)
            let offered = try await world.adminStrings("""
                SELECT technician_id FROM dispatcher.reservations WHERE request_id = '\(receipt.id)' AND status = 'pending'
                """)
            #expect(offered == ["tech-ana"], "the outage rule asks for a network technician in the north")
            let action = try await world.adminStrings("SELECT action || ':' || rule FROM dispatcher.service_requests")
            #expect(action == ["technician:outage"])

            // The assertion travelled with it: the account and device, never their raw ids.
            let assertion = try await world.adminStrings("SELECT assertion::text FROM dispatcher.service_requests")
            #expect(assertion.count == 1 && !assertion[0].contains(account) && !assertion[0].contains(device.deviceId))

            // Nobody but the dispatcher reads the description: not on the topic, not in a table, not in a log.
            let onTopic = try await world.readAll([Topic.serviceRequests.name], count: 1)
            let needle = Array("router blinks red".utf8)
            #expect(onTopic.count == 1)
            #expect(!onTopic.contains { $0.value.contains(needle) || $0.headers.contains { $0.value?.contains(needle) == true } })
            let tables = try await world.adminStrings("""
                SELECT string_agg(t::text, ' ') FROM (
                    SELECT row_to_json(s)::text AS t FROM dispatcher.service_requests s
                    UNION ALL SELECT row_to_json(r)::text FROM ingress.service_requests r
                    UNION ALL SELECT row_to_json(d)::text FROM ingress.devices d) x
                """)
            #expect(!tables.joined().contains("blinks red") && !tables.joined().contains(account))
            #expect(!world.logs.all.contains { $0.contains("blinks red") || $0.contains(account) || $0.contains(device.deviceId) })

            // …and the dispatcher can: its at-rest key opens the stored description.
            let dispatcher = try world.keys.identity("dispatcher")
            let atRest = try #require(dispatcher.atRestKey("service-requests"))
            let sealed = try await world.withDispatch { engine in
                try await engine.database.client.query("SELECT description_sealed FROM dispatcher.service_requests")
                    .collect().first!.decode(ByteBuffer.self)
            }
            let opened = try VersionedKey(version: atRest.version, key: atRest.key)
                .open(Array(sealed.readableBytesView), aad: Array(receipt.id.utf8))
            #expect(String(decoding: opened, as: UTF8.self) == Self.description)
        }

        @Test("codes are single-use, bound to their account and locked after five wrong tries; unbound and revoked devices are refused; admin routes need the token")
        func enrollmentAndRevocation() async throws {
            let world = try await PipelineWorld.start([.ingress, .dispatcher], settings: ["VEIL_INGRESS_ADMIN_TOKEN": PipelineWorld.adminToken])
            defer { Task { await world.stop() } }
            let request = ServiceRequestPayload(category: "installation", priority: 2, description: "New line please", region: "north")

            let (refused, _) = try await world.admin("admin/enrollment-codes", ["accountId": "A-1"], token: "wrong")
            #expect(refused == 401)

            let unbound = DeviceIdentity(deviceId: "unbound-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(unbound)
            await #expect(throws: (any Error).self) { _ = try await world.client.submit(unbound, request) }
            #expect(await failure { try await world.client.submit(unbound, request) } == "device_not_bound")

            let code = try await world.enrollmentCode(for: "A-1")
            let device = DeviceIdentity(deviceId: "bound-\(UUID().uuidString.prefix(6))")
            #expect(await failure { try await world.client.enroll(device, accountId: "A-2", code: code) } == "invalid_enrollment_code",
                    "a code works only for its account")
            try await world.client.enroll(device, accountId: "A-1", code: code)
            let other = DeviceIdentity(deviceId: "other-\(UUID().uuidString.prefix(6))")
            #expect(await failure { try await world.client.enroll(other, accountId: "A-1", code: code) } == "invalid_enrollment_code",
                    "single use")

            let locked = try await world.enrollmentCode(for: "A-3")
            let wrong = locked == "00000000" ? "11111111" : "00000000"
            for _ in 0..<5 { _ = await failure { try await world.client.enroll(other, accountId: "A-3", code: wrong) } }
            #expect(await failure { try await world.client.enroll(other, accountId: "A-3", code: locked) } == "invalid_enrollment_code",
                    "five wrong tries lock the account's live codes")

            #expect(try await world.client.submit(device, request).status == "accepted")
            let (revoked, _) = try await world.admin("admin/devices/revoke", ["deviceId": device.deviceId])
            #expect(revoked == 200)
            #expect(await failure { try await world.client.submit(device, request) } == "revoked_device", "refused at once")
            #expect(await failure { try await world.client.inquire(device, userId: "C1") } == "revoked_device")
        }

        @Test("an assertion signed by anyone but ingress, or for another request, is dead-lettered and never filed")
        func forgedAssertion() async throws {
            let world = try await PipelineWorld.start([.dispatcher])
            defer { Task { await world.stop() } }
            let ingress = EnvelopeCodec(identity: try world.keys.identity("ingress"), directory: try world.keys.directoryStore())
            let dispatcherKey = try #require(ingress.directory.encryptionKey(of: "dispatcher"))
            let part = try SealedPart.seal(ContractCoding.encode(ServiceRequestPayload(category: "outage", priority: 5, description: "x")),
                                           label: PartLabel.serviceRequest, to: [dispatcherKey])
            func message(signer: String, claimedRequest: String?) throws -> OutgoingMessage {
                let id = MessageID.generate()
                let claims = AuthAssertion(requestId: claimedRequest ?? id.description, accountRef: Data(repeating: 1, count: 32),
                                           deviceRef: Data(repeating: 2, count: 32), deviceEncryptionKey: Data(repeating: 3, count: 32),
                                           method: "device-signature", enrolledAt: Date(), authenticatedAt: Date())
                let bytes = ContractCoding.encode(claims)
                let (signature, reference) = try world.keys.identity(signer).signStatement(SignedAssertion.context + bytes)
                let signed = SignedAssertion(assertion: Data(bytes), signature: Data(signature), signerKeyId: reference.keyID,
                                             signerVersion: reference.version)
                return try ingress.message(EnvelopeDraft(id: id, type: MessageType.serviceRequestSubmitted, parts: [
                    .forwarded(part), .sealed(PartLabel.authentication, payload: ContractCoding.encode(signed), to: ["dispatcher"]),
                ]), topic: Topic.serviceRequests.name, key: Array(id.description.utf8))
            }
            var logger = Logger(label: "test")
            logger.logLevel = .error
            let producer = try KafkaProducer(configuration: ProducerConfiguration(kafka: world.kafkaConfiguration), logger: logger)
            try await producer.send(batch: [try message(signer: "anonymizer", claimedRequest: nil),
                                            try message(signer: "ingress", claimedRequest: MessageID.generate().description)])
            await producer.close()
            let dead = try await world.readAll([Topic.serviceRequests.deadLetter.name], count: 2, timeout: .seconds(60))
            #expect(dead.map { $0.headerString(DeadLetterHeader.code) } == ["dispatch.bad_assertion", "dispatch.bad_assertion"])
            #expect(try await world.adminCount("SELECT count(*) FROM dispatcher.service_requests") == 0)
        }
    }
}

/// The problem code a call failed with ("" if it succeeded).
func failure(_ body: () async throws -> some Any) async -> String {
    do {
        _ = try await body()
        return ""
    } catch {
        return problemCode(error)
    }
}

extension PipelineSuites {
    @Suite("Technician dispatch end to end: alerts, answers, confirmations", .serialized, .timeLimit(.minutes(5)))
    struct TechnicianDispatchTests {
        @Test("a transferred request reaches the next technician with the customer's original authentication assertion; nobody re-authenticates")
        func transferKeepsAssertion() async throws {
            let alerterPort = try freePort()
            let world = try await PipelineWorld.start([.ingress, .dispatcher, .technicianAlerter], settings: [
                "VEIL_INGRESS_ADMIN_TOKEN": PipelineWorld.adminToken, "VEIL_ALERTER_HTTP_PORT": String(alerterPort),
            ])
            defer { Task { await world.stop() } }
            let alerter = URL(string: "http://127.0.0.1:\(alerterPort)")!
            let ana = DeviceIdentity(deviceId: "tech-ana"), carl = DeviceIdentity(deviceId: "tech-carl")
            try await world.withDispatch { engine in
                for device in [ana, carl] {
                    try await engine.upsert(Technician(id: device.deviceId, name: device.deviceId, skills: ["network"], regions: ["north"],
                                                       capacity: 1, signingKey: device.signingKey.publicKey.rawRepresentation,
                                                       encryptionKey: device.encryptionKey.publicKey.rawRepresentation))
                }
            }
            let code = try await world.enrollmentCode(for: "CUST-T")
            let customer = DeviceIdentity(deviceId: "phone-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(customer, accountId: "CUST-T", code: code)
            let dispatcherKey = try await world.client.dispatcherKey()
            let receipt = try await world.client.submit(customer, ServiceRequestPayload(category: "outage", priority: 3,
                                                                                         description: "Needs a ladder", region: "north"))
            func firstAlert(_ device: DeviceIdentity) async throws -> AlertPayload {
                for _ in 0..<150 {
                    if let alert = try? await TechnicianClient(baseURL: alerter, device: device).alerts().first { return alert }
                    try await Task.sleep(for: .milliseconds(100))
                }
                throw CancellationError()
            }
            let first = try await firstAlert(ana)
            try await TechnicianClient(baseURL: alerter, device: ana).answer(first, .accept, dispatcher: dispatcherKey)
            try await TechnicianClient(baseURL: alerter, device: ana).answer(first, .transfer, note: "no ladder", dispatcher: dispatcherKey)

            let handedOn = try await firstAlert(carl)
            #expect(handedOn.requestId == receipt.id)
            let signed = try #require(handedOn.assertion, "the assertion travels with the transfer")
            #expect(signed == first.assertion, "the same assertion ingress signed at submission")
            let directory = try world.keys.directoryStore()
            let signer = try #require(directory.activeSigningKey(KeyReference(keyID: signed.signerKeyId, version: signed.signerVersion)))
            #expect(signer.owner == "ingress")
            #expect(signer.key.isValidSignature(signed.signature, for: SignedAssertion.context + Array(signed.assertion)),
                    "verifiable by the next technician with the key directory alone")
            let claims = try ContractCoding.decode(AuthAssertion.self, from: Array(signed.assertion))
            #expect(claims.requestId == receipt.id && claims.method == "device-signature")
            let ingressRows = try await world.adminCount("SELECT count(*) FROM ingress.service_requests")
            #expect(ingressRows == 1, "the customer was not asked again: one request, one authentication")

            var statuses: [String] = []
            for _ in 0..<100 where !statuses.contains("transferred") {
                statuses = try await world.client.inbox(customer).map(\.status)
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(statuses == ["received", "assigned", "transferred"])
        }

        @Test("a technician's app and a customer's app on their live streams receive the offer and the confirmation made after they connected")
        func liveStream() async throws {
            let alerterPort = try freePort()
            let world = try await PipelineWorld.start([.ingress, .dispatcher, .technicianAlerter], settings: [
                "VEIL_INGRESS_ADMIN_TOKEN": PipelineWorld.adminToken, "VEIL_ALERTER_HTTP_PORT": String(alerterPort),
            ])
            defer { Task { await world.stop() } }
            let alerter = URL(string: "http://127.0.0.1:\(alerterPort)")!
            let dana = DeviceIdentity(deviceId: "tech-dana")
            try await world.withDispatch { engine in
                try await engine.upsert(Technician(id: dana.deviceId, name: "Dana", skills: ["network"], regions: ["north"], capacity: 5,
                                                   signingKey: dana.signingKey.publicKey.rawRepresentation,
                                                   encryptionKey: dana.encryptionKey.publicKey.rawRepresentation))
            }
            let code = try await world.enrollmentCode(for: "CUST-LIVE")
            let customer = DeviceIdentity(deviceId: "phone-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(customer, accountId: "CUST-LIVE", code: code)
            // Dana's app connects first (before any offer exists), then the request arrives.
            let listening = Task { try await TechnicianClient(baseURL: alerter, device: dana).stream(seconds: 8) }
            let inbox = Task { try await world.client.inboxStream(customer, seconds: 8) }
            try await Task.sleep(for: .seconds(1))
            let receipt = try await world.client.submit(customer, ServiceRequestPayload(category: "outage", priority: 2,
                                                                                         description: "Slow line", region: "north"))
            let received = try await listening.value
            #expect(received.map(\.requestId) == [receipt.id], "delivered on the open stream")
            #expect(received.first?.description == "Slow line")
            #expect(try await TechnicianClient(baseURL: alerter, device: dana).alerts().isEmpty, "delivered once: the pull has nothing left")
            let notes = try await inbox.value
            #expect(notes.map(\.status) == ["received"] && notes.first?.requestId == receipt.id, "the customer's live inbox")
        }

        @Test("a customer's live inbox on one ingress replica receives the confirmation whichever replica filed it")
        func liveInboxOnAnotherReplica() async throws {
            let world = try await PipelineWorld.start([.ingress, .dispatcher], settings: ["VEIL_INGRESS_ADMIN_TOKEN": PipelineWorld.adminToken])
            defer { Task { await world.stop() } }
            let second = IngressClient(baseURL: try await world.startReplica(of: .ingress).api)
            let code = try await world.enrollmentCode(for: "CUST-TWO")
            let customer = DeviceIdentity(deviceId: "phone-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(customer, accountId: "CUST-TWO", code: code)
            // Both replicas consume the notifications topic as one group, so either may file the
            // confirmation; the stream on the second is woken by PostgreSQL's NOTIFY either way.
            // It lasts 12 s, less than the stream's 15 s heartbeat, so only NOTIFY can deliver
            // a confirmation filed after it opened.
            let inbox = Task { try await second.inboxStream(customer, seconds: 12) }
            try await Task.sleep(for: .seconds(1))
            let receipt = try await world.client.submit(customer, ServiceRequestPayload(category: "outage", priority: 2,
                                                                                         description: "No signal", region: "north"))
            let notes = try await inbox.value
            #expect(notes.first?.status == "received" && notes.first?.requestId == receipt.id,
                    "the live inbox on the other replica: \(notes.map(\.status))")
        }

        @Test("an offer is alerted sealed to the technician; a decline moves it on; accept, en route and completed reach the customer's inbox; only the parties read it")
        func dispatchEndToEnd() async throws {
            let alerterPort = try freePort()
            let world = try await PipelineWorld.start([.ingress, .dispatcher, .technicianAlerter], settings: [
                "VEIL_INGRESS_ADMIN_TOKEN": PipelineWorld.adminToken, "VEIL_ALERTER_HTTP_PORT": String(alerterPort),
            ])
            defer { Task { await world.stop() } }
            let alerter = URL(string: "http://127.0.0.1:\(alerterPort)")!
            let ana = DeviceIdentity(deviceId: "tech-ana"), ben = DeviceIdentity(deviceId: "tech-ben")
            try await world.withDispatch { engine in
                for (device, name) in [(ana, "Ana Lopez"), (ben, "Ben Okafor")] {
                    try await engine.upsert(Technician(id: device.deviceId, name: name, skills: ["network"], regions: ["north"], capacity: 1,
                                                       signingKey: device.signingKey.publicKey.rawRepresentation,
                                                       encryptionKey: device.encryptionKey.publicKey.rawRepresentation))
                }
            }
            let code = try await world.enrollmentCode(for: "CUST-1")
            let customer = DeviceIdentity(deviceId: "phone-\(UUID().uuidString.prefix(6))")
            try await world.client.enroll(customer, accountId: "CUST-1", code: code)
            let dispatcherKey = try await world.client.dispatcherKey()
            let text = "No internet since this morning; the modem light is red"
            let receipt = try await world.client.submit(customer, ServiceRequestPayload(category: "outage", priority: 4, description: text,
                                                                                         region: "north"), dispatcher: dispatcherKey)

            func firstAlert(_ device: DeviceIdentity) async throws -> AlertPayload {
                let client = TechnicianClient(baseURL: alerter, device: device)
                // Up to 45 s: on a loaded CI machine the three services' consumer groups can take long to form.
                for _ in 0..<450 {
                    if let alert = try? await client.alerts().first { return alert }
                    try await Task.sleep(for: .milliseconds(100))
                }
                throw CancellationError()
            }
            // Equal load, neither at home: the one offered longest ago (never), then by id: Ana.
            let offered = try await firstAlert(ana)
            #expect(offered.requestId == receipt.id && offered.description == text, "only Ana's device opens what she is offered")
            try await TechnicianClient(baseURL: alerter, device: ana).answer(offered, .decline, note: "out of parts", dispatcher: dispatcherKey)

            let moved = try await firstAlert(ben)
            #expect(moved.requestId == receipt.id && moved.reservationId != offered.reservationId, "declined: the next candidate")
            // Ana cannot answer Ben's offer: the alerter checks the key the offer came with.
            let forged = try ana.answer(TechnicianAnswer(reservationId: moved.reservationId, technicianId: "tech-ben", action: .accept),
                                        dispatcher: dispatcherKey)
            let (status, _) = try await IngressClient(baseURL: alerter).send(forged)
            #expect(status == 401, "signed by the wrong device")
            let benClient = TechnicianClient(baseURL: alerter, device: ben)
            for action in [TechnicianAction.accept, .enRoute, .completed] {
                try await benClient.answer(moved, action, note: action == .completed ? "replaced the modem" : nil, dispatcher: dispatcherKey)
            }

            var statuses: [String] = []
            for _ in 0..<150 where statuses.count < 4 {
                statuses = try await world.client.inbox(customer).map(\.status)
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(statuses == ["received", "assigned", "en-route", "completed"])
            let notes = try await world.client.inbox(customer)
            #expect(notes.last?.technician == "Ben" && notes.allSatisfy { $0.requestId == receipt.id })
            #expect(try await world.adminCount("SELECT count(*) FROM dispatcher.dispatch_requests WHERE status = 'completed'") == 1)
            #expect(try await world.adminCount("SELECT sum(active_load) FROM dispatcher.technicians") == 0)

            // Sealed bytes only: no topic, log, or table of ingress or the alerter shows the
            // description, the decline reason or the completion notes (the dispatcher keeps the
            // description sealed at rest and a decline's reason for its statistics).
            let topics = [Topic.serviceRequests, .dispatchAssignments, .dispatchResponses, .customerNotifications].map(\.name)
            let messages = try await world.readAll(topics, idle: .seconds(3))
            #expect(messages.count >= 10)
            for secret in ["modem light", "out of parts", "replaced the modem"] {
                let needle = Array(secret.utf8)
                #expect(!messages.contains { $0.value.contains(needle) }, "\(secret) on a topic")
                #expect(!world.logs.all.contains { $0.contains(secret) }, "\(secret) in a log")
            }
            let tables = try await world.adminStrings("""
                SELECT coalesce(string_agg(t, ' '), '') FROM (
                    SELECT row_to_json(a)::text AS t FROM technician_alerter.alerts a
                    UNION ALL SELECT row_to_json(i)::text FROM ingress.inbox i
                    UNION ALL SELECT row_to_json(s)::text FROM dispatcher.service_requests s) x
                """).joined()
            #expect(!tables.contains("modem") && !tables.contains("out of parts") && !tables.isEmpty)
        }
    }
}
