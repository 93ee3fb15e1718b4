import Crypto
import Foundation
import Logging
import NIOCore
import PostgresNIO
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// Chats between customers and agents, and the secure forms agents send in them.
///
/// A chat is a service request the rules route to an agent: it waits in the agents'
/// queue and is offered like a technician's job (`AssignmentEngine`, kind `agent`, each
/// agent holding up to `capacity` chats). Messages are sealed at rest under the
/// dispatcher's at-rest key. A secure form records only what was asked and, later, the
/// key-vault's verdict: the value itself never comes here.
public struct ChatDesk: Sendable {
    let engine: AssignmentEngine
    let messages: DispatchMessages
    let codec: EnvelopeCodec
    let logger: Logger
    /// Wakes agent consoles (key `console`) when something they show changed.
    let live: LiveNotifications?

    /// What agents do in the console reaches the customer's device through the
    /// transactional outbox (`VeilStore.Outbox`): the notification is written in the same
    /// transaction as its effect (the filed message, the pending form, the closed chat)
    /// and the dispatcher's `OutboxRelay` publishes it, so a crash in between loses
    /// neither and sends nothing that did not happen.
    public init(engine: AssignmentEngine, codec: EnvelopeCodec, live: LiveNotifications?, logger: Logger) {
        self.engine = engine
        self.codec = codec
        self.live = live
        self.logger = logger
        messages = DispatchMessages(engine: engine, logger: logger)
    }

    var database: Database { engine.database }
    static let atRestPurpose = "chat-messages"
    /// How long a customer has to answer a secure form.
    static let formLifetime: TimeInterval = 600
    public static let consoleKey = "console"

    public static let migrations: [Migration] = [
        Migration("016_dispatch_chats", sql: """
            CREATE TABLE {schema}.chat_messages (
                id                  uuid PRIMARY KEY,
                request_id          uuid NOT NULL,
                sender              text NOT NULL CHECK (sender IN ('customer', 'agent', 'system')),
                agent_id            text,
                body_sealed         bytea NOT NULL,       -- ChaCha20-Poly1305 under the dispatcher's at-rest key
                at_rest_key_version integer NOT NULL,
                created_at          timestamptz NOT NULL DEFAULT clock_timestamp()
            );
            CREATE INDEX chat_messages_request ON {schema}.chat_messages (request_id, created_at);
            CREATE TABLE {schema}.secure_forms (
                id           uuid PRIMARY KEY,
                request_id   uuid NOT NULL,
                agent_id     text NOT NULL,
                kind         text NOT NULL,
                outcome      text NOT NULL DEFAULT 'pending',   -- only the vault's verdict, never the value
                last4        text,
                requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                answered_at  timestamptz
            );
            CREATE INDEX secure_forms_request ON {schema}.secure_forms (request_id);
            """),
    ]

    // MARK: Customers' side (from the intake stage)

    /// Files a message of the conversation `requestID`, sealed at rest.
    public func append(_ requestID: UUID, sender: String, agentID: String? = nil, text: String, id: UUID = UUID()) async throws {
        try await database.client.withConnection { connection in
            try await insertMessage(requestID, sender: sender, agentID: agentID, text: text, id: id, on: connection)
        }
        await wakeConsoles()
    }

    /// `append` within the caller's transaction; the caller wakes the consoles after it committed.
    func insertMessage(_ requestID: UUID, sender: String, agentID: String?, text: String, id: UUID,
                       on connection: PostgresConnection) async throws {
        guard let key = codec.identity.atRestKey(Self.atRestPurpose) else {
            throw StageError.permanent("dispatch.no_key", "no encryption key to derive the at-rest key from")
        }
        let sealed = try VersionedKey(version: key.version, key: key.key).seal(Array(text.utf8), aad: Array(id.uuidString.lowercased().utf8))
        try await connection.query("""
            INSERT INTO \(unescaped: database.table("chat_messages")) (id, request_id, sender, agent_id, body_sealed, at_rest_key_version)
            VALUES (\(id), \(requestID), \(sender), \(agentID), \(ByteBuffer(bytes: sealed)), \(Int32(key.version)))
            ON CONFLICT (id) DO NOTHING
            """, logger: logger)
    }

