import Foundation

// MARK: Confidential information in chat (DESIGN.md section 6, seed 004)
//
// An agent asks for a PIN, a card number or a national id with a form request; the
// customer's device seals the value to the key-vault; ingress forwards it unopened with
// its signed authentication assertion; the vault verifies and publishes only the result.

extension MessageType {
    public static let secureFormSubmitted = "veil.secure-form.submitted.v1"
    public static let secureFormVerified = "veil.secure-form.verified.v1"
}

extension PartLabel {
    /// The confidential value, sealed by the customer's device to the key-vault.
    public static let secureValue = "secure-value"
    /// The vault's verdict, sealed to the dispatcher.
    public static let secureFormResult = "secure-form-result"
    /// A batch of PIN verifiers: upstream exporter → key-vault.
    public static let pinVerifiers = "pin-verifiers"
}

/// What an agent can ask for.
public enum SecureFormKind: String, Codable, Sendable, CaseIterable {
    case pin
    case card
    case nationalID = "national-id"

    /// How the agent console and the customer's app name it.
    public var title: String {
        switch self {
        case .pin: "PIN"
        case .card: "card number"
        case .nationalID: "national id"
        }
    }
}

/// Part `secure-value`: sealed on the device to the key-vault.
public struct SecureValuePayload: Codable, Sendable, Equatable {
    public var formId: String
    public var kind: SecureFormKind
    public var value: String
    /// The dispatcher's signed form request, as the device received it: the vault checks a
    /// value only for a form an agent really asked, for this account, before it expires.
    public var request: SecureFormRequest?

    public init(formId: String, kind: SecureFormKind, value: String, request: SecureFormRequest? = nil) {
        self.formId = formId
        self.kind = kind
        self.value = value
        self.request = request
    }
}

/// The vault's verdict.
public enum SecureFormOutcome: String, Codable, Sendable, CaseIterable {
    /// A PIN matched the account's stored verifier.
    case verified
    /// A PIN did not match (or the account has no PIN on file).
    case notVerified = "not-verified"
    /// A card number passed the Luhn check, or a national id its format check, and was tokenized.
    case tokenized
    /// A card number failed the Luhn check, or a national id its format check.
    case invalid
    /// Too many wrong PINs for this account: no more checks for now.
    case locked
}

/// Part `secure-form-result` on `veil.secure-forms.results.v1`: only the verdict.
public struct SecureFormResult: Codable, Sendable, Equatable {
    public var formId: String
    public var kind: SecureFormKind
    public var outcome: SecureFormOutcome
    /// The account the value was checked for (from ingress's assertion), so the dispatcher
    /// can check the answer came from the conversation's customer.
    public var accountRef: Data
    /// A card's last four digits.
    public var last4: String?
    /// The token that stands for the card number or national id (a keyed hash; the value is not kept).
    public var token: String?

    public init(formId: String, kind: SecureFormKind, outcome: SecureFormOutcome, accountRef: Data, last4: String? = nil,
                token: String? = nil) {
        self.formId = formId
        self.kind = kind
        self.outcome = outcome
        self.accountRef = accountRef
        self.last4 = last4
        self.token = token
    }
}

/// One account's PIN from the provider's file, to be turned into a verifier by the vault.
public struct PinVerifierRecord: Codable, Sendable, Equatable {
    /// `HMAC(HKDF(kP.id, "veil.account-ref.v1"), accountId)`: the same reference ingress uses.
    public var accountRef: Data
    public var pin: String

    public init(accountRef: Data, pin: String) {
        self.accountRef = accountRef
        self.pin = pin
    }
}

/// Part `pin-verifiers`: a batch, sealed to the key-vault.
public struct PinVerifierBatch: Codable, Sendable, Equatable {
    public var pins: [PinVerifierRecord]
    public init(pins: [PinVerifierRecord]) { self.pins = pins }
}

/// `POST /v1/secure-forms/{id}`, signed by the customer's device.
public struct SecureFormSubmission: Codable, Sendable, Equatable {
    public var deviceId: String
    public var timestamp: Int64
    public var nonce: String
    /// base64 of a `SealedPart` labelled `secure-value`, sealed to the key-vault's current key.
    public var value: String

    public init(deviceId: String, timestamp: Int64, nonce: String, value: String) {
        self.deviceId = deviceId
        self.timestamp = timestamp
        self.nonce = nonce
        self.value = value
    }
}

/// What a customer notification of status `secure-form` carries in `form`: the form,
/// signed by the dispatcher (Ed25519 over `"veil.secure-form-request.v1\n"` + the JSON of
/// `formId`, `kind`, `accountRef`, `expiresAtMs`), so the key-vault can tell a form an
/// agent asked from one a device made up.
public struct SecureFormRequest: Codable, Sendable, Equatable {
    public var formId: String
    public var kind: SecureFormKind
    /// The account whose customer is asked (the chat's).
    public var accountRef: Data?
    /// Milliseconds since 1970 after which the vault refuses answers.
    public var expiresAtMs: Int64?
    public var signature: Data?
    public var signerKeyId: String?
    public var signerVersion: UInt32?

    public static let context = Array("veil.secure-form-request.v1\n".utf8)

    public init(formId: String, kind: SecureFormKind, accountRef: Data? = nil, expiresAtMs: Int64? = nil, signature: Data? = nil,
                signerKeyId: String? = nil, signerVersion: UInt32? = nil) {
        self.formId = formId
        self.kind = kind
        self.accountRef = accountRef
        self.expiresAtMs = expiresAtMs
        self.signature = signature
        self.signerKeyId = signerKeyId
        self.signerVersion = signerVersion
    }

    /// The bytes the dispatcher signs.
    public var signedBytes: [UInt8] {
        struct Claims: Encodable { var formId: String; var kind: SecureFormKind; var accountRef: Data?; var expiresAtMs: Int64? }
        return Self.context + ContractCoding.encode(Claims(formId: formId, kind: kind, accountRef: accountRef, expiresAtMs: expiresAtMs))
    }
}
