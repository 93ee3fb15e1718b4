import Crypto
import Foundation

/// A key directory as published: its canonical JSON document and the
/// directory key's Ed25519 signature over it.
///
/// Serialized as JSON `{"document": "<canonical JSON text>", "keyVersion": n,
/// "signature": "<base64>"}`; the signature covers the UTF-8 bytes of
/// `veil.keys.directory.v1\n` followed by the document.
public struct SignedKeyDirectory: Sendable, Hashable, Codable {
    /// The canonical JSON text of the `KeyDirectory`.
    public let document: String
    /// Which directory key version signed it.
    public let keyVersion: UInt32
    /// Base64 of the 64-byte Ed25519 signature.
    public let signature: String

    static let context = Array("veil.keys.directory.v1\n".utf8)

    /// Signs `directory` with the directory key.
    public static func sign(_ directory: KeyDirectory, with key: Curve25519.Signing.PrivateKey,
                            keyVersion: UInt32 = 1) throws(KeyError) -> SignedKeyDirectory {
        let document = directory.canonicalJSON()
        guard let signature = try? key.signature(for: context + document) else { throw .directoryMalformed }
        return SignedKeyDirectory(document: String(decoding: document, as: UTF8.self), keyVersion: keyVersion,
                                  signature: signature.base64EncodedString())
    }

    init(document: String, keyVersion: UInt32, signature: String) {
        self.document = document
        self.keyVersion = keyVersion
        self.signature = signature
    }

    /// Checks the signature with the trusted directory key of `keyVersion`,
    /// then decodes the document. A bad signature or an untrusted key version is refused.
    public func verified(trusting trusted: [UInt32: Curve25519.Signing.PublicKey]) throws(KeyError) -> KeyDirectory {
        guard let key = trusted[keyVersion] else { throw .directoryUntrustedKey }
        guard let signatureBytes = Data(base64Encoded: signature),
              key.isValidSignature(signatureBytes, for: Self.context + Array(document.utf8))
        else { throw .directoryBadSignature }
        return try KeyDirectory(json: Array(document.utf8))
    }

    /// The JSON form stored in files and on `veil.keys.directory.v1`.
    public func serialized() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? Array(encoder.encode(self))) ?? []
    }

    /// Parses the JSON form (without verifying: call `verified(trusting:)`).
    public init(serialized: [UInt8]) throws(KeyError) {
        do {
            self = try JSONDecoder().decode(SignedKeyDirectory.self, from: Data(serialized))
        } catch {
            throw .directoryMalformed
        }
    }
}
