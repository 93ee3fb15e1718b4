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
    /// Set on a customer's follow-up message in a chat: the id of the request that opened it.
    /// `description` is then the message.
    public var conversationId: String?
    /// Set when the app opens a channel link it received by SMS (`ChannelLink`): the
    /// dispatcher binds this device to the link's service request.
    public var channelLink: String?

    public init(category: String, priority: Int, description: String, region: String? = nil, tier: String? = nil,
                conversationId: String? = nil, channelLink: String? = nil) {
        self.channelLink = channelLink
        self.conversationId = conversationId
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

// MARK: Technician alerts, answers and customer confirmations

extension MessageType {
    /// An offer to a technician: dispatcher → technician-alerter (`veil.dispatch.assignments.v1`).
    public static let assignmentOffered = "veil.assignment.offered.v1"
    /// A technician's signed answer: technician-alerter → dispatcher (`veil.dispatch.responses.v1`).
    public static let assignmentAnswered = "veil.assignment.answered.v1"
    /// A confirmation for the customer's device: dispatcher → ingress (`veil.customer.notifications.v1`).
    public static let notificationSent = "veil.notification.sent.v1"
}

extension PartLabel {
    /// What the technician needs to know, sealed to the technician's device key.
    public static let alert = "alert"
    /// Where to deliver a part the deliverer cannot open: sealed to the technician-alerter or ingress.
    public static let routing = "routing"
    /// The technician's answer, sealed on the technician's device to the dispatcher.
    public static let answer = "answer"
    /// The technician's signed request body, forwarded by the alerter so the dispatcher verifies it itself.
    public static let technicianSignature = "technician-signature"
    /// A confirmation, sealed to the customer's device key.
    public static let notification = "notification"
}

/// Part `alert`: what the technician's device shows.
public struct AlertPayload: Codable, Sendable, Equatable {
    public var reservationId: String
    public var requestId: String
    public var category: String
    public var priority: Int
    public var region: String?
    public var description: String
    public var expiresAt: Date
    /// Ingress's signed assertion of who the customer is, as it came with the request: a
    /// technician taking over a transferred request verifies it instead of asking again.
    public var assertion: SignedAssertion?

    public init(reservationId: String, requestId: String, category: String, priority: Int, region: String?,
                description: String, expiresAt: Date, assertion: SignedAssertion? = nil) {
        self.assertion = assertion
        self.reservationId = reservationId
        self.requestId = requestId
        self.category = category
        self.priority = priority
        self.region = region
        self.description = description
        self.expiresAt = expiresAt
    }
}

/// Part `routing` of an offer: which technician, and the key their requests are signed with.
public struct AlertRouting: Codable, Sendable, Equatable {
    public var technicianId: String
    public var reservationId: String
    public var expiresAt: Date
    /// The technician device's Ed25519 public key.
    public var signingKey: Data

    public init(technicianId: String, reservationId: String, expiresAt: Date, signingKey: Data) {
        self.technicianId = technicianId
        self.reservationId = reservationId
        self.expiresAt = expiresAt
        self.signingKey = signingKey
    }
}

/// What a technician answers to an offer.
public enum TechnicianAction: String, Codable, Sendable, CaseIterable {
    /// `transfer`: an accepted request handed on (the next technician gets it with the same assertion).
    case accept, decline, enRoute = "en-route", completed, transfer
}

/// Part `answer`: sealed on the technician's device to the dispatcher.
public struct TechnicianAnswer: Codable, Sendable, Equatable {
    public var reservationId: String
    public var technicianId: String
    public var action: TechnicianAction
    /// Why a decline, or notes on completion.
    public var note: String?

    public init(reservationId: String, technicianId: String, action: TechnicianAction, note: String? = nil) {
        self.reservationId = reservationId
        self.technicianId = technicianId
        self.action = action
        self.note = note
    }
}

/// Part `technician-signature`: the exact request body the technician signed (which
/// contains the sealed answer) and the signature, for the dispatcher to verify.
public struct TechnicianSignature: Codable, Sendable, Equatable {
    public var method: String
    public var path: String
    public var body: Data
    public var signature: Data

    public init(method: String, path: String, body: Data, signature: Data) {
        self.method = method
        self.path = path
        self.body = body
        self.signature = signature
    }
}

/// Part `routing` of a notification: whose inbox it goes to.
public struct NotificationRouting: Codable, Sendable, Equatable {
    /// `anonymizedDeviceId` of the customer's device.
    public var deviceRef: Data
    public var requestId: String

    public init(deviceRef: Data, requestId: String) {
        self.deviceRef = deviceRef
        self.requestId = requestId
    }
}

/// Part `notification`: what the customer's device shows.
public struct CustomerNotification: Codable, Sendable, Equatable {
    public var requestId: String
    /// `received`, `assigned`, `en-route`, `completed`.
    public var status: String
    /// The technician's first name, when one is assigned.
    public var technician: String?
    public var message: String
    public var at: Date
    /// With status `secure-form`: the form the agent asks the customer to fill in.
    public var form: SecureFormRequest?

    public init(requestId: String, status: String, technician: String?, message: String, at: Date, form: SecureFormRequest? = nil) {
        self.form = form
        self.requestId = requestId
        self.status = status
        self.technician = technician
        self.message = message
        self.at = at
    }
}