    /// A customer's follow-up message: filed if the conversation is theirs (same account as
    /// the request that opened it) and still open; otherwise refused.
    func customerMessage(_ text: String, conversation: String, accountRef: Data, messageID: UUID) async throws {
        guard let requestID = UUID(uuidString: conversation) else {
            throw StageError.permanent("dispatch.invalid_request", "conversationId is not a request id")
        }
        let rows = try await database.client.query("""
            SELECT s.account_ref, d.status FROM \(unescaped: database.table("service_requests")) s
            JOIN \(unescaped: database.table("dispatch_requests")) d ON d.id = s.id
            WHERE s.id = \(requestID) AND d.worker_kind = 'agent'
            """, logger: logger).collect()
        guard let (account, status) = try rows.first?.decode((ByteBuffer?, String).self),
              let account, Data(account.readableBytesView) == accountRef else {
            throw StageError.permanent("dispatch.not_your_conversation", "no chat of this account has this id")
        }
        guard status != "completed", status != "cancelled" else {
            throw StageError.permanent("dispatch.chat_closed", "the chat is closed")
        }
        try await append(requestID, sender: "customer", text: text, id: messageID)
    }

    /// The key-vault's verdict on a form: recorded if it answers a pending form of this
    /// conversation's account; a verdict for another account's form is refused.
    func apply(_ result: SecureFormResult) async throws {
        guard let formID = UUID(uuidString: result.formId) else {
            throw StageError.permanent("dispatch.bad_payload", "the form id is not a UUID")
        }
        let rows = try await database.client.query("""
            UPDATE \(unescaped: database.table("secure_forms")) f SET outcome = \(result.outcome.rawValue), last4 = \(result.last4),
                answered_at = clock_timestamp()
            FROM \(unescaped: database.table("service_requests")) s
            WHERE f.id = \(formID) AND f.outcome = 'pending' AND s.id = f.request_id AND s.account_ref = \(ByteBuffer(bytes: result.accountRef))
            RETURNING f.request_id, f.kind
            """, logger: logger).collect()
        guard let (requestID, kind) = try rows.first?.decode((UUID, String).self) else {
            logger.warning("secure form result not applied: not pending, or not this account's form", metadata: ["form.id": "\(result.formId)"])
            return
        }
        let title = SecureFormKind(rawValue: kind)?.title ?? kind
        try await append(requestID, sender: "system", text: "\(title): \(Self.describe(result.outcome, last4: result.last4, kind: result.kind))",
                         id: MessageID.derived(from: MessageID(uuid: formID), stage: "dispatcher.form-result").uuid)
        logger.info("secure form answered", metadata: ["form.id": "\(result.formId)", "outcome": "\(result.outcome.rawValue)"])
    }

    /// What the agent reads for a verdict.
    static func describe(_ outcome: SecureFormOutcome, last4: String?, kind: SecureFormKind) -> String {
        switch outcome {
        case .verified: "verified"
        case .notVerified: "not verified"
        case .tokenized: kind == .card ? "card ending \(last4 ?? "????") tokenized" : "tokenized"
        case .invalid: kind == .card ? "not a valid card number" : "not a valid \(kind.title)"
        case .locked: "locked after too many wrong attempts"
        }
    }

    // MARK: Agents' side (from the console)

    /// Sends the agent's message to the customer's device (sealed to it) and files it.
    func send(_ text: String, from agentID: String, in requestID: UUID) async throws {
        try await requireConversation(requestID, agent: agentID)
        let id = UUID()
        guard let message = try await messages.notification(requestID, status: "message", technician: try await agentName(agentID),
                                                            message: text, id: MessageID(uuid: id), codec: codec) else {
            throw AssignmentError.invalid("the customer has no app channel for this chat yet: text them instead")
        }
        try await database.transaction { connection in
            try await insertMessage(requestID, sender: "agent", agentID: agentID, text: text, id: id, on: connection)
            try await database.enqueue([OutboxMessage(id: MessageID(uuid: id), message: message)], on: connection)
        }
        await wakeConsoles()
    }

