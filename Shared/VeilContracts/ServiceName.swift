import Foundation

/// The seven services, with the topics each consumes and produces.
public enum ServiceName: String, Sendable, CaseIterable, Codable {
    case ingress
    case anonymizer
    case keyVault = "key-vault"
    case matcher
    case merger
    case dispatcher
    case technicianAlerter = "technician-alerter"

    /// Its PostgreSQL schema (and, prefixed with `veil_`, its database role).
    public var schema: String { rawValue.replacingOccurrences(of: "-", with: "_") }

    /// Its consumer group.
    public var consumerGroup: String { "veil.\(rawValue)" }

    /// The topics it reads.
    public var consumes: [Topic] {
        switch self {
        case .ingress: [.customerNotifications, .posLookupReplies]
        case .anonymizer: [.inquiriesReceived, .keysGrants]
        case .keyVault: [.inquiriesAnonymized, .upstreamRecords, .posLookups, .secureFormsSubmitted]
        case .matcher: [.inquiriesTokenized]
        case .merger: [.inquiriesMatched, .keysGrants]
        case .dispatcher: [.serviceRequests, .dispatchResponses, .secureFormsResults]
        case .technicianAlerter: [.dispatchAssignments]
        }
    }

    /// Topics every replica reads in full with a consumer group of its own (not shared
    /// with the other replicas): the key directory, key grants where it receives them,
    /// and replies to the requests a replica makes itself (point-of-sale lookups).
    public var follows: [Topic] { [.keysDirectory] + consumes.filter { $0 == .keysGrants || $0 == .posLookupReplies } }

    /// The topics its stage consumes, shared among its replicas.
    public var stageTopics: [Topic] { consumes.filter { !follows.contains($0) } }

    /// The topics it writes.
    public var produces: [Topic] {
        switch self {
        case .ingress: [.inquiriesReceived, .serviceRequests, .posLookups, .posTransactions, .secureFormsSubmitted]
        case .anonymizer: [.inquiriesAnonymized]
        case .keyVault: [.inquiriesTokenized, .posLookupReplies, .secureFormsResults, .keysDirectory, .keysGrants]
        case .matcher: [.inquiriesMatched]
        case .merger: [.insights]
        case .dispatcher: [.dispatchAssignments, .customerNotifications]
        case .technicianAlerter: [.dispatchResponses]
        }
    }
}
