import ArgumentParser
import Foundation
import VeilEnvelope

/// `veilctl keys`: creates and maintains a key folder (private keys, the
/// directory key and the signed key directory). See docs/ENVELOPE.md.
struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Create development keys and maintain the signed key directory.",
        subcommands: [Init.self, Rotate.self, Retire.self, SignDirectory.self, Show.self, Publish.self])

    /// `veilctl keys init --out DIR`: a complete development key set.
    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate keys for every Veil service, the upstream exporter, a demo provider and the directory, and write the signed key directory (files 0600, folders 0700).")

        @Option(name: .long, help: "The folder to write the key set into.")
        var out: String

        @Option(name: .long, parsing: .upToNextOption, help: "Extra downstream providers or devices to create keys for.")
        var extraParty: [String] = []

        @Flag(name: .long, help: "Overwrite an existing key set.")
        var force = false

        func run() throws {
            let parties = KeyFolder.developmentParties + extraParty
            let folder = try KeyFolder.createDevelopmentKeys(at: URL(fileURLWithPath: out), parties: parties,
                                                             overwrite: force)
            let directory = try folder.directoryStore().directory
            print("wrote keys for \(parties.count) parties and directory serial \(directory.serial) to \(out)")
        }
    }

    /// `veilctl keys rotate SERVICE [--publish]`: new key versions, published as active.
    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a new signing and encryption key version for a service (or provider) and re-sign the directory.",
            discussion: """
                The old versions stay active until `keys retire`. Roll the new key folder out to
                the rotated service and restart it (it then holds both versions) before or with
                --publish: once the directory is published, senders seal to the new version.
                Messages caught in between go to <topic>.dlq with envelope.open_failed; replay
                them with `veilctl dlq replay` once the service runs with the new keys.
                """)

        @Argument(help: "The service or party to rotate, e.g. matcher.") var service: String?
        @Option(name: .long, help: "Same as the argument (older spelling).") var party: String?
        @Option(name: .long, help: "The key folder (default: $VEIL_KEYS_DIR).") var dir: String?
        @Flag(name: .long, help: "Also publish the new directory on veil.keys.directory.v1.") var publish = false
        @OptionGroup var kafka: OperatorKafka

        func validate() throws {
            guard (service ?? party) != nil else { throw ValidationError("name the service to rotate, e.g. `veilctl keys rotate matcher`") }
        }

        func run() async throws {
            guard let dir = dir ?? ProcessInfo.processInfo.environment["VEIL_KEYS_DIR"] else {
                throw ValidationError("set --dir or VEIL_KEYS_DIR")
            }
            let name = (service ?? party)!
            let folder = KeyFolder(url: URL(fileURLWithPath: dir))
            let version = try folder.rotate(name)
            print("\(name): version \(version) active; directory serial \(try folder.directoryStore().serial)")
            if publish {
                let report = try await KeysCommand.publish(folder, kafka: kafka)
                print("published key directory to \(report.topic)[\(report.partition)]@\(report.offset)")
            }
        }
    }

    /// `veilctl keys retire --dir DIR --party NAME --purpose signing --key-version N`.
    struct Retire: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Mark a key version retired: envelopes signed with it are refused from then on.")

        @Option(name: .long, help: "The key folder.") var dir: String
        @Option(name: .long, help: "The party, e.g. ingress.") var party: String
        @Option(name: .long, help: "signing or encryption.") var purpose: String
        @Option(name: .long, help: "The version to retire.") var keyVersion: UInt32

        func run() throws {
            guard let purpose = KeyPurpose(rawValue: purpose) else {
                throw ValidationError("--purpose must be signing or encryption")
            }
            let folder = KeyFolder(url: URL(fileURLWithPath: dir))
            try folder.retire(party, purpose: purpose, version: keyVersion)
            print("\(purpose.keyID(of: party))@v\(keyVersion) retired; directory serial \(try folder.directoryStore().serial)")
        }
    }

    /// `veilctl keys sign-directory --dir DIR`: re-issue the directory with the next serial.
    struct SignDirectory: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "sign-directory",
            abstract: "Re-sign the key directory with the next serial number (e.g. after editing nothing but wanting a fresh issue).")

        @Option(name: .long, help: "The key folder.") var dir: String

        func run() throws {
            let folder = KeyFolder(url: URL(fileURLWithPath: dir))
            try folder.resign()
            print("directory serial \(try folder.directoryStore().serial)")
        }
    }

    /// `veilctl keys show --dir DIR`: the verified directory (public keys only).
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Verify and print the key directory (public keys only).")

        @Option(name: .long, help: "The key folder.") var dir: String

        func run() throws {
            let directory = try KeyFolder(url: URL(fileURLWithPath: dir)).directoryStore().directory
            print(String(decoding: directory.canonicalJSON(), as: UTF8.self))
        }
    }
}