    /// Sends a command to the customer's app over the secure channel (e.g. open the diagnostics screen).
    func command(_ command: AppCommand, from agentID: String, in requestID: UUID) async throws {
        try await requireConversation(requestID, agent: agentID)
        let id = MessageID.generate()
        guard let message = try await messages.notification(requestID, status: "command", technician: try await agentName(agentID),
                                                            message: command.rawValue, id: id, codec: codec) else {
            throw AssignmentError.invalid("the customer has no app channel for this chat yet")
        }
        try await database.transaction { connection in
            try await insertMessage(requestID, sender: "agent", agentID: agentID, text: "[app command] \(command.rawValue)", id: id.uuid,
                                    on: connection)
            try await database.enqueue([OutboxMessage(id: id, message: message)], on: connection)
        }
        await wakeConsoles()
    }

    /// Asks the customer for a confidential value: files the form (pending) and sends the
    /// form request to the customer's device. Returns the form id.
    @discardableResult
    func requestForm(_ kind: SecureFormKind, from agentID: String, in requestID: UUID) async throws -> UUID {
        try await requireConversation(requestID, agent: agentID)
        let formID = UUID()
        let accountRows = try await database.client.query("""
            SELECT account_ref FROM \(unescaped: database.table("service_requests")) WHERE id = \(requestID)
            """, logger: logger).collect()
        guard let account = try accountRows.first?.decode(ByteBuffer?.self) ?? nil else {
            throw AssignmentError.invalid("the customer has not opened the app channel yet: send them a channel link, or text them")
        }
        var form = SecureFormRequest(formId: formID.uuidString.lowercased(), kind: kind, accountRef: Data(account.readableBytesView),
                                     expiresAtMs: Int64((Date().timeIntervalSince1970 + Self.formLifetime) * 1000))
        let (signature, signer) = try codec.identity.signStatement(form.signedBytes)
        form.signature = Data(signature)
        form.signerKeyId = signer.keyID
        form.signerVersion = signer.version
        guard let message = try await messages.notification(requestID, status: "secure-form", technician: try await agentName(agentID),
                                                            message: "Please enter your \(kind.title) in the secure form.",
                                                            id: MessageID(uuid: formID), codec: codec, form: form) else {
            throw AssignmentError.notFound("the customer's device for \(requestID)")
        }
        // The pending form and its request to the device: both or neither.
        try await database.transaction { connection in
            try await connection.query("""
                INSERT INTO \(unescaped: database.table("secure_forms")) (id, request_id, agent_id, kind)
                VALUES (\(formID), \(requestID), \(agentID), \(kind.rawValue))
                """, logger: logger)
            try await database.enqueue([OutboxMessage(id: MessageID(uuid: formID), message: message)], on: connection)
        }
        await wakeConsoles()
        logger.info("secure form requested", metadata: ["form.id": "\(form.formId)", "kind": "\(kind.rawValue)"])
        return formID
    }

    /// Ends the chat: the agent's capacity is freed, the customer told.
    func close(_ requestID: UUID, by agentID: String) async throws {
        let id = MessageID.derived(from: MessageID(uuid: requestID), stage: "dispatcher.chat-closed")
        let message = try await messages.notification(requestID, status: "completed", technician: try await agentName(agentID),
                                                      message: "The chat was closed.", id: id, codec: codec)
        try await database.transaction { connection in
            try await engine.complete(requestID, technicianID: agentID, on: connection)
            if let message { try await database.enqueue([OutboxMessage(id: id, message: message)], on: connection) }
        }
        await wakeConsoles()
    }

    func requireConversation(_ requestID: UUID, agent agentID: String) async throws {
        let rows = try await database.client.query("""
            SELECT 1 FROM \(unescaped: database.table("dispatch_requests"))
            WHERE id = \(requestID) AND technician_id = \(agentID) AND status = 'assigned' AND worker_kind = 'agent'
            """, logger: logger).collect()
        guard !rows.isEmpty else { throw AssignmentError.notFound("open chat \(requestID) of \(agentID)") }
    }

    func agentName(_ id: String) async throws -> String? { try await messages.technicianName(id) }

    func wakeConsoles() async {
        do { try await live?.notify(Self.consoleKey) } catch {
            logger.debug("console wake-up failed", metadata: ["error": "\(safeDescription(error))"])
        }
    }

    // MARK: What an agent's console shows

