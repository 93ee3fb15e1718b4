import Crypto
import Foundation
import Logging
import PostgresNIO
import VeilClient
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// Turns the engine's decisions into messages: an offer becomes an alert sealed to the
/// technician's device (with routing sealed to the technician-alerter), and a change of
/// a request's state becomes a confirmation sealed to the customer's device (with
/// routing sealed to ingress, which keeps the device's inbox).
public struct DispatchMessages: Sendable {
    let engine: AssignmentEngine
    let logger: Logger

    public init(engine: AssignmentEngine, logger: Logger) {
        self.engine = engine
        self.logger = logger
    }

    var database: Database { engine.database }

    /// The alert for `offer`; `nil` (logged) if the technician has no enrolled device:
    /// the offer then times out and moves on.
    public func alert(for offer: Reservation, codec: EnvelopeCodec) async throws -> OutgoingMessage? {
        guard let (signing, encryption, category, priority, region, sealed, keyVersion, assertionJSON) =
            try await database.client.first(AlertContentStatement(technicianID: offer.technicianID, requestID: offer.requestID),
                                            logger: logger) else { return nil }
        guard let signing, let encryption,
              let deviceKey = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: Array(encryption.readableBytesView)) else {
            logger.warning("offer not alerted: the technician has no enrolled device", metadata: ["technician": "\(offer.technicianID)"])
            return nil
        }
        let description = try openDescription(sealed, version: UInt32(keyVersion), requestID: offer.requestID, codec: codec)
        let alert = AlertPayload(reservationId: offer.id.uuidString.lowercased(), requestId: offer.requestID.uuidString.lowercased(),
                                 category: category, priority: priority, region: region, description: description,
                                 expiresAt: offer.expiresAt,
                                 assertion: try? ContractCoding.decode(SignedAssertion.self, from: Array(assertionJSON.utf8)))
        let routing = AlertRouting(technicianId: offer.technicianID, reservationId: alert.reservationId, expiresAt: offer.expiresAt,
                                   signingKey: Data(signing.readableBytesView))
        let part = try SealedPart.seal(ContractCoding.encode(alert), label: PartLabel.alert,
                                       to: [(SealedPart.reference(prefix: "device", for: deviceKey), deviceKey)])
        let draft = EnvelopeDraft(id: MessageID.derived(from: MessageID(uuid: offer.id), stage: "dispatcher.offer"),
                                  type: MessageType.assignmentOffered, parts: [
            .forwarded(part),
            .sealed(PartLabel.routing, payload: ContractCoding.encode(routing), to: [ServiceName.technicianAlerter.rawValue]),
        ])
        return try codec.message(draft, topic: Topic.dispatchAssignments.name, key: Array(offer.technicianID.utf8))
    }

    /// A confirmation for the customer of `requestID`, sealed to their device (whose keys
    /// are looked up in the filed request).
    public func notification(_ requestID: UUID, status: String, technician: String?, message: String, id: MessageID,
                             codec: EnvelopeCodec, form: SecureFormRequest? = nil) async throws -> OutgoingMessage? {
        // A request opened by SMS has no device until the customer opens the link in the app.
        guard let (deviceRef, encryption) = try await database.client.first(RequestDeviceStatement(requestID: requestID), logger: logger),
              let deviceRef, let encryption else { return nil }
        return try notification(requestID, deviceRef: Array(deviceRef.readableBytesView), deviceKey: Array(encryption.readableBytesView),
                                status: status, technician: technician, message: message, id: id, codec: codec, form: form)
    }

    /// A confirmation sealed to the device key `deviceKey`, routed to the inbox of `deviceRef`.
    public func notification(_ requestID: UUID, deviceRef: [UInt8], deviceKey: [UInt8], status: String, technician: String?,
                             message: String, id: MessageID, codec: EnvelopeCodec, form: SecureFormRequest? = nil) throws -> OutgoingMessage? {
        guard let key = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: deviceKey) else { return nil }
        let note = CustomerNotification(requestId: requestID.uuidString.lowercased(), status: status, technician: technician,
                                        message: message, at: Date(), form: form)
        let part = try SealedPart.seal(ContractCoding.encode(note), label: PartLabel.notification,
                                       to: [(SealedPart.reference(prefix: "device", for: key), key)])
        let routing = NotificationRouting(deviceRef: Data(deviceRef), requestId: note.requestId)
        let draft = EnvelopeDraft(id: id, type: MessageType.notificationSent, parts: [
            .forwarded(part),
            .sealed(PartLabel.routing, payload: ContractCoding.encode(routing), to: [ServiceName.ingress.rawValue]),
        ])
        return try codec.message(draft, topic: Topic.customerNotifications.name, key: Array(note.requestId.utf8))
    }

    func openDescription(_ sealed: ByteBuffer, version: UInt32, requestID: UUID, codec: EnvelopeCodec) throws -> String {
        guard let key = codec.identity.atRestKey("service-requests", version: version) else {
            throw StageError.permanent("dispatch.no_key", "at-rest key version \(version) is gone")
        }
        let plain = try VersionedKey(version: version, key: key.key)
            .open(Array(sealed.readableBytesView), aad: Array(requestID.uuidString.lowercased().utf8))
        return String(decoding: plain, as: UTF8.self)
    }

    /// The technician's first name for the customer's confirmation.
    func technicianName(_ id: String) async throws -> String? {
        let rows = try await database.client.query("SELECT name FROM \(unescaped: database.table("technicians")) WHERE id = \(id)",
                                                   logger: logger).collect()
        return try rows.first?.decode(String.self).split(separator: " ").first.map(String.init)
    }
}

