import Foundation
import Logging
import PostgresNIO
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// The dispatcher's stage on `veil.service-requests.v1`: opens the device's sealed
/// request, checks ingress's signed authentication assertion, validates, stores the
/// enterprise record (the description sealed at rest), decides what it needs by the
/// rules and, for a technician, hands it to the `AssignmentEngine`.
public struct ServiceRequestIntake: EnvelopeHandler {
    let engine: AssignmentEngine
    let rules: DispatchRules
    let logger: Logger
    let messages: DispatchMessages
    let answers: AnswerHandling
    /// Chats (requests the rules route to an agent) and the secure forms' verdicts.
    let chat: ChatDesk?
    /// Channel links opened in the app.
    let upgrades: ChannelUpgrades?

    public init(engine: AssignmentEngine, rules: DispatchRules, chat: ChatDesk? = nil, upgrades: ChannelUpgrades? = nil, logger: Logger) {
        self.upgrades = upgrades
        self.engine = engine
        self.rules = rules
        self.chat = chat
        self.logger = logger
        messages = DispatchMessages(engine: engine, logger: logger)
        answers = AnswerHandling(messages: messages, logger: logger)
    }

    public static let migrations: [Migration] = [
        Migration("011_dispatch_service_requests", sql: """
            CREATE TABLE {schema}.service_requests (
                id                    uuid PRIMARY KEY,
                account_ref           bytea NOT NULL,
                device_ref            bytea NOT NULL,
                device_encryption_key bytea NOT NULL,
                category              text NOT NULL,
                priority              integer NOT NULL,
                region                text,
                tier                  text,
                description_sealed    bytea NOT NULL,      -- ChaCha20-Poly1305 under the dispatcher's at-rest key
                at_rest_key_version   integer NOT NULL,
                action                text NOT NULL,
                rule                  text,
                assertion             jsonb NOT NULL,      -- ingress's signed assertion, kept for transfers
                created_at            timestamptz NOT NULL DEFAULT now()
            );
            """),
    ]