    public struct Panel: Sendable {
        public struct Offer: Sendable {
            public var reservationID: UUID, requestID: UUID, category: String, firstMessage: String, expiresAt: Date
        }
        public struct Message: Sendable { public var sender: String, text: String, at: Date }
        public struct Form: Sendable { public var id: UUID, kind: SecureFormKind, outcome: String, text: String }
        public struct Conversation: Sendable {
            public var requestID: UUID, category: String, messages: [Message], forms: [Form]
            /// `app` or `sms` (opened by a text or a call); whether the customer's app is connected.
            public var channel: String = "app", appConnected: Bool = true
        }
        public var agentID: String
        public var agentName: String
        public var waiting: Int
        public var offers: [Offer]
        public var conversations: [Conversation]
    }

    public func panel(for agentID: String) async throws -> Panel {
        let client = database.client
        let requests = database.table("dispatch_requests"), reservations = database.table("reservations")
        let waiting = try await client.query("""
            SELECT count(*)::int FROM \(unescaped: requests) WHERE worker_kind = 'agent' AND status = 'waiting'
            """, logger: logger).collect().first?.decode(Int.self) ?? 0
        var offers: [Panel.Offer] = []
        for row in try await client.query("""
            SELECT r.id, r.request_id, d.category, r.expires_at FROM \(unescaped: reservations) r
            JOIN \(unescaped: requests) d ON d.id = r.request_id
            WHERE r.technician_id = \(agentID) AND r.status = 'pending' AND d.worker_kind = 'agent' AND r.expires_at > clock_timestamp()
            ORDER BY r.offered_at
            """, logger: logger).collect() {
            let (reservation, request, category, expires) = try row.decode((UUID, UUID, String, Date).self)
            let first = try await conversationMessages(request).first?.text ?? ""
            offers.append(.init(reservationID: reservation, requestID: request, category: category, firstMessage: first, expiresAt: expires))
        }
        var conversations: [Panel.Conversation] = []
        for row in try await client.query("""
            SELECT d.id, d.category, coalesce(s.channel, 'app'), s.device_ref IS NOT NULL FROM \(unescaped: requests) d
            LEFT JOIN \(unescaped: database.table("service_requests")) s ON s.id = d.id
            WHERE d.technician_id = \(agentID) AND d.status = 'assigned' AND d.worker_kind = 'agent' ORDER BY d.assigned_at
            """, logger: logger).collect() {
            let (request, category, channel, connected) = try row.decode((UUID, String, String, Bool).self)
            var forms: [Panel.Form] = []
            for form in try await client.query("""
                SELECT id, kind, outcome, last4 FROM \(unescaped: database.table("secure_forms")) WHERE request_id = \(request) ORDER BY requested_at
                """, logger: logger).collect() {
                let (id, kindText, outcome, last4) = try form.decode((UUID, String, String, String?).self)
                let kind = SecureFormKind(rawValue: kindText) ?? .pin
                let text = SecureFormOutcome(rawValue: outcome).map { Self.describe($0, last4: last4, kind: kind) }
                    ?? "waiting for the customer"
                forms.append(.init(id: id, kind: kind, outcome: outcome, text: "\(kind.title): \(text)"))
            }
            conversations.append(.init(requestID: request, category: category, messages: try await conversationMessages(request), forms: forms,
                                       channel: channel, appConnected: connected))
        }
        return Panel(agentID: agentID, agentName: try await agentName(agentID) ?? agentID, waiting: waiting, offers: offers,
                     conversations: conversations)
    }

    func conversationMessages(_ requestID: UUID) async throws -> [Panel.Message] {
        var result: [Panel.Message] = []
        for row in try await database.client.query("""
            SELECT id, sender, body_sealed, at_rest_key_version, created_at FROM \(unescaped: database.table("chat_messages"))
            WHERE request_id = \(requestID) ORDER BY created_at, id
            """, logger: logger).collect() {
            let (id, sender, sealed, version, at) = try row.decode((UUID, String, ByteBuffer, Int32, Date).self)
            guard let key = codec.identity.atRestKey(Self.atRestPurpose, version: UInt32(version)) else { continue }
            let plain = try VersionedKey(version: UInt32(version), key: key.key)
                .open(Array(sealed.readableBytesView), aad: Array(id.uuidString.lowercased().utf8))
            result.append(.init(sender: sender, text: String(decoding: plain, as: UTF8.self), at: at))
        }
        return result
    }
}
