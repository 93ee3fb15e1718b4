import Foundation

// MARK: Channel enhancement (DESIGN.md section 6, seed 001)
//
// A customer who reached the business by SMS or a phone call (known only by the number)
// gets, over SMS, a one-time link signed by the dispatcher. Opening it in the customer's
// app (an enrolled device) binds the app to the same service request and account: from
// then on the agent reaches the app over the sealed live channel (the device inbox), and
// the SMS channel stays usable.

/// What a channel link asserts, signed by the dispatcher.
public struct ChannelLinkClaims: Codable, Sendable, Equatable {
    public var linkId: String
    /// The service request the customer's SMS or call opened.
    public var requestId: String
    /// `HMAC(kPhone, number)`: the number the customer came from, keyed (the number is not in the link).
    public var phoneRef: Data
    public var expiresAtMs: Int64
    public var signerKeyId: String
    public var signerVersion: UInt32

    public init(linkId: String, requestId: String, phoneRef: Data, expiresAtMs: Int64, signerKeyId: String, signerVersion: UInt32) {
        self.linkId = linkId
        self.requestId = requestId
        self.phoneRef = phoneRef
        self.expiresAtMs = expiresAtMs
        self.signerKeyId = signerKeyId
        self.signerVersion = signerVersion
    }
}

/// The link's token: `base64url(claims JSON) "." base64url(Ed25519 signature over
/// "veil.channel-link.v1\n" + claims JSON)`, carried after `#` in the link so it never
/// reaches a web server's logs.
public enum ChannelLink {
    public static let context = Array("veil.channel-link.v1\n".utf8)

    public static func token(claims: [UInt8], signature: [UInt8]) -> String {
        base64url(claims) + "." + base64url(signature)
    }

    /// The claims, their exact bytes (what was signed) and the signature; nil if malformed.
    public static func parse(_ tokenOrLink: String) -> (claims: ChannelLinkClaims, bytes: [UInt8], signature: [UInt8])? {
        var token = Substring(tokenOrLink)
        if let hash = token.lastIndex(of: "#") { token = token[token.index(after: hash)...] }
        if let query = token.range(of: "t=") { token = token[query.upperBound...] }
        let pieces = token.split(separator: ".")
        guard token.utf8.count <= 2_048, pieces.count == 2, let bytes = unbase64url(pieces[0]), let signature = unbase64url(pieces[1]),
              let claims = try? ContractCoding.decode(ChannelLinkClaims.self, from: bytes) else { return nil }
        return (claims, bytes, signature)
    }

    static func base64url(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func unbase64url(_ text: Substring) -> [UInt8]? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        return Data(base64Encoded: base64).map(Array.init)
    }
}
