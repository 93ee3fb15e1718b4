import ArgumentParser
import Foundation
import Logging
import VeilContracts
import VeilEnvelope
import VeilKafka

extension KeysCommand {
    /// `veilctl keys publish --dir DIR`: puts the signed key directory on the compacted
    /// `veil.keys.directory.v1`, where every running service picks it up (until the
    /// key-vault publishes it itself).
    struct Publish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish the signed key directory on veil.keys.directory.v1 for running services.")

        @Option(name: .long, help: "The key folder (with key-directory.json).")
        var dir: String

        @OptionGroup var kafka: OperatorKafka

        func run() async throws {
            let folder = KeyFolder(url: URL(fileURLWithPath: dir))
            let serial = try folder.directoryStore().serial  // refuses a directory whose signature does not verify
            let report = try await KeysCommand.publish(folder, kafka: kafka)
            print("published key directory serial \(serial) to \(report.topic)[\(report.partition)]@\(report.offset)")
        }
    }

    /// Puts the folder's signed directory on the compacted directory topic.
    static func publish(_ folder: KeyFolder, kafka: OperatorKafka) async throws -> DeliveryReport {
        _ = try folder.directoryStore()  // verifies the signature first
        let signed = try SignedKeyDirectory(serialized: Array(Data(contentsOf: folder.url.appendingPathComponent(KeyFolder.directoryFile))))
        let producer = try kafka.producer()
        do {
            let report = try await producer.send(OutgoingMessage(topic: Topic.keysDirectory.name, key: Array("directory".utf8),
                                                                 value: signed.serialized()))
            await producer.close()
            return report
        } catch {
            await producer.close()
            throw error
        }
    }
}
