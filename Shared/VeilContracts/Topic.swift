/// A Kafka topic in Veil's contract (docs/ARCHITECTURE.md, DESIGN.md §5).
public struct Topic: Sendable, Hashable, CustomStringConvertible {
    /// The full name, e.g. `veil.inquiries.received.v1`.
    public let name: String
    /// How long the broker keeps messages. Topics that carry pseudonyms keep them briefly.
    public let retentionMilliseconds: Int64?
    /// Compacted topics keep the latest value per key (the key directory).
    public let compacted: Bool
    /// Read by parties outside Veil (downstream providers); documented in docs/asyncapi.yaml.
    public let isOutput: Bool
    /// A caller waits on an open HTTP request while its message crosses this topic (a till's
    /// household lookup): consumers of it fetch with `KAFKA_REPLY_FETCH_WAIT_MAX_MS`.
    public let callerWaits: Bool

    public init(_ name: String, retentionMilliseconds: Int64? = nil, compacted: Bool = false, isOutput: Bool = false,
                callerWaits: Bool = false) {
        self.name = name
        self.retentionMilliseconds = retentionMilliseconds
        self.compacted = compacted
        self.isOutput = isOutput
        self.callerWaits = callerWaits
    }

    /// Where messages that can never be processed on this topic go, with the reason in headers.
    public var deadLetter: Topic { Topic(name + ".dlq", retentionMilliseconds: 14 * Topic.day) }

    /// Topic-level configuration for creation.
    public var config: [String: String] {
        var config: [String: String] = [:]
        if let retentionMilliseconds { config["retention.ms"] = String(retentionMilliseconds) }
        if compacted { config["cleanup.policy"] = "compact" }
        return config
    }

    public var description: String { name }

    static let hour: Int64 = 3_600_000
    static let day: Int64 = 24 * hour
}

extension Topic {
    // Inquiry answering. Topics carrying P, A or encryptedId keep them one hour.
    public static let inquiriesReceived = Topic("veil.inquiries.received.v1", retentionMilliseconds: hour)
    public static let inquiriesAnonymized = Topic("veil.inquiries.anonymized.v1", retentionMilliseconds: hour)
    public static let inquiriesTokenized = Topic("veil.inquiries.tokenized.v1", retentionMilliseconds: hour)
    public static let inquiriesMatched = Topic("veil.inquiries.matched.v1", retentionMilliseconds: hour)
    public static let insights = Topic("veil.insights.v1", retentionMilliseconds: 7 * day, isOutput: true)
    public static let upstreamRecords = Topic("veil.upstream.records.v1", retentionMilliseconds: day)

    // Service requests and technicians.
    public static let serviceRequests = Topic("veil.service-requests.v1", retentionMilliseconds: 7 * day)
    public static let dispatchAssignments = Topic("veil.dispatch.assignments.v1", retentionMilliseconds: 7 * day)
    public static let dispatchResponses = Topic("veil.dispatch.responses.v1", retentionMilliseconds: 7 * day)
    public static let customerNotifications = Topic("veil.customer.notifications.v1", retentionMilliseconds: 7 * day)

    // Point of sale.
    public static let posLookups = Topic("veil.pos.lookups.v1", retentionMilliseconds: hour, callerWaits: true)
    public static let posLookupReplies = Topic("veil.pos.lookups.replies.v1", retentionMilliseconds: hour, callerWaits: true)
    public static let posTransactions = Topic("veil.pos.transactions.v1", retentionMilliseconds: 7 * day, isOutput: true)

    // Confidential information in chat.
    public static let secureFormsSubmitted = Topic("veil.secure-forms.submitted.v1", retentionMilliseconds: hour)
    public static let secureFormsResults = Topic("veil.secure-forms.results.v1", retentionMilliseconds: day)

    // Keys.
    public static let keysDirectory = Topic("veil.keys.directory.v1", compacted: true)
    public static let keysGrants = Topic("veil.keys.grants.v1", retentionMilliseconds: 7 * day)

    /// Every topic of the contract, without dead-letter topics.
    public static let all: [Topic] = [
        inquiriesReceived, inquiriesAnonymized, inquiriesTokenized, inquiriesMatched, insights, upstreamRecords,
        serviceRequests, dispatchAssignments, dispatchResponses, customerNotifications,
        posLookups, posLookupReplies, posTransactions, secureFormsSubmitted, secureFormsResults,
        keysDirectory, keysGrants,
    ]

    /// Every topic, with the dead-letter topic of each consumed one.
    public static let allWithDeadLetters: [Topic] = all + all.filter { !$0.isOutput }.map(\.deadLetter)
}
