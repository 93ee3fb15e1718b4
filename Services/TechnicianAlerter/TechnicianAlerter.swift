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

/// Delivers offers to technicians and carries their answers back. It never reads
/// either: the alert is sealed to the technician's device, the answer to the dispatcher.
/// Undelivered alerts are kept in its schema until they expire; a technician's app
/// fetches them with a signed read, and posts signed answers.
public enum TechnicianAlerter {
    public static let migrations: [Migration] = [
        Migration("001_alerter_alerts", sql: """
            CREATE TABLE {schema}.alerts (
                reservation_id uuid PRIMARY KEY,
                technician_id  text NOT NULL,
                alert          bytea NOT NULL,   -- the part sealed to the technician's device
                signing_key    bytea NOT NULL,   -- the technician device's Ed25519 key, from the dispatcher
                expires_at     timestamptz NOT NULL,
                created_at     timestamptz NOT NULL DEFAULT now(),
                delivered_at   timestamptz,
                answered_at    timestamptz
            );
            CREATE INDEX alerts_technician ON {schema}.alerts (technician_id, created_at);
            CREATE TABLE {schema}.answer_nonces (
                technician_id text NOT NULL,
                nonce         bytea NOT NULL,
                seen_at       timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (technician_id, nonce)
            );
            """),
    ]

    public static let runtime = ServiceRuntime(service: .technicianAlerter, migrations: migrations) { context in
        let port = try context.configuration.integer("VEIL_ALERTER_HTTP_PORT", in: 0...65535)
        let live = LiveNotifications(database: context.database, channel: "veil_alerts", logger: context.logger)
        let api = ListeningPort("api")
        // Storing an alert is two database round trips; offers to different technicians
        // (the Kafka key) are stored at once, each technician's in order.
        return ServiceParts(handler: ConcurrentEnvelopeStage(codec: context.codec, handler: AlertStore(context: context, live: live),
                                                             concurrency: 16),
                            services: [live, TechnicianAPI(context: context, port: port, live: live, onRunning: { api.listening(on: $0) })],
                            readiness: [api.check])
    }
}

/// The stage on `veil.dispatch.assignments.v1`: keeps each offer's sealed alert for its technician.
public struct AlertStore: EnvelopeHandler {
    let context: ServiceContext
    let live: LiveNotifications

    public func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        guard envelope.header.type == MessageType.assignmentOffered, let alert = envelope.part(PartLabel.alert),
              let routingBytes = envelope.payload(PartLabel.routing),
              let routing = try? ContractCoding.decode(AlertRouting.self, from: routingBytes),
              let reservation = UUID(uuidString: routing.reservationId), routing.signingKey.count == 32 else {
            throw StageError.permanent("alerter.bad_offer", "not an offer with a sealed alert and its routing")
        }
        _ = try await context.database.client.first(StoreAlertStatement(
            reservation: reservation, technicianID: routing.technicianId, alert: ByteBuffer(bytes: Array(alert.bytes)),
            signingKey: ByteBuffer(bytes: routing.signingKey), expiresAt: routing.expiresAt), logger: context.logger)
        context.logger.info("alert stored", metadata: ["reservation": "\(routing.reservationId)"])
        try? await live.notify(routing.technicianId)  // a missed wake-up is caught by the stream's heartbeat
        return []
    }
}

/// `GET /v1/technicians/{id}/alerts` (signed read) and `POST /v1/technicians/{id}/answers` (signed).
public struct TechnicianAPI: Service {
    let context: ServiceContext
    let port: Int
    let live: LiveNotifications
    let clockSkew: Duration = .seconds(300)
    let onRunning: @Sendable (Int) async -> Void

    public init(context: ServiceContext, port: Int, live: LiveNotifications, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) {
        self.context = context
        self.port = port
        self.live = live
        self.onRunning = onRunning
    }

    static let signatureHeader = HTTPField.Name(DeviceRequestSignature.header)!
    static let timestampHeader = HTTPField.Name(SignedRead.timestampHeader)!
    static let unknownTechnician = Problem(status: .unauthorized, code: "unknown_technician",
                                           detail: "no offer was ever made to this technician")

