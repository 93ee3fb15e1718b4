import Foundation
import Hummingbird
import NIOCore
import VeilStore

/// An `application/problem+json` answer (RFC 9457) with a stable `code` clients can
/// switch on, for every HTTP API a Veil service serves (ingress, technician-alerter).
public struct Problem: Error, Sendable, Equatable {
    public let status: HTTPResponse.Status
    public let code: String
    public let detail: String

    public init(status: HTTPResponse.Status, code: String, detail: String) {
        self.status = status
        self.code = code
        self.detail = detail
    }

    public static func malformedJSON(_ detail: String = "the body is not a JSON object of the expected shape") -> Problem {
        Problem(status: .badRequest, code: "malformed_json", detail: detail)
    }
    public static func missingField(_ field: String) -> Problem {
        Problem(status: .badRequest, code: "missing_field", detail: "required field '\(field)' is missing")
    }
    public static func invalidField(_ field: String, _ why: String) -> Problem {
        Problem(status: .badRequest, code: "invalid_field", detail: "field '\(field)' \(why)")
    }
    public static let badSignature = Problem(status: .unauthorized, code: "bad_signature",
                                             detail: "the Veil-Signature header is missing or does not verify with the device's key")
    public static let staleRequest = Problem(status: .unauthorized, code: "stale_request",
                                             detail: "the request's timestamp is outside the allowed clock skew")
    public static let replayedNonce = Problem(status: .conflict, code: "replayed_nonce", detail: "this nonce was already used")
    public static let bodyTooLarge = Problem(status: .contentTooLarge, code: "body_too_large", detail: "the request body is too large")
    public static let unsupportedMediaType = Problem(status: .unsupportedMediaType, code: "unsupported_media_type",
                                                     detail: "send Content-Type: application/json")
    public static let internalError = Problem(status: .internalServerError, code: "internal", detail: "internal error")

    public var response: Response {
        let body: [String: Any] = [
            "type": "https://veil.example/problems/\(code)", "title": code.replacingOccurrences(of: "_", with: " "),
            "status": Int(status.code), "code": code, "detail": detail,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
        return Response(status: status, headers: [.contentType: "application/problem+json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// Runs a route: a thrown `Problem` becomes its response (counted as `<prefix>.<code>`),
    /// anything else a logged `500 internal` that shows nothing of the error.
    public static func respond(_ context: ServiceContext, prefix: String, _ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let problem as Problem {
            context.metrics.error(code: "\(prefix).\(problem.code)")
            context.logger.info("request refused", metadata: ["problem": "\(problem.code)"])
            return problem.response
        } catch {
            context.metrics.error(code: "\(prefix).internal")
            context.logger.error("request failed", metadata: ["error": "\(safeDescription(error))"])
            return Problem.internalError.response
        }
    }

    /// Reads a JSON body of at most `maxBytes` and decodes it, mapping every failure to
    /// its problem (`unsupported_media_type`, `body_too_large`, `missing_field`,
    /// `invalid_field`, `malformed_json`). Returns the exact bytes (for signature checks) too.
    public static func decodeJSON<T: Decodable>(_ type: T.Type, from request: Request, maxBytes: Int) async throws -> ([UInt8], T) {
        if let contentType = request.headers[.contentType], !contentType.lowercased().hasPrefix("application/json") {
            throw Problem.unsupportedMediaType
        }
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: maxBytes)
        } catch {
            throw Problem.bodyTooLarge
        }
        let bytes = Array(buffer.readableBytesView)
        do {
            return (bytes, try JSONDecoder().decode(type, from: Data(bytes)))
        } catch DecodingError.keyNotFound(let key, _) {
            throw Problem.missingField(key.stringValue)
        } catch DecodingError.valueNotFound(_, let context) {
            throw Problem.missingField(context.codingPath.map(\.stringValue).joined(separator: "."))
        } catch DecodingError.typeMismatch(_, let context) {
            throw Problem.invalidField(context.codingPath.map(\.stringValue).joined(separator: "."), "has the wrong type")
        } catch {
            throw Problem.malformedJSON()
        }
    }
}
