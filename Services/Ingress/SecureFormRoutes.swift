import Foundation
import Hummingbird
import NIOCore
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilService
import VeilStore

/// `POST /v1/secure-forms/{id}`: the customer's answer to an agent's form request (a PIN,
/// a card number, a national id), sealed on the device to the key-vault. Ingress cannot
/// read it: it authenticates the device, attaches its signed assertion (about this form,
/// naming the device's account) and forwards the sealed value to the vault.
extension RequestHandler {
    func submitSecureForm(_ request: Request, formId: String) async throws -> Response {
        guard let form = UUID(uuidString: formId) else { throw Problem.formNotFound }
        let (body, submission) = try await decode(SecureFormSubmission.self, from: request)
        try validate(id: submission.deviceId, field: "deviceId")
        guard let nonce = Data(base64Encoded: submission.nonce), (16...64).contains(nonce.count) else {
            throw Problem.invalidField("nonce", "must be base64 of 16 to 64 random bytes")
        }
        guard let vault = context.codec.directory.encryptionKey(of: ServiceName.keyVault.rawValue) else { throw Problem.unavailable }
        guard let sealed = Data(base64Encoded: submission.value), let part = try? SealedPart(serialized: Array(sealed)),
              part.label == PartLabel.secureValue, part.recipients == [vault.reference] else {
            throw Problem.invalidField("value", "must be a part labelled secure-value sealed to the key-vault's current key")
        }
        guard let deviceKey = settings.pseudonymDevice.current else { throw Problem.unavailable }
        let deviceRef = deviceKey.hash(Array(submission.deviceId.utf8))
        let device = try await enrolledDevice(deviceRef)
        let path = "/v1/secure-forms/\(formId)"
        try verify(request, body: body, with: device.signingKey, path: path, method: "POST")
        try checkFreshness(submission.timestamp)
        guard let accountRef = device.accountRef else { throw Problem.deviceNotBound }
        try await useNonce(nonce, deviceRef: deviceRef)

        let formID = form.uuidString.lowercased()
        let assertion = AuthAssertion(requestId: formID, accountRef: Data(accountRef), deviceRef: Data(deviceRef),
                                      deviceEncryptionKey: Data(device.encryptionKey), method: "device-signature",
                                      enrolledAt: device.enrolledAt, authenticatedAt: Date())
        let assertionBytes = ContractCoding.encode(assertion)
        let (signature, signer) = try context.codec.identity.signStatement(SignedAssertion.context + assertionBytes)
        let signed = SignedAssertion(assertion: Data(assertionBytes), signature: Data(signature),
                                     signerKeyId: signer.keyID, signerVersion: signer.version)
        let id = MessageID.generate()
        let draft = EnvelopeDraft(id: id, type: MessageType.secureFormSubmitted, parts: [
            .forwarded(part),
            .sealed(PartLabel.authentication, payload: ContractCoding.encode(signed), to: [ServiceName.keyVault.rawValue]),
        ])
        do {
            _ = try await context.producer.send(try context.codec.message(draft, topic: Topic.secureFormsSubmitted.name,
                                                                          key: Array(formID.utf8)))
            context.metrics.messageOut(topic: Topic.secureFormsSubmitted.name)
        } catch {
            context.logger.error("secure form not published", metadata: ["message.id": "\(id)", "error": "\(safeDescription(error))"])
            throw Problem.unavailable
        }
        context.logger.info("secure form forwarded", metadata: ["message.id": "\(id)", "form.id": "\(formID)"])
        return try json(.accepted, ["formId": formID, "status": "submitted"])
    }
}
