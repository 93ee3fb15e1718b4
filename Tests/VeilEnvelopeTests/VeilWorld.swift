import Crypto
import Foundation
import Testing
import VeilCore
@testable import VeilEnvelope

/// A small Veil in memory for tests: a directory key, identities for some
/// parties, a signed directory and a store that follows it.
struct VeilWorld {
    static let received = (topic: "veil.inquiries.received.v1", type: "veil.inquiry.received.v1")
    static let anonymized = (topic: "veil.inquiries.anonymized.v1", type: "veil.inquiry.anonymized.v1")

    let directoryKey = Curve25519.Signing.PrivateKey()
    var identities: [String: ServiceIdentity] = [:]
    var directory: KeyDirectory
    let store: KeyDirectoryStore

    init(parties: [String] = ["ingress", "anonymizer", "key-vault", "merger", "provider-demo"]) {
        var keys: [KeyDirectory.PublishedKey] = []
        for party in parties {
            let identity = ServiceIdentity.generate(name: party)
            identities[party] = identity
            keys += identity.publishedKeys()
        }
        directory = KeyDirectory(serial: 1, keys: keys,
                                 allowlist: KeyDirectory.veilAllowlist)
        store = try! KeyDirectoryStore(trusting: [1: directoryKey.publicKey],
                                       initial: .sign(directory, with: directoryKey))
    }

    subscript(_ party: String) -> ServiceIdentity { identities[party]! }

    func sealer(_ party: String) -> EnvelopeSealer { EnvelopeSealer(identity: self[party], directory: store) }

    func verifier(_ party: String, skew: Duration = .seconds(300), window: ReplayWindow = ReplayWindow()) -> EnvelopeVerifier {
        EnvelopeVerifier(identity: self[party], directory: store, replayWindow: window,
                         configuration: EnvelopeConfiguration(maxClockSkew: skew))
    }

    /// Issues the next directory after `change`, signs it and makes the store accept it.
    mutating func issue(_ change: (inout KeyDirectory) -> Void) throws {
        var next = directory.next()
        change(&next)
        try store.accept(.sign(next, with: directoryKey))
        directory = next
    }

    /// Ingress's inquiry: a pseudonym for the anonymizer and access info end to end for the merger.
    func inquiry(id: MessageID = .generate(), at date: Date = Date(), pseudonym: [UInt8] = Array("P-123".utf8),
                 accessInfo: [UInt8] = Array("channel=app".utf8)) throws -> SealedEnvelope {
        try sealer("ingress").seal(EnvelopeDraft(
            id: id, type: Self.received.type, createdAt: date,
            parts: [.sealed("pseudonym", payload: pseudonym, to: ["anonymizer"]),
                    .sealed("access-info", payload: accessInfo, to: ["merger"])]))
    }
}

extension EnvelopeError {
    /// Runs `body` and returns the EnvelopeError it throws, or nil if it succeeds.
    /// Any other error type is recorded as a test failure.
    static func caught<T>(_ body: () throws -> T) -> EnvelopeError? {
        do {
            _ = try body()
            return nil
        } catch let error as EnvelopeError {
            return error
        } catch {
            Issue.record("untyped error \(error)")
            return nil
        }
    }
}
