import Foundation
import Logging
import VeilContracts
import VeilEnvelope
import VeilKafka

/// Follows the compacted `veil.keys.directory.v1` topic and installs each newer
/// signed key directory, so rotations and retirements reach running services.
/// A directory with a bad signature (or an older serial) is refused and logged.
public enum KeyDirectoryFollower {
    public static func make(kafka: KafkaConfiguration, service: ServiceName, directory: KeyDirectoryStore,
                            logger: Logger) throws(KafkaError) -> TopicFollower {
        try TopicFollower(kafka: kafka, service: service, topic: .keysDirectory, logger: logger) { batch in
            for message in batch { install(message, into: directory, logger: logger) }
        }
    }

    static func install(_ message: KafkaMessage, into directory: KeyDirectoryStore, logger: Logger) {
        do {
            let signed = try SignedKeyDirectory(serialized: message.value)
            if try directory.accept(signed) {
                logger.notice("key directory installed", metadata: ["serial": "\(directory.serial)"])
            }
        } catch {
            logger.error("key directory refused", metadata: ["error.code": "\(error.code)", "offset": "\(message.offset)"])
        }
    }
}
