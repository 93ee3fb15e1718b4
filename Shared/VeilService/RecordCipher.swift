import Foundation
import VeilContracts
import VeilCore

/// How filed customer records are encrypted: the record's JSON under a fresh random
/// data key (ChaCha20-Poly1305), the data key wrapped by the record key — a
/// key-encryption key held by the key-vault and granted to the merger. The matcher
/// stores and moves records but holds no key that opens them.
public enum RecordCipher {
    static let recordAAD = Array("veil.record.v1".utf8)
    static let dataKeyAAD = Array("veil.record-data-key.v1".utf8)

    public static func seal(_ fields: [String: String], with recordKey: VersionedKey) throws -> EncryptedRecord {
        try seal(json: ContractCoding.encode(fields), with: recordKey)
    }

    /// Seals a record's JSON as `ContractCoding` encoded it.
    public static func seal(json: [UInt8], with recordKey: VersionedKey) throws -> EncryptedRecord {
        var random = RandomBytes(capacity: 56)
        return try seal(json: json, with: recordKey, random: &random)
    }

    /// `seal(json:with:)` drawing the data key and both nonces (56 bytes) from `random`.
    public static func seal(json: [UInt8], with recordKey: VersionedKey, random: inout RandomBytes) throws -> EncryptedRecord {
        let dataKey = VersionedKey(version: 0, raw: random.take(32))!
        let ciphertext = try dataKey.seal(json, aad: recordAAD, nonce: random.take(12))
        let wrapped = try recordKey.seal(dataKey.rawBytes, aad: dataKeyAAD, nonce: random.take(12))
        return EncryptedRecord(recordKeyVersion: recordKey.version, wrappedDataKey: Data(wrapped), ciphertext: Data(ciphertext))
    }

    public static func open(_ record: EncryptedRecord, with ring: KeyRing) throws -> [String: String] {
        guard let recordKey = ring[record.recordKeyVersion] else { throw RecordCipherError.unknownKeyVersion }
        guard let dataKey = VersionedKey(version: 0, raw: try recordKey.open(record.wrappedDataKey, aad: dataKeyAAD)) else {
            throw RecordCipherError.malformed
        }
        return try ContractCoding.decode([String: String].self, from: try dataKey.open(record.ciphertext, aad: recordAAD))
    }
}

public enum RecordCipherError: Error, Sendable {
    case unknownKeyVersion
    case malformed
}
