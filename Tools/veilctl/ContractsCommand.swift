import ArgumentParser
import Foundation
import VeilContracts
import VeilCore
import VeilService

/// `veilctl contracts samples`: one sample of every decrypted part payload the code
/// emits, encoded by the same types and coder the services use. The deployment checks
/// validate them against the JSON Schemas in docs/asyncapi.yaml, so the document
/// cannot drift from the code.
struct ContractsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "contracts", abstract: "Topic contracts for downstream providers.",
                                                    subcommands: [Samples.self])

    struct Samples: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a JSON array of sample payloads: {type, topic, part, schema, payload} for every part the code emits.")

        func run() throws {
            let key = VersionedKey.generate(version: 1)
            let hash = Data(key.hash(Array("+4915112345678".utf8)))
            let access = AccessInfo(anonymizedDeviceId: Data(key.hash(Array("device".utf8))), deviceKeyVersion: 1, channel: "app",
                                    receivedAt: Date(), appVersion: "3.1.0", region: "north", appData: ["screen": "billing"])
            let bare = AccessInfo(anonymizedDeviceId: hash, deviceKeyVersion: 2, channel: "chat", receivedAt: Date(), appVersion: "1",
                                  region: nil, appData: [:])
            let record = try RecordCipher.seal(["tier": "gold", "plan": "contract-l"], with: key)
            let insight = Insight(inquiryId: MessageID.generate().description, matched: true, matchToken: hash, matchKeyVersion: 1,
                                  access: access, record: ["tier": "gold", "plan": "contract-l"], mergedAt: Date())
            let unmatched = Insight(inquiryId: MessageID.generate().description, matched: false, matchToken: hash, matchKeyVersion: 2,
                                    access: bare, record: nil, mergedAt: Date())
            let samples: [(String, Topic, String, String, [UInt8])] = [
                (MessageType.inquiryReceived, .inquiriesReceived, PartLabel.pseudonym, "PseudonymPayload",
                 ContractCoding.encode(PseudonymPayload(pseudonym: hash, keyVersion: 1))),
                (MessageType.inquiryReceived, .inquiriesReceived, PartLabel.accessInfo, "AccessInfo", ContractCoding.encode(access)),
                (MessageType.inquiryReceived, .inquiriesReceived, PartLabel.accessInfo, "AccessInfo", ContractCoding.encode(bare)),
                (MessageType.inquiryAnonymized, .inquiriesAnonymized, PartLabel.encryptedID, "EncryptedIDPayload",
                 ContractCoding.encode(EncryptedIDPayload(doublyHashedId: hash, thirdPartyKeyVersion: 1))),
                (MessageType.inquiryAnonymized, .inquiriesAnonymized, PartLabel.accessInfo, "AccessInfo", ContractCoding.encode(access)),
                (MessageType.inquiryTokenized, .inquiriesTokenized, PartLabel.matchToken, "MatchTokenPayload",
                 ContractCoding.encode(MatchTokenPayload(token: hash, matchKeyVersion: 1))),
                (MessageType.inquiryTokenized, .inquiriesTokenized, PartLabel.accessInfo, "AccessInfo", ContractCoding.encode(access)),
                (MessageType.inquiryMatched, .inquiriesMatched, PartLabel.match, "MatchPayload",
                 ContractCoding.encode(MatchPayload(token: hash, matchKeyVersion: 1, record: record))),
                (MessageType.inquiryMatched, .inquiriesMatched, PartLabel.match, "MatchPayload",
                 ContractCoding.encode(MatchPayload(token: hash, matchKeyVersion: 1, record: nil))),
                (MessageType.inquiryMatched, .inquiriesMatched, PartLabel.accessInfo, "AccessInfo", ContractCoding.encode(access)),
                (MessageType.insightPublished, .insights, PartLabel.insight, "Insight", ContractCoding.encode(insight)),
                (MessageType.insightPublished, .insights, PartLabel.insight, "Insight", ContractCoding.encode(unmatched)),
                (MessageType.upstreamRecordsExported, .upstreamRecords, PartLabel.records, "UpstreamBatch",
                 ContractCoding.encode(UpstreamBatch(records: [UpstreamRecord(pseudonym: hash, keyVersion: 1, fields: ["tier": "gold"])]))),
                (MessageType.keyGranted, .keysGrants, PartLabel.grant, "KeyGrant",
                 ContractCoding.encode(KeyGrant(purpose: .thirdPartyHash, keys: [.init(version: 1, material: Data(key.rawBytes), active: true)]))),
                (MessageType.keyGranted, .keysGrants, PartLabel.grant, "KeyGrant",
                 ContractCoding.encode(KeyGrant(purpose: .record, keys: [.init(version: 1, material: Data(key.rawBytes), active: false),
                                                                          .init(version: 2, material: Data(key.rawBytes), active: true)]))),
                (MessageType.serviceRequestSubmitted, .serviceRequests, PartLabel.serviceRequest, "ServiceRequestPayload",
                 ContractCoding.encode(ServiceRequestPayload(category: "outage", priority: 4, description: "No signal since 9am",
                                                             region: "north", tier: "gold"))),
                (MessageType.serviceRequestSubmitted, .serviceRequests, PartLabel.serviceRequest, "ServiceRequestPayload",
                 ContractCoding.encode(ServiceRequestPayload(category: "question", priority: 1, description: "When is my next visit?"))),
                (MessageType.serviceRequestSubmitted, .serviceRequests, PartLabel.authentication, "SignedAssertion",
                 ContractCoding.encode(SignedAssertion(assertion: Data(ContractCoding.encode(AuthAssertion(
                     requestId: MessageID.generate().description, accountRef: hash, deviceRef: hash,
                     deviceEncryptionKey: Data(key.rawBytes), method: "device-signature", enrolledAt: Date(), authenticatedAt: Date()))),
                     signature: Data(repeating: 7, count: 64), signerKeyId: "ingress.signing", signerVersion: 1))),
                (MessageType.assignmentOffered, .dispatchAssignments, PartLabel.alert, "AlertPayload",
                 ContractCoding.encode(AlertPayload(reservationId: UUID().uuidString.lowercased(), requestId: UUID().uuidString.lowercased(),
                                                    category: "outage", priority: 4, region: "north", description: "No signal",
                                                    expiresAt: Date()))),
                (MessageType.assignmentOffered, .dispatchAssignments, PartLabel.alert, "AlertPayload",
                 ContractCoding.encode(AlertPayload(reservationId: UUID().uuidString.lowercased(), requestId: UUID().uuidString.lowercased(),
                                                    category: "installation", priority: 2, region: nil, description: "Transferred",
                                                    expiresAt: Date(), assertion: SignedAssertion(
                                                        assertion: Data("{}".utf8), signature: Data(repeating: 2, count: 64),
                                                        signerKeyId: "ingress.signing", signerVersion: 1)))),
                (MessageType.assignmentOffered, .dispatchAssignments, PartLabel.routing, "AlertRouting",
                 ContractCoding.encode(AlertRouting(technicianId: "tech-ana", reservationId: UUID().uuidString.lowercased(),
                                                    expiresAt: Date(), signingKey: Data(key.rawBytes)))),
                (MessageType.assignmentAnswered, .dispatchResponses, PartLabel.answer, "TechnicianAnswer",
                 ContractCoding.encode(TechnicianAnswer(reservationId: UUID().uuidString.lowercased(), technicianId: "tech-ana",
                                                        action: .decline, note: "out of parts"))),
                (MessageType.assignmentAnswered, .dispatchResponses, PartLabel.technicianSignature, "TechnicianSignature",
                 ContractCoding.encode(TechnicianSignature(method: "POST", path: "/v1/technicians/tech-ana/answers",
                                                           body: Data("{}".utf8), signature: Data(repeating: 1, count: 64)))),
                (MessageType.notificationSent, .customerNotifications, PartLabel.notification, "CustomerNotification",
                 ContractCoding.encode(CustomerNotification(requestId: UUID().uuidString.lowercased(), status: "assigned",
                                                            technician: "Ana", message: "Ana will take care of it.", at: Date()))),
                (MessageType.notificationSent, .customerNotifications, PartLabel.routing, "NotificationRouting",
                 ContractCoding.encode(NotificationRouting(deviceRef: hash, requestId: UUID().uuidString.lowercased()))),
            ]
            // The payload bytes are spliced in exactly as ContractCoding wrote them.
            let objects = samples.map { type, topic, part, schema, payload in
                #"{"part":"\#(part)","payload":\#(String(decoding: payload, as: UTF8.self)),"schema":"\#(schema)","topic":"\#(topic.name)","type":"\#(type)"}"#
            }
            print("[\n  " + objects.joined(separator: ",\n  ") + "\n]")
        }
    }
}
