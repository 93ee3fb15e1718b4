import Crypto
import Foundation
import Hummingbird
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle
import Synchronization
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// Lookups waiting for the key-vault's reply, by lookup id (the correlation id).
///
/// Every ingress replica reads every reply (`PosReplyFollower`, a consumer group of its
/// own), so the replica that holds the HTTP request is the one that answers it; the
/// others find no waiter and drop the reply.
///
/// A waiter is one continuation in a table, and one sweeper (`expireOverdue`, run by the
/// follower every `sweepInterval`) times out the overdue ones, so a lookup costs no task
/// group, stream or timer of its own (those were a dispatch timer armed and cancelled per
/// lookup, one `epoll_ctl` each, on the till's hot path).
final class PendingLookups: Sendable {
    private enum Slot {
        /// Registered before the lookup is published, so a fast reply is kept, not lost.
        case published(deadline: ContinuousClock.Instant)
        case answered(HouseholdAnswer)
        case waiting(CheckedContinuation<HouseholdAnswer?, Never>, deadline: ContinuousClock.Instant)
    }
    private struct State {
        var slots: [String: Slot] = [:]
        /// Set when the sweeper stops (shutdown): later lookups are answered `nil` at once.
        var closed = false
    }
    private let state = Mutex(State())
    /// How often overdue lookups are looked for: a lookup times out at most this late.
    let sweepInterval: Duration

    init(sweepInterval: Duration = .milliseconds(10)) {
        self.sweepInterval = sweepInterval
    }

    /// Registers `id`, runs `send` (which publishes the lookup), and waits for the reply
    /// until `timeout`; `nil` when the vault did not answer in time or the request was cancelled.
    func exchange(_ id: String, timeout: Duration, send: () async throws -> Void) async throws -> HouseholdAnswer? {
        let deadline = ContinuousClock.now + timeout
        guard state.withLock({ state in
            guard !state.closed else { return false }
            state.slots[id] = .published(deadline: deadline)
            return true
        }) else { return nil }
        do {
            try await send()
        } catch {
            state.withLock { _ = $0.slots.removeValue(forKey: id) }
            throw error
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let answered: HouseholdAnswer?? = state.withLock { state in
                    switch state.slots[id] {
                    case .answered(let answer):
                        state.slots.removeValue(forKey: id)
                        return .some(answer)
                    case .published:
                        if Task.isCancelled || state.closed {
                            state.slots.removeValue(forKey: id)
                            return .some(nil)
                        }
                        state.slots[id] = .waiting(continuation, deadline: deadline)
                        return .none
                    case .waiting, nil:
                        return .some(nil)  // expired by the sweeper while publishing
                    }
                }
                if let answered { continuation.resume(returning: answered) }
            }
        } onCancel: {
            cancel(id)
        }
    }

    /// Hands a reply to its waiter; false when nobody here waits for it (another replica's, or too late).
    @discardableResult
    func deliver(_ answer: HouseholdAnswer) -> Bool {
        let id = answer.lookupId
        let outcome: (known: Bool, waiter: CheckedContinuation<HouseholdAnswer?, Never>?) = state.withLock { state in
            switch state.slots[id] {
            case .published:
                state.slots[id] = .answered(answer)
                return (true, nil)
            case .waiting(let continuation, _):
                state.slots.removeValue(forKey: id)
                return (true, continuation)
            case .answered, nil:
                return (false, nil)
            }
        }
        outcome.waiter?.resume(returning: answer)
        return outcome.known
    }

    /// Answers `nil` to every lookup whose deadline has passed; returns how many.
    @discardableResult
    func expireOverdue(now: ContinuousClock.Instant = .now) -> Int {
        expire { $0 <= now }
    }

    /// Times out overdue lookups every `sweepInterval` until the task is cancelled, then
    /// answers every waiting lookup `nil` and refuses new ones (nobody will read replies).
    func sweep() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: sweepInterval)
            expireOverdue()
        }
        state.withLock { $0.closed = true }
        _ = expire { _ in true }
    }

    private func expire(where overdue: (ContinuousClock.Instant) -> Bool) -> Int {
        let expired: [CheckedContinuation<HouseholdAnswer?, Never>] = state.withLock { state in
            var expired: [CheckedContinuation<HouseholdAnswer?, Never>] = []
            for (id, slot) in state.slots {
                switch slot {
                case .waiting(let continuation, let deadline) where overdue(deadline):
                    expired.append(continuation)
                    state.slots.removeValue(forKey: id)
                case .published(let deadline) where overdue(deadline):
                    state.slots.removeValue(forKey: id)  // its exchange finds it gone and answers nil
                default:
                    break
                }
            }
            return expired
        }
        expired.forEach { $0.resume(returning: nil) }
        return expired.count
    }

    /// The till hung up: its waiting lookup answers `nil` now.
    private func cancel(_ id: String) {
        let waiter: CheckedContinuation<HouseholdAnswer?, Never>? = state.withLock { state in
            guard case .waiting(let continuation, _) = state.slots[id] else { return nil }
            state.slots.removeValue(forKey: id)
            return continuation
        }
        waiter?.resume(returning: nil)
    }

    var count: Int { state.withLock { $0.slots.count } }

    /// The replies in `batch` that may answer a lookup made here, judged by the Kafka key
    /// (the key-vault keys its reply with the lookup's key, the lookup id) before anything
    /// is verified. Every replica reads every reply, so without this each replica would
    /// verify and open all of them (an Ed25519 verification and an X25519 agreement each,
    /// about a quarter of ingress's work per lookup) and its share of that work would grow
    /// with the number of replicas. The key only selects what to verify: what a reply
    /// answers is read from its verified content. A reply without a key is verified; one
    /// to a lookup that already ended here (timed out, cancelled) is not.
    /// `key` reads a message's Kafka key as text (`nil` for none).
    func addressedHere<Batch: Collection>(_ batch: Batch, key: (Batch.Element) -> String?) -> [Batch.Element] {
        let keys = batch.map(key)
        let wanted = state.withLock { state in keys.map { key in key.map { state.slots[$0] != nil } ?? true } }
        return zip(batch, wanted).filter(\.1).map(\.0)
    }
}

