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
        // A quote opens mid-field; a doubled quote ends a quoted field; a lone CR ends a row;
        // the last row needs no line end; an unterminated quote runs to the end of the file.
        let odd = "ab\"c,d\"e,\"x\"\"\",\"\"\rlast,\"\"\"\"\n\n\"open,\n\"\"q"
        #expect(Array(CSVReader(Array(odd.utf8))) == [["abc,de", "x\"", ""], ["last", "\""], [""], ["open,\n\"q"]])
        #expect(Array(CSVReader([])).isEmpty && Array(CSVReader(Array("a,b".utf8))) == [["a", "b"]])
    }

    @Test("the exporter reads rows straight into the bytes that UpstreamRecords and binaryEncoded give, with the same rows rejected for the same reasons")
    func exporterBatches() throws {
        let key = VersionedKey.generate(version: 4)
        /// The specification: every row as a `String` array, fields in a dictionary, ids
        /// trimmed by Foundation, `UpstreamBatch.binaryEncoded` per batch.
        func reference(_ csv: [UInt8], policy: ExportPolicy, batchSize: Int) -> (batches: [[UInt8]], read: Int, rejected: [String: Int]) {
            var reader = CSVReader(csv)
            let header = reader.next()!.map { $0.trimmingCharacters(in: .whitespaces) }
            let idIndex = header.firstIndex(of: policy.idColumn)!
            let columns = policy.exportedColumns(of: header)
            let indices = columns.compactMap { header.firstIndex(of: $0) }
            var batches: [[UInt8]] = [], batch: [UpstreamRecord] = [], read = 0, rejected: [String: Int] = [:]
            while let row = reader.next() {
                if row.count == 1, row[0].isEmpty { continue }
                read += 1
                guard row.count == header.count else { rejected["wrong number of columns", default: 0] += 1; continue }
                let id = row[idIndex].trimmingCharacters(in: .whitespaces)
                guard !id.isEmpty else { rejected["empty \(policy.idColumn)", default: 0] += 1; continue }
                guard id.utf8.count <= 128 else { rejected["\(policy.idColumn) longer than 128 bytes", default: 0] += 1; continue }
                var fields: [String: String] = [:]
                for (column, index) in zip(columns, indices) where !row[index].isEmpty { fields[column] = row[index] }
                batch.append(UpstreamRecord(pseudonym: Data(key.hash(Array(id.utf8))), keyVersion: key.version, fields: fields))
                if batch.count == batchSize { batches.append(UpstreamBatch(records: batch).binaryEncoded()); batch = [] }
            }
            if !batch.isEmpty { batches.append(UpstreamBatch(records: batch).binaryEncoded()) }
            return (batches, read, rejected)
        }
        func exported(_ csv: [UInt8], policy: ExportPolicy, batchSize: Int) throws -> (batches: [[UInt8]], read: Int, rejected: [String: Int]) {
            var rows = try UpstreamBatchReader(csv: csv, policy: policy, pseudonymKey: key)
            var batches: [[UInt8]] = []
            while let batch = rows.nextBatch(maxRecords: batchSize) {
                #expect(try UpstreamBatch.decode(batch.payload).records.count == batch.records)
                batches.append(batch.payload)
            }
            #expect(rows.fractionRead == 1)
            return (batches, rows.read, rows.rejected)
        }
        let odd = Array("\u{FEFF} customer_id ,tier,note,tier,name,Stadt,Ärger,leer\r\n".utf8)
            + Array("C1,gold,\"a, \"\"quoted\"\"\nnote\",ignored,Anna,Köln,x,\r\n".utf8)
            + Array("  C2\t,silver,,,Ben,Berlin,,\n\n".utf8)              // id trimmed; empty fields left out; a blank line
            + Array("\u{00A0}C3\u{2003},bronze,n,,C,Bonn,y,\n".utf8)     // Unicode spaces around the id
            + Array(" ,gold,n,,D,Ulm,z,\n".utf8)                          // an id of spaces only
            + Array("\(String(repeating: "9", count: 129)),gold,n,,E,Ulm,z,\n".utf8)
            + Array("\(String(repeating: "8", count: 128)),gold,n,,F,Ulm,z,\n".utf8)
            + Array("C4,too,few\n".utf8)
            + Array("C5,gold,bad ".utf8) + [0xFF, 0xC3] + Array(" bytes,,G,Ulm,z,\n".utf8)  // invalid UTF-8 in a value
            + Array("C6,gold,\"unterminated,,H,Ulm,z,".utf8)
        let sample = Array(CustomerSample.csv(count: 1_203).utf8)
        for (csv, policy) in [(sample, ExportPolicy()), (odd, ExportPolicy()), (odd, ExportPolicy(allow: ["note", "Ärger", "tier", "Stadt"])),
                              (sample, ExportPolicy(allow: ["tier", "city", "missing"]))] {
            for batchSize in [1, 7, 500] {
                let expected = reference(csv, policy: policy, batchSize: batchSize)
                let actual = try exported(csv, policy: policy, batchSize: batchSize)
                #expect(actual.read == expected.read && actual.rejected == expected.rejected)
                #expect(actual.batches.count == expected.batches.count)
                #expect(actual.batches == expected.batches, "policy \(policy), batches of \(batchSize)")
            }
        }
        #expect(try exported(odd, policy: ExportPolicy(), batchSize: 500).rejected
                == ["wrong number of columns": 2, "empty customer_id": 1, "customer_id longer than 128 bytes": 1])
        #expect(try exported(sample, policy: ExportPolicy(), batchSize: 0).batches == reference(sample, policy: ExportPolicy(), batchSize: 1).batches,
                "a batch size below one exports one record per batch, never nothing")
        #expect(throws: ExportError.self) { try UpstreamBatchReader(csv: [], policy: ExportPolicy(), pseudonymKey: key) }
        #expect(throws: ExportError.self) { try UpstreamBatchReader(csv: Array("id,tier\n".utf8), policy: ExportPolicy(), pseudonymKey: key) }
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

    @Test("purpose subkeys are derived once per key version and purpose, equal a fresh derivation, and are derived afresh for other material under a known version")
    func subkeyCache() {
        let cache = SubkeyCache()
        let archive = VersionedKey.generate(version: 3)
        let tid = Array("4000123412341234".utf8)
        let reference = cache.hasher(archive, purpose: "veil.household-ref.v1")
        #expect(reference.hash(tid) == archive.derived("veil.household-ref.v1").hash(tid))
        #expect(cache.hasher(archive, purpose: "veil.household-ref.v1").hash(tid) == reference.hash(tid))
        #expect(cache.hasher(archive, purpose: "veil.deidentified-tid.v1").hash(tid) == archive.derived("veil.deidentified-tid.v1").hash(tid))
        #expect(cache.hasher(archive, purpose: "veil.deidentified-tid.v1").hash(tid) != reference.hash(tid), "one subkey per purpose")
        let impostor = VersionedKey.generate(version: 3)
        #expect(cache.hasher(impostor, purpose: "veil.household-ref.v1").hash(tid) == impostor.derived("veil.household-ref.v1").hash(tid),
                "another key under version 3 is not answered with the cached subkey")
        #expect(cache.hasher(archive, purpose: "veil.household-ref.v1").hash(tid) == reference.hash(tid))
    }

    @Test("the prepared keyed hasher gives exactly VersionedKey.hash, also when copies are used from several tasks at once")
    func keyedHasher() async {
        let key = VersionedKey.generate(version: 4)
        let hasher = key.hasher
        let messages = (0..<200).map { Array("customer-\($0)".utf8) }
        #expect(hasher.version == 4)
        #expect(messages.map { hasher.hash($0) } == messages.map { key.hash($0) })
        let concurrent = await withTaskGroup(of: [[UInt8]].self) { group in
            for _ in 0..<4 { group.addTask { messages.map { hasher.hash($0) } } }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(concurrent.allSatisfy { $0 == messages.map { key.hash($0) } })
    }

    @Test("bulk randomness never hands out the same bytes twice, across refills; a record sealed with it opens")
    func randomBytes() throws {
        var random = RandomBytes(capacity: 64)
        let nonces = (0..<1_000).map { _ in Array(random.take(12)) }
        #expect(Set(nonces).count == nonces.count, "96-bit nonces from a CSPRNG do not repeat")
        #expect(nonces.allSatisfy { $0.count == 12 } && Set(nonces.flatMap { $0 }).count > 200)
        let key = VersionedKey.generate(version: 1)
        let sealed = try RecordCipher.seal(json: ContractCoding.encodeFlat(["tier": "gold"]), with: key, random: &random)
        #expect(try RecordCipher.open(sealed, with: KeyRing([key])) == ["tier": "gold"])
        let again = try RecordCipher.seal(json: ContractCoding.encodeFlat(["tier": "gold"]), with: key, random: &random)
        #expect(again.ciphertext != sealed.ciphertext && again.wrappedDataKey != sealed.wrappedDataKey)
    }

    @Test("the hand-written flat-map encoder writes JSON the standard decoder reads back equal, with sorted keys, for awkward text")
    func flatEncoder() throws {
        let maps: [[String: String]] = [
            [:], ["tier": "gold"], ["b": "2", "a": "1", "c": ""],
            ["quote": "say \"hi\"", "slash": "a\\b/c", "lines": "one\ntwo\r\tthree", "control": "\u{01}\u{1F}\u{7F}",
             "unicode": "Müller 東京 👩‍👩‍👧", "": "empty key"],
        ]
        for map in maps {
            let bytes = ContractCoding.encodeFlat(map)
            #expect(try ContractCoding.decode([String: String].self, from: bytes) == map)
            #expect(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: String] == map)
        }
        #expect(String(decoding: ContractCoding.encodeFlat(["b": "2", "a": "1"]), as: UTF8.self) == #"{"a":"1","b":"2"}"#)
    }

    @Test("every payload that writes its own JSON writes exactly JSONEncoder's bytes: awkward text, absent optionals, fractional and negative dates, maps of any size")
    func handWrittenPayloadsMatchJSONEncoder() throws {
        var random = SplitMix(seed: 0x5EED)
        let texts = ["", "app", "say \"hi\"", "a\\b/c", "one\ntwo\r\tthree", "\u{08}\u{0C}\u{01}\u{1F}\u{7F}", "Müller 東京 👩‍👩‍👧",
                     "matchKeyVersion", "Zürich", "\u{2028}\u{2029}"]
        func text() -> String { texts[Int(random.next() % UInt64(texts.count))] + String(random.next() % 1000) }
        func bytes() -> Data { Data((0..<Int(random.next() % 70)).map { _ in UInt8(truncatingIfNeeded: random.next()) }) }
        func map() -> [String: String] {
            Dictionary((0..<Int(random.next() % 12)).map { _ in (text(), text()) }, uniquingKeysWith: { a, _ in a })
        }
        func date() -> Date {
            switch random.next() % 4 {
            case 0: Date(timeIntervalSince1970: Double(random.next() % 4_000_000_000_000) / 1000)  // whole milliseconds
            case 1: Date(timeIntervalSince1970: Double(random.next() % 4_000_000_000_000_000) / 1_000_000)  // microseconds
            case 2: Date(timeIntervalSince1970: -Double(random.next() % 1_000_000_000) / 7)
            default: Date()
            }
        }
        func version() -> UInt32 { UInt32(truncatingIfNeeded: random.next()) }
        func same<T: Encodable & ContractJSONWritable>(_ value: T) {
            let written = value.contractJSON(), generic = ContractCoding.encodeGenerically(value)
            let identical = written == generic, taken = ContractCoding.encode(value) == written
            #expect(identical, "\(T.self): \(String(decoding: written, as: UTF8.self)) != \(String(decoding: generic, as: UTF8.self))")
            #expect(taken, "ContractCoding.encode takes the hand-written path")
        }
        for _ in 0..<300 {
            let access = AccessInfo(anonymizedDeviceId: bytes(), deviceKeyVersion: version(), channel: text(), receivedAt: date(),
                                    appVersion: text(), region: random.next() % 2 == 0 ? nil : text(), appData: map())
            let record = random.next() % 3 == 0 ? nil : EncryptedRecord(recordKeyVersion: version(), wrappedDataKey: bytes(), ciphertext: bytes())
            same(PseudonymPayload(pseudonym: bytes(), keyVersion: version()))
            same(access)
            same(EncryptedIDPayload(doublyHashedId: bytes(), thirdPartyKeyVersion: version()))
            same(MatchTokenPayload(token: bytes(), matchKeyVersion: version()))
            if let record { same(record) }
            same(MatchPayload(token: bytes(), matchKeyVersion: version(), record: record))
            same(Insight(inquiryId: text(), matched: random.next() % 2 == 0, matchToken: bytes(), matchKeyVersion: version(),
                         access: access, record: random.next() % 3 == 0 ? nil : map(), mergedAt: date()))
            let fields = map(), flat = ContractCoding.encodeFlat(fields)
            let flatIdentical = flat == ContractCoding.encodeGenerically(fields)
            #expect(flatIdentical, "encodeFlat: \(String(decoding: flat, as: UTF8.self))")
        }
    }

    @Test("the hand-read payloads decode to what JSONDecoder makes of any input, or fail where it fails: their usual shape read by hand, everything odd left to JSONDecoder")
    func handReadPayloadsAgreeWithJSONDecoder() throws {
        var random = SplitMix(seed: 0xDEC0DE)
        let texts = ["", "app", "Müller 東京 👩‍👩‍👧", "say \"hi\"", "a\\b/c", "tab\there", "Zürich"]
        func text() -> String { texts[Int(random.next() % UInt64(texts.count))] + String(random.next() % 100) }
        func bytes() -> Data { Data((0..<Int(random.next() % 50)).map { _ in UInt8(truncatingIfNeeded: random.next()) }) }
        func map() -> [String: String] { Dictionary((0..<Int(random.next() % 6)).map { _ in (text(), text()) }, uniquingKeysWith: { a, _ in a }) }
        func version() -> UInt32 { UInt32(truncatingIfNeeded: random.next()) }
        func date() -> Date {
            random.next() % 2 == 0 ? Date(timeIntervalSince1970: Double(random.next() % 4_000_000_000_000) / 1000)
                : Date(timeIntervalSince1970: Double(random.next() % 4_000_000_000_000_000) / 1_000_000)
        }
        // Edits that make an input unusual, invalid, or the same value written differently.
        let edits: [(String, String)] = [
            (":", " : "), (",", " ,\n\t"), ("{", "{ "), ("}", " }"), ("\"app", "\"\\u0061pp"), ("\"", "\"\\/"),
            (":1", ":1.0"), (":1", ":1e0"), (":1", ":01"), (":1", ":-0"), (":1", ":+1"), (":1", ":4294967296"), (":2", ":2.5"),
            ("\"region\":", "\"region\":null,\"x\":"), ("\"region\":\"", "\"region\":null,\"region\":\""),
            ("\"appData\":{", "\"appData\":null,\"y\":{"), ("\"record\":{", "\"record\":null,\"z\":{"),
            ("=\"", "\""), ("\"receivedAt\":1", "\"receivedAt\":\"1"), ("\"token\":\"", "\"token\":\"!"),
            ("{\"", "{\"unknown\":[1,{\"a\":null}],\""), ("}", "}}"), ("}", "} x"), ("\"keyVersion\"", "\"keyversion\""),
        ]
        var readByHand = 0
        func agree<T: Decodable & Equatable & ContractJSONReadable & ContractJSONWritable>(_ value: T) {
            let json = value.contractJSON()
            if !json.contains(UInt8(ascii: "\\")) {  // escapes are JSONDecoder's to read
                #expect(T.fromContractJSON(json) == value, "\(T.self): the usual shape is read by hand")
                readByHand += 1
            }
            #expect((try? ContractCoding.decode(T.self, from: json)) == value)
            var inputs: [[UInt8]] = [Array(json.dropLast()), Array(json.prefix(1)), [], Array("\u{FEFF}".utf8) + json]
            for (from, to) in edits {
                let text = String(decoding: json, as: UTF8.self)
                if let range = text.range(of: from) { inputs.append(Array(text.replacingCharacters(in: range, with: to).utf8)) }
            }
            for input in inputs {
                let mine = Result { try ContractCoding.decode(T.self, from: input) }
                let theirs = Result { try ContractCoding.decodeGenerically(T.self, from: input) }
                let same: Bool
                switch (mine, theirs) {
                case (.success(let a), .success(let b)): same = a == b
                case (.failure, .failure): same = true
                default: same = false
                }
                #expect(same, "\(T.self) from \(String(decoding: input, as: UTF8.self)): \(mine) against JSONDecoder's \(theirs)")
            }
        }
        for _ in 0..<100 {
            let record = random.next() % 3 == 0 ? nil : EncryptedRecord(recordKeyVersion: version(), wrappedDataKey: bytes(), ciphertext: bytes())
            agree(PseudonymPayload(pseudonym: bytes(), keyVersion: version()))
            agree(AccessInfo(anonymizedDeviceId: bytes(), deviceKeyVersion: version(), channel: text(), receivedAt: date(),
                             appVersion: text(), region: random.next() % 2 == 0 ? nil : text(), appData: map()))
            agree(EncryptedIDPayload(doublyHashedId: bytes(), thirdPartyKeyVersion: version()))
            agree(MatchTokenPayload(token: bytes(), matchKeyVersion: version()))
            agree(MatchPayload(token: bytes(), matchKeyVersion: version(), record: record))
            let fields = map(), json = ContractCoding.encodeFlat(fields)
            #expect((try? ContractCoding.decode([String: String].self, from: json)) == fields)
            if !json.contains(UInt8(ascii: "\\")) { #expect([String: String].fromContractJSON(json) == fields) }
        }
        #expect(readByHand > 200, "most generated payloads take the hand-read path")
    }

    @Test("an upstream batch survives the compact binary form; the vault still reads JSON; every truncation, trailing byte, bad UTF-8 or inflated count is an error, never a crash")
    func upstreamBatchBinary() throws {
        let batch = UpstreamBatch(records: [
            UpstreamRecord(pseudonym: Data(repeating: 7, count: 32), keyVersion: 3, fields: ["tier": "gold", "city": "Köln", "note": "a\"b\n"]),
            UpstreamRecord(pseudonym: Data(repeating: 9, count: 32), keyVersion: 1, fields: [:]),
        ])
        let binary = batch.binaryEncoded()
        #expect(binary.starts(with: UpstreamBatch.binaryMagic))
        #expect(try UpstreamBatch.decode(binary) == batch)
        #expect(try UpstreamBatch.decode(ContractCoding.encode(batch)) == batch, "JSON producers keep working")
        for length in 0..<binary.count {
            #expect(throws: (any Error).self) { try UpstreamBatch.decode(Array(binary.prefix(length))) }
        }
        #expect(throws: ContractError.self) { try UpstreamBatch.decode(binary + [0]) }
        var badUTF8 = UpstreamBatch(records: [UpstreamRecord(pseudonym: Data(repeating: 1, count: 32), keyVersion: 1, fields: ["k": "v"])])
            .binaryEncoded()
        badUTF8[badUTF8.count - 1] = 0xFF
        #expect(throws: ContractError.self) { try UpstreamBatch.decode(badUTF8) }
        #expect(throws: ContractError.self) { try UpstreamBatch.decode(UpstreamBatch.binaryMagic + [0xFF, 0xFF, 0xFF, 0xFF]) }
    }

    @Test("filing reads a batch into each record's field JSON exactly as encodeFlat writes the decoded fields, with the same errors, whatever the keys' order or alphabet")
    func upstreamBatchForFiling() throws {
        /// The binary form with fields in the given order (`binaryEncoded` sorts them).
        func binary(_ records: [(version: UInt32, fields: [([UInt8], [UInt8])])]) -> [UInt8] {
            func u32(_ value: Int) -> [UInt8] { withUnsafeBytes(of: UInt32(value).bigEndian) { Array($0) } }
            var out = UpstreamBatch.binaryMagic + u32(records.count)
            for (index, record) in records.enumerated() {
                out += [UInt8](repeating: UInt8(index & 0xFF), count: 32) + u32(Int(record.version)) + u32(record.fields.count)
                for (key, value) in record.fields { out += u32(key.count) + key + u32(value.count) + value }
            }
            return out
        }
        func expectSame(_ bytes: [UInt8], _ comment: Comment? = nil) {
            let generic = Result { try UpstreamBatch.decode(bytes).records }
            let filing = Result { try UpstreamBatch.decodeForFiling(bytes) }
            switch (generic, filing) {
            case (.success(let records), .success(let filed)):
                #expect(filed.map(\.fieldsJSON) == records.map { ContractCoding.encodeFlat($0.fields) }, comment)
                #expect(filed.map(\.pseudonym) == records.map { Array($0.pseudonym) } && filed.map(\.keyVersion) == records.map(\.keyVersion), comment)
            case (.failure(let a), .failure(let b)):
                #expect("\(a)" == "\(b)", comment)
            default:
                Issue.record("decode \(generic) but decodeForFiling \(filing) \(comment.map { "\($0)" } ?? "")")
            }
        }
        let alphabet: [[UInt8]] = ["a", "b", "tier", "city", "Z", "\"", "\\", "\n", "\u{08}", "\u{1F}", "/", "é", "Köln", "🙂", "e\u{301}"].map { Array($0.utf8) }
        var random = SplitMix(seed: 42)
        for round in 0..<300 {
            let records = (0..<Int.random(in: 0...4, using: &random)).map { _ in
                (version: UInt32.random(in: 1...3, using: &random), fields: (0..<Int.random(in: 0...6, using: &random)).map { _ in
                    (alphabet.randomElement(using: &random)! + (Bool.random(using: &random) ? alphabet.randomElement(using: &random)! : []),
                     (0..<Int.random(in: 0...3, using: &random)).flatMap { _ in alphabet.randomElement(using: &random)! })
                })
            }
            let bytes = binary(records)
            expectSame(bytes, "round \(round)")
            // Sorted ASCII keys (what the exporter writes) and the JSON form.
            let decoded = try UpstreamBatch.decode(bytes)
            expectSame(decoded.binaryEncoded(), "round \(round), sorted")
            expectSame(ContractCoding.encode(decoded), "round \(round), JSON")
        }
        // Keys out of order, repeated (the last wins), beyond ASCII; invalid UTF-8 in a key or value.
        let a = Array("a".utf8), b = Array("b".utf8), v = Array("v".utf8), w = Array("w".utf8)
        for fields in [[(b, v), (a, w)], [(a, v), (a, w)], [(Array("é".utf8), v), (a, w)], [(a, [0xFF])], [([0xC3], v)], [(a, [0xE2, 0x82])]] {
            let bytes = binary([(1, fields)])
            expectSame(bytes, "\(fields)")
            for length in 0..<bytes.count { expectSame(Array(bytes.prefix(length)), "\(fields) cut at \(length)") }
            expectSame(bytes + [0], "\(fields) + a trailing byte")
        }
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

/// A small seeded generator (SplitMix64), so a failing case can be replayed.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
