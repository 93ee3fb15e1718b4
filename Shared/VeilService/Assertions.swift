import Foundation
import VeilContracts
import VeilEnvelope

/// Ingress's signed authentication assertion (`AuthAssertion`), checked wherever it
/// travels: signed by an active ingress signing key of the key directory, about the
/// request `subject`. A transfer, a secure form or a later stage trusts it without
/// asking the device again.
public enum AssertionCheck {
    public static func verified(_ envelope: VerifiedEnvelope, subject: String, directory: KeyDirectoryStore,
                                errorCode: String) throws -> (signed: SignedAssertion, claims: AuthAssertion) {
        guard let bytes = envelope.payload(PartLabel.authentication),
              let signed = try? ContractCoding.decode(SignedAssertion.self, from: bytes),
              let signer = directory.activeSigningKey(KeyReference(keyID: signed.signerKeyId, version: signed.signerVersion)),
              signer.owner == ServiceName.ingress.rawValue,
              signer.key.isValidSignature(signed.signature, for: SignedAssertion.context + Array(signed.assertion)),
              let claims = try? ContractCoding.decode(AuthAssertion.self, from: Array(signed.assertion)),
              claims.requestId == subject, claims.deviceEncryptionKey.count == 32 else {
            throw StageError.permanent(errorCode, "the authentication assertion is missing, forged or for another request")
        }
        return (signed, claims)
    }
}
