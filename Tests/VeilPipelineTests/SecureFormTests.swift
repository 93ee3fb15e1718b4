import AsyncHTTPClient
import DispatcherService
import Foundation
import Logging
import NIOCore
import PostgresNIO
import Synchronization
import Testing
import VeilClient
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilIngressClient
import VeilKafka
import VeilService
import VeilStore

/// An agent's browser without the browser: the console's forms posted over HTTP with the
/// session cookie, the pages read back as HTML.
struct ConsoleSession {
    let base: String
    let http: HTTPClient
    var cookie: String?

    init(port: Int) {
        base = "http://127.0.0.1:\(port)"
        http = HTTPClient(eventLoopGroupProvider: .singleton,
                          configuration: HTTPClient.Configuration(redirectConfiguration: .disallow))
    }

    func shutdown() async { try? await http.shutdown() }

    /// POSTs a form; returns status, the `Location` and the `Set-Cookie` value.
    func post(_ path: String, _ fields: [String: String] = [:], origin: String? = nil) async throws -> (Int, String?, String?, String) {
        var request = HTTPClientRequest(url: base + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        if let cookie { request.headers.add(name: "Cookie", value: cookie) }
        if let origin { request.headers.add(name: "Origin", value: origin) }
        let body = fields.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")" }.joined(separator: "&")
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await http.execute(request, timeout: .seconds(30))
        let text = String(buffer: try await response.body.collect(upTo: 1 << 20))
        let setCookie = response.headers["Set-Cookie"].first?.split(separator: ";").first.map(String.init)
        return (Int(response.status.code), response.headers["Location"].first, setCookie, text)
    }

    func get(_ path: String) async throws -> (Int, String) {
        var request = HTTPClientRequest(url: base + path)
        if let cookie { request.headers.add(name: "Cookie", value: cookie) }
        let response = try await http.execute(request, timeout: .seconds(30))
        return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 20)))
    }

    mutating func signIn(_ agent: String, _ password: String) async throws {
        let (status, location, setCookie, _) = try await post("/console/login", ["agentId": agent, "password": password])
        #expect(status == 303 && location == "/console")
        cookie = setCookie
    }

    /// Polls the panel until it contains `text`; returns the panel.
    func waitForPanel(containing text: String, seconds: Int = 30) async throws -> String {
        var last = ""
        for _ in 0..<(seconds * 5) {
            let (_, panel) = try await get("/console/panel")
            if panel.contains(text) { return panel }
            last = panel
            try await Task.sleep(for: .milliseconds(200))
        }
        Issue.record("the panel never showed \(text); last panel:\n\(last)")
        return last
    }

    /// The reservation id in the panel's accept form for `request`.
    static func reservation(in panel: String, for request: String) -> String? {
        guard let offer = panel.range(of: "data-request-id=\"\(request)\"") else { return nil }
        let rest = panel[offer.upperBound...]
        guard let start = rest.range(of: "/console/offers/"), let end = rest[start.upperBound...].range(of: "/accept") else { return nil }
        return String(rest[start.upperBound..<end.lowerBound])
    }
}

/// A chat set up for secure-form tests: an agent, a customer with a PIN on file, the chat accepted.
struct ChatScene {
    static let agent = "agent-maria", password = "correct horse battery"
    static let account = "CUST-40017"
    static let pin = "73016458"

    let world: PipelineWorld
    let consolePort: Int
    let customer: DeviceIdentity
    let chat: String

    static func start(acceptInConsole: Bool = true) async throws -> (ChatScene, ConsoleSession) {
        let consolePort = try freePort()
        let world = try await PipelineWorld.start([.ingress, .keyVault, .dispatcher], settings: [
            "VEIL_INGRESS_ADMIN_TOKEN": PipelineWorld.adminToken, "VEIL_DISPATCHER_HTTP_PORT": String(consolePort),
        ])
        try await world.withDispatch { engine in
            try await AgentAccounts(engine: engine, logger: engine.logger)
                .upsert(Technician(id: agent, name: "Maria Lopez", skills: [], regions: [], capacity: 2), password: password)
        }
        let pins = try await world.exportReference(.pins, csv: "account_id,pin\n\(account),\(pin)\nCUST-other,12345678\nCUST-bad,12ab\n")
        #expect(pins.published == 2 && pins.rejected["pin not 4 to 12 digits"] == 1)
        try await world.waitForCount("SELECT count(*) FROM key_vault.pin_verifiers", atLeast: 2)

        let customer = DeviceIdentity(deviceId: "phone-chat-\(UUID().uuidString.prefix(6))")
        try await world.client.enroll(customer, accountId: account, code: try await world.enrollmentCode(for: account))
        let chat = try await world.client.submit(customer, ServiceRequestPayload(
            category: "chat", priority: 3, description: "Hi, I need to change my tariff")).id
        var console = ConsoleSession(port: consolePort)
        if acceptInConsole {
            try await console.signIn(agent, password)
            let panel = try await console.waitForPanel(containing: "data-request-id=\"\(chat)\"")
            let reservation = try #require(ConsoleSession.reservation(in: panel, for: chat))
            let (status, _, _, _) = try await console.post("/console/offers/\(reservation)/accept")
            #expect(status == 303)
            _ = try await console.waitForPanel(containing: "class=\"conversation\" data-request-id=\"\(chat)\"")
        }
        return (ChatScene(world: world, consolePort: consolePort, customer: customer, chat: chat), console)
    }

