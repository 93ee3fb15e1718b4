import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresNIO
import VeilClient
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilService
import VeilStore

/// Accounts, one-time enrollment codes, revocation and service requests.
///
/// A device enrolled with a one-time code is bound to a customer account (kept as
/// `accountRef = HMAC(HKDF(kP.id, "veil.account-ref.v1"), accountId)`); from then on its
/// signature authenticates it, and ingress attaches a signed `AuthAssertion` to each
/// service request so nobody downstream asks again. The request itself is sealed on
/// the device to the dispatcher: ingress forwards it unopened.
extension RequestHandler {
    static let maxCodeAttempts = 5
    static let authorization = HTTPField.Name("Authorization")!

    func accountRef(_ accountId: String) throws -> [UInt8] {
        guard let key = settings.pseudonymID.current else { throw Problem.unavailable }
        return settings.subkeys.hasher(key, purpose: "veil.account-ref.v1").hash(Array(accountId.utf8))
    }

    func codeHash(_ code: String, account: [UInt8]) throws -> [UInt8] {
        guard let key = settings.pseudonymID.current else { throw Problem.unavailable }
        return settings.subkeys.hasher(key, purpose: "veil.enrollment-code.v1").hash(account + Array(code.utf8))
    }

    func requireAdmin(_ request: Request) throws {
        guard let token = settings.adminToken, let given = request.headers[Self.authorization],
              ConstantTime.equal(given, "Bearer " + token) else { throw Problem.adminRefused }
    }

    /// `POST /admin/enrollment-codes {accountId}` → `{code, expiresAt}`: a single-use
    /// eight-digit code for the customer, to deliver out of band.
    func issueEnrollmentCode(_ request: Request) async throws -> Response {
        try requireAdmin(request)
        let (_, body) = try await decode(EnrollmentCodeRequest.self, from: request)
        try validate(id: body.accountId, field: "accountId")
        var generator = SystemRandomNumberGenerator()
        let code = String(format: "%08d", Int.random(in: 0..<100_000_000, using: &generator))
        let account = try accountRef(body.accountId)
        let hash = ByteBuffer(bytes: try codeHash(code, account: account)), ref = ByteBuffer(bytes: account)
        let rows = try await context.database.client.query("""
            INSERT INTO \(unescaped: context.database.table("enrollment_codes")) (code_hash, account_ref, expires_at)
            VALUES (\(hash), \(ref), now() + make_interval(secs => \(Double(settings.enrollmentCodeLifetime.components.seconds))))
            RETURNING expires_at
            """, logger: context.logger).collect()
        let expires = try rows.first?.decode(Date.self) ?? Date()
        context.logger.info("enrollment code issued")
        return try json(.created, EnrollmentCode(code: code, expiresAt: expires))
    }

    /// Consumes a valid code for the account, or counts a failed attempt against the
    /// account's live codes (after `maxCodeAttempts` they are dead).
    func redeemEnrollmentCode(_ code: String, accountId: String) async throws -> ByteBuffer {
        guard code.count == 8, code.allSatisfy(\.isASCII), code.allSatisfy(\.isNumber) else {
            throw Problem.invalidField("enrollmentCode", "must be the 8-digit code")
        }
        let account = try accountRef(accountId)
        let hash = ByteBuffer(bytes: try codeHash(code, account: account)), ref = ByteBuffer(bytes: account)
        let codes = context.database.table("enrollment_codes")
        let used = try await context.database.client.query("""
            UPDATE \(unescaped: codes) SET used_at = now()
            WHERE code_hash = \(hash) AND account_ref = \(ref) AND used_at IS NULL AND expires_at > now()
              AND attempts < \(Self.maxCodeAttempts)
            RETURNING account_ref
            """, logger: context.logger).collect()
        guard used.isEmpty else { return ref }
        try await context.database.client.query("""
            UPDATE \(unescaped: codes) SET attempts = attempts + 1 WHERE account_ref = \(ref) AND used_at IS NULL
            """, logger: context.logger)
        throw Problem.invalidEnrollmentCode
    }

