import Crypto
import Foundation
import VeilContracts
import VeilEnvelope

/// The body of `POST /v1/service-requests`: the request itself is sealed on the device
/// to the dispatcher, so ingress authenticates the device but cannot read what it asks.
public struct ServiceRequestSubmission: Codable, Sendable, Equatable {
    public var deviceId: String
    public var timestamp: Int64
    public var nonce: String
    /// The sealed part (`SealedPart.bytes`), base64.
    public var request: String

    public init(deviceId: String, timestamp: Int64, nonce: String, request: String) {
        self.deviceId = deviceId
        self.timestamp = timestamp
        self.nonce = nonce
        self.request = request
    }
}

/// `202` answer of `POST /v1/service-requests`.
public struct ServiceRequestReceipt: Codable, Sendable, Equatable {
    public var id: String
    public var status: String
    public var acceptedAt: Date?

    public init(id: String, status: String, acceptedAt: Date?) {
        self.id = id
        self.status = status
        self.acceptedAt = acceptedAt
    }
}

/// A service's public encryption key, as `GET /v1/keys/{service}` gives it.
public struct PublishedEncryptionKey: Codable, Sendable, Equatable {
    public var keyId: String
    public var version: UInt32
    /// Base64 raw X25519 public key.
    public var publicKey: String

    public init(keyId: String, version: UInt32, publicKey: String) {
        self.keyId = keyId
        self.version = version
        self.publicKey = publicKey
    }

    public var recipient: (reference: KeyReference, key: Curve25519.KeyAgreement.PublicKey)? {
        guard let raw = Data(base64Encoded: publicKey), let key = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: raw) else {
            return nil
        }
        return (KeyReference(keyID: keyId, version: version), key)
    }
}

/// The body of `POST /admin/enrollment-codes` and its answer.
public struct EnrollmentCodeRequest: Codable, Sendable, Equatable {
    public var accountId: String
    public init(accountId: String) { self.accountId = accountId }
}

public struct EnrollmentCode: Codable, Sendable, Equatable {
    /// Eight digits, single use, delivered to the customer out of band (SMS, letter).
    public var code: String
    public var expiresAt: Date

    public init(code: String, expiresAt: Date) {
        self.code = code
        self.expiresAt = expiresAt
    }
}

extension DeviceIdentity {
    /// The enrollment binding this device to a customer account with a one-time code
    /// (`POST /v1/devices`); devices enrolled so may send service requests.
    public func enrollment(accountId: String, code: String, now: Date = Date()) throws -> SignedRequest {
        var body = DeviceEnrollment(deviceId: deviceId, signingKey: signingKey.publicKey.rawRepresentation.base64EncodedString(),
                                    encryptionKey: encryptionKey.publicKey.rawRepresentation.base64EncodedString(),
                                    timestamp: DeviceRequestSignature.milliseconds(now), nonce: DeviceRequestSignature.newNonce())
        body.accountId = accountId
        body.enrollmentCode = code
        return try sign(body, path: "/v1/devices")
    }

    /// A signed service request whose content is sealed to `dispatcher` (`POST /v1/service-requests`).
    public func serviceRequest(_ payload: ServiceRequestPayload, dispatcher: PublishedEncryptionKey,
                               now: Date = Date()) throws -> SignedRequest {
        guard let recipient = dispatcher.recipient else { throw DeviceRequestError.malformedKey }
        let part = try SealedPart.seal(ContractCoding.encode(payload), label: PartLabel.serviceRequest, to: [recipient])
        return try sign(ServiceRequestSubmission(deviceId: deviceId, timestamp: DeviceRequestSignature.milliseconds(now),
                                                 nonce: DeviceRequestSignature.newNonce(),
                                                 request: Data(part.bytes).base64EncodedString()),
                        path: "/v1/service-requests")
    }
}
