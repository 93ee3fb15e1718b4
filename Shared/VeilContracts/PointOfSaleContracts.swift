import Foundation

// MARK: Point of sale (DESIGN.md section 6, seed 003)
//
// The TID is the customer's identifier as the till captures it (a loyalty or payment
// card number, a phone number typed in). It is as sensitive as a user id: the terminal
// seals it to the key-vault, ingress forwards it unopened, the vault files and looks up
// only `ref = HMAC(kH, TID)` and hands out only the de-identified `HMAC(kD, TID)`.

extension MessageType {
    public static let posLookupRequested = "veil.pos-lookup.requested.v1"
    public static let posLookupAnswered = "veil.pos-lookup.answered.v1"
    public static let posTransactionRecorded = "veil.pos-transaction.recorded.v1"
}

extension PartLabel {
    /// The customer's TID, sealed by the terminal to the key-vault: terminal → (ingress, unopened) → key-vault.
    public static let terminalID = "terminal-id"
    /// The vault's answer to a lookup: key-vault → ingress.
    public static let household = "household"
    /// A till transaction: ingress → downstream providers (output).
    public static let posTransaction = "pos-transaction"
    /// A batch of TID → HHID mappings: upstream exporter → key-vault (on `veil.upstream.records.v1`,
    /// same envelope type as customer records; the part label says which it is).
    public static let households = "households"
}

/// Part `terminal-id`: what the terminal seals to the key-vault.
public struct TerminalIDPayload: Codable, Sendable, Equatable {
    public var tid: String

    public init(tid: String) {
        self.tid = tid
    }
}

/// Part `household`: the key-vault's answer, sealed to ingress.
public struct HouseholdAnswer: Codable, Sendable, Equatable {
    /// The lookup's message id (the correlation id).
    public var lookupId: String
    public var found: Bool
    public var householdId: String?
    /// `HMAC(kD, TID)`, base64: stable per customer, useless without the vault's key.
    public var deidentifiedTid: Data?
    /// Set when the lookup could not be answered (e.g. the sealed TID did not belong to this lookup).
    public var error: String?

    public init(lookupId: String, found: Bool, householdId: String? = nil, deidentifiedTid: Data? = nil, error: String? = nil) {
        self.lookupId = lookupId
        self.found = found
        self.householdId = householdId
        self.deidentifiedTid = deidentifiedTid
        self.error = error
    }
}

/// Part `pos-transaction` on `veil.pos.transactions.v1` (output; docs/asyncapi.yaml).
public struct PosTransactionRecord: Codable, Sendable, Equatable {
    public var transactionId: String
    /// `HMAC(kP.dev, terminal device id)`: which till, de-identified.
    public var terminalRef: Data
    public var deidentifiedTid: Data
    public var householdId: String
    public var upcs: [String]
    public var occurredAt: Date
    public var region: String?

    public init(transactionId: String, terminalRef: Data, deidentifiedTid: Data, householdId: String, upcs: [String],
                occurredAt: Date, region: String?) {
        self.transactionId = transactionId
        self.terminalRef = terminalRef
        self.deidentifiedTid = deidentifiedTid
        self.householdId = householdId
        self.upcs = upcs
        self.occurredAt = occurredAt
        self.region = region
    }
}

/// One TID → HHID mapping from the provider's household file.
public struct HouseholdMapping: Codable, Sendable, Equatable {
    public var tid: String
    public var householdId: String

    public init(tid: String, householdId: String) {
        self.tid = tid
        self.householdId = householdId
    }
}

/// Part `households`: a batch of mappings, sealed to the key-vault.
public struct HouseholdBatch: Codable, Sendable, Equatable {
    public var households: [HouseholdMapping]
    public init(households: [HouseholdMapping]) { self.households = households }
}

// MARK: HTTP bodies (docs/openapi.yaml)

/// `POST /v1/pos/lookups`, signed by the terminal's device key.
public struct PosLookupRequest: Codable, Sendable, Equatable {
    public var terminalId: String
    public var timestamp: Int64
    /// base64 of 16 to 64 random bytes, single use per terminal.
    public var nonce: String
    /// base64 of a `SealedPart` labelled `terminal-id`, sealed to the key-vault's current key.
    public var tid: String

    public init(terminalId: String, timestamp: Int64, nonce: String, tid: String) {
        self.terminalId = terminalId
        self.timestamp = timestamp
        self.nonce = nonce
        self.tid = tid
    }
}

/// `200` answer of `POST /v1/pos/lookups`.
public struct PosLookupResult: Codable, Sendable, Equatable {
    public var lookupId: String
    public var householdId: String
    public var deidentifiedTid: String
    /// Ingress's proof that this terminal got this household and de-identified TID from a
    /// lookup (a keyed MAC with an expiry): the transaction must carry it.
    public var lookupToken: String

    public init(lookupId: String, householdId: String, deidentifiedTid: String, lookupToken: String) {
        self.lookupId = lookupId
        self.householdId = householdId
        self.deidentifiedTid = deidentifiedTid
        self.lookupToken = lookupToken
    }
}

/// `POST /v1/pos/transactions`, signed by the terminal's device key.
public struct PosTransactionRequest: Codable, Sendable, Equatable {
    public var terminalId: String
    public var timestamp: Int64
    public var nonce: String
    /// base64 of the de-identified TID the lookup returned (never the TID).
    public var deidentifiedTid: String
    public var householdId: String
    public var upcs: [String]
    /// The `lookupToken` of the lookup that returned this household.
    public var lookupToken: String

    public init(terminalId: String, timestamp: Int64, nonce: String, deidentifiedTid: String, householdId: String, upcs: [String],
                lookupToken: String) {
        self.lookupToken = lookupToken
        self.terminalId = terminalId
        self.timestamp = timestamp
        self.nonce = nonce
        self.deidentifiedTid = deidentifiedTid
        self.householdId = householdId
        self.upcs = upcs
    }
}

/// `202` answer of `POST /v1/pos/transactions`.
public struct PosTransactionReceipt: Codable, Sendable, Equatable {
    public var transactionId: String
    public var status: String

    public init(transactionId: String, status: String) {
        self.transactionId = transactionId
        self.status = status
    }
}
