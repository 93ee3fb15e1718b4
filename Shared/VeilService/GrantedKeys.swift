import Foundation
import Logging
import Synchronization
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka

/// Keys the key-vault granted to this service (sealed to it on `veil.keys.grants.v1`):
/// `kT` for the anonymizer, the record key for the merger. Held in memory only.
public final class GrantedKeys: Sendable {
    private let rings = Mutex<[KeyGrant.Purpose: KeyRing]>([:])

    public init() {}

    /// Installs a grant, replacing the previous one for its purpose.
    public func install(_ grant: KeyGrant) {
        let keys = grant.keys.compactMap { VersionedKey(version: $0.version, raw: Array($0.material)) }
        let current = grant.keys.filter(\.active).map(\.version).max()
        rings.withLock { $0[grant.purpose] = KeyRing(keys, current: current) }
    }

    /// The granted ring, if a grant arrived.
    public func ring(_ purpose: KeyGrant.Purpose) -> KeyRing? { rings.withLock { $0[purpose] } }

    /// The granted ring, waiting up to `timeout` for the first grant (a service may
    /// start before the key-vault has published). A missing grant is a transient
    /// failure: the stage retries, and dead-letters only if it never comes.
    public func ring(_ purpose: KeyGrant.Purpose, waiting timeout: Duration) async throws(StageError) -> KeyRing {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let ring = ring(purpose), ring.current != nil { return ring }
            guard ContinuousClock.now < deadline, !Task.isCancelled else {
                throw .transient("grant.missing", "no \(purpose.rawValue) key granted by the key-vault yet")
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    /// A follower that verifies grant envelopes and installs the ones sealed to this service.
    public static func follower(kafka: KafkaConfiguration, service: ServiceName, codec: EnvelopeCodec,
                                grants: GrantedKeys, logger: Logger) throws(KafkaError) -> TopicFollower {
        try TopicFollower(kafka: kafka, service: service, topic: .keysGrants, logger: logger) { batch in
            for (message, result) in zip(batch, await codec.verify(batch)) {
                switch result {
                case .success(let envelope):
                    guard envelope.header.type == MessageType.keyGranted,
                          let payload = envelope.payload(PartLabel.grant),
                          let grant = try? ContractCoding.decode(KeyGrant.self, from: payload) else {
                        logger.error("key grant unreadable", metadata: ["offset": "\(message.offset)"])
                        continue
                    }
                    grants.install(grant)
                    logger.notice("key grant installed", metadata: [
                        "purpose": "\(grant.purpose.rawValue)", "versions": "\(grant.keys.map(\.version))"])
                case .failure(.notARecipient):
                    continue  // another service's grant
                case .failure(let error):
                    logger.error("key grant refused", metadata: ["error.code": "\(error.code)", "offset": "\(message.offset)"])
                }
            }
        }
    }
}
