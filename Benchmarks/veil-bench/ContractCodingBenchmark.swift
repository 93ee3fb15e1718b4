import ArgumentParser
import Foundation
import VeilContracts

/// `veil-bench contracts`: the payloads every inquiry carries, written and read by hand
/// (`ContractJSONWritable`, `ContractJSONReadable`: what `ContractCoding` uses) against
/// `JSONEncoder` producing the same bytes and `JSONDecoder` reading them, in one run on
/// one core, alternating short slices of each.
struct ContractCodingBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "contracts", abstract: "The inquiry payloads' JSON by hand against JSONEncoder and JSONDecoder.")

    @Option(help: "Seconds per payload and direction (half for each side).")
    var seconds: Double = 1

    func run() async throws {
        let access = AccessInfo(anonymizedDeviceId: Data(repeating: 7, count: 32), deviceKeyVersion: 1, channel: "app",
                                receivedAt: Date(), appVersion: "1.0.0", region: "eu-central", appData: ["screen": "billing"])
        // The fields `veilctl upstream sample` exports by default.
        let record = ["city": "Leipzig", "customer_since": "2022-05-01", "household_size": "1", "lifetime_value": "1234.50",
                      "segment": "gold", "tariff": "fiber-250", "contract_end": "2027-01-01", "language": "de"]
        let sealedRecord = EncryptedRecord(recordKeyVersion: 1, wrappedDataKey: Data(repeating: 3, count: 60),
                                           ciphertext: Data(repeating: 4, count: 300))
        print("veil-bench contracts: µs per payload, one core, \(seconds) s per measurement, alternating slices")
        print("payload                        JSONEncoder   hand-written   speed-up")
        var totals = (generic: 0.0, byHand: 0.0)
        func encoding<T: Encodable & ContractJSONWritable>(_ name: String, _ value: T) throws {
            guard value.contractJSON() == ContractCoding.encodeGenerically(value) else {
                throw ValidationError("\(name): the hand-written bytes differ from JSONEncoder's")
            }
            let (generic, byHand) = Self.compare(seconds) { ContractCoding.encodeGenerically(value).count }
                                                  against: { ContractCoding.encode(value).count }
            totals.generic += generic
            totals.byHand += byHand
            print(Self.row(name, generic, byHand))
        }
        let match = MatchPayload(token: Data(repeating: 2, count: 32), matchKeyVersion: 1, record: sealedRecord)
        let pseudonym = PseudonymPayload(pseudonym: Data(repeating: 5, count: 32), keyVersion: 1)
        let encryptedID = EncryptedIDPayload(doublyHashedId: Data(repeating: 6, count: 32), thirdPartyKeyVersion: 1)
        let token = MatchTokenPayload(token: Data(repeating: 1, count: 32), matchKeyVersion: 1)
        try encoding("pseudonym (ingress)", pseudonym)
        try encoding("access-info (ingress)", access)
        try encoding("encrypted-id (anonymizer)", encryptedID)
        try encoding("match-token (key-vault)", token)
        try encoding("match (matcher)", match)
        try encoding("insight (merger)", Insight(inquiryId: UUID().uuidString.lowercased(), matched: true,
                                                 matchToken: Data(repeating: 1, count: 32), matchKeyVersion: 1, access: access,
                                                 record: record, mergedAt: Date()))
        print(Self.row("encoding one inquiry's six", totals.generic, totals.byHand))

        print("")
        print("payload                        JSONDecoder   hand-read      speed-up")
        totals = (0, 0)
        func decoding<T: Codable & Equatable & ContractJSONReadable>(_ name: String, _ value: T) throws {
            let json = ContractCoding.encode(value)
            guard let read = T.fromContractJSON(json), read == (try ContractCoding.decodeGenerically(T.self, from: json)) else {
                throw ValidationError("\(name): the hand-read value differs from JSONDecoder's")
            }
            let (generic, byHand) = Self.compare(seconds) { (try? ContractCoding.decodeGenerically(T.self, from: json)) == nil ? 0 : 1 }
                                                  against: { (try? ContractCoding.decode(T.self, from: json)) == nil ? 0 : 1 }
            totals.generic += generic
            totals.byHand += byHand
            print(Self.row(name, generic, byHand))
        }
        try decoding("pseudonym (anonymizer)", pseudonym)
        try decoding("encrypted-id (key-vault)", encryptedID)
        try decoding("match-token (matcher)", token)
        try decoding("match (merger)", match)
        try decoding("access-info (merger)", access)
        try decoding("record fields (merger)", record)
        print(Self.row("decoding one inquiry's six", totals.generic, totals.byHand))
    }

    /// µs per call of each side, five alternating slices each, so a slower moment of the
    /// machine hits both.
    static func compare(_ seconds: Double, _ baseline: () -> Int, against veil: () -> Int) -> (Double, Double) {
        var generic = Slices(), byHand = Slices()
        for _ in 0..<5 {
            generic.run(for: seconds / 10, baseline)
            byHand.run(for: seconds / 10, veil)
        }
        precondition(generic.sink > 0 && byHand.sink > 0)
        return (generic.microseconds, byHand.microseconds)
    }

    static func row(_ name: String, _ generic: Double, _ written: Double) -> String {
        name.padding(toLength: 30, withPad: " ", startingAt: 0)
            + String(format: " %8.2f       %8.2f       %5.1f×", generic, written, generic / written)
    }
}

/// Calls and time of one side, summed over its slices.
private struct Slices {
    var calls = 0
    var elapsed = Duration.zero
    var sink = 0

    mutating func run(for seconds: Double, _ body: () -> Int) {
        let clock = ContinuousClock(), budget = Duration.milliseconds(Int64(max(0.01, seconds) * 1000))
        let start = clock.now
        while clock.now - start < budget {
            for _ in 0..<100 { sink &+= body() }
            calls += 100
        }
        elapsed += clock.now - start
    }

    var microseconds: Double {
        (Double(elapsed.components.seconds) * 1e6 + Double(elapsed.components.attoseconds) / 1e12) / Double(max(1, calls))
    }
}
