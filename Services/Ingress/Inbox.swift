import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresNIO
import VeilClient
import VeilContracts
import VeilEnvelope
import VeilKafka
import Synchronization
import VeilService

/// The stage on `veil.customer.notifications.v1`: files each confirmation, still sealed
/// to the customer's device, in that device's inbox.
public struct InboxStage: EnvelopeHandler {
    let context: ServiceContext
    let live: LiveNotifications

    public func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        guard envelope.header.type == MessageType.notificationSent, let note = envelope.part(PartLabel.notification),
              let routingBytes = envelope.payload(PartLabel.routing),
              let routing = try? ContractCoding.decode(NotificationRouting.self, from: routingBytes) else {
            throw StageError.permanent("ingress.unsupported_message", "not a customer notification with its routing")
        }
        try await context.database.client.query("""
            INSERT INTO \(unescaped: context.database.table("inbox")) (id, device_ref, request_id, notification)
            VALUES (\(envelope.header.id.uuid), \(ByteBuffer(bytes: routing.deviceRef)), \(routing.requestId),
                    \(ByteBuffer(bytes: Array(note.bytes))))
            ON CONFLICT (id) DO NOTHING
            """, logger: context.logger)
        try? await live.notify(Data(routing.deviceRef).base64EncodedString())  // the heartbeat covers a lost one
        return []
    }
}

extension RequestHandler {
    static let timestampHeader = HTTPField.Name(SignedRead.timestampHeader)!

    /// `GET /v1/devices/{id}/inbox` (signed read): the device's confirmations, sealed to it, oldest first.
    func inbox(_ request: Request, deviceId: String) async throws -> Response {
        let deviceRef = try await authenticateInboxRead(request, deviceId: deviceId, path: "/v1/devices/\(deviceId)/inbox")
        return try json(.ok, try await inboxItems(deviceRef, after: nil))
    }

    /// `GET /v1/devices/{id}/inbox/stream?seconds=N` (signed read of the path): server-sent
    /// events, one `notification` per confirmation as it is filed (earlier ones first).
    func inboxStream(_ request: Request, deviceId: String) async throws -> Response {
        let seconds = request.uri.queryParameters.get("seconds").flatMap { Int($0) } ?? 300
        guard (1...3_600).contains(seconds) else { throw Problem.invalidField("seconds", "must be 1 to 3600") }
        let deviceRef = try await authenticateInboxRead(request, deviceId: deviceId, path: "/v1/devices/\(deviceId)/inbox/stream")
        let cursor = InboxCursor()
        return live.eventStream(key: Data(deviceRef).base64EncodedString(), event: "notification", maxDuration: .seconds(seconds)) {
            let items = try await inboxItems(deviceRef, after: cursor.last)
            if let last = items.last { cursor.last = (last.at, last.id) }
            return items.map { ($0.id, ContractCoding.encode($0)) }
        }
    }

    func authenticateInboxRead(_ request: Request, deviceId: String, path: String) async throws -> [UInt8] {
        try validate(id: deviceId, field: "deviceId")
        guard let signature = request.headers[Self.signatureHeader], let stamp = request.headers[Self.timestampHeader],
              let timestamp = Int64(stamp), let raw = Data(base64Encoded: signature) else { throw Problem.badSignature }
        guard let deviceKey = settings.pseudonymDevice.current else { throw Problem.unavailable }
        let deviceRef = deviceKey.hash(Array(deviceId.utf8))
        let device = try await enrolledDevice(deviceRef)
        guard device.signingKey.isValidSignature(raw, for: SignedRead.signedBytes(path: path, timestamp: timestamp)) else {
            throw Problem.badSignature
        }
        try checkFreshness(timestamp)
        return deviceRef
    }

    func inboxItems(_ deviceRef: [UInt8], after cursor: (Date, String)?) async throws -> [SealedDelivery] {
        let since = cursor?.0 ?? Date(timeIntervalSince1970: 0)
        let sinceID = UUID(uuidString: cursor?.1 ?? "") ?? UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        let rows = try await context.database.client.query("""
            SELECT id, request_id, notification, created_at FROM \(unescaped: context.database.table("inbox"))
            WHERE device_ref = \(ByteBuffer(bytes: deviceRef)) AND (created_at, id) > (\(since), \(sinceID))
            ORDER BY created_at, id LIMIT 500
            """, logger: context.logger).collect()
        return try rows.map { row in
            let (id, requestID, note, at) = try row.decode((UUID, String, ByteBuffer, Date).self)
            return SealedDelivery(id: id.uuidString.lowercased(), requestId: requestID,
                                  sealed: Data(note.readableBytesView).base64EncodedString(), at: at)
        }
    }
}

/// Where a live inbox stream is: the last confirmation it sent.
final class InboxCursor: Sendable {
    private let state = Mutex<(Date, String)?>(nil)
    var last: (Date, String)? {
        get { state.withLock { $0 } }
        set { state.withLock { $0 = newValue } }
    }
}
