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
import VeilService

/// The stage on `veil.customer.notifications.v1`: files each confirmation, still sealed
/// to the customer's device, in that device's inbox.
public struct InboxStage: EnvelopeHandler {
    let context: ServiceContext

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
        return []
    }
}

extension RequestHandler {
    static let timestampHeader = HTTPField.Name(SignedRead.timestampHeader)!

    /// `GET /v1/devices/{id}/inbox` (signed read): the device's confirmations, sealed to it, oldest first.
    func inbox(_ request: Request, deviceId: String) async throws -> Response {
        try validate(id: deviceId, field: "deviceId")
        let path = "/v1/devices/\(deviceId)/inbox"
        guard let signature = request.headers[Self.signatureHeader], let stamp = request.headers[Self.timestampHeader],
              let timestamp = Int64(stamp), let raw = Data(base64Encoded: signature) else { throw Problem.badSignature }
        guard let deviceKey = settings.pseudonymDevice.current else { throw Problem.unavailable }
        let deviceRef = deviceKey.hash(Array(deviceId.utf8))
        let device = try await enrolledDevice(deviceRef)
        guard device.signingKey.isValidSignature(raw, for: SignedRead.signedBytes(path: path, timestamp: timestamp)) else {
            throw Problem.badSignature
        }
        try checkFreshness(timestamp)
        let rows = try await context.database.client.query("""
            SELECT id, request_id, notification, created_at FROM \(unescaped: context.database.table("inbox"))
            WHERE device_ref = \(ByteBuffer(bytes: deviceRef)) ORDER BY created_at, id LIMIT 500
            """, logger: context.logger).collect()
        let items = try rows.map { row in
            let (id, requestID, note, at) = try row.decode((UUID, String, ByteBuffer, Date).self)
            return SealedDelivery(id: id.uuidString.lowercased(), requestId: requestID,
                                  sealed: Data(note.readableBytesView).base64EncodedString(), at: at)
        }
        return try json(.ok, items)
    }
}
