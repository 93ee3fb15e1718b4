import Foundation
import Hummingbird
import NIOCore
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilService

/// `POST /v1/secure-forms/{id}`: the customer's answer to an agent's form request (a PIN,
/// a card number, a national id), sealed on the device to the key-vault. Ingress cannot
/// read it: it authenticates the device, attaches its signed assertion (about this form,
/// naming the device's account) and forwards the sealed value to the vault.
extension RequestHandler {
    func submitSecureForm(_ request: Request, formId: String) async throws -> Response {
        guard let form = UUID(uuidString: formId) else { throw Problem.formNotFound }
        let (body, submission) = try await decode(SecureFormSubmission.self, from: request)
        try validate(id: submission.deviceId, field: "deviceId")
        let nonce = try nonce(submission.nonce)
        let part = try sealedPart(submission.value, field: "value", label: PartLabel.secureValue, to: .keyVault)
        guard let deviceKey = settings.pseudonymDevice.current else { throw Problem.unavailable }
        let deviceRef = deviceKey.hash(Array(submission.deviceId.utf8))
        let device = try await enrolledDevice(deviceRef)
        let path = "/v1/secure-forms/\(formId)"
        try verify(request, body: body, with: device.signingKey, path: path, method: "POST")
        try checkFreshness(submission.timestamp)
        guard let accountRef = device.accountRef else { throw Problem.deviceNotBound }
        try await useNonce(nonce, deviceRef: deviceRef)

        let formID = form.uuidString.lowercased()
        let signed = try signedAssertion(subject: formID, device: device, deviceRef: deviceRef, accountRef: accountRef, at: Date())
        let id = MessageID.generate()
        let draft = EnvelopeDraft(id: id, type: MessageType.secureFormSubmitted, parts: [
            .forwarded(part),
            .sealed(PartLabel.authentication, payload: ContractCoding.encode(signed), to: [ServiceName.keyVault.rawValue]),
        ])
        try await publish(draft, topic: Topic.secureFormsSubmitted, key: Array(formID.utf8))
        context.logger.info("secure form forwarded", metadata: ["message.id": "\(id)", "form.id": "\(formID)"])
        return try json(.accepted, ["formId": formID, "status": "submitted"])
    }
}