/// Reads `veil.pos.lookups.replies.v1` from the end with a consumer group of this
/// replica's own, verifies each reply to a lookup made here (signed by the key-vault,
/// sealed to ingress) and wakes the waiting lookup; replies to other replicas' lookups
/// are skipped unverified (`PendingLookups.addressedHere`).
struct PosReplyFollower: Service {
    let consumer: KafkaConsumer
    let codec: EnvelopeCodec
    let pending: PendingLookups
    let metrics: ServiceMetrics
    let logger: Logger

    init(context: ServiceContext, pending: PendingLookups) throws {
        var configuration = ConsumerConfiguration(kafka: context.configuration.kafka(consuming: [Topic.posLookupReplies]),
                                                  groupID: "\(ServiceName.ingress.consumerGroup).pos-replies.\(UUID().uuidString.prefix(8))",
                                                  topics: [Topic.posLookupReplies.name])
        // Only replies to lookups made from now on matter, and readiness (assigned) must mean
        // that none of those can be missed.
        configuration.offsetReset = .latest
        configuration.startsAtEnd = true
        configuration.maxBatchSize = 256
        consumer = try KafkaConsumer(configuration: configuration, logger: context.logger)
        codec = context.codec
        self.pending = pending
        metrics = context.metrics
        logger = context.logger
    }

    /// `veil_pos_replies_total{outcome}`: answered (a waiting lookup here got it), late (verified,
    /// but its lookup ended meanwhile, or a second copy), rejected (failed verification or
    /// unreadable), skipped (not verified here: keyed with another replica's lookup, or with
    /// one of ours that already ended, such as a reply after the time-out).
    private func count(_ outcome: String, _ amount: Int = 1) {
        guard amount > 0 else { return }
        metrics.count("pos_replies", help: "Point-of-sale replies read by this replica, by outcome", label: ("outcome", outcome), by: amount)
    }

    /// Whether it was assigned its partitions: replies published from now on will be read.
    var isAssigned: Bool { !consumer.assignment.isEmpty }

