import Crypto
import Foundation

/// A device's keys: Ed25519 to sign its requests, X25519 to open what is sealed to it.
/// Generated and kept on the device; only the public halves leave it (at enrollment).
public struct DeviceIdentity: Sendable, CustomStringConvertible {
    /// The device id as the app knows it (e.g. an installation id). Sent only to ingress,
    /// which replaces it with a keyed pseudonym at once.
    public let deviceId: String
    public let signingKey: Curve25519.Signing.PrivateKey
    public let encryptionKey: Curve25519.KeyAgreement.PrivateKey

    public init(deviceId: String, signingKey: Curve25519.Signing.PrivateKey = .init(),
                encryptionKey: Curve25519.KeyAgreement.PrivateKey = .init()) {
        self.deviceId = deviceId
        self.signingKey = signingKey
        self.encryptionKey = encryptionKey
    }

    /// The stored form: `{"deviceId", "signingKey", "encryptionKey"}` with base64 raw keys.
    public struct Stored: Codable, Sendable {
        public var deviceId: String
        public var signingKey: String
        public var encryptionKey: String
    }

    public var stored: Stored {
        Stored(deviceId: deviceId, signingKey: signingKey.rawRepresentation.base64EncodedString(),
               encryptionKey: encryptionKey.rawRepresentation.base64EncodedString())
    }

    public init(stored: Stored) throws {
        guard let signing = Data(base64Encoded: stored.signingKey), let encryption = Data(base64Encoded: stored.encryptionKey)
        else { throw DeviceRequestError.malformedKey }
        self.init(deviceId: stored.deviceId, signingKey: try .init(rawRepresentation: signing),
                  encryptionKey: try .init(rawRepresentation: encryption))
    }

    /// Signs a request body for `method path` (see `DeviceRequestSignature`).
    public func sign<Body: Encodable>(_ body: Body, method: String = "POST", path: String) throws -> SignedRequest {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let bytes = Array(try encoder.encode(body))
        let signature = try signingKey.signature(for: DeviceRequestSignature.signedBytes(method: method, path: path, body: bytes))
        return SignedRequest(method: method, path: path, body: bytes, signature: Data(signature).base64EncodedString())
    }

    /// A signed inquiry for `userId` (`POST /v1/inquiries`), with a fresh timestamp and nonce.
    public func inquiry(userId: String, channel: String, appVersion: String, appData: [String: String] = [:],
                        now: Date = Date()) throws -> SignedRequest {
        try sign(InquiryRequest(deviceId: deviceId, userId: userId, channel: channel, appVersion: appVersion,
                                appData: appData, timestamp: DeviceRequestSignature.milliseconds(now),
                                nonce: DeviceRequestSignature.newNonce()), path: "/v1/inquiries")
    }

    /// The enrollment request binding this device's public keys (`POST /v1/devices`),
    /// signed with the new signing key as proof of possession.
    public func enrollment(now: Date = Date()) throws -> SignedRequest {
        try sign(DeviceEnrollment(deviceId: deviceId, signingKey: signingKey.publicKey.rawRepresentation.base64EncodedString(),
                                  encryptionKey: encryptionKey.publicKey.rawRepresentation.base64EncodedString(),
                                  timestamp: DeviceRequestSignature.milliseconds(now), nonce: DeviceRequestSignature.newNonce()),
                 path: "/v1/devices")
    }

    public var description: String { "DeviceIdentity(redacted)" }
}

/// A request ready to send: the exact body bytes and the `Veil-Signature` header value.
public struct SignedRequest: Sendable {
    public let method: String
    public let path: String
    public let body: [UInt8]
    /// Base64 Ed25519 signature over `DeviceRequestSignature.signedBytes`.
    public let signature: String
}

/// How device requests are signed: Ed25519 over `"<METHOD> <path>\n"` followed by the
/// exact body bytes, sent base64 in the `Veil-Signature` header. Binding method and
/// path means a signed body cannot be replayed against another endpoint; the body's
/// `timestamp` (milliseconds) and `nonce` (16+ random bytes, base64) bound freshness
/// and make each request single-use.
public enum DeviceRequestSignature {
    public static let header = "Veil-Signature"

    public static func signedBytes(method: String, path: String, body: [UInt8]) -> [UInt8] {
        Array("\(method) \(path)\n".utf8) + body
    }

    public static func isValid(signature: String, publicKey: Curve25519.Signing.PublicKey,
                               method: String, path: String, body: [UInt8]) -> Bool {
        guard let raw = Data(base64Encoded: signature), raw.count == 64 else { return false }
        return publicKey.isValidSignature(raw, for: signedBytes(method: method, path: path, body: body))
    }

    public static func newNonce() -> String {
        var generator = SystemRandomNumberGenerator()
        return Data((0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) }).base64EncodedString()
    }

    public static func milliseconds(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded(.down)) }

    /// Whether a request's `timestamp` is within `skew` of `now` (what a server checks).
    public static func isFresh(_ timestamp: Int64, skew: Duration, now: Date = Date()) -> Bool {
        abs(milliseconds(now) - timestamp) <= skew.components.seconds * 1000
    }
}

public enum DeviceRequestError: Error, Sendable {
    case malformedKey
}

/// The body of `POST /v1/inquiries`.
public struct InquiryRequest: Codable, Sendable, Equatable {
    public var deviceId: String
    /// E.164 phone number or customer number; ingress turns it into `P` and drops it.
    public var userId: String
    public var channel: String
    public var appVersion: String
    public var appData: [String: String]?
    /// Milliseconds since 1970.
    public var timestamp: Int64
    public var nonce: String

    public init(deviceId: String, userId: String, channel: String, appVersion: String, appData: [String: String]?,
                timestamp: Int64, nonce: String) {
        self.deviceId = deviceId
        self.userId = userId
        self.channel = channel
        self.appVersion = appVersion
        self.appData = appData
        self.timestamp = timestamp
        self.nonce = nonce
    }
}

/// The body of `POST /v1/devices`.
public struct DeviceEnrollment: Codable, Sendable, Equatable {
    public var deviceId: String
    /// Base64 raw Ed25519 public key.
    public var signingKey: String
    /// Base64 raw X25519 public key.
    public var encryptionKey: String
    public var timestamp: Int64
    public var nonce: String
    /// With `enrollmentCode`: the customer account the device is bound to.
    public var accountId: String?
    /// The one-time code the customer received out of band for `accountId`.
    public var enrollmentCode: String?
}

/// `202` answer of `POST /v1/inquiries` and answer of `GET /v1/inquiries/{id}`.
public struct InquiryStatus: Codable, Sendable, Equatable {
    public var id: String
    /// `accepted`: published to Veil's pipeline.
    public var status: String
    public var acceptedAt: Date?

    public init(id: String, status: String, acceptedAt: Date?) {
        self.id = id
        self.status = status
        self.acceptedAt = acceptedAt
    }
}
