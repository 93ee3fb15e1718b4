import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle
import VeilClient
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// The first provider's front door. It is the only service that sees raw user and
/// device ids, and it drops them at once: a device id becomes
/// `anonymizedDeviceId = HMAC(kP.dev, deviceId)`, a user id becomes
/// `P = HMAC(kP.id, userId)`, sealed to the anonymizer.
public enum Ingress {
    public static let migrations: [Migration] = [
        Migration("001_ingress_devices", sql: """
            CREATE TABLE {schema}.devices (
                device_ref     bytea PRIMARY KEY,        -- HMAC(kP.dev, deviceId), never the id
                key_version    integer NOT NULL,
                signing_key    bytea NOT NULL,
                encryption_key bytea NOT NULL,
                enrolled_at    timestamptz NOT NULL DEFAULT now(),
                revoked_at     timestamptz
            );
            CREATE TABLE {schema}.request_nonces (
                device_ref bytea NOT NULL,
                nonce      bytea NOT NULL,
                seen_at    timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (device_ref, nonce)
            );
            CREATE INDEX request_nonces_seen_at ON {schema}.request_nonces (seen_at);
            CREATE TABLE {schema}.inquiries (
                id          uuid PRIMARY KEY,
                device_ref  bytea NOT NULL,
                status      text NOT NULL,
                accepted_at timestamptz NOT NULL DEFAULT now()
            );
            """),
        Migration("002_ingress_accounts_and_service_requests", sql: """
            -- account_ref: the keyed pseudonym of the account the device is bound to, never the id
            ALTER TABLE {schema}.devices ADD COLUMN account_ref bytea;
            CREATE TABLE {schema}.enrollment_codes (
                code_hash   bytea PRIMARY KEY,                          -- keyed hash of the code, never the code
                account_ref bytea NOT NULL,
                expires_at  timestamptz NOT NULL,
                attempts    integer NOT NULL DEFAULT 0,
                used_at     timestamptz
            );
            CREATE INDEX enrollment_codes_account ON {schema}.enrollment_codes (account_ref);
            CREATE TABLE {schema}.service_requests (
                id          uuid PRIMARY KEY,
                device_ref  bytea NOT NULL,
                status      text NOT NULL,
                accepted_at timestamptz NOT NULL DEFAULT now()
            );
            """),
        Migration("003_ingress_inbox", sql: """
            CREATE TABLE {schema}.inbox (
                id           uuid PRIMARY KEY,          -- the notification's message id
                device_ref   bytea NOT NULL,
                request_id   text NOT NULL,
                notification bytea NOT NULL,            -- sealed to the device; ingress cannot open it
                created_at   timestamptz NOT NULL DEFAULT now()
            );
            CREATE INDEX inbox_device ON {schema}.inbox (device_ref, created_at);
            """),
    ]

    /// The ingress process: the HTTP API beside a stage that files customer confirmations
    /// (sealed to their devices) in the devices' inboxes.
    public static let runtime = ServiceRuntime(service: .ingress, migrations: migrations) { context in
        let live = LiveNotifications(database: context.database, channel: "veil_inbox", logger: context.logger)
        let lookups = PendingLookups()
        let replies = try PosReplyFollower(context: context, pending: lookups)
        let api = ListeningPort("api")
        return ServiceParts(handler: EnvelopeStage(codec: context.codec, handler: InboxStage(context: context, live: live)),
                            services: [live, replies, try IngressAPI(context: context, settings: IngressSettings(context.configuration),
                                                                     live: live, lookups: lookups, onRunning: { api.listening(on: $0) })],
                            readiness: [ReadinessCheck("pos-replies") { replies.isAssigned }, api.check])
    }
}

