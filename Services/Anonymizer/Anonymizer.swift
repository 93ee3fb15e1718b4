import Foundation
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService

/// The anonymizer process.
public enum Anonymizer {
    public static let runtime = ServiceRuntime(service: .anonymizer) { context in
        // Each inquiry is its own key: a batch's hashing, sealing and signing runs on every core.
        ConcurrentEnvelopeStage(codec: context.codec, handler: AnonymizerHandler(grants: context.grants), concurrency: 8)
    }
}

/// The independent third party's first step: `A = HMAC(kT, P)` with the `kT` the
/// key-vault granted it, sealed to the key-vault as `encryptedId`. It sees `P` only,
/// never a raw id, and cannot open the access info (sealed to the merger), which it
/// forwards unchanged. It keeps no state: `P` and `A` exist only in memory.
public struct AnonymizerHandler: EnvelopeHandler {
    let grants: GrantedKeys
    let grantWait: Duration

    public init(grants: GrantedKeys, grantWait: Duration = .seconds(5)) {
        self.grants = grants
        self.grantWait = grantWait
    }

    public static let stage = "anonymizer"

    public func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        guard envelope.header.type == MessageType.inquiryReceived,
              let opened = envelope.payload(PartLabel.pseudonym),
              let pseudonym = try? ContractCoding.decode(PseudonymPayload.self, from: opened), pseudonym.pseudonym.count == 32,
              let access = envelope.part(PartLabel.accessInfo) else {
            throw StageError.permanent("anonymizer.bad_payload", "not an inquiry with a pseudonym and access info")
        }
        guard let kT = try await grants.ring(.thirdPartyHash, waiting: grantWait).current else {
            throw StageError.transient("grant.missing", "no active kT")
        }
        let a = EncryptedIDPayload(doublyHashedId: Data(kT.hash(pseudonym.pseudonym)), thirdPartyKeyVersion: kT.version)
        let draft = EnvelopeDraft(id: .derived(from: envelope.header.id, stage: Self.stage), type: MessageType.inquiryAnonymized,
                                  parts: [
                                      .sealed(PartLabel.encryptedID, payload: ContractCoding.encode(a), to: [ServiceName.keyVault.rawValue]),
                                      .forwarded(access),
                                  ])
        return [try codec.message(draft, topic: Topic.inquiriesAnonymized.name, key: message.key)]
    }
}