    public func run() async throws {
        let router = Router()
        router.get("/v1/technicians/{id}/alerts") { request, routeContext in
            await respond { try await alerts(request, technician: routeContext.parameters.get("id") ?? "") }
        }
        router.get("/v1/technicians/{id}/alerts/stream") { request, routeContext in
            await respond { try await stream(request, technician: routeContext.parameters.get("id") ?? "") }
        }
        router.post("/v1/technicians/{id}/answers") { request, routeContext in
            await respond { try await answer(request, technician: routeContext.parameters.get("id") ?? "") }
        }
        let onRunning = self.onRunning
        let app = Application(router: router,
                              configuration: .init(address: .hostname(context.configuration.adminHost, port: port),
                                                   serverName: "veil-technician-alerter"),
                              onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
                              logger: context.logger)
        try await app.run()
    }

    func respond(_ body: () async throws -> Response) async -> Response {
        await Problem.respond(context, prefix: "alerter", body)
    }

    /// The technician's undelivered, unexpired alerts (sealed), marked delivered.
    func alerts(_ request: Request, technician: String) async throws -> Response {
        // A technician nobody has offered anything yet has nothing to read: an empty list,
        // which reveals nothing (the device key arrives with the first offer).
        guard try await authenticateRead(request, path: "/v1/technicians/\(technician)/alerts", technician: technician) else {
            return try deliveries([])
        }
        return try deliveries(try await takeUndelivered(technician))
    }

    /// `GET /v1/technicians/{id}/alerts/stream?seconds=N` (signed read of the path without
    /// the query): server-sent events, one `alert` event per offer as it arrives (woken by
    /// `LiveNotifications` on any replica), for `seconds` (default 300, at most 3,600).
    func stream(_ request: Request, technician: String) async throws -> Response {
        let seconds = request.uri.queryParameters.get("seconds").flatMap { Int($0) } ?? 300
        guard (1...3_600).contains(seconds) else { throw Problem.invalidField("seconds", "must be 1 to 3600") }
        _ = try await authenticateRead(request, path: "/v1/technicians/\(technician)/alerts/stream", technician: technician)
        return live.eventStream(key: technician, event: "alert", maxDuration: .seconds(seconds)) {
            try await takeUndelivered(technician).map { ($0.id, ContractCoding.encode($0)) }
        }
    }

    /// Checks a signed read; `false` if no offer (hence no key) exists for the technician yet.
    func authenticateRead(_ request: Request, path: String, technician: String) async throws -> Bool {
        guard let signature = request.headers[Self.signatureHeader], let stamp = request.headers[Self.timestampHeader],
              let timestamp = Int64(stamp) else { throw Problem.badSignature }
        try checkFreshness(timestamp)
        guard let key = try? await signingKey(technician, reservation: nil) else { return false }
        guard let raw = Data(base64Encoded: signature),
              key.isValidSignature(raw, for: SignedRead.signedBytes(path: path, timestamp: timestamp)) else { throw Problem.badSignature }
        return true
    }

    func takeUndelivered(_ technician: String) async throws -> [SealedDelivery] {
        var deliveries: [SealedDelivery] = []
        for (id, alert, at) in try await context.database.client.rows(TakeUndeliveredStatement(technicianID: technician),
                                                                        logger: context.logger) {
            deliveries.append(SealedDelivery(id: id.uuidString.lowercased(), requestId: "",
                                             sealed: Data(alert.readableBytesView).base64EncodedString(), at: at))
        }
        return deliveries.sorted { $0.at < $1.at }
    }

