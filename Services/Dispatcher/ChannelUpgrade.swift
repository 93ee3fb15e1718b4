import AsyncHTTPClient
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

// MARK: SMS, the third channel

/// Sends an SMS. The dispatcher uses it for channel links and for agents' SMS replies.
public protocol SMSProvider: Sendable {
    func send(to number: String, text: String) async throws
}

/// One SMS as the development outbox keeps it (`at` in milliseconds since 1970).
public struct OutboxSMS: Codable, Sendable, Equatable {
    public var to: String
    public var text: String
    public var at: Date
}

/// Development provider: each SMS is a JSON file in a directory (`VEIL_SMS_OUTBOX_DIR`),
/// which a developer or a test reads instead of a phone. It holds the phone numbers, like
/// a real gateway does: it stands for the SMS network, not for Veil's storage.
public struct OutboxSMSProvider: SMSProvider {
    public let directory: URL

    public init(directory: URL) { self.directory = directory }

    public func send(to number: String, text: String) async throws {
        let file = directory.appendingPathComponent("\(Int64(Date().timeIntervalSince1970 * 1000))-\(UUID().uuidString.prefix(8)).json")
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .millisecondsSince1970
        let data = try encoder.encode(OutboxSMS(to: number, text: text, at: Date()))
        let directory = self.directory
        // A small file, written off the cooperative pool.
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            DispatchQueue.global().async {
                do {
                    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
                    try data.write(to: file, options: .atomic)
                    continuation.resume()
                } catch { continuation.resume(throwing: error) }
            }
        }
    }

    /// Every SMS in the outbox, oldest first.
    public static func read(_ directory: URL) throws -> [OutboxSMS] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        return try files.filter { $0.hasSuffix(".json") }.sorted().map {
            try decoder.decode(OutboxSMS.self, from: Data(contentsOf: directory.appendingPathComponent($0)))
        }
    }
}

/// A real SMS gateway behind a small JSON API: `POST <url> {"to", "text"}` with
/// `Authorization: Bearer <token>`; any 2xx is success. Most gateways (or a thin adapter in
/// front of one) take this shape.
public struct HTTPSMSGateway: SMSProvider {
    let url: String
    let token: String?
    let http: HTTPClient

    public init(url: String, token: String?, http: HTTPClient = .shared) {
        self.url = url
        self.token = token
        self.http = http
    }

    public func send(to number: String, text: String) async throws {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        request.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(["to": number, "text": text])))
        let response = try await http.execute(request, timeout: .seconds(10))
        _ = try await response.body.collect(upTo: 64 * 1024)
        guard (200..<300).contains(response.status.code) else {
            throw AssignmentError(code: "dispatch.sms_failed", reason: "the SMS gateway answered \(response.status.code)")
        }
    }
}

// MARK: Moving a customer from SMS to the app

/// Channel enhancement: a customer known only by the number they texted or called from
/// gets a one-time link by SMS; opening it in their app binds the app to the same request
/// and account. The number is kept sealed at rest and as a keyed reference; the link
/// carries only the reference.
public struct ChannelUpgrades: Sendable {
    let desk: ChatDesk
    /// Every SMS goes through the durable outbox (written with what it announces, sent and retried by `SMSRelay`).
    let sms: SMSOutbox
    let linkBase: String
    let linkLifetime: Duration

    public init(desk: ChatDesk, sms: SMSOutbox, linkBase: String, linkLifetime: Duration) {
        self.desk = desk
        self.sms = sms
        self.linkBase = linkBase
        self.linkLifetime = linkLifetime
    }

    var database: Database { desk.database }
    var logger: Logger { desk.logger }
    var codec: EnvelopeCodec { desk.codec }

    public static let migrations: [Migration] = [
        Migration("018_dispatch_channel_links", sql: """
            -- A request opened by SMS or a call has no device until the customer opens the link in their app.
            ALTER TABLE {schema}.service_requests ALTER COLUMN account_ref DROP NOT NULL;
            ALTER TABLE {schema}.service_requests ALTER COLUMN device_ref DROP NOT NULL;
            ALTER TABLE {schema}.service_requests ALTER COLUMN device_encryption_key DROP NOT NULL;
            ALTER TABLE {schema}.service_requests ALTER COLUMN assertion DROP NOT NULL;
            ALTER TABLE {schema}.service_requests ADD COLUMN channel text NOT NULL DEFAULT 'app';
            -- phone_ref: HMAC of the number, never the number; phone_sealed: the number sealed at rest (to text back).
            ALTER TABLE {schema}.service_requests ADD COLUMN phone_ref bytea;
            ALTER TABLE {schema}.service_requests ADD COLUMN phone_sealed bytea;
            CREATE INDEX service_requests_phone ON {schema}.service_requests (phone_ref) WHERE phone_ref IS NOT NULL;
            CREATE TABLE {schema}.channel_links (
                id          uuid PRIMARY KEY,
                request_id  uuid NOT NULL REFERENCES {schema}.service_requests (id),
                phone_ref   bytea NOT NULL,
                expires_at  timestamptz NOT NULL,
                used_at     timestamptz,
                device_ref  bytea
            );
            """),
    ]

