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
final class PendingLookups: Sendable {
    private let waiting = Mutex<[String: AsyncStream<HouseholdAnswer>.Continuation]>([:])

    /// Registers `id`, runs `send` (which publishes the lookup), and waits for the reply
    /// until `timeout`; `nil` when the vault did not answer in time.
    func exchange(_ id: String, timeout: Duration, send: () async throws -> Void) async throws -> HouseholdAnswer? {
        let (stream, continuation) = AsyncStream<HouseholdAnswer>.makeStream(bufferingPolicy: .bufferingNewest(1))
        waiting.withLock { $0[id] = continuation }
        defer { waiting.withLock { _ = $0.removeValue(forKey: id) }; continuation.finish() }
        try await send()
        return await withTaskGroup(of: HouseholdAnswer?.self) { group in
            group.addTask { await stream.first { _ in true } }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            continuation.finish()
            return first
        }
    }

    /// Hands a reply to its waiter; false when nobody here waits for it (another replica's, or too late).
    @discardableResult
    func deliver(_ answer: HouseholdAnswer) -> Bool {
        guard let continuation = waiting.withLock({ $0.removeValue(forKey: answer.lookupId) }) else { return false }
        continuation.yield(answer)
        continuation.finish()
        return true
    }

    var count: Int { waiting.withLock { $0.count } }
}

/// Reads `veil.pos.lookups.replies.v1` from the end with a consumer group of this
/// replica's own, verifies each reply (signed by the key-vault, sealed to ingress) and
/// wakes the waiting lookup.
struct PosReplyFollower: Service {
    let consumer: KafkaConsumer
    let codec: EnvelopeCodec
    let pending: PendingLookups
    let logger: Logger

    init(context: ServiceContext, pending: PendingLookups) throws {
        var configuration = ConsumerConfiguration(kafka: context.configuration.kafka,
                                                  groupID: "\(ServiceName.ingress.consumerGroup).pos-replies.\(UUID().uuidString.prefix(8))",
                                                  topics: [Topic.posLookupReplies.name])
        // Only replies to lookups made from now on matter.
        configuration.offsetReset = .latest
        configuration.maxBatchSize = 256
        consumer = try KafkaConsumer(configuration: configuration, logger: context.logger)
        codec = context.codec
        self.pending = pending
        logger = context.logger
    }

    /// Whether it was assigned its partitions: replies published from now on will be read.
    var isAssigned: Bool { !consumer.assignment.isEmpty }

    func run() async throws {
        let consumer = self.consumer
        try await withGracefulShutdownHandler {
            while let batch = try await consumer.nextBatch() {
                for (message, result) in zip(batch, await codec.verify(batch)) {
                    switch result {
                    case .success(let envelope):
                        guard envelope.header.type == MessageType.posLookupAnswered, let bytes = envelope.payload(PartLabel.household),
                              let answer = try? ContractCoding.decode(HouseholdAnswer.self, from: bytes) else {
                            logger.warning("unreadable lookup reply dropped", metadata: ["message.id": "\(envelope.header.id)"])
                            continue
                        }
                        pending.deliver(answer)
                    case .failure(let error):
                        // A reply nobody can trust is dropped: the lookup times out with a clear error.
                        logger.warning("lookup reply rejected", metadata: ["code": "\(error.code)", "partition": "\(message.partition)",
                                                                          "offset": "\(message.offset)"])
                    }
                }
                consumer.markProcessed(batch)
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
        let ref = ByteBuffer(bytes: terminalRef)
        let rows = try await context.database.client.query("""
            WITH dev AS (
                SELECT signing_key, revoked_at IS NOT NULL AS revoked FROM \(unescaped: context.database.table("devices")) WHERE device_ref = \(ref)
            ), fresh AS (
                INSERT INTO \(unescaped: context.database.table("request_nonces")) (device_ref, nonce)
                SELECT \(ref), \(ByteBuffer(bytes: nonce)) FROM dev WHERE NOT dev.revoked
                ON CONFLICT DO NOTHING RETURNING 1
            )
            SELECT signing_key, revoked, (SELECT count(*) FROM fresh)::int FROM dev
            """, logger: context.logger).collect()
        guard let (signing, revoked, inserted) = try rows.first?.decode((ByteBuffer, Bool, Int).self) else { throw Problem.unknownDevice }
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
        guard let key = settings.pseudonymDevice.current?.derived("veil.pos-lookup-token.v1") else { throw Problem.unavailable }
        let expiry = (0..<8).map { UInt8(truncatingIfNeeded: expiresAtMs >> (8 * (7 - $0))) }
        let mac = key.hash(terminalRef + Array(deidentifiedTid) + Array(householdId.utf8) + [0] + expiry)
        return Data(expiry + mac.prefix(16)).base64EncodedString()
    }
}
