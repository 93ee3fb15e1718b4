import ArgumentParser
import DispatcherService
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
            // Point of sale: a till's lookup, the vault's answers, the recorded transaction, the household file.
            let tid = "6274000000007919"
            let lookupID = MessageID.generate().description
            let deidentified = Data(key.hash(Array(tid.utf8)))
            let terminalRef = Data(key.hash(Array("till-0042".utf8)))
            let found = HouseholdAnswer(lookupId: lookupID, found: true, householdId: "HH-0000001", deidentifiedTid: deidentified)
            let notFound = HouseholdAnswer(lookupId: MessageID.generate().description, found: false)
            let unreadable = HouseholdAnswer(lookupId: MessageID.generate().description, found: false,
                                             error: "no readable terminal-id part sealed to the key-vault")
            let sale = PosTransactionRecord(transactionId: MessageID.generate().description, terminalRef: terminalRef,
                                            deidentifiedTid: deidentified, householdId: "HH-0000001",
                                            upcs: ["4006381333931", "036000291452", "96385074"], occurredAt: Date(), region: "north")
            let saleNoRegion = PosTransactionRecord(transactionId: MessageID.generate().description, terminalRef: terminalRef,
                                                    deidentifiedTid: deidentified, householdId: "HH-0000002", upcs: ["5901234123457"],
                                                    occurredAt: Date(), region: nil)
            let households = HouseholdBatch(households: [HouseholdMapping(tid: tid, householdId: "HH-0000001"),
                                                         HouseholdMapping(tid: "6274000000015838", householdId: "HH-0000001")])
            // Secure forms: the agent's request, the device's value, ingress's assertion, the vault's verdicts, the PIN file.
            let accountRef = Data(key.derived("veil.account-ref.v1").hash(Array("customer-1001".utf8)))
            let expires = Int64(Date().timeIntervalSince1970 * 1000) + 600_000
            let pinForm = SecureFormRequest(formId: UUID().uuidString.lowercased(), kind: .pin, accountRef: accountRef, expiresAtMs: expires,
                                            signature: Data(repeating: 7, count: 64), signerKeyId: "dispatcher.signing", signerVersion: 1)
            let cardForm = SecureFormRequest(formId: UUID().uuidString.lowercased(), kind: .card, accountRef: accountRef, expiresAtMs: expires,
                                             signature: Data(repeating: 8, count: 64), signerKeyId: "dispatcher.signing", signerVersion: 1)
            let formAssertion = AuthAssertion(requestId: pinForm.formId, accountRef: accountRef, deviceRef: hash,
                                              deviceEncryptionKey: Data(key.rawBytes), method: "device-signature",
                                              enrolledAt: Date(timeIntervalSinceNow: -86_400), authenticatedAt: Date())
            let formSigned = SignedAssertion(assertion: Data(ContractCoding.encode(formAssertion)), signature: Data(repeating: 9, count: 64),
                                             signerKeyId: "ingress.signing", signerVersion: 1)
            let cardToken = "tok_" + key.derived("veil.value-token.v1").hash(Array("card:4111111111111111".utf8)).prefix(16).hexEncoded
            let verified = SecureFormResult(formId: pinForm.formId, kind: .pin, outcome: .verified, accountRef: accountRef)
            let tokenized = SecureFormResult(formId: cardForm.formId, kind: .card, outcome: .tokenized, accountRef: accountRef,
                                             last4: "1111", token: cardToken)
            let locked = SecureFormResult(formId: UUID().uuidString.lowercased(), kind: .pin, outcome: .locked, accountRef: accountRef)
            let pins = PinVerifierBatch(pins: [PinVerifierRecord(accountRef: accountRef, pin: "4821"),
                                               PinVerifierRecord(accountRef: hash, pin: "90210735")])
            let chatID = UUID().uuidString.lowercased()
            // Channel enhancement: the link texted to a customer who wrote by SMS, as the app opens it; the
            // dispatcher's answers. The token is `base64url(claims JSON) "." base64url(Ed25519 signature)`.
            let smsChatID = UUID().uuidString.lowercased()
            let linkClaims = ChannelLinkClaims(linkId: UUID().uuidString.lowercased(), requestId: smsChatID,
                                               phoneRef: Data(key.derived("veil.phone-ref.v1").hash(Array("+4917612345678".utf8))),
                                               expiresAtMs: Int64(Date().timeIntervalSince1970 * 1000) + 900_000,
                                               signerKeyId: "dispatcher.signing", signerVersion: 1)
            let linkSignature = key.hash(Array("channel-link signature, first half".utf8))
                + key.hash(Array("channel-link signature, second half".utf8))
            let channelLink = "https://app.veil.example/link#"
                + ChannelLink.token(claims: ContractCoding.encode(linkClaims), signature: linkSignature)
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
                (MessageType.upstreamRecordsExported, .upstreamRecords, PartLabel.households, "HouseholdBatch", ContractCoding.encode(households)),
                (MessageType.upstreamRecordsExported, .upstreamRecords, PartLabel.pinVerifiers, "PinVerifierBatch", ContractCoding.encode(pins)),
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
                (MessageType.serviceRequestSubmitted, .serviceRequests, PartLabel.serviceRequest, "ServiceRequestPayload",
                 ContractCoding.encode(ServiceRequestPayload(category: "chat", priority: 3, description: "Yes, the one ending 1111.",
                                                             conversationId: chatID))),
                (MessageType.serviceRequestSubmitted, .serviceRequests, PartLabel.serviceRequest, "ServiceRequestPayload",
                 ContractCoding.encode(ServiceRequestPayload(category: "channel-link", priority: 3, description: "open the app channel",
                                                             channelLink: channelLink))),
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
                (MessageType.notificationSent, .customerNotifications, PartLabel.notification, "CustomerNotification",
                 ContractCoding.encode(CustomerNotification(requestId: chatID, status: "message", technician: "Mia",
                                                            message: "Which card is it about?", at: Date()))),
                (MessageType.notificationSent, .customerNotifications, PartLabel.notification, "CustomerNotification",
                 ContractCoding.encode(CustomerNotification(requestId: chatID, status: "secure-form", technician: "Mia",
                                                            message: "Please enter your card number in the secure form.", at: Date(),
                                                            form: cardForm))),
                (MessageType.notificationSent, .customerNotifications, PartLabel.notification, "CustomerNotification",
                 ContractCoding.encode(CustomerNotification(requestId: smsChatID, status: "command", technician: "Mia",
                                                            message: AppCommand.openDiagnostics.rawValue, at: Date()))),
                (MessageType.notificationSent, .customerNotifications, PartLabel.notification, "CustomerNotification",
                 ContractCoding.encode(CustomerNotification(requestId: smsChatID, status: "channel-opened", technician: nil,
                                                            message: "You are now connected to our service desk in the app.", at: Date()))),
                (MessageType.notificationSent, .customerNotifications, PartLabel.notification, "CustomerNotification",
                 ContractCoding.encode(CustomerNotification(requestId: smsChatID, status: "channel-refused", technician: nil,
                                                            message: "This link was already used or has expired. Ask for a new one.",
                                                            at: Date()))),
                (MessageType.notificationSent, .customerNotifications, PartLabel.routing, "NotificationRouting",
                 ContractCoding.encode(NotificationRouting(deviceRef: hash, requestId: UUID().uuidString.lowercased()))),
                (MessageType.posLookupRequested, .posLookups, PartLabel.terminalID, "TerminalIDPayload",
                 ContractCoding.encode(TerminalIDPayload(tid: tid))),
                (MessageType.posLookupAnswered, .posLookupReplies, PartLabel.household, "HouseholdAnswer", ContractCoding.encode(found)),
                (MessageType.posLookupAnswered, .posLookupReplies, PartLabel.household, "HouseholdAnswer", ContractCoding.encode(notFound)),
                (MessageType.posLookupAnswered, .posLookupReplies, PartLabel.household, "HouseholdAnswer", ContractCoding.encode(unreadable)),
                (MessageType.posTransactionRecorded, .posTransactions, PartLabel.posTransaction, "PosTransactionRecord",
                 ContractCoding.encode(sale)),
                (MessageType.posTransactionRecorded, .posTransactions, PartLabel.posTransaction, "PosTransactionRecord",
                 ContractCoding.encode(saleNoRegion)),
                (MessageType.secureFormSubmitted, .secureFormsSubmitted, PartLabel.secureValue, "SecureValuePayload",
                 ContractCoding.encode(SecureValuePayload(formId: pinForm.formId, kind: .pin, value: "4821", request: pinForm))),
                (MessageType.secureFormSubmitted, .secureFormsSubmitted, PartLabel.secureValue, "SecureValuePayload",
                 ContractCoding.encode(SecureValuePayload(formId: cardForm.formId, kind: .card, value: "4111 1111 1111 1111", request: cardForm))),
                (MessageType.secureFormSubmitted, .secureFormsSubmitted, PartLabel.authentication, "SignedAssertion",
                 ContractCoding.encode(formSigned)),
                (MessageType.secureFormVerified, .secureFormsResults, PartLabel.secureFormResult, "SecureFormResult",
                 ContractCoding.encode(verified)),
                (MessageType.secureFormVerified, .secureFormsResults, PartLabel.secureFormResult, "SecureFormResult",
                 ContractCoding.encode(tokenized)),
                (MessageType.secureFormVerified, .secureFormsResults, PartLabel.secureFormResult, "SecureFormResult",
                 ContractCoding.encode(locked)),
            ]
            // The payload bytes are spliced in exactly as ContractCoding wrote them.
            let objects = samples.map { type, topic, part, schema, payload in
                #"{"part":"\#(part)","payload":\#(String(decoding: payload, as: UTF8.self)),"schema":"\#(schema)","topic":"\#(topic.name)","type":"\#(type)"}"#
            }
            print("[\n  " + objects.joined(separator: ",\n  ") + "\n]")
        }
    }
}
