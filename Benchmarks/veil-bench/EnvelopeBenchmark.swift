import ArgumentParser
import Crypto
import Foundation
import VeilEnvelope

/// `veil-bench envelope`: envelope throughput next to the bare primitives.
///
/// Measures, on all cores, envelopes sealed+signed per second and
/// verified+opened per second (one part, one recipient, batch API), and the
/// same work done with bare primitives in a plain parallel loop (one Ed25519
/// sign + one HPKE seal per item; one Ed25519 verify + one HPKE open per
/// item). The ratio envelope/primitives shows the format's overhead; the target is ≥ 0.8.
public struct EnvelopeBenchmark: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "envelope", abstract: "Envelope seal/verify throughput against bare Ed25519 + HPKE.")

    @Option(help: "Seconds to run each of the four measurements.")
    public var seconds: Double = 3

    @Option(help: "Payload size in bytes.")
    public var payload: Int = 512

    @Option(help: "Envelopes per batch call.")
    public var batch: Int = 256

    public init() {}

    static let topic = "veil.inquiries.received.v1"
    static let type = "veil.inquiry.received.v1"
    static let suite = HPKE.Ciphersuite(kem: .Curve25519_HKDF_SHA256, kdf: .HKDF_SHA256, aead: .chaChaPoly)

    public func run() async throws {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let duration = Duration.milliseconds(Int64(max(0.1, seconds) * 1000))
        let body = (0..<max(0, payload)).map { UInt8(truncatingIfNeeded: $0 &* 31) }

        let producer = ServiceIdentity.generate(name: "ingress")
        let consumer = ServiceIdentity.generate(name: "anonymizer")
        let directoryKey = Curve25519.Signing.PrivateKey()
        let directory = KeyDirectory(serial: 1, keys: producer.publishedKeys() + consumer.publishedKeys(),
                                     allowlist: KeyDirectory.veilAllowlist)
        let store = try KeyDirectoryStore(trusting: [1: directoryKey.publicKey],
                                          initial: .sign(directory, with: directoryKey))
        let sealer = EnvelopeSealer(identity: producer, directory: store)
        let batchSize = max(1, batch)

        // Each comparison alternates short slices of envelope and primitive
        // work, so that other load on the machine hits both sides alike.
        let slice = Duration.milliseconds(250)
        var sealed: [[UInt8]] = []
        let signingKey = Curve25519.Signing.PrivateKey()
        let recipientKey = Curve25519.KeyAgreement.PrivateKey()
        let info = Data("bench".utf8)

        // Seal + sign: envelopes (batch API) against one HPKE seal + one Ed25519 sign per item.
        let (sealRate, primitiveSealRate) = try await compare(total: duration, slice: slice, cores: cores, envelope: {
            let drafts = (0..<batchSize).map { _ in
                EnvelopeDraft(type: Self.type, parts: [.sealed("payload", payload: body, to: ["anonymizer"])])
            }
            let start = ContinuousClock.now
            let results = await sealer.sealBatch(drafts)
            let elapsed = ContinuousClock.now - start
            for result in results where sealed.count < 20_000 { sealed.append(try result.get().bytes) }
            return (results.count, elapsed)
        }, primitive: {
            var sender = try HPKE.Sender(recipientKey: recipientKey.publicKey, ciphersuite: Self.suite, info: info)
            let ciphertext = try sender.seal(body)
            _ = try signingKey.signature(for: ciphertext)
        })

        // Verify + open: envelopes (batch API, a fresh replay window each time the
        // pool of sealed envelopes is reused) against one Ed25519 verify + one HPKE open per item.
        var verifier = EnvelopeVerifier(identity: consumer, directory: store)
        var cursor = 0
        var sender = try HPKE.Sender(recipientKey: recipientKey.publicKey, ciphersuite: Self.suite, info: info)
        let ciphertext = try sender.seal(body)
        let encapsulated = sender.encapsulatedKey
        let signature = try signingKey.signature(for: ciphertext)
        let publicKey = signingKey.publicKey
        let (verifyRate, primitiveOpenRate) = try await compare(total: duration, slice: slice, cores: cores, envelope: {
            if cursor + batchSize > sealed.count {
                cursor = 0
                verifier = EnvelopeVerifier(identity: consumer, directory: store)
            }
            let messages = sealed[cursor..<min(cursor + batchSize, sealed.count)].map { (topic: Self.topic, bytes: $0) }
            cursor += messages.count
            let start = ContinuousClock.now
            let results = await verifier.verifyBatch(messages)
            let elapsed = ContinuousClock.now - start
            for result in results { _ = try result.get() }
            return (results.count, elapsed)
        }, primitive: {
            guard publicKey.isValidSignature(signature, for: ciphertext) else { throw CancellationError() }
            var recipient = try HPKE.Recipient(privateKey: recipientKey, ciphersuite: Self.suite, info: info,
                                               encapsulatedKey: encapsulated)
            _ = try recipient.open(ciphertext)
        })

        func line(_ name: String, _ envelope: Double, _ primitive: Double) -> String {
            let ratio = primitive > 0 ? envelope / primitive : 0
            return name.padding(toLength: 16, withPad: " ", startingAt: 0)
                + "envelope \(Int(envelope))/s   primitives \(Int(primitive))/s   ratio \(String(format: "%.2f", ratio))"
        }
        print("envelope benchmark: payload \(body.count) B, 1 part, 1 recipient, \(cores) cores, \(seconds) s each")
        print(line("seal+sign", sealRate, primitiveSealRate))
        print(line("verify+open", verifyRate, primitiveOpenRate))
    }

    /// Alternates `slice`-long runs of `envelope` (batch calls returning how
    /// many items they did and how long the call under test took, without
    /// preparing its input) and of `primitive` (one item, in a plain loop on
    /// `cores` tasks) until each has run for `total`; items per second of each.
    private func compare(total: Duration, slice: Duration, cores: Int,
                         envelope: () async throws -> (items: Int, elapsed: Duration),
                         primitive: @escaping @Sendable () throws -> Void) async throws -> (Double, Double) {
        let clock = ContinuousClock()
        var envelopeItems = 0, primitiveItems = 0
        var envelopeTime = Duration.zero, primitiveTime = Duration.zero
        while envelopeTime < total || primitiveTime < total {
            var sliceTime = Duration.zero
            repeat {
                let round = try await envelope()
                envelopeItems += round.items
                sliceTime += round.elapsed
            } while sliceTime < slice
            envelopeTime += sliceTime
            let start = clock.now
            let deadline = start + slice
            primitiveItems += try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<max(1, cores) {
                    group.addTask {
                        var count = 0
                        repeat {
                            for _ in 0..<16 { try primitive() }
                            count += 16
                        } while clock.now < deadline
                        return count
                    }
                }
                return try await group.reduce(0, +)
            }
            primitiveTime += clock.now - start
        }
        return (Double(envelopeItems) / seconds(envelopeTime), Double(primitiveItems) / seconds(primitiveTime))
    }

    private func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}