    func run() async throws {
        let consumer = self.consumer, pending = self.pending
        let sweeper = Task { await pending.sweep() }
        defer { sweeper.cancel() }
        try await withGracefulShutdownHandler {
            // Replies are lent, not copied: only those keyed for this replica are copied out.
            // The batch is marked at once: the group is this replica's own and starts at the
            // end (`startsAtEnd`), so its offsets are never read back.
            while let mine = try await consumer.withNextBatch({ batch in
                let mine = pending.addressedHere(batch) { $0.key.map { String(decoding: $0, as: UTF8.self) } }.map { $0.copy() }
                count("skipped", batch.count - mine.count)
                consumer.markProcessed(batch)
                return mine
            }) {
                for (message, result) in zip(mine, await codec.verify(mine)) {
                    switch result {
                    case .success(let envelope):
                        guard envelope.header.type == MessageType.posLookupAnswered, let bytes = envelope.payload(PartLabel.household),
                              let answer = try? ContractCoding.decode(HouseholdAnswer.self, from: bytes) else {
                            logger.warning("unreadable lookup reply dropped", metadata: ["message.id": "\(envelope.header.id)"])
                            count("rejected")
                            continue
                        }
                        count(pending.deliver(answer) ? "answered" : "late")
                    case .failure(let error):
                        // A reply nobody can trust is dropped: the lookup times out with a clear error.
                        logger.warning("lookup reply rejected", metadata: ["code": "\(error.code)", "partition": "\(message.partition)",
                                                                          "offset": "\(message.offset)"])
                        count("rejected")
                    }
                }
            }
        } onGracefulShutdown: {
            consumer.stopReading()
        }
        await consumer.close()
    }
}

/// `POST /v1/pos/lookups` and `POST /v1/pos/transactions`: a till's two calls.
///
/// Terminals are enrolled devices (`POST /v1/devices` with the terminal's id and keys) and
/// sign every call like a phone does. The customer's TID is sealed by the terminal to the
/// key-vault: ingress checks the part's label and recipient and forwards it unopened.
extension RequestHandler {
    func posLookup(_ request: Request) async throws -> Response {
        guard let pending = posLookups else { throw Problem.unavailable }
        let (body, lookup) = try await decode(PosLookupRequest.self, from: request)
        try validate(id: lookup.terminalId, field: "terminalId")
        let nonce = try nonce(lookup.nonce)
        let part = try sealedPart(lookup.tid, field: "tid", label: PartLabel.terminalID, to: .keyVault)
        guard let deviceKey = settings.pseudonymDevice.current else { throw Problem.unavailable }
        let terminalRef = deviceKey.hash(Array(lookup.terminalId.utf8))
        // One round trip on the till's hot path: the terminal's key and the nonce together.
        let (signingKey, fresh) = try await terminalKeyUsingNonce(nonce, terminalRef: terminalRef)
        try verify(request, body: body, with: signingKey, path: "/v1/pos/lookups", method: "POST")
        try checkFreshness(lookup.timestamp)
        guard fresh else { throw Problem.replayedNonce }

        let id = MessageID.generate()
        let draft = EnvelopeDraft(id: id, type: MessageType.posLookupRequested, parts: [.forwarded(part)])
        let answer = try await pending.exchange(id.description, timeout: settings.posLookupTimeout) {
            try await publish(draft, topic: Topic.posLookups, key: Array(id.description.utf8))
        }
        guard let answer else {
            context.logger.warning("lookup timed out", metadata: ["message.id": "\(id)"])
            throw Problem.vaultTimeout
        }
        guard answer.found, let household = answer.householdId, let deidentified = answer.deidentifiedTid else {
            throw answer.error == nil ? Problem.householdNotFound : Problem.invalidField("tid", "the key-vault could not read the sealed TID")
        }
        let token = try lookupToken(terminalRef: terminalRef, deidentifiedTid: deidentified, householdId: household,
                                    expiresAtMs: Int64(Date().timeIntervalSince1970 * 1000) + Self.lookupTokenLifetimeMs)
        return try json(.ok, PosLookupResult(lookupId: id.description, householdId: household,
                                             deidentifiedTid: deidentified.base64EncodedString(), lookupToken: token))
    }

