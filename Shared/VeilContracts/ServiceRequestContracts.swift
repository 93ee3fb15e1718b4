import Foundation

/// Envelope types and part labels of the service-request flow (DESIGN.md section 6).
extension MessageType {
    /// A device's service request, accepted by ingress: `veil.service-requests.v1`.
    public static let serviceRequestSubmitted = "veil.service-request.submitted.v1"
}

extension PartLabel {
    /// The device's request, sealed by the device to the dispatcher: ingress cannot open it.
    public static let serviceRequest = "service-request"
    /// Ingress's signed authentication assertion: ingress → dispatcher.
    public static let authentication = "authentication"
}

/// What a customer asks for; sealed on the device to the dispatcher.
public struct ServiceRequestPayload: Codable, Sendable, Equatable {
    /// E.g. `outage`, `installation`, `question` (letters, digits, `-`).
    public var category: String
    /// 1 (low) to 5 (urgent), as the customer or the app rates it.
    public var priority: Int
    /// Free text, at most 2,000 characters: stored encrypted by the dispatcher.
    public var description: String
    /// Where the service is needed, e.g. a service region code.
    public var region: String?
    /// The customer's tier if the app knows it (`gold`, …).
    public var tier: String?

    public init(category: String, priority: Int, description: String, region: String? = nil, tier: String? = nil) {
        self.category = category
        self.priority = priority
        self.description = description
        self.region = region
        self.tier = tier
    }
}

/// Who ingress authenticated, and how: it travels with the request (and with any
/// transfer of it between agents or technicians), signed by ingress, so nobody asks again.
public struct AuthAssertion: Codable, Sendable, Equatable {
    /// The service request it is for.
    public var requestId: String
    /// The customer account the device was bound to at enrollment, as a keyed pseudonym.
    public var accountRef: Data
    /// `anonymizedDeviceId` of the device.
    public var deviceRef: Data
    /// The device's X25519 public key: confirmations are sealed to it.
    public var deviceEncryptionKey: Data
    /// `device-signature` (an Ed25519 signature by a device enrolled with a one-time code).
    public var method: String
    public var enrolledAt: Date
    public var authenticatedAt: Date

    public init(requestId: String, accountRef: Data, deviceRef: Data, deviceEncryptionKey: Data, method: String,
                enrolledAt: Date, authenticatedAt: Date) {
        self.requestId = requestId
        self.accountRef = accountRef
        self.deviceRef = deviceRef
        self.deviceEncryptionKey = deviceEncryptionKey
        self.method = method
        self.enrolledAt = enrolledAt
        self.authenticatedAt = authenticatedAt
    }
}

/// An `AuthAssertion` (its exact JSON bytes) with ingress's Ed25519 signature over them,
/// verifiable by anyone holding the key directory.
public struct SignedAssertion: Codable, Sendable, Equatable {
    /// The assertion's JSON (`ContractCoding`), base64.
    public var assertion: Data
    /// Ed25519 over `"veil.auth-assertion.v1\n"` followed by `assertion`.
    public var signature: Data
    /// The signing key (`ingress.signing`) and its version.
    public var signerKeyId: String
    public var signerVersion: UInt32

    public static let context = Array("veil.auth-assertion.v1\n".utf8)

    public init(assertion: Data, signature: Data, signerKeyId: String, signerVersion: UInt32) {
        self.assertion = assertion
        self.signature = signature
        self.signerKeyId = signerKeyId
        self.signerVersion = signerVersion
    }
}