    /// E.164-ish: `+` and 6 to 15 digits (spaces, dashes, dots and brackets ignored).
    static func normalized(_ number: String) -> String? {
        let kept = number.filter { !" -.()/".contains($0) }
        let digits = kept.hasPrefix("+") ? kept.dropFirst() : Substring(kept)
        guard (6...15).contains(digits.count), digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return "+" + digits
    }

    func keys() throws -> (reference: VersionedKey, sealing: VersionedKey) {
        guard let reference = codec.identity.atRestKey("phone-ref"), let sealing = codec.identity.atRestKey("phones") else {
            throw StageError.permanent("dispatch.no_key", "no encryption key to derive the at-rest keys from")
        }
        return (VersionedKey(version: reference.version, key: reference.key), VersionedKey(version: sealing.version, key: sealing.key))
    }

    func phoneRef(_ number: String) throws -> [UInt8] { try keys().reference.hash(Array(number.utf8)) }

    public struct Started: Codable, Sendable {
        public var requestId: String
        public var linkId: String
        public var expiresAt: Date
    }

    /// Opens a chat for a customer who wrote `message` from `number` and texts them a
    /// one-time link to continue in the app.
    public func start(number rawNumber: String, message: String, lifetime: Duration? = nil) async throws -> Started {
        guard let number = Self.normalized(rawNumber) else { throw AssignmentError.invalid("phoneNumber must be +, then 6 to 15 digits") }
        guard !message.isEmpty, message.count <= 2_000 else { throw AssignmentError.invalid("message must have 1 to 2000 characters") }
        let (referenceKey, sealingKey) = try keys()
        let ref = referenceKey.hash(Array(number.utf8))
        let requestID = MessageID.generate().uuid
        let aad = Array(requestID.uuidString.lowercased().utf8)
        guard let atRest = codec.identity.atRestKey("service-requests") else { throw AssignmentError.invalid("no at-rest key") }
        let description = try VersionedKey(version: atRest.version, key: atRest.key).seal(Array(message.utf8), aad: aad)
        let linkID = UUID()
        let expires = Date().addingTimeInterval((lifetime ?? linkLifetime).seconds)
        let claims = ContractCoding.encode(ChannelLinkClaims(linkId: linkID.uuidString.lowercased(), requestId: requestID.uuidString.lowercased(),
                                                             phoneRef: Data(ref), expiresAtMs: Int64(expires.timeIntervalSince1970 * 1000),
                                                             signerKeyId: codec.identity.signingKeyID,
                                                             signerVersion: codec.identity.signingVersions.last ?? 0))
        let (signature, _) = try codec.identity.signStatement(ChannelLink.context + claims)
        // All or nothing: the request, its chat, its offer to an agent, the link and the SMS.
        try await database.transaction { connection in
            try await connection.query("""
                INSERT INTO \(unescaped: database.table("service_requests")) (id, category, priority, description_sealed, at_rest_key_version,
                    action, rule, channel, phone_ref, phone_sealed)
                VALUES (\(requestID), 'chat', 3, \(ByteBuffer(bytes: description)), \(Int32(atRest.version)), 'agent', 'channel-upgrade', 'sms',
                        \(ByteBuffer(bytes: ref)), \(ByteBuffer(bytes: try sealingKey.seal(Array(number.utf8), aad: aad))))
                """, logger: logger)
            try await desk.insertMessage(requestID, sender: "customer", agentID: nil, text: "[SMS] " + message, id: UUID(), on: connection)
            _ = try await desk.engine.submit(DispatchRequest(id: requestID, category: "chat", priority: 3, region: nil, requiredSkills: [],
                                                             workerKind: .agent), on: connection)
            try await connection.query("""
                INSERT INTO \(unescaped: database.table("channel_links")) (id, request_id, phone_ref, expires_at)
                VALUES (\(linkID), \(requestID), \(ByteBuffer(bytes: ref)), \(expires))
                """, logger: logger)
            try await sms.enqueue(to: number, text: "Continue securely in our app: \(linkBase)\(ChannelLink.token(claims: claims, signature: signature))",
                                  request: requestID, on: connection)
        }
        sms.wake()
        await desk.wakeConsoles()
        logger.info("channel link queued", metadata: ["request.id": "\(requestID)", "link.id": "\(linkID)"])
        return Started(requestId: requestID.uuidString.lowercased(), linkId: linkID.uuidString.lowercased(), expiresAt: expires)
    }

