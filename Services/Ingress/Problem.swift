import Foundation
import Hummingbird
import VeilService

/// Ingress's own problem codes (the shared ones are in `VeilService.Problem`). Nothing is
/// published or stored for a request answered with a problem (except an `unavailable`
/// one, whose nonce stays used: the device retries with a new one).
extension Problem {
    static let unknownDevice = Problem(status: .unauthorized, code: "unknown_device",
                                       detail: "no enrolled device has this id (enroll it with POST /v1/devices)")
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
    static let vaultTimeout = Problem(status: .gatewayTimeout, code: "pos_vault_timeout",
                                      detail: "the key-vault did not answer the household lookup in time; retry with a new nonce")
    static let householdNotFound = Problem(status: .notFound, code: "pos_household_not_found",
                                           detail: "no household is filed for this customer")
    static let lookupTokenRefused = Problem(status: .forbidden, code: "pos_lookup_token_refused",
                                            detail: "the lookupToken does not match this terminal, household and de-identified TID, or it expired")
    static let formNotFound = Problem(status: .notFound, code: "not_found", detail: "no such secure form")
}
