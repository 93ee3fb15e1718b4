import Foundation
import VeilContracts
import VeilEnvelope

/// What a till and a customer's app sign and seal for the point-of-sale and secure-form
/// calls. A terminal is an enrolled device (`DeviceIdentity` with the terminal's id).
extension DeviceIdentity {
    /// `POST /v1/pos/lookups`: the customer's TID sealed to the key-vault (`vault`, from `GET /v1/keys/key-vault`).
    public func posLookup(tid: String, vault: PublishedEncryptionKey, now: Date = Date()) throws -> SignedRequest {
        guard let recipient = vault.recipient else { throw DeviceRequestError.malformedKey }
        let nonce = DeviceRequestSignature.newNonce()
        let part = try SealedPart.seal(ContractCoding.encode(TerminalIDPayload(tid: tid)),
                                       label: PartLabel.terminalID, to: [recipient])
        return try sign(PosLookupRequest(terminalId: deviceId, timestamp: DeviceRequestSignature.milliseconds(now), nonce: nonce,
                                         tid: Data(part.bytes).base64EncodedString()),
                        path: "/v1/pos/lookups")
    }

    /// `POST /v1/pos/transactions`: what was bought, by the household a lookup returned.
    public func posTransaction(_ lookup: PosLookupResult, upcs: [String], now: Date = Date()) throws -> SignedRequest {
        try sign(PosTransactionRequest(terminalId: deviceId, timestamp: DeviceRequestSignature.milliseconds(now),
                                       nonce: DeviceRequestSignature.newNonce(), deidentifiedTid: lookup.deidentifiedTid,
                                       householdId: lookup.householdId, upcs: upcs, lookupToken: lookup.lookupToken),
                 path: "/v1/pos/transactions")
    }

    /// `POST /v1/secure-forms/{id}`: the value the agent asked for, sealed to the key-vault;
    /// nobody on the way (ingress, Kafka, the agent, the dispatcher) can read it.
    public func secureForm(_ form: SecureFormRequest, value: String, vault: PublishedEncryptionKey, now: Date = Date()) throws -> SignedRequest {
        guard let recipient = vault.recipient else { throw DeviceRequestError.malformedKey }
        let part = try SealedPart.seal(ContractCoding.encode(SecureValuePayload(formId: form.formId, kind: form.kind, value: value, request: form)),
                                       label: PartLabel.secureValue, to: [recipient])
        return try sign(SecureFormSubmission(deviceId: deviceId, timestamp: DeviceRequestSignature.milliseconds(now),
                                             nonce: DeviceRequestSignature.newNonce(), value: Data(part.bytes).base64EncodedString()),
                        path: "/v1/secure-forms/\(form.formId)")
    }
}