    public func handle(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        if envelope.header.type == MessageType.assignmentAnswered { return try await answers.handle(envelope, codec: codec) }
        if envelope.header.type == MessageType.secureFormVerified {
            guard let chat, let bytes = envelope.payload(PartLabel.secureFormResult),
                  let result = try? ContractCoding.decode(SecureFormResult.self, from: bytes) else {
                throw StageError.permanent("dispatch.bad_payload", "no readable secure-form result")
            }
            try await chat.apply(result)
            return []
        }
        guard envelope.header.type == MessageType.serviceRequestSubmitted else {
            throw StageError.permanent("dispatch.unsupported_type", "not a service request or a technician's answer")
        }
        let assertion = try Self.verifiedAssertion(envelope, directory: codec.directory)
        guard let bytes = envelope.payload(PartLabel.serviceRequest),
              let request = try? ContractCoding.decode(ServiceRequestPayload.self, from: bytes) else {
            throw StageError.permanent("dispatch.bad_payload", "no readable service-request part")
        }
        try Self.validate(request)
        if let link = request.channelLink {
            // The app opened a link it received by SMS: bind it to that request, not a new one.
            guard let upgrades else { throw StageError.permanent("dispatch.unsupported_type", "this dispatcher sends no channel links") }
            return try await upgrades.open(link, assertion: assertion, envelopeID: envelope.header.id)
        }
        if let conversation = request.conversationId {
            // A follow-up message in a chat, not a new request.
            guard let chat else { throw StageError.permanent("dispatch.unsupported_type", "this dispatcher takes no chats") }
            try await chat.customerMessage(request.description, conversation: conversation, accountRef: assertion.claims.accountRef,
                                           messageID: envelope.header.id.uuid)
            return []
        }
        let decision = rules.decide(.init(category: request.category, priority: request.priority,
                                          description: request.description, tier: request.tier))
        guard let atRest = codec.identity.atRestKey("service-requests") else {
            throw StageError.permanent("dispatch.no_key", "no encryption key to derive the at-rest key from")
        }
        let id = envelope.header.id.uuid
        let sealed = try VersionedKey(version: atRest.version, key: atRest.key)
            .seal(Array(request.description.utf8), aad: Array(id.uuidString.lowercased().utf8))
        let assertionJSON = String(decoding: ContractCoding.encode(assertion.signed), as: UTF8.self)
        _ = try await engine.database.client.first(FileServiceRequestStatement(
            id: id, accountRef: ByteBuffer(bytes: assertion.claims.accountRef), deviceRef: ByteBuffer(bytes: assertion.claims.deviceRef),
            deviceEncryptionKey: ByteBuffer(bytes: assertion.claims.deviceEncryptionKey), category: request.category.lowercased(),
            priority: decision.priority, region: request.region, tier: request.tier, descriptionSealed: ByteBuffer(bytes: sealed),
            atRestKeyVersion: Int32(atRest.version), action: decision.action.rawValue, rule: decision.rule,
            assertionJSON: assertionJSON), logger: logger)
        logger.info("service request filed", metadata: ["request.id": "\(envelope.header.id)", "action": "\(decision.action.rawValue)",
                                                        "rule": "\(decision.rule ?? "-")"])
        var outputs: [OutgoingMessage] = []
        // The device's keys are in the assertion at hand: no need to read the row back.
        if let received = try messages.notification(id, deviceRef: Array(assertion.claims.deviceRef),
                                                    deviceKey: Array(assertion.claims.deviceEncryptionKey), status: "received",
                                                    technician: nil, message: "We received your request.",
                                                    id: .derived(from: envelope.header.id, stage: "dispatcher.received"), codec: codec) {
            outputs.append(received)
        }
        if decision.action == .agent, let chat {
            // A chat: the first message is the request's description; agents serve every region.
            try await chat.append(id, sender: "customer", text: request.description,
                                  id: MessageID.derived(from: envelope.header.id, stage: "dispatcher.chat-opened").uuid)
            let offer = try await engine.submit(DispatchRequest(id: id, category: request.category.lowercased(), priority: decision.priority,
                                                                region: nil, requiredSkills: decision.skills, workerKind: .agent))
            if let offer { logger.info("chat offered", metadata: ["request.id": "\(envelope.header.id)", "agent": "\(offer.technicianID)"]) }
            await chat.wakeConsoles()
        }
        if decision.action == .technician {
            let offer = try await engine.submit(DispatchRequest(id: id, category: request.category.lowercased(), priority: decision.priority,
                                                                region: request.region, requiredSkills: decision.skills))
            if let offer {
                logger.info("offered", metadata: ["request.id": "\(envelope.header.id)", "technician": "\(offer.technicianID)"])
                if let alert = try await messages.alert(for: offer, codec: codec) { outputs.append(alert) }
            }
        }
        return outputs
    }

    /// Ingress's assertion, verified: signed by an active ingress signing key, for this request.
    static func verifiedAssertion(_ envelope: VerifiedEnvelope, directory: KeyDirectoryStore) throws -> (signed: SignedAssertion, claims: AuthAssertion) {
        try AssertionCheck.verified(envelope, subject: envelope.header.id.description, directory: directory, errorCode: "dispatch.bad_assertion")
    }

    static func validate(_ r: ServiceRequestPayload) throws {
        func token(_ s: String?) -> Bool {
            guard let s else { return true }
            return !s.isEmpty && s.utf8.count <= 32 && s.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || "0123456789-_".unicodeScalars.contains($0)) }
        }
        guard token(r.category), token(r.region), token(r.tier), (1...5).contains(r.priority),
              !r.description.isEmpty, r.description.count <= 2_000 else {
            throw StageError.permanent("dispatch.invalid_request",
                                       "category/region/tier must be short tokens, priority 1-5, description 1-2000 characters")
        }
    }
}