/// Ingress settings, validated at start-up.
public struct IngressSettings: Sendable {
    public var port: Int
    public var maxBodyBytes: Int
    public var clockSkew: Duration
    public var region: String?
    public var enrollmentToken: String?
    /// Bearer token of the `/admin/...` routes; unset: those routes answer 401.
    public var adminToken: String?
    public var enrollmentCodeLifetime: Duration
    public var pseudonymID: KeyRing
    public var pseudonymDevice: KeyRing
    /// How long a point-of-sale lookup waits for the key-vault.
    public var posLookupTimeout: Duration
    /// Downstream providers the till transactions are sealed to.
    public var posRecipients: [String]
    /// Purpose subkeys of the pseudonym keys, derived once per version.
    public let subkeys = SubkeyCache()

    public init(_ configuration: ServiceConfiguration) throws {
        port = try configuration.integer("VEIL_HTTP_PORT", in: 0...65535)
        maxBodyBytes = try configuration.integer("VEIL_INGRESS_MAX_BODY_BYTES", in: 256...10_000_000)
        clockSkew = .seconds(try configuration.integer("VEIL_INGRESS_CLOCK_SKEW_SECONDS", in: 1...86_400))
        region = configuration.setting("VEIL_INGRESS_REGION")
        enrollmentToken = configuration.setting("VEIL_ENROLLMENT_TOKEN")
        adminToken = configuration.setting("VEIL_INGRESS_ADMIN_TOKEN")
        enrollmentCodeLifetime = .seconds(try configuration.integer("VEIL_ENROLLMENT_CODE_TTL_SECONDS", in: 60...2_592_000))
        posLookupTimeout = .milliseconds(try configuration.integer("VEIL_POS_LOOKUP_TIMEOUT_MS", in: 10...60_000))
        posRecipients = (configuration.setting("VEIL_POS_PROVIDERS") ?? "").split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let keys = KeyFolder(url: URL(fileURLWithPath: configuration.keysDirectory))
        do {
            pseudonymID = try keys.secret(party: KeyFolder.providerParty, name: KeyFolder.pseudonymIDKey)
            pseudonymDevice = try keys.secret(party: KeyFolder.providerParty, name: KeyFolder.pseudonymDeviceKey)
        } catch {
            throw ConfigurationError(variable: "VEIL_KEYS_DIR", reason: "cannot load the provider pseudonym keys: \(error.description)")
        }
    }
}

/// `POST /v1/devices`, `POST /v1/inquiries`, `GET /v1/inquiries/{id}` (docs/openapi.yaml).
public struct IngressAPI: Service {
    let context: ServiceContext
    let settings: IngressSettings
    let live: LiveNotifications
    let lookups: PendingLookups?
    let onRunning: @Sendable (Int) async -> Void

    init(context: ServiceContext, settings: IngressSettings, live: LiveNotifications, lookups: PendingLookups?,
         onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) {
        self.context = context
        self.settings = settings
        self.live = live
        self.lookups = lookups
        self.onRunning = onRunning
    }

    public func run() async throws {
        let router = Router()
        let handler = RequestHandler(context: context, settings: settings, live: live, posLookups: lookups)
        router.post("/v1/devices") { request, _ in await handler.respond { try await handler.enroll(request) } }
        router.post("/v1/inquiries") { request, _ in await handler.respond { try await handler.inquire(request) } }
        router.get("/v1/inquiries/{id}") { _, routeContext in
            await handler.respond { try await handler.status(routeContext.parameters.get("id") ?? "") }
        }
        router.get("/v1/devices/{id}/inbox") { request, routeContext in
            await handler.respond { try await handler.inbox(request, deviceId: routeContext.parameters.get("id") ?? "") }
        }
        router.get("/v1/devices/{id}/inbox/stream") { request, routeContext in
            await handler.respond { try await handler.inboxStream(request, deviceId: routeContext.parameters.get("id") ?? "") }
        }
        router.post("/v1/service-requests") { request, _ in await handler.respond { try await handler.submitServiceRequest(request) } }
        router.get("/v1/keys/{service}") { _, routeContext in
            await handler.respond { try handler.publishedKey(routeContext.parameters.get("service") ?? "") }
        }
        router.post("/v1/pos/lookups") { request, _ in await handler.respond { try await handler.posLookup(request) } }
        router.post("/v1/pos/transactions") { request, _ in await handler.respond { try await handler.posTransaction(request) } }
        router.post("/v1/secure-forms/{id}") { request, routeContext in
            await handler.respond { try await handler.submitSecureForm(request, formId: routeContext.parameters.get("id") ?? "") }
        }
        router.post("/admin/enrollment-codes") { request, _ in await handler.respond { try await handler.issueEnrollmentCode(request) } }
        router.post("/admin/devices/revoke") { request, _ in await handler.respond { try await handler.revokeDevice(request) } }
        let onRunning = self.onRunning
        let app = Application(router: router,
                              configuration: .init(address: .hostname(context.configuration.adminHost, port: settings.port),
                                                   serverName: "veil-ingress"),
                              onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
                              logger: context.logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.run() }
            group.addTask { await handler.pruneNoncesPeriodically() }
            try await group.next()
            group.cancelAll()
        }
    }
}

