import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import VeilContracts
import VeilCore
import VeilService
import VeilStore

/// The agent console, served by the dispatcher on `VEIL_DISPATCHER_HTTP_PORT`:
/// server-rendered pages (Mustache), live updates over server-sent events (woken across
/// replicas by PostgreSQL NOTIFY), plain HTML forms for every action.
///
/// Security: an HttpOnly, SameSite=Strict session cookie; POSTs from another origin are
/// refused; a strict Content-Security-Policy (no inline script); nothing confidential is
/// ever rendered, because the dispatcher only holds the key-vault's verdicts.
public struct AgentConsole: Service {
    let desk: ChatDesk
    let accounts: AgentAccounts
    /// SMS → app channel links, agents' SMS, inbound SMS (nil: no SMS channel).
    let upgrades: ChannelUpgrades?
    let inboundSMSToken: String?
    let live: LiveNotifications
    let context: ServiceContext
    let port: Int
    let adminToken: String?
    let sessionLifetime: Duration
    let secureCookie: Bool
    let onRunning: @Sendable (Int) async -> Void

    public init(desk: ChatDesk, accounts: AgentAccounts, live: LiveNotifications, context: ServiceContext, port: Int,
                adminToken: String?, sessionLifetime: Duration, secureCookie: Bool, upgrades: ChannelUpgrades? = nil,
                inboundSMSToken: String? = nil, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) {
        self.upgrades = upgrades
        self.inboundSMSToken = inboundSMSToken
        self.desk = desk
        self.accounts = accounts
        self.live = live
        self.context = context
        self.port = port
        self.adminToken = adminToken
        self.sessionLifetime = sessionLifetime
        self.secureCookie = secureCookie
        self.onRunning = onRunning
    }

    static let cookieName = "veil_console"

    public func run() async throws {
        let router = Router()
        router.get("/console/login") { _, _ in html(ConsoleTemplates.library.render(["agentId": ""], withTemplate: "login") ?? "") }
        router.post("/console/login") { request, _ in await respond { try await signIn(request) } }
        router.post("/console/logout") { request, _ in await respond { try await signOut(request) } }
        router.get("/console") { request, _ in await respond { try await page(request) } }
        router.get("/console/panel") { request, _ in await respond { try await panelFragment(request) } }
        router.get("/console/events") { request, _ in await respond { try await events(request) } }
        router.get("/console/console.js") { _, _ in asset(ConsoleTemplates.script, type: "text/javascript; charset=utf-8") }
        router.get("/console/console.css") { _, _ in asset(ConsoleTemplates.stylesheet, type: "text/css; charset=utf-8") }
        router.post("/console/offers/{id}/{answer}") { request, routeContext in
            await respond { try await answerOffer(request, id: routeContext.parameters.get("id"), answer: routeContext.parameters.get("answer")) }
        }
        router.post("/console/chats/{id}/{action}") { request, routeContext in
            await respond { try await chatAction(request, id: routeContext.parameters.get("id"), action: routeContext.parameters.get("action")) }
        }
        router.post("/admin/agents") { request, _ in await respond { try await addAgent(request) } }
        router.post("/admin/channel-upgrades") { request, _ in await respond { try await startUpgrade(request) } }
        router.post("/admin/technicians") { request, _ in await respond { try await upsertTechnician(request) } }
        router.post("/admin/technicians/{id}/activity") { request, routeContext in
            await respond { try await setActivity(request, id: routeContext.parameters.get("id") ?? "") }
        }
        router.get("/admin/dispatch/stats") { request, _ in await respond { try await statistics(request) } }
        router.post("/sms/inbound") { request, _ in await respond { try await inboundSMS(request) } }
        let onRunning = self.onRunning
        let app = Application(router: router,
                              configuration: .init(address: .hostname(context.configuration.adminHost, port: port), serverName: "veil-dispatcher"),
                              onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
                              logger: context.logger)
        try await app.run()
    }

    // MARK: Plumbing

