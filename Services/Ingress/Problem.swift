import Foundation
import Hummingbird
import NIOCore

/// An `application/problem+json` answer (RFC 9457) with a stable `code` clients can switch on.
/// Nothing is published or stored for a request answered with a problem (except a
/// `unavailable` one, whose nonce stays used: the device retries with a new one).
struct Problem: Error, Sendable, Equatable {
    let status: HTTPResponse.Status
    let code: String
    let detail: String

    static func malformedJSON(_ detail: String = "the body is not a JSON object of the expected shape") -> Problem {
        Problem(status: .badRequest, code: "malformed_json", detail: detail)
    }
    static func missingField(_ field: String) -> Problem {
        Problem(status: .badRequest, code: "missing_field", detail: "required field '\(field)' is missing")
    }
    static func invalidField(_ field: String, _ why: String) -> Problem {
        Problem(status: .badRequest, code: "invalid_field", detail: "field '\(field)' \(why)")
    }
    static let badSignature = Problem(status: .unauthorized, code: "bad_signature",
                                      detail: "the Veil-Signature header is missing or does not verify with the device's key")
    static let unknownDevice = Problem(status: .unauthorized, code: "unknown_device",
                                       detail: "no enrolled device has this id (enroll it with POST /v1/devices)")
    static let staleRequest = Problem(status: .unauthorized, code: "stale_request",
                                      detail: "the request's timestamp is outside the allowed clock skew")
    static let replayedNonce = Problem(status: .conflict, code: "replayed_nonce", detail: "this nonce was already used")
    static let bodyTooLarge = Problem(status: .contentTooLarge, code: "body_too_large", detail: "the request body is too large")
    static let unsupportedMediaType = Problem(status: .unsupportedMediaType, code: "unsupported_media_type",
                                              detail: "send Content-Type: application/json")
    static let enrollmentRefused = Problem(status: .forbidden, code: "enrollment_refused",
                                           detail: "the Veil-Enrollment-Token header is missing or wrong")
    static let alreadyEnrolled = Problem(status: .conflict, code: "already_enrolled",
                                         detail: "this device id is enrolled with other keys")
    static let revokedDevice = Problem(status: .forbidden, code: "revoked_device", detail: "this device was revoked; enroll it again")
    static let deviceNotBound = Problem(status: .forbidden, code: "device_not_bound",
                                        detail: "service requests need a device enrolled to an account with a one-time code")
    static let invalidEnrollmentCode = Problem(status: .forbidden, code: "invalid_enrollment_code",
                                               detail: "the one-time code is wrong, used, expired or locked after too many attempts")
    static let adminRefused = Problem(status: .unauthorized, code: "admin_refused",
                                      detail: "send Authorization: Bearer <VEIL_INGRESS_ADMIN_TOKEN>")
    static let notFound = Problem(status: .notFound, code: "not_found", detail: "no such inquiry")
    static let unavailable = Problem(status: .serviceUnavailable, code: "unavailable",
                                     detail: "the inquiry could not be handed to Veil's pipeline; retry with a new nonce")

    var response: Response {
        let body: [String: Any] = [
            "type": "https://veil.example/problems/\(code)", "title": code.replacingOccurrences(of: "_", with: " "),
            "status": Int(status.code), "code": code, "detail": detail,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
        return Response(status: status, headers: [.contentType: "application/problem+json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