struct RequestHandler: Sendable {
    let context: ServiceContext
    let settings: IngressSettings
    let live: LiveNotifications
    let posLookups: PendingLookups?
    static let signatureHeader = HTTPField.Name(DeviceRequestSignature.header)!
    static let enrollmentHeader = HTTPField.Name("Veil-Enrollment-Token")!

    func respond(_ body: () async throws -> Response) async -> Response {
        await Problem.respond(context, prefix: "ingress", body)
    }

    // MARK: Requests

    func enroll(_ request: Request) async throws -> Response {
        if let token = settings.enrollmentToken {
            guard let given = request.headers[Self.enrollmentHeader], ConstantTime.equal(given, token) else {
                throw Problem.enrollmentRefused
            }
        }
        let (body, enrollment) = try await decode(DeviceEnrollment.self, from: request)
        guard let signingRaw = Data(base64Encoded: enrollment.signingKey),
              let signingKey = try? Curve25519.Signing.PublicKey(rawRepresentation: signingRaw) else {
            throw Problem.invalidField("signingKey", "is not a base64 raw Ed25519 public key")
        }
        guard let encryptionRaw = Data(base64Encoded: enrollment.encryptionKey),
              (try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: encryptionRaw)) != nil else {
            throw Problem.invalidField("encryptionKey", "is not a base64 raw X25519 public key")
        }
        try validate(id: enrollment.deviceId, field: "deviceId")
        try verify(request, body: body, with: signingKey, path: "/v1/devices")
        try checkFreshness(enrollment.timestamp)
        guard let deviceKey = settings.pseudonymDevice.current else { throw Problem.unavailable }
        let ref = ByteBuffer(bytes: deviceKey.hash(Array(enrollment.deviceId.utf8)))
        let signing = ByteBuffer(bytes: signingRaw), encryption = ByteBuffer(bytes: encryptionRaw)
        let version = Int32(deviceKey.version)
        var account: ByteBuffer?
        if enrollment.accountId != nil || enrollment.enrollmentCode != nil {
            guard let accountId = enrollment.accountId, let code = enrollment.enrollmentCode else {
                throw Problem.missingField(enrollment.accountId == nil ? "accountId" : "enrollmentCode")
            }
            try validate(id: accountId, field: "accountId")
            account = try await redeemEnrollmentCode(code, accountId: accountId)
        }
        let devices = context.database.table("devices")
        // A device re-enrolling with the same keys (e.g. to bind an account) updates its row;
        // other keys for the same id are refused; a revoked device may enroll afresh.
        let rows = try await context.database.client.query("""
            INSERT INTO \(unescaped: devices) (device_ref, key_version, signing_key, encryption_key, account_ref)
            VALUES (\(ref), \(version), \(signing), \(encryption), \(account))
            ON CONFLICT (device_ref) DO UPDATE SET
                account_ref = CASE WHEN \(unescaped: devices).revoked_at IS NOT NULL THEN EXCLUDED.account_ref
                                   ELSE coalesce(EXCLUDED.account_ref, \(unescaped: devices).account_ref) END,
                signing_key = EXCLUDED.signing_key, encryption_key = EXCLUDED.encryption_key,
                enrolled_at = CASE WHEN \(unescaped: devices).revoked_at IS NULL THEN \(unescaped: devices).enrolled_at ELSE now() END,
                revoked_at = NULL
            WHERE \(unescaped: devices).signing_key = EXCLUDED.signing_key OR \(unescaped: devices).revoked_at IS NOT NULL
            RETURNING signing_key
            """, logger: context.logger).collect()
        guard let stored = try rows.first?.decode(ByteBuffer.self), stored == signing else { throw Problem.alreadyEnrolled }
        context.logger.info("device enrolled")
        return Response(status: .created, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(string: #"{"status":"enrolled"}"#)))
    }

    func inquire(_ request: Request) async throws -> Response {
        let (body, inquiry) = try await decode(InquiryRequest.self, from: request)
        try validate(id: inquiry.deviceId, field: "deviceId")
        try validate(id: inquiry.userId, field: "userId")
        try validate(token: inquiry.channel, field: "channel", max: 32)
        try validate(token: inquiry.appVersion, field: "appVersion", max: 32)
        let appData = inquiry.appData ?? [:]
        guard appData.count <= 32, appData.allSatisfy({ $0.key.utf8.count <= 64 && $0.value.utf8.count <= 256 }) else {
            throw Problem.invalidField("appData", "must have at most 32 entries of short strings")
        }
        let nonce = try nonce(inquiry.nonce)
        guard let deviceKey = settings.pseudonymDevice.current, let idKey = settings.pseudonymID.current else {
            throw Problem.unavailable
        }
        // The raw ids are used for these two keyed hashes and then go out of scope.
        let deviceRef = deviceKey.hash(Array(inquiry.deviceId.utf8))
        let device = try await enrolledSigningKey(deviceRef)
        try verify(request, body: body, with: device, path: "/v1/inquiries")
        try checkFreshness(inquiry.timestamp)
        let pseudonym = idKey.hash(Array(inquiry.userId.utf8))

        let id = MessageID.generate()
        let acceptedAt = try await acceptOnce(id, table: InquiryStatusTable.self, deviceRef: deviceRef, nonce: nonce)

        let access = AccessInfo(anonymizedDeviceId: Data(deviceRef), deviceKeyVersion: deviceKey.version,
                                channel: inquiry.channel, receivedAt: acceptedAt, appVersion: inquiry.appVersion,
                                region: settings.region, appData: appData)
        let draft = EnvelopeDraft(id: id, type: MessageType.inquiryReceived, parts: [
            .sealed(PartLabel.pseudonym, payload: ContractCoding.encode(PseudonymPayload(pseudonym: Data(pseudonym), keyVersion: idKey.version)),
                    to: [ServiceName.anonymizer.rawValue]),
            .sealed(PartLabel.accessInfo, payload: ContractCoding.encode(access), to: [ServiceName.merger.rawValue]),
        ])
        try await publish(draft, topic: Topic.inquiriesReceived, key: Array(id.description.utf8), orForget: "inquiries")
        let status = InquiryStatus(id: id.description, status: "accepted", acceptedAt: acceptedAt)
        return Response(status: .accepted, headers: [.contentType: "application/json", .location: "/v1/inquiries/\(id)"],
                        body: .init(byteBuffer: ByteBuffer(bytes: ContractCoding.encode(status))))
    }

    func status(_ id: String) async throws -> Response {
        guard let uuid = UUID(uuidString: id) else { throw Problem.notFound }
        let rows = try await context.database.client.query("""
            SELECT status, accepted_at FROM \(unescaped: context.database.table("inquiries")) WHERE id = \(uuid)
            """, logger: context.logger).collect()
        guard let row = rows.first else { throw Problem.notFound }
        let (status, acceptedAt) = try row.decode((String, Date).self)
        return Response(status: .ok, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: ContractCoding.encode(
                            InquiryStatus(id: uuid.uuidString.lowercased(), status: status, acceptedAt: acceptedAt)))))
    }

    // MARK: Checks

    func decode<T: Decodable>(_ type: T.Type, from request: Request) async throws -> ([UInt8], T) {
        try await Problem.decodeJSON(type, from: request, maxBytes: settings.maxBodyBytes)
    }

    func validate(id: String, field: String) throws {
        guard !id.isEmpty, id.utf8.count <= 128, !id.contains(where: { $0.isNewline }) else {
            throw Problem.invalidField(field, "must be 1 to 128 characters")
        }
    }

    func validate(token: String, field: String, max: Int) throws {
        guard !token.isEmpty, token.utf8.count <= max,
              token.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || "0123456789.-_+".unicodeScalars.contains($0)) })
        else { throw Problem.invalidField(field, "must be 1 to \(max) letters, digits or .-_+") }
    }

    func verify(_ request: Request, body: [UInt8], with key: Curve25519.Signing.PublicKey, path: String) throws {
        guard let signature = request.headers[Self.signatureHeader],
              DeviceRequestSignature.isValid(signature: signature, publicKey: key, method: "POST", path: path, body: body)
        else { throw Problem.badSignature }
    }

    func checkFreshness(_ timestamp: Int64) throws {
        guard DeviceRequestSignature.isFresh(timestamp, skew: settings.clockSkew) else { throw Problem.staleRequest }
    }

    func enrolledSigningKey(_ deviceRef: [UInt8]) async throws -> Curve25519.Signing.PublicKey {
        try await enrolledDevice(deviceRef).signingKey
    }

    struct EnrolledDevice {
        let signingKey: Curve25519.Signing.PublicKey
        let encryptionKey: [UInt8]
        let accountRef: [UInt8]?
        let enrolledAt: Date
    }

    /// The enrolled device; a revoked one is refused at once (`revoked_device`).
    func enrolledDevice(_ deviceRef: [UInt8]) async throws -> EnrolledDevice {
        let found = try await context.database.client.first(EnrolledDeviceStatement(deviceRef: ByteBuffer(bytes: deviceRef)),
                                                            logger: context.logger)
        guard let (signing, encryption, account, enrolledAt, revoked) = found else { throw Problem.unknownDevice }
        guard !revoked else { throw Problem.revokedDevice }
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: Array(signing.readableBytesView)) else {
            throw Problem.unknownDevice
        }
        return EnrolledDevice(signingKey: key, encryptionKey: Array(encryption.readableBytesView),
                              accountRef: account.map { Array($0.readableBytesView) }, enrolledAt: enrolledAt)
    }

    /// Uses the request's nonce and records its status row in one statement (a replayed
    /// nonce inserts nothing: `replayed_nonce`); returns the acceptance time in whole ms.
    func acceptOnce<Table: StatusTable>(_ id: MessageID, table: Table.Type, deviceRef: [UInt8], nonce: Data) async throws -> Date {
        let accepted = try await context.database.client.first(
            AcceptOnceStatement<Table>(id: id.uuid, deviceRef: ByteBuffer(bytes: deviceRef), nonce: ByteBuffer(bytes: nonce)),
            logger: context.logger)
        guard let stored = accepted else { throw Problem.replayedNonce }
        return Date(timeIntervalSince1970: (stored.timeIntervalSince1970 * 1000).rounded(.down) / 1000)
    }

    /// Uses a request nonce (a replay inserts nothing: `replayed_nonce`).
    func useNonce(_ nonce: Data, deviceRef: [UInt8]) async throws {
        let rows = try await context.database.client.query("""
            INSERT INTO \(unescaped: context.database.table("request_nonces")) (device_ref, nonce)
            VALUES (\(ByteBuffer(bytes: deviceRef)), \(ByteBuffer(bytes: nonce))) ON CONFLICT DO NOTHING RETURNING 1
            """, logger: context.logger).collect()
        guard !rows.isEmpty else { throw Problem.replayedNonce }
    }

    /// Publishes and waits for Kafka's acknowledgement; if that fails, the status row of the
    /// draft's id in `table` (if any) is removed (the nonce stays used) and the device is told `unavailable`.
    func publish(_ draft: EnvelopeDraft, topic: Topic, key: [UInt8], orForget table: String? = nil) async throws {
        let id = draft.id
        do {
            _ = try await context.producer.send(try context.codec.message(draft, topic: topic.name, key: key))
            context.metrics.messageOut(topic: topic.name)
        } catch {
            context.logger.error("not published", metadata: ["message.id": "\(id)", "topic": "\(topic.name)", "error": "\(safeDescription(error))"])
            if let table {
                _ = try? await context.database.client.query(
                    "DELETE FROM \(unescaped: context.database.table(table)) WHERE id = \(id.uuid)", logger: context.logger)
            }
            throw Problem.unavailable
        }
    }

    /// A request's single-use nonce: base64 of 16 to 64 random bytes.
    func nonce(_ text: String) throws -> Data {
        guard let nonce = Data(base64Encoded: text), (16...64).contains(nonce.count) else {
            throw Problem.invalidField("nonce", "must be base64 of 16 to 64 random bytes")
        }
        return nonce
    }

    /// A part the device sealed to `service`'s current key, to forward unopened: ingress
    /// checks only its label and recipient.
    func sealedPart(_ base64: String, field: String, label: String, to service: ServiceName) throws -> SealedPart {
        guard let key = context.codec.directory.encryptionKey(of: service.rawValue) else { throw Problem.unavailable }
        guard let bytes = Data(base64Encoded: base64), let part = try? SealedPart(serialized: Array(bytes)),
              part.label == label, part.recipients == [key.reference] else {
            throw Problem.invalidField(field, "must be a part labelled \(label) sealed to the \(service.rawValue)'s current key")
        }
        return part
    }

    /// Ingress's signed statement that `device` authenticated, about `subject` (a request or
    /// a form id), verifiable downstream with the key directory alone.
    func signedAssertion(subject: String, device: EnrolledDevice, deviceRef: [UInt8], accountRef: [UInt8],
                         at time: Date) throws -> SignedAssertion {
        let assertion = AuthAssertion(requestId: subject, accountRef: Data(accountRef), deviceRef: Data(deviceRef),
                                      deviceEncryptionKey: Data(device.encryptionKey), method: "device-signature",
                                      enrolledAt: device.enrolledAt, authenticatedAt: time)
        let bytes = ContractCoding.encode(assertion)
        let (signature, signer) = try context.codec.identity.signStatement(SignedAssertion.context + bytes)
        return SignedAssertion(assertion: Data(bytes), signature: Data(signature), signerKeyId: signer.keyID, signerVersion: signer.version)
    }

    func verify(_ request: Request, body: [UInt8], with key: Curve25519.Signing.PublicKey, path: String, method: String) throws {
        guard let signature = request.headers[Self.signatureHeader],
              DeviceRequestSignature.isValid(signature: signature, publicKey: key, method: method, path: path, body: body)
        else { throw Problem.badSignature }
    }

    /// Nonces only matter while their timestamp is fresh; older ones are deleted.
    func pruneNoncesPeriodically() async {
        let keep = settings.clockSkew.components.seconds * 2
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(60))
            _ = try? await context.database.client.query("""
                DELETE FROM \(unescaped: context.database.table("request_nonces")) WHERE seen_at < now() - make_interval(secs => \(Double(keep)))
                """, logger: context.logger)
        }
    }
}