    func respond(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let error as AssignmentError {
            let status: HTTPResponse.Status = switch error.code {
            case "dispatch.not_found", "dispatch.not_pending": .conflict
            default: .badRequest
            }
            return await Problem.respond(context, prefix: "dispatcher") {
                throw Problem(status: status, code: error.code.replacingOccurrences(of: "dispatch.", with: ""), detail: error.reason)
            }
        } catch {
            return await Problem.respond(context, prefix: "dispatcher") { throw error }
        }
    }

    static let securityHeaders: HTTPFields = [
        .contentSecurityPolicy: "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        HTTPField.Name("X-Frame-Options")!: "DENY", HTTPField.Name("Referrer-Policy")!: "same-origin", .cacheControl: "no-store",
        HTTPField.Name("X-Content-Type-Options")!: "nosniff",
    ]

    func html(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        var headers = Self.securityHeaders
        headers[.contentType] = "text/html; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    func asset(_ text: String, type: String) -> Response {
        var headers = Self.securityHeaders
        headers[.contentType] = type
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    func redirect(_ location: String) -> Response {
        var headers = Self.securityHeaders
        headers[.location] = location
        return Response(status: .seeOther, headers: headers)
    }

    /// The signed-in agent, or nil (pages redirect to the sign-in, fragments answer 401).
    func agent(_ request: Request) async throws -> String? {
        guard let token = request.cookies[Self.cookieName]?.value else { return nil }
        return try await accounts.agent(forSession: token)
    }

    /// A form POST from this console's own origin, decoded.
    func form<T: Decodable>(_ type: T.Type, from request: Request) async throws -> T {
        // Browsers say where a request comes from: Sec-Fetch-Site (all current ones), else Origin.
        // (The SameSite=Strict cookie already keeps other sites' posts signed out; this refuses them outright.)
        let crossOrigin = Problem(status: .forbidden, code: "cross_origin", detail: "console forms are accepted from the console's own origin only")
        if let site = request.headers[HTTPField.Name("Sec-Fetch-Site")!] {
            guard site == "same-origin" || site == "none" else { throw crossOrigin }
        } else if let origin = request.headers[.origin], origin != "null" {
            let authority = request.head.authority ?? ""
            guard origin == "http://\(authority)" || origin == "https://\(authority)" else { throw crossOrigin }
        }
        let body = try await request.body.collect(upTo: 16_384)
        do {
            return try URLEncodedFormDecoder().decode(type, from: String(buffer: body))
        } catch {
            throw Problem.malformedJSON("the form is missing a field or has a bad value")
        }
    }

    // MARK: Sign-in

    func signIn(_ request: Request) async throws -> Response {
        struct Credentials: Decodable { var agentId: String; var password: String }
        let credentials = try await form(Credentials.self, from: request)
        guard let token = try await accounts.signIn(credentials.agentId, password: credentials.password, lifetime: sessionLifetime) else {
            return html(ConsoleTemplates.library.render(["agentId": credentials.agentId, "error": "Unknown agent or wrong password."],
                                                        withTemplate: "login") ?? "", status: .unauthorized)
        }
        var response = redirect("/console")
        response.setCookie(Cookie(name: Self.cookieName, value: token, maxAge: Int(sessionLifetime.seconds), path: "/console",
                                  secure: secureCookie, httpOnly: true, sameSite: .strict))
        return response
    }

    func signOut(_ request: Request) async throws -> Response {
        _ = try await form([String: String].self, from: request)
        if let token = request.cookies[Self.cookieName]?.value { try await accounts.signOut(token) }
        var response = redirect("/console/login")
        response.setCookie(Cookie(name: Self.cookieName, value: "", maxAge: 0, path: "/console", secure: secureCookie, httpOnly: true,
                                  sameSite: .strict))
        return response
    }

    // MARK: Pages

    func page(_ request: Request) async throws -> Response {
        guard let agentID = try await agent(request) else { return redirect("/console/login") }
        return html(ConsoleTemplates.library.render(Self.model(try await desk.panel(for: agentID)), withTemplate: "page") ?? "")
    }

    func panelFragment(_ request: Request) async throws -> Response {
        guard let agentID = try await agent(request) else { throw Problem(status: .unauthorized, code: "signed_out", detail: "sign in again") }
        return html(ConsoleTemplates.library.render(Self.model(try await desk.panel(for: agentID)), withTemplate: "panel") ?? "")
    }

    /// Server-sent events: one `changed` event whenever what this agent sees changed
    /// (compared by a hash of the rendered panel), checked on every NOTIFY and every few seconds.
    func events(_ request: Request) async throws -> Response {
        guard let agentID = try await agent(request) else { throw Problem(status: .unauthorized, code: "signed_out", detail: "sign in again") }
        let last = Mutex<[UInt8]>([])
        let desk = self.desk
        var response = live.eventStream(key: ChatDesk.consoleKey, event: "changed", maxDuration: .seconds(600)) {
            let rendered = ConsoleTemplates.library.render(Self.model(try await desk.panel(for: agentID)), withTemplate: "panel") ?? ""
            let digest = Array(SHA256.hash(data: Array(rendered.utf8)))
            let changed = last.withLock { previous in
                defer { previous = digest }
                return previous != digest
            }
            return changed ? [(id: digest.prefix(8).hexEncoded, json: Array("{}".utf8))] : []
        }
        for field in Self.securityHeaders where response.headers[field.name] == nil { response.headers.append(field) }
        return response
    }

    static func model(_ panel: ChatDesk.Panel) -> [String: Any] {
        let time = DateFormatter()
        time.dateFormat = "HH:mm:ss"
        time.timeZone = TimeZone(identifier: "UTC")
        return [
            "agentId": panel.agentID, "agentName": panel.agentName,
            "waiting": panel.waiting, "waitingNoun": panel.waiting == 1 ? "chat" : "chats",
            "offers": panel.offers.map {
                ["reservationId": $0.reservationID.uuidString.lowercased(), "requestId": $0.requestID.uuidString.lowercased(),
                 "category": $0.category, "firstMessage": $0.firstMessage, "expiresAt": time.string(from: $0.expiresAt) + " UTC"] as [String: Any]
            },
            "conversations": panel.conversations.map { conversation in
                ["requestId": conversation.requestID.uuidString.lowercased(), "category": conversation.category,
                 "sms": conversation.channel == "sms", "appConnected": conversation.appConnected,
                 "messages": conversation.messages.map { ["sender": $0.sender, "text": $0.text] },
                 "forms": conversation.forms.map { ["id": $0.id.uuidString.lowercased(), "outcome": $0.outcome, "text": $0.text] },
                ] as [String: Any]
            },
        ]
    }

    // MARK: Actions

    func answerOffer(_ request: Request, id: String?, answer: String?) async throws -> Response {
        _ = try await form([String: String].self, from: request)
        guard let agentID = try await agent(request) else { return redirect("/console/login") }
        guard let reservation = id.flatMap(UUID.init(uuidString:)), let answer = answer.flatMap(ReservationAnswer.init(rawValue:)) else {
            throw Problem(status: .notFound, code: "not_found", detail: "no such offer")
        }
        try await desk.engine.answer(reservation, technicianID: agentID, answer, reason: answer == .decline ? "declined in the console" : nil)
        if answer == .accept, let requestID = try await requestOf(reservation) {
            try await desk.append(requestID, sender: "system", text: "\(try await desk.agentName(agentID) ?? agentID) joined the chat.")
        }
        await desk.wakeConsoles()
        return redirect("/console")
    }

    func requestOf(_ reservation: UUID) async throws -> UUID? {
        let rows = try await desk.database.client.query("""
            SELECT request_id FROM \(unescaped: desk.database.table("reservations")) WHERE id = \(reservation)
            """, logger: context.logger).collect()
        return try rows.first?.decode(UUID.self)
    }

    func chatAction(_ request: Request, id: String?, action: String?) async throws -> Response {
        struct Fields: Decodable { var text: String?; var kind: String?; var command: String? }
        let fields = try await form(Fields.self, from: request)
        guard let agentID = try await agent(request) else { return redirect("/console/login") }
        guard let requestID = id.flatMap(UUID.init(uuidString:)) else { throw Problem(status: .notFound, code: "not_found", detail: "no such chat") }
        switch action {
        case "messages":
            guard let text = fields.text?.trimmingCharacters(in: .whitespacesAndNewlines), !text.isEmpty, text.count <= 2_000 else {
                throw Problem.invalidField("text", "must be 1 to 2000 characters")
            }
            try await desk.send(text, from: agentID, in: requestID)
        case "forms":
            guard let kind = fields.kind.flatMap(SecureFormKind.init(rawValue:)) else {
                throw Problem.invalidField("kind", "must be pin, card or national-id")
            }
            try await desk.requestForm(kind, from: agentID, in: requestID)
        case "close":
            try await desk.close(requestID, by: agentID)
        case "sms":
            guard let upgrades, let text = fields.text?.trimmingCharacters(in: .whitespacesAndNewlines), !text.isEmpty, text.count <= 480 else {
                throw Problem.invalidField("text", "must be 1 to 480 characters")
            }
            try await upgrades.text(text, from: agentID, in: requestID)
        case "command":
            guard let command = fields.command.flatMap(AppCommand.init(rawValue:)) else {
                throw Problem.invalidField("command", "must be one of \(AppCommand.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            try await desk.command(command, from: agentID, in: requestID)
        default:
            throw Problem(status: .notFound, code: "not_found", detail: "no such action")
        }
        return redirect("/console")
    }

    // MARK: Admin

    /// Requires `Authorization: Bearer <token>` (compared in constant time); nil token: always refused.
    func requireBearer(_ request: Request, _ token: String?, variable: String) throws {
        guard let token, let given = request.headers[.authorization], ConstantTime.equal(given, "Bearer \(token)") else {
            throw Problem(status: .unauthorized, code: "admin_refused", detail: "send Authorization: Bearer <\(variable)>")
        }
    }

    /// `POST /admin/channel-upgrades {phoneNumber, message, ttlSeconds?}` (bearer `VEIL_DISPATCHER_ADMIN_TOKEN`):
    /// opens a chat for a customer who texted or called from `phoneNumber` and texts them a one-time app link.
    func startUpgrade(_ request: Request) async throws -> Response {
        try requireBearer(request, adminToken, variable: "VEIL_DISPATCHER_ADMIN_TOKEN")
        guard let upgrades else { throw Problem(status: .notFound, code: "not_found", detail: "no SMS channel configured") }
        struct Upgrade: Decodable { var phoneNumber: String; var message: String; var ttlSeconds: Int? }
        let (_, body) = try await Problem.decodeJSON(Upgrade.self, from: request, maxBytes: 16_384)
        if let ttl = body.ttlSeconds, !(1...86_400).contains(ttl) { throw Problem.invalidField("ttlSeconds", "must be 1 to 86400") }
        let started = try await upgrades.start(number: body.phoneNumber, message: body.message, lifetime: body.ttlSeconds.map { .seconds($0) })
        return Response(status: .created, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: ContractCoding.encode(started))))
    }

    /// `POST /sms/inbound {from, text}` (bearer `VEIL_SMS_INBOUND_TOKEN`): the SMS gateway's webhook.
    func inboundSMS(_ request: Request) async throws -> Response {
        try requireBearer(request, inboundSMSToken, variable: "VEIL_SMS_INBOUND_TOKEN")
        guard let upgrades else { throw Problem(status: .notFound, code: "not_found", detail: "no SMS channel configured") }
        struct Inbound: Decodable { var from: String; var text: String }
        let (_, body) = try await Problem.decodeJSON(Inbound.self, from: request, maxBytes: 16_384)
        let filed = try await upgrades.inbound(from: body.from, text: body.text)
        return Response(status: filed == nil ? .accepted : .ok, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(string: filed == nil ? #"{"status":"no open chat for this number"}"# : #"{"status":"filed"}"#)))
    }

    /// `POST /admin/technicians` (bearer `VEIL_DISPATCHER_ADMIN_TOKEN`): creates or updates a technician —
    /// `{id, name, skills, regions, homeRegion?, capacity, activity, shiftStart?, shiftEnd?, signingKey?, encryptionKey?}`
    /// (device keys as base64 of the raw 32-byte public keys). `veilctl technician add` does the same on the database.
    func upsertTechnician(_ request: Request) async throws -> Response {
        try requireBearer(request, adminToken, variable: "VEIL_DISPATCHER_ADMIN_TOKEN")
        struct Body: Decodable {
            var id: String, name: String, skills: [String], regions: [String], homeRegion: String?, capacity: Int?, activity: String?
            var shiftStart: String?, shiftEnd: String?, signingKey: Data?, encryptionKey: Data?
        }
        let (_, body) = try await Problem.decodeJSON(Body.self, from: request, maxBytes: 16_384)
        guard !body.id.isEmpty, body.id.utf8.count <= 64, !body.name.isEmpty, (0...1_000).contains(body.capacity ?? 1) else {
            throw Problem.invalidField("id", "id (1 to 64 characters) and name must be set, capacity 0 to 1000")
        }
        let technician = Technician(id: body.id, name: body.name, skills: body.skills, regions: body.regions, homeRegion: body.homeRegion,
                                    capacity: body.capacity ?? 1, activity: body.activity ?? "available", shiftStart: body.shiftStart,
                                    shiftEnd: body.shiftEnd, signingKey: body.signingKey, encryptionKey: body.encryptionKey, kind: .technician)
        try await desk.engine.upsert(technician)
        context.logger.info("technician saved", metadata: ["technician": "\(technician.id)"])
        return Response(status: .ok, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(string: #"{"status":"saved"}"#)))
    }

    /// `POST /admin/technicians/{id}/activity {activity}`: available, busy or offline.
    func setActivity(_ request: Request, id: String) async throws -> Response {
        try requireBearer(request, adminToken, variable: "VEIL_DISPATCHER_ADMIN_TOKEN")
        struct Activity: Decodable { var activity: String }
        let (_, body) = try await Problem.decodeJSON(Activity.self, from: request, maxBytes: 1_024)
        try await desk.engine.setActivity(id, body.activity)
        return Response(status: .ok, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(string: #"{"status":"saved"}"#)))
    }

    /// `GET /admin/dispatch/stats`: the queue and reservation statistics (`veilctl dispatch stats`).
    func statistics(_ request: Request) async throws -> Response {
        try requireBearer(request, adminToken, variable: "VEIL_DISPATCHER_ADMIN_TOKEN")
        return Response(status: .ok, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: ContractCoding.encode(try await desk.engine.statistics()))))
    }

    /// `POST /admin/agents {id, name, skills, capacity, password}` (bearer `VEIL_DISPATCHER_ADMIN_TOKEN`).
    func addAgent(_ request: Request) async throws -> Response {
        try requireBearer(request, adminToken, variable: "VEIL_DISPATCHER_ADMIN_TOKEN")
        struct NewAgent: Decodable { var id: String; var name: String; var skills: [String]?; var capacity: Int?; var password: String }
        let (_, body) = try await Problem.decodeJSON(NewAgent.self, from: request, maxBytes: 16_384)
        guard !body.id.isEmpty, body.id.utf8.count <= 64, !body.name.isEmpty, (1...50).contains(body.capacity ?? 3) else {
            throw Problem.invalidField("id", "id and name must be set, capacity 1 to 50")
        }
        try await accounts.upsert(Technician(id: body.id, name: body.name, skills: body.skills ?? [], regions: [], capacity: body.capacity ?? 3,
                                             kind: .agent), password: body.password)
        return Response(status: .created, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(string: #"{"status":"created"}"#)))
    }
}
