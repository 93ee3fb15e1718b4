import ArgumentParser
import Foundation
import VeilContracts

/// `veil-bench contracts`: the payloads every inquiry carries, written by their own JSON
/// writers (`ContractJSONWritable`, what `ContractCoding.encode` uses) against `JSONEncoder`
/// producing the same bytes, in one run on one core, alternating short slices of each.
struct ContractCodingBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "contracts", abstract: "Hand-written payload JSON against JSONEncoder (the same bytes).")

    @Option(help: "Seconds per payload type (half for each side).")
    var seconds: Double = 1

    func run() async throws {
        let access = AccessInfo(anonymizedDeviceId: Data(repeating: 7, count: 32), deviceKeyVersion: 1, channel: "app",
                                receivedAt: Date(), appVersion: "1.0.0", region: "eu-central", appData: ["screen": "billing"])
        // The fields `veilctl upstream sample` exports by default.
        let record = ["city": "Leipzig", "customer_since": "2022-05-01", "household_size": "1", "lifetime_value": "1234.50",
                      "segment": "gold", "tariff": "fiber-250", "contract_end": "2027-01-01", "language": "de"]
        let sealedRecord = EncryptedRecord(recordKeyVersion: 1, wrappedDataKey: Data(repeating: 3, count: 60),
                                           ciphertext: Data(repeating: 4, count: 300))
        let payloads: [(String, any Encodable & ContractJSONWritable)] = [
            ("pseudonym (ingress)", PseudonymPayload(pseudonym: Data(repeating: 5, count: 32), keyVersion: 1)),
            ("access-info (ingress)", access),
            ("encrypted-id (anonymizer)", EncryptedIDPayload(doublyHashedId: Data(repeating: 6, count: 32), thirdPartyKeyVersion: 1)),
            ("match-token (key-vault)", MatchTokenPayload(token: Data(repeating: 1, count: 32), matchKeyVersion: 1)),
            ("match (matcher)", MatchPayload(token: Data(repeating: 2, count: 32), matchKeyVersion: 1, record: sealedRecord)),
            ("insight (merger)", Insight(inquiryId: UUID().uuidString.lowercased(), matched: true, matchToken: Data(repeating: 1, count: 32),
                                         matchKeyVersion: 1, access: access, record: record, mergedAt: Date())),
        ]
        print("veil-bench contracts: µs per payload, one core, \(seconds) s per payload")
        print("payload                        JSONEncoder   hand-written   speed-up")
        var totals = (generic: 0.0, written: 0.0)
        for (name, payload) in payloads {
            guard payload.contractJSON() == ContractCoding.encodeGenerically(payload) else {
                throw ValidationError("\(name): the hand-written bytes differ from JSONEncoder's")
            }
            // Five slices of each side, alternating, so a slower moment of the machine hits both.
            var generic = Slices(), written = Slices()
            for _ in 0..<5 {
                generic.run(for: seconds / 10) { ContractCoding.encodeGenerically(payload).count }
                written.run(for: seconds / 10) { ContractCoding.encode(payload).count }
            }
            totals.generic += generic.microseconds
            totals.written += written.microseconds
            precondition(generic.sink > 0 && written.sink > 0)
            print(Self.row(name, generic.microseconds, written.microseconds))
        }
        print(Self.row("one inquiry, all six", totals.generic, totals.written))
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