    /// The customer's device waits for the agent's form request.
    func formRequest(after known: Set<String> = [], seconds: Int = 30) async throws -> SecureFormRequest {
        for _ in 0..<(seconds * 5) {
            if let form = try await world.client.inbox(customer).compactMap(\.form).first(where: { !known.contains($0.formId) }) { return form }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw DatabaseError(code: "test.timeout", reason: "no form request reached the device")
    }
}

extension PipelineSuites {
    @Suite("Confidential information in chat: secure forms checked by the key-vault, agents see only the verdict",
           .serialized, .timeLimit(.minutes(6)))
    struct SecureFormTests {
        @Test("an agent asks for a PIN and a card number; wrong and right PIN, invalid and valid card; the agent's pages show only verdicts; no value in any topic, table, log or page — and a planted one is found")
        func pinAndCard() async throws {
            let (scene, console) = try await ChatScene.start()
            let world = scene.world
            defer { Task { await console.shutdown(); await world.stop() } }
            let vault = try await world.client.vaultKey()

            // The chat works both ways: the agent's message reaches the device sealed; the customer's answer reaches the console.
            let (sent, _, _, _) = try await console.post("/console/chats/\(scene.chat)/messages", ["text": "Hello, I can help with that."])
            #expect(sent == 303)
            _ = try await world.client.submit(scene.customer, ServiceRequestPayload(category: "chat", priority: 3,
                                                                                     description: "Thanks! Tariff M please.",
                                                                                     conversationId: scene.chat))
            _ = try await console.waitForPanel(containing: "Tariff M please.")
            // (It leaves through the dispatcher's outbox: the relay publishes it a moment after the console answered.)
            let hello = try await ChannelUpgradeTests.waitForInbox(world, scene.customer, status: "message")
            #expect(hello.message == "Hello, I can help with that.")

            var pages: [String] = []
            var known = Set<String>()
            func ask(_ kind: String, answer value: String, expect outcome: String) async throws {
                let (status, _, _, _) = try await console.post("/console/chats/\(scene.chat)/forms", ["kind": kind])
                #expect(status == 303)
                let form = try await scene.formRequest(after: known)
                known.insert(form.formId)
                #expect(form.kind.rawValue == kind)
                try await world.client.answer(form, value: value, by: scene.customer, vault: vault)
                pages.append(try await console.waitForPanel(containing: "data-form-id=\"\(form.formId)\" data-outcome=\"\(outcome)\""))
            }
            try await ask("pin", answer: "11112222", expect: "not-verified")
            try await ask("pin", answer: ChatScene.pin, expect: "verified")
            try await ask("card", answer: "4242 4242 4242 4241", expect: "invalid")
            try await ask("card", answer: "4242 4242 4242 4242", expect: "tokenized")
            #expect(pages.last?.contains("card number: card ending 4242 tokenized") == true)
            #expect(pages.last?.contains("PIN: verified") == true)
            #expect(pages.last?.contains("PIN: not verified") == true)
            // The vault kept a token and the last four digits, never the number.
            #expect(try await world.adminStrings("SELECT last4 FROM key_vault.value_tokens") == ["4242"])
            // The agent's message and the four form requests left through the dispatcher's outbox, each written with its
            // effect (the filed message, the pending form) and published by the relay.
            #expect(try await world.adminCount("""
                SELECT count(*) FROM dispatcher.outbox o WHERE o.published_at IS NOT NULL
                  AND (o.message_id IN (SELECT id FROM dispatcher.secure_forms) OR o.message_id IN (SELECT id FROM dispatcher.chat_messages))
                """) == 5)

            // A form answered from another account's device: the vault refuses to check it (the dispatcher signed it for the
            // chat's account), so no verdict exists and the form stays pending.
            let stranger = DeviceIdentity(deviceId: "phone-stranger-\(UUID().uuidString.prefix(4))")
            try await world.client.enroll(stranger, accountId: "CUST-other", code: try await world.enrollmentCode(for: "CUST-other"))
            let (asked, _, _, _) = try await console.post("/console/chats/\(scene.chat)/forms", ["kind": "pin"])
            #expect(asked == 303)
            let lifted = try await scene.formRequest(after: known)
            try await world.client.answer(lifted, value: "12345678", by: stranger, vault: vault)
            let refused = try await world.readAll([Topic.secureFormsSubmitted.deadLetter.name], count: 1, idle: .seconds(5),
                                                  firstWait: .seconds(30))
            #expect(refused.count == 1)
            #expect(try await world.adminCount("SELECT count(*) FROM key_vault.secure_form_checks WHERE form_id = '\(lifted.formId)'") == 0)
            #expect(try await world.adminStrings("SELECT outcome FROM dispatcher.secure_forms WHERE id = '\(lifted.formId)'") == ["pending"])

            // Nowhere: the PINs and card numbers, in any encoding, in every topic, table (ingress, vault, dispatcher), log and page.
            let secrets = [ChatScene.pin, "11112222", "4242 4242 4242 4242", "4242424242424242", "4242 4242 4242 4241", "4242424242424241", "12345678"]
            var scanner = PrivacyScanner()
            for secret in secrets { scanner.forbid(Array(secret.utf8), as: "value \(secret)") }
            let scan = PrivacyScanTests()
            let clean = try await scan.scanAll(world, scanner, schemas: ["ingress", "key_vault", "dispatcher"])
            #expect(clean.sources > 8)
            #expect(clean.findings.isEmpty, "found: \(clean.findings.sorted())")
            let (_, page) = try await console.get("/console")
            for html in pages + [page] { #expect(scanner.scan(Array(html.utf8)).isEmpty, "a console page shows a confidential value") }
            // The scan is not blind: a PIN planted in the dispatcher's tables is found.
            try await PipelineWorld.withAdmin(world.admin) { client in
                try await client.query(PostgresQuery(unsafeSQL: "CREATE TABLE dispatcher.planted (note text)"))
                try await client.query(PostgresQuery(unsafeSQL: "INSERT INTO dispatcher.planted VALUES ('PIN is \(ChatScene.pin)')"))
            }
            let planted = try await scan.scanAll(world, scanner, schemas: ["dispatcher"])
            #expect(planted.findings.contains("table dispatcher.planted: value \(ChatScene.pin) (raw)"))
            await console.shutdown()
            await world.stop()
        }

        @Test("in a real browser (headless Chromium): an agent signs in, accepts the chat and sends a PIN form; the customer answers on the device; the page shows verified and neither its DOM nor any response it received holds the PIN")
        func realBrowser() async throws {
            let (scene, console) = try await ChatScene.start(acceptInConsole: false)
            let world = scene.world
            defer { Task { await console.shutdown(); await world.stop() } }
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            let screenshot = root.appendingPathComponent(".veil/artifacts/agent-console.png")
            try? FileManager.default.removeItem(at: screenshot)

            let browser = Process()
            browser.executableURL = root.appendingPathComponent("Tests/Browser/run-agent-console.sh")
            browser.arguments = ["--console", "http://127.0.0.1:\(scene.consolePort)", "--agent", ChatScene.agent,
                                 "--password", ChatScene.password, "--secret", ChatScene.pin, "--screenshot", screenshot.path,
                                 "--request-id", scene.chat, "--timeout", "60"]
            let output = Mutex<[String: Data]>([:])
            for (name, pipe) in [("stdout", Pipe()), ("stderr", Pipe())] {
                pipe.fileHandleForReading.readabilityHandler = { handle in
                    let chunk = handle.availableData
                    output.withLock { $0[name, default: Data()].append(chunk) }
                }
                if name == "stdout" { browser.standardOutput = pipe } else { browser.standardError = pipe }
            }
            let exited = AsyncStream<Int32>.makeStream()
            browser.terminationHandler = { process in
                exited.continuation.yield(process.terminationStatus)
                exited.continuation.finish()
            }
            try browser.run()
            // The customer's side, meanwhile: wait for the agent's form on the device and answer it, sealed to the vault.
            let form = try await scene.formRequest(seconds: 120)
            #expect(form.kind == .pin)
            try await world.client.answer(form, value: ChatScene.pin, by: scene.customer)
            var status: Int32 = -1
            for await code in exited.stream { status = code }
            try await Task.sleep(for: .milliseconds(200))
            let log = output.withLock { logs in logs.mapValues { String(decoding: $0, as: UTF8.self) } }
            #expect(status == 0, "the browser scenario failed:\n\(log["stderr"] ?? "")\n\(log["stdout"] ?? "")")
            #expect(log["stdout"]?.contains("FORM_REQUESTED") == true)
            #expect(log["stdout"]?.contains("\"ok\": true") == true)
            #expect(FileManager.default.fileExists(atPath: screenshot.path), "the screenshot artifact is saved at \(screenshot.path)")
            #expect(try await world.adminStrings("SELECT outcome FROM dispatcher.secure_forms WHERE id = '\(form.formId)'") == ["verified"])
            await console.shutdown()
            await world.stop()
        }

        @Test("the console refuses the wrong password (and locks after five in a row), other origins and signed-out visitors; five wrong PINs lock the account's checks")
        func consoleGuards() async throws {
            let (scene, signedOut) = try await ChatScene.start(acceptInConsole: false)
            var console = signedOut
            let world = scene.world
            defer { Task { await signedOut.shutdown(); await world.stop() } }
            var stranger = ConsoleSession(port: scene.consolePort)
            let (refused, _, refusedCookie, page) = try await stranger.post("/console/login", ["agentId": ChatScene.agent, "password": "wrong password"])
            #expect(refused == 401 && refusedCookie == nil && page.contains("id=\"login-error\""))
            #expect(try await stranger.get("/console/panel").0 == 401)
            let (redirect, location, _, _) = try await stranger.post("/console/chats/\(scene.chat)/forms", ["kind": "pin"])
            #expect(redirect == 303 && location == "/console/login")
            try await console.signIn(ChatScene.agent, ChatScene.password)
            let panel = try await console.waitForPanel(containing: "data-request-id=\"\(scene.chat)\"")
            let reservation = try #require(ConsoleSession.reservation(in: panel, for: scene.chat))
            let (crossSite, _, _, _) = try await console.post("/console/offers/\(reservation)/accept", origin: "https://evil.example")
            #expect(crossSite == 403)
            let (accepted, _, _, _) = try await console.post("/console/offers/\(reservation)/accept",
                                                             origin: "http://127.0.0.1:\(scene.consolePort)")
            #expect(accepted == 303)
            _ = try await console.waitForPanel(containing: "class=\"conversation\"")

            var known = Set<String>()
            for attempt in 1...6 {
                _ = try await console.post("/console/chats/\(scene.chat)/forms", ["kind": "pin"])
                let form = try await scene.formRequest(after: known)
                known.insert(form.formId)
                try await world.client.answer(form, value: "0000000\(attempt)", by: scene.customer)
                let expected = attempt <= 5 ? "not-verified" : "locked"
                _ = try await console.waitForPanel(containing: "data-form-id=\"\(form.formId)\" data-outcome=\"\(expected)\"")
            }
            // Five wrong passwords in a row lock the agent's sign-in: then even the right one is refused.
            try await world.withDispatch { engine in
                try await AgentAccounts(engine: engine, logger: engine.logger)
                    .upsert(Technician(id: "agent-guessed", name: "Guessed", skills: [], regions: []), password: "the right password")
            }
            var guesser = ConsoleSession(port: scene.consolePort)
            for attempt in 1...5 {
                #expect(try await guesser.post("/console/login", ["agentId": "agent-guessed", "password": "guess \(attempt)"]).0 == 401)
            }
            #expect(try await guesser.post("/console/login", ["agentId": "agent-guessed", "password": "the right password"]).0 == 401)
            guesser.cookie = nil
            await guesser.shutdown()
            // A technician's id cannot be turned into an agent's (or back) by an upsert.
            try await world.withDispatch { engine in
                try await engine.upsert(Technician(id: "tech-solo", name: "Solo", skills: ["network"], regions: ["north"]))
                await #expect(throws: AssignmentError.self) {
                    try await AgentAccounts(engine: engine, logger: engine.logger)
                        .upsert(Technician(id: "tech-solo", name: "Solo", skills: [], regions: []), password: "long enough password")
                }
                await #expect(throws: AssignmentError.self) {
                    try await engine.upsert(Technician(id: ChatScene.agent, name: "Maria", skills: ["network"], regions: ["north"]))
                }
            }
            // A form no agent asked for (made up on the device, unsigned) is never checked: no PIN probing.
            let madeUp = SecureFormRequest(formId: UUID().uuidString.lowercased(), kind: .pin)
            try await world.client.answer(madeUp, value: ChatScene.pin, by: scene.customer)
            let deadLetters = try await world.readAll([Topic.secureFormsSubmitted.deadLetter.name], count: 1, idle: .seconds(5),
                                                      firstWait: .seconds(30))
            #expect(deadLetters.first?.headers.contains { $0.name == DeadLetterHeader.code && $0.value == Array("vault.unrequested_form".utf8) } == true)
            #expect(try await world.adminCount("SELECT count(*) FROM key_vault.secure_form_checks WHERE form_id = '\(madeUp.formId)'") == 0)
            stranger.cookie = nil
            await stranger.shutdown()
            await console.shutdown()
            await world.stop()
        }
    }
}