/// The dispatcher's answers stage: a technician's answer, verified end to end (the
/// technician's own signature over the exact body, checked with the device key the
/// dispatcher enrolled), applied to the reservation, and confirmed to the customer.
public struct AnswerHandling: Sendable {
    let messages: DispatchMessages
    let logger: Logger

    public init(messages: DispatchMessages, logger: Logger) {
        self.messages = messages
        self.logger = logger
    }

    var engine: AssignmentEngine { messages.engine }

    public func handle(_ envelope: VerifiedEnvelope, codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        guard let answerPart = envelope.part(PartLabel.answer), let answerBytes = envelope.payload(PartLabel.answer),
              let answer = try? ContractCoding.decode(TechnicianAnswer.self, from: answerBytes),
              let signatureBytes = envelope.payload(PartLabel.technicianSignature),
              let signed = try? ContractCoding.decode(TechnicianSignature.self, from: signatureBytes),
              let reservationID = UUID(uuidString: answer.reservationId) else {
            throw StageError.permanent("dispatch.bad_answer", "not a readable technician answer")
        }
        try await verify(signed, answer: answer, sealedAnswer: Array(answerPart.bytes))
        let requestID = try await requestOf(reservationID)
        var outputs: [OutgoingMessage] = []
        let base = envelope.header.id
        do {
            switch answer.action {
            case .accept:
                try await engine.answer(reservationID, technicianID: answer.technicianId, .accept)
                let name = try await messages.technicianName(answer.technicianId)
                outputs += try await notify(requestID, "assigned", name, "\(name ?? "A technician") will take care of your request.", base, codec)
            case .decline:
                if let next = try await engine.answer(reservationID, technicianID: answer.technicianId, .decline, reason: answer.note),
                   let alert = try await messages.alert(for: next, codec: codec) {
                    outputs.append(alert)
                }
            case .enRoute:
                let name = try await messages.technicianName(answer.technicianId)
                outputs += try await notify(requestID, "en-route", name, "\(name ?? "Your technician") is on the way.", base, codec)
            case .transfer:
                if let next = try await engine.transfer(reservationID, technicianID: answer.technicianId),
                   let alert = try await messages.alert(for: next, codec: codec) {
                    outputs.append(alert)
                }
                outputs += try await notify(requestID, "transferred", nil, "Your request is being handed to another technician.", base, codec)
            case .completed:
                try await engine.complete(requestID, technicianID: answer.technicianId)
                let name = try await messages.technicianName(answer.technicianId)
                outputs += try await notify(requestID, "completed", name, "Your request is completed.", base, codec)
            }
        } catch let error as AssignmentError {
            // Too late (timed out), already answered, or not theirs: nothing to apply.
            logger.info("answer not applied", metadata: ["error.code": "\(error.code)", "reservation": "\(reservationID)"])
            return []
        }
        logger.info("technician answered", metadata: ["reservation": "\(reservationID)", "action": "\(answer.action.rawValue)"])
        return outputs
    }

    func notify(_ requestID: UUID, _ status: String, _ name: String?, _ text: String, _ base: MessageID,
                _ codec: EnvelopeCodec) async throws -> [OutgoingMessage] {
        let id = MessageID.derived(from: base, stage: "dispatcher.notify")
        return try await messages.notification(requestID, status: status, technician: name, message: text, id: id, codec: codec)
            .map { [$0] } ?? []
    }

    func verify(_ signed: TechnicianSignature, answer: TechnicianAnswer, sealedAnswer: [UInt8]) async throws {
        let rows = try await engine.database.client.query("""
            SELECT device_signing_key FROM \(unescaped: engine.database.table("technicians")) WHERE id = \(answer.technicianId)
            """, logger: logger).collect()
        guard let raw = try rows.first?.decode(ByteBuffer?.self),
              let key = try? Curve25519.Signing.PublicKey(rawRepresentation: Array(raw.readableBytesView)),
              signed.method == "POST", signed.path == "/v1/technicians/\(answer.technicianId)/answers",
              key.isValidSignature(signed.signature, for: DeviceRequestSignature.signedBytes(method: signed.method, path: signed.path,
                                                                                              body: Array(signed.body))),
              let submission = try? JSONDecoder().decode(TechnicianAnswerSubmission.self, from: signed.body),
              Data(base64Encoded: submission.answer) == Data(sealedAnswer),
              submission.reservationId == answer.reservationId else {
            throw StageError.permanent("dispatch.bad_answer_signature", "the answer is not signed by the technician's enrolled device")
        }
    }

    func requestOf(_ reservationID: UUID) async throws -> UUID {
        let rows = try await engine.database.client.query("""
            SELECT request_id FROM \(unescaped: engine.database.table("reservations")) WHERE id = \(reservationID)
            """, logger: logger).collect()
        guard let id = try rows.first?.decode(UUID.self) else {
            throw StageError.permanent("dispatch.unknown_reservation", "no such reservation")
        }
        return id
    }
}
