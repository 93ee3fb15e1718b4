import Crypto
import Foundation

extension SealedPart {
    /// RFC 9180 suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
    static let ciphersuite = HPKE.Ciphersuite(kem: .Curve25519_HKDF_SHA256, kdf: .HKDF_SHA256, aead: .chaChaPoly)
    /// HPKE `info`: separates Veil part keys from any other use of the same keys.
    static let hpkeInfo = Data("veil.envelope.v1/part-content-key".utf8)
    /// The content key is fresh for every part and used once, so a fixed nonce is safe.
    static let contentNonce = try! ChaChaPoly.Nonce(data: [UInt8](repeating: 0, count: 12))  // constant input, cannot fail

    /// Appends the part (with its 4-byte length prefix) to `writer`.
    ///
    /// One recipient: the payload is HPKE-sealed directly. Several: the
    /// payload is sealed once under a fresh content key and that key is
    /// HPKE-sealed to each recipient. The part header (format, label,
    /// recipients) is the AAD of every HPKE and ChaCha20-Poly1305 seal.
    static func seal<Payload: DataProtocol>(
        _ payload: Payload, label: String,
        to recipients: [(reference: KeyReference, key: Curve25519.KeyAgreement.PublicKey)],
        into writer: inout WireWriter
    ) throws(EnvelopeError) {
        let lengthPosition = writer.placeholderU32()
        let start = writer.count
        writer.u8(formatVersion)
        writer.token(label)
        writer.u8(UInt8(truncatingIfNeeded: recipients.count))
        for recipient in recipients {
            writer.token(recipient.reference.keyID)
            writer.u32(recipient.reference.version)
        }
        // A copy of the short header: a slice of `writer.buffer` would force a
        // copy-on-write of the whole buffer on the next append.
        let aad = Array(writer.buffer[start..<writer.count])
        do {
            if recipients.count == 1 {
                var sender = try HPKE.Sender(recipientKey: recipients[0].key, ciphersuite: ciphersuite, info: hpkeInfo)
                let ciphertext = try sender.seal(payload, authenticating: aad)
                writer.append(sender.encapsulatedKey)
                writer.append(ciphertext)
            } else {
                let contentKey = SymmetricKey(size: .bits256)
                try contentKey.withUnsafeBytes { keyBytes in
                    for recipient in recipients {
                        var sender = try HPKE.Sender(recipientKey: recipient.key, ciphersuite: ciphersuite, info: hpkeInfo)
                        let wrapped = try sender.seal(keyBytes, authenticating: aad)
                        writer.append(sender.encapsulatedKey)
                        writer.append(wrapped)
                    }
                }
                let box = try ChaChaPoly.seal(payload, using: contentKey, nonce: contentNonce, authenticating: aad)
                writer.append(box.ciphertext)
                writer.append(box.tag)
            }
        } catch {
            throw .sealFailed
        }
        writer.patchU32(at: lengthPosition, UInt32(truncatingIfNeeded: writer.count - start))
    }

    /// Opens the part as recipient `index` with `privateKey`.
    func open(asRecipient index: Int, with privateKey: Curve25519.KeyAgreement.PrivateKey) throws(EnvelopeError) -> [UInt8] {
        guard recipients.indices.contains(index) else { throw .notARecipient }
        let buffer = bytes  // indexed with the parent buffer's indices
        let ranges = wrappedKeyRanges(of: index)
        let aad = buffer[headerRange]
        do {
            var recipient = try HPKE.Recipient(privateKey: privateKey, ciphersuite: Self.ciphersuite, info: Self.hpkeInfo,
                                               encapsulatedKey: Data(buffer[ranges.encapsulated]))
            if recipients.count == 1 {
                return Array(try recipient.open(buffer[ciphertextRange], authenticating: aad))
            }
            let contentKey = try recipient.open(buffer[ranges.wrapped], authenticating: aad)
            guard contentKey.count == 32 else { throw EnvelopeError.openFailed }
            let tagStart = ciphertextRange.upperBound - Self.tagBytes
            let box = try ChaChaPoly.SealedBox(nonce: Self.contentNonce,
                                               ciphertext: buffer[ciphertextRange.lowerBound..<tagStart],
                                               tag: buffer[tagStart..<ciphertextRange.upperBound])
            let plaintext = try ChaChaPoly.open(box, using: SymmetricKey(data: contentKey), authenticating: aad)
            return Array(plaintext)
        } catch {
            throw .openFailed
        }
    }
}
