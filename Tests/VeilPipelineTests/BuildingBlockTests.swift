import Crypto
import Foundation
import Testing
import VeilClient
import VeilContracts
import VeilCore
import VeilService

@Suite("Building blocks of the inquiry flow")
struct BuildingBlockTests {
    @Test("the CSV reader handles quotes, doubled quotes, commas and line breaks in fields, CRLF and a BOM")
    func csv() {
        let text = "\u{FEFF}id,name,note\r\n1,\"Müller, Anna\",\"said \"\"hi\"\"\"\r\n2,Ben,\"two\nlines\"\n3,,\n"
        let rows = Array(CSVReader(Array(text.utf8)))
        #expect(rows == [["id", "name", "note"], ["1", "Müller, Anna", "said \"hi\""], ["2", "Ben", "two\nlines"], ["3", "", ""]])
        #expect(CSVReader.escape("a,b") == "\"a,b\"" && CSVReader.escape("plain") == "plain")
    }

    @Test("the default export policy drops names, phone numbers, e-mail, addresses and birth data, and never exports the id")
    func defaultPolicy() {
        let exported = ExportPolicy().exportedColumns(of: CustomerSample.header)
        #expect(exported == ["city", "tier", "plan", "household_size", "customer_since", "preferred_channel", "lifetime_value_eur", "region"])
        #expect(ExportPolicy(idColumn: "customer_id", allow: ["tier", "customer_id"]).exportedColumns(of: CustomerSample.header) == ["tier"])
    }

    @Test("a record opens only with its record key; a flipped byte or another key fails")
    func recordCipher() throws {
        let key = VersionedKey.generate(version: 3)
        let sealed = try RecordCipher.seal(["tier": "gold"], with: key)
        #expect(sealed.recordKeyVersion == 3)
        #expect(try RecordCipher.open(sealed, with: KeyRing([key])) == ["tier": "gold"])
        #expect(throws: (any Error).self) { try RecordCipher.open(sealed, with: KeyRing([VersionedKey.generate(version: 3)])) }
        #expect(throws: RecordCipherError.self) { try RecordCipher.open(sealed, with: KeyRing([VersionedKey.generate(version: 2)])) }
        for index in [0, sealed.ciphertext.count / 2, sealed.ciphertext.count - 1] {
            var tampered = sealed
            tampered.ciphertext[index] ^= 0x01
            #expect(throws: (any Error).self) { try RecordCipher.open(tampered, with: KeyRing([key])) }
        }
    }

    @Test("keyed hashes depend on the key and its version's material; keys never print their material")
    func versionedKeys() {
        let a = VersionedKey.generate(version: 1), b = VersionedKey.generate(version: 1)
        #expect(a.hash(Array("+4915112345678".utf8)) != b.hash(Array("+4915112345678".utf8)))
        #expect(a.hash(Array("x".utf8)).count == 32)
        #expect("\(a)" == "VersionedKey(v1, redacted)" && !String(reflecting: a).contains("key:"))
        let ring = KeyRing([a, VersionedKey.generate(version: 2)], current: 1)
        #expect(ring.current?.version == 1 && ring[2] != nil)
    }

    @Test("a device signature binds method, path and body")
    func deviceSignature() throws {
        let device = DeviceIdentity(deviceId: "d1")
        let request = try device.inquiry(userId: "+491", channel: "app", appVersion: "1")
        let key = device.signingKey.publicKey
        #expect(DeviceRequestSignature.isValid(signature: request.signature, publicKey: key, method: "POST", path: "/v1/inquiries", body: request.body))
        #expect(!DeviceRequestSignature.isValid(signature: request.signature, publicKey: key, method: "POST", path: "/v1/devices", body: request.body))
        var body = request.body
        body[body.count / 2] ^= 0x01
        #expect(!DeviceRequestSignature.isValid(signature: request.signature, publicKey: key, method: "POST", path: "/v1/inquiries", body: body))
        #expect(!DeviceRequestSignature.isValid(signature: "not base64", publicKey: key, method: "POST", path: "/v1/inquiries", body: request.body))
        // Stored and reloaded, the identity signs the same way.
        let reloaded = try DeviceIdentity(stored: device.stored)
        #expect(reloaded.signingKey.publicKey.rawRepresentation == key.rawRepresentation)
    }

    @Test("the synthetic customer file is deterministic for a seed and has unique ids")
    func sample() {
        #expect(CustomerSample.csv(count: 50, seed: 1) == CustomerSample.csv(count: 50, seed: 1))
        let ids = Array(CSVReader(Array(CustomerSample.csv(count: 500).utf8))).dropFirst().map { $0[0] }
        #expect(Set(ids).count == 500)
    }
}