    func posTransaction(_ request: Request) async throws -> Response {
        let (body, transaction) = try await decode(PosTransactionRequest.self, from: request)
        try validate(id: transaction.terminalId, field: "terminalId")
        let nonce = try nonce(transaction.nonce)
        guard let deidentified = Data(base64Encoded: transaction.deidentifiedTid), deidentified.count == 32 else {
            throw Problem.invalidField("deidentifiedTid", "must be the base64 de-identified TID a lookup returned")
        }
        try validate(id: transaction.householdId, field: "householdId")
        guard let token = Data(base64Encoded: transaction.lookupToken), token.count == 24 else {
            throw Problem.invalidField("lookupToken", "must be the lookupToken the household lookup returned")
        }
        guard (1...500).contains(transaction.upcs.count),
              transaction.upcs.allSatisfy({ (8...14).contains($0.count) && $0.allSatisfy { $0.isASCII && $0.isNumber } }) else {
            throw Problem.invalidField("upcs", "must be 1 to 500 UPC/EAN codes of 8 to 14 digits")
        }
        guard !settings.posRecipients.isEmpty else { throw Problem.unavailable }
        guard let deviceKey = settings.pseudonymDevice.current else { throw Problem.unavailable }
        let terminalRef = deviceKey.hash(Array(transaction.terminalId.utf8))
        let (signingKey, fresh) = try await terminalKeyUsingNonce(nonce, terminalRef: terminalRef)
        try verify(request, body: body, with: signingKey, path: "/v1/pos/transactions", method: "POST")
        try checkFreshness(transaction.timestamp)
        guard fresh else { throw Problem.replayedNonce }
        // Only a household and de-identified TID this terminal got from a lookup, recently.
        let expires = token.prefix(8).reduce(Int64(0)) { $0 << 8 | Int64($1) }
        guard expires > Int64(Date().timeIntervalSince1970 * 1000),
              ConstantTime.equal(try lookupToken(terminalRef: terminalRef, deidentifiedTid: deidentified,
                                                 householdId: transaction.householdId, expiresAtMs: expires),
                                 transaction.lookupToken) else { throw Problem.lookupTokenRefused }

        let id = MessageID.generate()
        let record = PosTransactionRecord(transactionId: id.description, terminalRef: Data(terminalRef), deidentifiedTid: deidentified,
                                          householdId: transaction.householdId, upcs: transaction.upcs,
                                          occurredAt: Date(timeIntervalSince1970: Double(transaction.timestamp) / 1000),
                                          region: settings.region)
        let draft = EnvelopeDraft(id: id, type: MessageType.posTransactionRecorded, parts: [
            .sealed(PartLabel.posTransaction, payload: ContractCoding.encode(record), to: settings.posRecipients),
        ])
        try await publish(draft, topic: Topic.posTransactions, key: Array(transaction.householdId.utf8))
        return try json(.accepted, PosTransactionReceipt(transactionId: id.description, status: "published"))
    }

    /// The enrolled terminal's signing key, and whether `nonce` was fresh (it is used now,
    /// in the same statement, before the signature is checked: a forged request burns only
    /// its own random nonce).
    func terminalKeyUsingNonce(_ nonce: Data, terminalRef: [UInt8]) async throws -> (Curve25519.Signing.PublicKey, Bool) {
        let found = try await context.database.client.first(
            TerminalKeyUsingNonceStatement(terminalRef: ByteBuffer(bytes: terminalRef), nonce: ByteBuffer(bytes: nonce)),
            logger: context.logger)
        guard let (signing, revoked, inserted) = found else { throw Problem.unknownDevice }
        guard !revoked else { throw Problem.revokedDevice }
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: Array(signing.readableBytesView)) else {
            throw Problem.unknownDevice
        }
        return (key, inserted == 1)
    }

    /// How long a lookup's token lets the till record the sale.
    static let lookupTokenLifetimeMs: Int64 = 15 * 60 * 1000

    /// base64(expiry in ms, 8 bytes big-endian ‖ first 16 bytes of HMAC(kL, terminalRef ‖ dTID ‖ HHID ‖ expiry)),
    /// `kL` derived from `kP.dev`: stateless, so any ingress replica checks what another issued.
    func lookupToken(terminalRef: [UInt8], deidentifiedTid: Data, householdId: String, expiresAtMs: Int64) throws -> String {
        guard let device = settings.pseudonymDevice.current else { throw Problem.unavailable }
        let key = settings.subkeys.hasher(device, purpose: "veil.pos-lookup-token.v1")
        let expiry = (0..<8).map { UInt8(truncatingIfNeeded: expiresAtMs >> (8 * (7 - $0))) }
        let mac = key.hash(terminalRef + Array(deidentifiedTid) + Array(householdId.utf8) + [0] + expiry)
        return Data(expiry + mac.prefix(16)).base64EncodedString()
    }
}
