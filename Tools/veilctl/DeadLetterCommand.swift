import ArgumentParser
import Foundation
import VeilKafka
import VeilService

/// `veilctl dlq`: inspect dead letters and put them back after a fix. Replays keep
/// each message's id (and its original record time), so a consumer that already
/// applied one drops it: replaying never applies anything twice.
struct DeadLetterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq", abstract: "List, show and replay dead letters (<topic>.dlq).",
        subcommands: [List.self, Show.self, Replay.self])

    /// `topic/partition/offset`, as `dlq list` prints them.
    static func coordinates(_ text: String) throws -> (topic: String, partition: Int32, offset: Int64) {
        let parts = text.split(separator: "/")
        guard parts.count == 3, let partition = Int32(parts[1]), let offset = Int64(parts[2]) else {
            throw ValidationError("'\(text)' is not <dlq topic>/<partition>/<offset>")
        }
        return (String(parts[0]), partition, offset)
    }

    static func time(_ milliseconds: Int64?) -> String {
        guard let milliseconds, milliseconds > 0 else { return "-" }
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1000))
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Without a topic: every dead-letter topic's counts. With one: its dead letters, oldest first.")
        @OptionGroup var kafka: OperatorKafka
        @Argument(help: "A dead-letter topic, e.g. veil.inquiries.tokenized.v1.dlq.") var topic: String?
        @Option(name: .long, help: "Show at most this many.") var limit = 100

        func run() async throws {
            let queue = DeadLetterQueue(inspector: KafkaInspector(configuration: try kafka.configuration()))
            guard let topic else {
                print("DEAD-LETTER TOPIC".padding(toLength: 42, withPad: " ", startingAt: 0) + "PENDING  KEPT")
                for s in try await queue.summaries() where s.kept > 0 || s.pending > 0 {
                    print(s.topic.padding(toLength: 42, withPad: " ", startingAt: 0) + "\(s.pending)".padding(toLength: 9, withPad: " ", startingAt: 0) + "\(s.kept)")
                }
                return
            }
            let letters = try await queue.list(topic, limit: limit)
            for (letter, replayed) in letters {
                print([letter.coordinates, DeadLetterCommand.time(letter.record.timestampMilliseconds), letter.messageID ?? "-",
                       letter.type ?? "-", letter.code, letter.stage, "attempts=\(letter.attempts)", replayed ? "replayed" : "pending"]
                    .joined(separator: "  "))
            }
            FileHandle.standardError.write(Data("\(letters.count) dead letters on \(topic)\n".utf8))
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One dead letter's headers, envelope header and failure (never its sealed payload).")
        @OptionGroup var kafka: OperatorKafka
        @Argument(help: "<dlq topic>/<partition>/<offset>, as printed by dlq list.") var message: String

        func run() async throws {
            let (topic, partition, offset) = try DeadLetterCommand.coordinates(message)
            let queue = DeadLetterQueue(inspector: KafkaInspector(configuration: try kafka.configuration()))
            guard let letter = try await queue.find(topic, partition: partition, offset: offset) else {
                throw ValidationError("no message at \(message) (past retention, or not written yet)")
            }
            var lines: [(String, String)] = [
                ("dead letter", letter.coordinates),
                ("dead-lettered at", DeadLetterCommand.time(letter.record.timestampMilliseconds)),
                ("code", letter.code), ("reason", letter.reason), ("stage", letter.stage), ("attempts", "\(letter.attempts)"),
                ("source", "\(letter.sourceTopic)/\(letter.sourcePartition.map(String.init) ?? "?")/\(letter.sourceOffset.map(String.init) ?? "?")"),
                ("original time", DeadLetterCommand.time(letter.originalTimestampMilliseconds)),
                ("key", letter.record.key.map { String(decoding: $0, as: UTF8.self) } ?? "-"),
                ("value", "\(letter.record.value.count) bytes" + (letter.envelopeHeader == nil ? " (not an envelope)" : " (sealed envelope)")),
            ]
            if let header = letter.envelopeHeader {
                lines += [("message id", header.id.description), ("type", header.type), ("producer", header.producer),
                          ("created at", DeadLetterCommand.time(Int64(clamping: header.createdAtMilliseconds))),
                          ("signer", "\(header.signer)")]
            }
            for header in letter.record.headers where !header.name.hasPrefix("veil_dlq_") {
                lines.append(("header \(header.name)", header.value.map { String(decoding: $0, as: UTF8.self) } ?? "(null)"))
            }
            for (name, value) in lines { print(name.padding(toLength: 20, withPad: " ", startingAt: 0) + value) }
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put dead letters back on their source topic after a fix, keeping their ids.",
            discussion: """
                With a topic: every dead letter not replayed before (progress is kept as the
                committed offsets of the group veil.ops.dlq-replay). With --message: that one
                message, replayed or not. Consumers drop ids they already applied.
                """)
        @OptionGroup var kafka: OperatorKafka
        @Argument(help: "A dead-letter topic, e.g. veil.inquiries.tokenized.v1.dlq.") var topic: String?
        @Option(name: .long, help: "One message: <dlq topic>/<partition>/<offset>.") var message: String?

        func validate() throws {
            guard (topic == nil) != (message == nil) else { throw ValidationError("give a topic or --message, not both") }
        }

        func run() async throws {
            let queue = DeadLetterQueue(inspector: KafkaInspector(configuration: try kafka.configuration()))
            let producer = try kafka.producer()
            do {
                if let message {
                    let (topic, partition, offset) = try DeadLetterCommand.coordinates(message)
                    guard let letter = try await queue.find(topic, partition: partition, offset: offset) else {
                        throw ValidationError("no message at \(message)")
                    }
                    try await queue.replay(letter, producer: producer)
                    print("replayed \(letter.coordinates) (id \(letter.messageID ?? "-")) to \(letter.sourceTopic)")
                } else if let topic {
                    let done = try await queue.replayPending(topic, producer: producer) { count in
                        FileHandle.standardError.write(Data("  replayed \(count)\n".utf8))
                    }
                    let codes = Dictionary(grouping: done.letters, by: \.code).map { "\($0.key)=\($0.value.count)" }.sorted()
                    print("replayed \(done.letters.count) dead letters from \(topic)" + (codes.isEmpty ? "" : " (\(codes.joined(separator: ", ")))"))
                }
            } catch {
                await producer.close()
                throw error
            }
            await producer.close()
        }
    }
}
