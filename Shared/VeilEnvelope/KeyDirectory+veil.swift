extension KeyDirectory {
    /// Veil's seven services, which each hold a signing and an encryption key.
    public static let veilServices = [
        "ingress", "anonymizer", "key-vault", "matcher", "merger", "dispatcher", "technician-alerter",
    ]

    /// Who may publish what on Veil's topics (DESIGN.md section 5), types named
    /// `veil.<noun>.<verb>.v1`. The key directory itself travels signed on
    /// `veil.keys.directory.v1`, not as an envelope, so it is not listed.
    public static let veilAllowlist: [Permission] = [
        .init(topic: "veil.inquiries.received.v1", type: "veil.inquiry.received.v1", producers: ["ingress"]),
        .init(topic: "veil.inquiries.anonymized.v1", type: "veil.inquiry.anonymized.v1", producers: ["anonymizer"]),
        .init(topic: "veil.inquiries.tokenized.v1", type: "veil.inquiry.tokenized.v1", producers: ["key-vault"]),
        .init(topic: "veil.inquiries.matched.v1", type: "veil.inquiry.matched.v1", producers: ["matcher"]),
        .init(topic: "veil.insights.v1", type: "veil.insight.published.v1", producers: ["merger"]),
        .init(topic: "veil.upstream.records.v1", type: "veil.upstream-record.exported.v1", producers: ["upstream-exporter"]),
        .init(topic: "veil.service-requests.v1", type: "veil.service-request.submitted.v1", producers: ["ingress"]),
        .init(topic: "veil.dispatch.assignments.v1", type: "veil.assignment.offered.v1", producers: ["dispatcher"]),
        .init(topic: "veil.dispatch.responses.v1", type: "veil.assignment.answered.v1", producers: ["technician-alerter"]),
        .init(topic: "veil.customer.notifications.v1", type: "veil.notification.sent.v1", producers: ["dispatcher"]),
        .init(topic: "veil.pos.lookups.v1", type: "veil.pos-lookup.requested.v1", producers: ["ingress"]),
        .init(topic: "veil.pos.lookups.replies.v1", type: "veil.pos-lookup.answered.v1", producers: ["key-vault"]),
        .init(topic: "veil.pos.transactions.v1", type: "veil.pos-transaction.recorded.v1", producers: ["ingress"]),
        .init(topic: "veil.secure-forms.submitted.v1", type: "veil.secure-form.submitted.v1", producers: ["ingress"]),
        .init(topic: "veil.secure-forms.results.v1", type: "veil.secure-form.verified.v1", producers: ["key-vault"]),
        .init(topic: "veil.keys.grants.v1", type: "veil.key.granted.v1", producers: ["key-vault"]),
    ]
}
