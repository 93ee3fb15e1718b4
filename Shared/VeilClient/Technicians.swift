import Crypto
import Foundation
import VeilContracts
import VeilEnvelope

/// Signed reads (`GET`): Ed25519 over `"GET <path>\n"` followed by the decimal
/// timestamp (milliseconds) sent in `Veil-Timestamp`. A replayed read within the clock
/// skew only reads again; it changes nothing.
public struct SignedRead: Sendable {
    public let path: String
    public let timestamp: Int64
    public let signature: String
    public static let timestampHeader = "Veil-Timestamp"

    public static func signedBytes(path: String, timestamp: Int64) -> [UInt8] {
        DeviceRequestSignature.signedBytes(method: "GET", path: path, body: Array(String(timestamp).utf8))
    }
}

/// One sealed item delivered to a device: an alert for a technician, or a
/// confirmation in a customer's inbox. Only the device's private key opens `sealed`.
public struct SealedDelivery: Codable, Sendable, Equatable {
    /// The reservation (alerts) or notification (inbox) id.
    public var id: String
    public var requestId: String
    /// `SealedPart.bytes`, base64.
    public var sealed: String
    public var at: Date

    public init(id: String, requestId: String, sealed: String, at: Date) {
        self.id = id
        self.requestId = requestId
        self.sealed = sealed
        self.at = at
    }
}

/// The body of `POST /v1/technicians/{id}/answers` (technician-alerter).
public struct TechnicianAnswerSubmission: Codable, Sendable, Equatable {
    public var reservationId: String
    public var timestamp: Int64
    public var nonce: String
    /// A part labelled `answer` sealed to the dispatcher, base64.
    public var answer: String

    public init(reservationId: String, timestamp: Int64, nonce: String, answer: String) {
        self.reservationId = reservationId
        self.timestamp = timestamp
        self.nonce = nonce
        self.answer = answer
    }
}

extension DeviceIdentity {
    /// How parts sealed to this device name its key.
    public var keyReference: KeyReference { SealedPart.reference(prefix: "device", for: encryptionKey.publicKey) }

    /// Signs a read of `path` (alerts, inbox).
    public func signedRead(_ path: String, now: Date = Date()) throws -> SignedRead {
        let timestamp = DeviceRequestSignature.milliseconds(now)
        let signature = try signingKey.signature(for: SignedRead.signedBytes(path: path, timestamp: timestamp))
        return SignedRead(path: path, timestamp: timestamp, signature: Data(signature).base64EncodedString())
    }

    /// Opens a delivery sealed to this device (an alert or a confirmation).
    public func open<T: Decodable>(_ delivery: SealedDelivery, as type: T.Type) throws -> T {
        guard let bytes = Data(base64Encoded: delivery.sealed) else { throw DeviceRequestError.malformedKey }
        let part = try SealedPart(serialized: Array(bytes))
        return try ContractCoding.decode(type, from: try part.open(as: keyReference, with: encryptionKey))
    }

    /// A technician's signed answer to an offer, sealed to the dispatcher.
    public func answer(_ answer: TechnicianAnswer, dispatcher: PublishedEncryptionKey, now: Date = Date()) throws -> SignedRequest {
        guard let recipient = dispatcher.recipient else { throw DeviceRequestError.malformedKey }
        let part = try SealedPart.seal(ContractCoding.encode(answer), label: PartLabel.answer, to: [recipient])
        return try sign(TechnicianAnswerSubmission(reservationId: answer.reservationId, timestamp: DeviceRequestSignature.milliseconds(now),
                                                   nonce: DeviceRequestSignature.newNonce(), answer: Data(part.bytes).base64EncodedString()),
                        path: "/v1/technicians/\(answer.technicianId)/answers")
    }
}