    /// The app opened a link (from the intake stage): bind the device and account to the
    /// link's request, once, before it expires; tell the device either way.
    func open(_ token: String, assertion: (signed: SignedAssertion, claims: AuthAssertion), envelopeID: MessageID) async throws -> [OutgoingMessage] {
        let device = Array(assertion.claims.deviceRef), deviceKey = Array(assertion.claims.deviceEncryptionKey)
        func tell(_ request: String, _ status: String, _ text: String) throws -> [OutgoingMessage] {
            guard let id = UUID(uuidString: request),
                  let message = try desk.messages.notification(id, deviceRef: device, deviceKey: deviceKey, status: status, technician: nil,
                                                               message: text, id: .derived(from: envelopeID, stage: "dispatcher.link"),
                                                               codec: codec) else { return [] }
            return [message]
        }
        guard let link = ChannelLink.parse(token),
              let signer = codec.directory.activeSigningKey(KeyReference(keyID: link.claims.signerKeyId, version: link.claims.signerVersion)),
              signer.owner == ServiceName.dispatcher.rawValue,
              signer.key.isValidSignature(link.signature, for: ChannelLink.context + link.bytes),
              let linkID = UUID(uuidString: link.claims.linkId) else {
            logger.warning("channel link refused: not signed by the dispatcher", metadata: ["message.id": "\(envelopeID)"])
            return try tell(envelopeID.description, "channel-refused", "This link is not valid.")
        }
        let rows = try await database.client.query("""
            UPDATE \(unescaped: database.table("channel_links")) SET used_at = clock_timestamp(), device_ref = \(ByteBuffer(bytes: device))
            WHERE id = \(linkID) AND used_at IS NULL AND expires_at > clock_timestamp() AND phone_ref = \(ByteBuffer(bytes: link.claims.phoneRef))
            RETURNING request_id
            """, logger: logger).collect()
        guard let requestID = try rows.first?.decode(UUID.self) else {
            logger.notice("channel link refused: used or expired", metadata: ["link.id": "\(link.claims.linkId)"])
            return try tell(link.claims.requestId, "channel-refused", "This link was already used or has expired. Ask for a new one.")
        }
        let assertionJSON = String(decoding: ContractCoding.encode(assertion.signed), as: UTF8.self)
        try await database.client.query("""
            UPDATE \(unescaped: database.table("service_requests"))
            SET account_ref = coalesce(account_ref, \(ByteBuffer(bytes: assertion.claims.accountRef))), device_ref = \(ByteBuffer(bytes: device)),
                device_encryption_key = \(ByteBuffer(bytes: deviceKey)), assertion = \(assertionJSON)::jsonb
            WHERE id = \(requestID)
            """, logger: logger)
        try await desk.append(requestID, sender: "system", text: "The customer opened the secure app channel from the same number.",
                              id: MessageID.derived(from: envelopeID, stage: "dispatcher.link-opened").uuid)
        logger.info("app channel opened", metadata: ["request.id": "\(requestID)", "link.id": "\(link.claims.linkId)"])
        return try tell(requestID.uuidString.lowercased(), "channel-opened", "You are now connected to our service desk in the app.")
    }

    /// The customer's number for `requestID`, opened (to text them).
    func number(of requestID: UUID) async throws -> String? {
        let rows = try await database.client.query("""
            SELECT phone_sealed FROM \(unescaped: database.table("service_requests")) WHERE id = \(requestID) AND phone_sealed IS NOT NULL
            """, logger: logger).collect()
        guard let sealed = try rows.first?.decode(ByteBuffer.self) else { return nil }
        let plain = try keys().sealing.open(Array(sealed.readableBytesView), aad: Array(requestID.uuidString.lowercased().utf8))
        return String(decoding: plain, as: UTF8.self)
    }

    /// An agent's SMS to the customer of `requestID` (the SMS channel stays usable).
    func text(_ message: String, from agentID: String, in requestID: UUID) async throws {
        try await desk.requireConversation(requestID, agent: agentID)
        guard let number = try await number(of: requestID) else { throw AssignmentError.notFound("a phone number for \(requestID)") }
        try await database.transaction { connection in
            try await sms.enqueue(to: number, text: message, request: requestID, on: connection)
            try await desk.insertMessage(requestID, sender: "agent", agentID: agentID, text: "[SMS] " + message, id: UUID(), on: connection)
        }
        sms.wake()
        await desk.wakeConsoles()
    }

    /// An SMS from a customer (the gateway's inbound webhook): filed in their latest open chat.
    func inbound(from rawNumber: String, text: String) async throws -> UUID? {
        guard let number = Self.normalized(rawNumber), !text.isEmpty, text.count <= 2_000 else {
            throw AssignmentError.invalid("from must be a phone number and text 1 to 2000 characters")
        }
        let rows = try await database.client.query("""
            SELECT s.id FROM \(unescaped: database.table("service_requests")) s
            JOIN \(unescaped: database.table("dispatch_requests")) d ON d.id = s.id
            WHERE s.phone_ref = \(ByteBuffer(bytes: try phoneRef(number))) AND d.status NOT IN ('completed', 'cancelled')
            ORDER BY s.created_at DESC LIMIT 1
            """, logger: logger).collect()
        guard let requestID = try rows.first?.decode(UUID.self) else { return nil }
        try await desk.append(requestID, sender: "customer", text: "[SMS] " + text)
        return requestID
    }
}

/// Commands an agent may send to the customer's app over the secure channel.
public enum AppCommand: String, CaseIterable, Sendable {
    case openDiagnostics = "open-diagnostics"
    case showAppointment = "show-appointment"
    case requestPhoto = "request-photo"
}