    func deliveries(_ items: [SealedDelivery]) throws -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: ContractCoding.encode(items))))
    }

    /// A signed answer: checked against the device key the offer came with, then carried
    /// to the dispatcher with the technician's signature (the dispatcher checks it again).
    func answer(_ request: Request, technician: String) async throws -> Response {
        let path = "/v1/technicians/\(technician)/answers"
        let (body, submission) = try await Problem.decodeJSON(TechnicianAnswerSubmission.self, from: request, maxBytes: 65_536)
        guard let reservation = UUID(uuidString: submission.reservationId) else {
            throw Problem.invalidField("reservationId", "must be a reservation id from an alert")
        }
        guard let nonce = Data(base64Encoded: submission.nonce), (16...64).contains(nonce.count) else {
            throw Problem.invalidField("nonce", "must be base64 of 16 to 64 random bytes")
        }
        guard let dispatcher = context.codec.directory.encryptionKey(of: ServiceName.dispatcher.rawValue),
              let sealed = Data(base64Encoded: submission.answer), let part = try? SealedPart(serialized: Array(sealed)),
              part.label == PartLabel.answer, part.recipients == [dispatcher.reference] else {
            throw Problem.invalidField("answer", "must be a part labelled answer sealed to the dispatcher's current key")
        }
        let key = try await signingKey(technician, reservation: reservation)
        guard let signature = request.headers[Self.signatureHeader], let raw = Data(base64Encoded: signature),
              key.isValidSignature(raw, for: DeviceRequestSignature.signedBytes(method: "POST", path: path, body: body)) else {
            throw Problem.badSignature
        }
        try checkFreshness(submission.timestamp)
        let fresh = try await context.database.client.query("""
            INSERT INTO \(unescaped: context.database.table("answer_nonces")) (technician_id, nonce)
            VALUES (\(technician), \(ByteBuffer(bytes: nonce))) ON CONFLICT DO NOTHING RETURNING seen_at
            """, logger: context.logger).collect()
        guard !fresh.isEmpty else { throw Problem.replayedNonce }

        let signed = TechnicianSignature(method: "POST", path: path, body: Data(body), signature: raw)
        let draft = EnvelopeDraft(type: MessageType.assignmentAnswered, parts: [
            .forwarded(part),
            .sealed(PartLabel.technicianSignature, payload: ContractCoding.encode(signed), to: [ServiceName.dispatcher.rawValue]),
        ])
        let message = try context.codec.message(draft, topic: Topic.dispatchResponses.name, key: Array(technician.utf8))
        do {
            _ = try await context.producer.send(message)
        } catch {
            throw Problem(status: .serviceUnavailable, code: "unavailable", detail: "the answer could not be handed on; retry with a new nonce")
        }
        try await context.database.client.query("""
            UPDATE \(unescaped: context.database.table("alerts")) SET answered_at = coalesce(answered_at, now())
            WHERE reservation_id = \(reservation)
            """, logger: context.logger)
        return Response(status: .accepted, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(string: #"{"status":"accepted"}"#)))
    }

    /// The device key the dispatcher sent with the technician's offers (the newest, or
    /// the one of `reservation`).
    func signingKey(_ technician: String, reservation: UUID?) async throws -> Curve25519.Signing.PublicKey {
        let alerts = context.database.table("alerts")
        let rows = try await context.database.client.query("""
            SELECT signing_key FROM \(unescaped: alerts)
            WHERE technician_id = \(technician) AND (\(reservation)::uuid IS NULL OR reservation_id = \(reservation)::uuid)
            ORDER BY created_at DESC LIMIT 1
            """, logger: context.logger).collect()
        guard let raw = try rows.first?.decode(ByteBuffer.self),
              let key = try? Curve25519.Signing.PublicKey(rawRepresentation: Array(raw.readableBytesView)) else {
            throw Self.unknownTechnician
        }
        return key
    }

    func checkFreshness(_ timestamp: Int64) throws {
        guard DeviceRequestSignature.isFresh(timestamp, skew: clockSkew) else { throw Problem.staleRequest }
    }
}

// The alerter's statements per alert, prepared (parsed and planned once per connection;
// the table is unqualified: connections search the alerter's schema).

/// Keeps an offer's sealed alert until it is delivered and answered (a redelivery inserts nothing).
struct StoreAlertStatement: PostgresPreparedStatement {
    static let name = "veil.alerter.store"
    static let sql = """
        INSERT INTO alerts (reservation_id, technician_id, alert, signing_key, expires_at) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (reservation_id) DO NOTHING
        """
    static let bindingDataTypes: [PostgresDataType] = [.uuid, .text, .bytea, .bytea, .timestamptz]
    typealias Row = Void

    var reservation: UUID
    var technicianID: String
    var alert: ByteBuffer
    var signingKey: ByteBuffer
    var expiresAt: Date

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(reservation, technicianID, alert, signingKey, expiresAt) }
    func decodeRow(_ row: PostgresRow) throws {}
}

/// A technician's live alerts not delivered yet, marked delivered as they are taken.
struct TakeUndeliveredStatement: PostgresPreparedStatement {
    static let name = "veil.alerter.take"
    static let sql = """
        UPDATE alerts SET delivered_at = now()
        WHERE technician_id = $1 AND delivered_at IS NULL AND answered_at IS NULL AND expires_at > now()
        RETURNING reservation_id, alert, created_at
        """
    static let bindingDataTypes: [PostgresDataType] = [.text]
    typealias Row = (UUID, ByteBuffer, Date)

    var technicianID: String

    func makeBindings() throws -> PostgresBindings { try PostgresBindings(technicianID) }
    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}