    /// `POST /admin/devices/revoke {deviceId}`: its requests are refused from now on.
    func revokeDevice(_ request: Request) async throws -> Response {
        try requireAdmin(request)
        struct Revocation: Decodable { var deviceId: String }
        let (_, body) = try await decode(Revocation.self, from: request)
        try validate(id: body.deviceId, field: "deviceId")
        guard let deviceKey = settings.pseudonymDevice.current else { throw Problem.unavailable }
        let ref = ByteBuffer(bytes: deviceKey.hash(Array(body.deviceId.utf8)))
        let rows = try await context.database.client.query("""
            UPDATE \(unescaped: context.database.table("devices")) SET revoked_at = coalesce(revoked_at, now())
            WHERE device_ref = \(ref) RETURNING revoked_at
            """, logger: context.logger).collect()
        guard !rows.isEmpty else { throw Problem.unknownDevice }
        context.logger.notice("device revoked")
        return Response(status: .ok, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(string: #"{"status":"revoked"}"#)))
    }

    /// `GET /v1/keys/{service}`: a service's current public encryption key from the key
    /// directory, for devices to seal to: the dispatcher's (service requests) and the
    /// key-vault's (a till's TID, a secure form's value).
    func publishedKey(_ service: String) throws -> Response {
        guard [ServiceName.dispatcher.rawValue, ServiceName.keyVault.rawValue].contains(service), let key = context.codec.directory.encryptionKey(of: service) else {
            throw Problem(status: .notFound, code: "not_found", detail: "no published key for '\(service)'")
        }
        return try json(.ok, PublishedEncryptionKey(keyId: key.reference.keyID, version: key.reference.version,
                                                    publicKey: key.key.rawRepresentation.base64EncodedString()))
    }

    /// `POST /v1/service-requests`: authenticates the device, attaches a signed assertion,
    /// forwards the sealed request to the dispatcher, answers `202` once Kafka acknowledged.
    func submitServiceRequest(_ request: Request) async throws -> Response {
        let (body, submission) = try await decode(ServiceRequestSubmission.self, from: request)
        try validate(id: submission.deviceId, field: "deviceId")
        let nonce = try nonce(submission.nonce)
        let part = try sealedPart(submission.request, field: "request", label: PartLabel.serviceRequest, to: .dispatcher)
        guard let deviceKey = settings.pseudonymDevice.current else { throw Problem.unavailable }
        let deviceRef = deviceKey.hash(Array(submission.deviceId.utf8))
        let device = try await enrolledDevice(deviceRef)
        try verify(request, body: body, with: device.signingKey, path: "/v1/service-requests", method: "POST")
        try checkFreshness(submission.timestamp)
        guard let accountRef = device.accountRef else { throw Problem.deviceNotBound }

        let id = MessageID.generate()
        let acceptedAt = try await acceptOnce(id, table: ServiceRequestStatusTable.self, deviceRef: deviceRef, nonce: nonce)

        let signed = try signedAssertion(subject: id.description, device: device, deviceRef: deviceRef, accountRef: accountRef,
                                         at: acceptedAt)
        let draft = EnvelopeDraft(id: id, type: MessageType.serviceRequestSubmitted, parts: [
            .forwarded(part),
            .sealed(PartLabel.authentication, payload: ContractCoding.encode(signed), to: [ServiceName.dispatcher.rawValue]),
        ])
        try await publish(draft, topic: Topic.serviceRequests, key: Array(id.description.utf8), orForget: "service_requests")
        let receipt = ServiceRequestReceipt(id: id.description, status: "accepted", acceptedAt: acceptedAt)
        var response = try json(.accepted, receipt)
        response.headers[.location] = "/v1/service-requests/\(id)"
        return response
    }

    func json(_ status: HTTPResponse.Status, _ value: some Encodable) throws -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: ContractCoding.encode(value))))
    }
}
