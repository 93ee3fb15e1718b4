import Crypto
import Foundation
import Logging
import NIOCore
import PostgresNIO
import VeilContracts
import VeilCore
import VeilEnvelope
import VeilKafka
import VeilService
import VeilStore

/// The vault's secure-form part: confidential values a customer typed in a chat form
/// (sealed on the device to the vault) are checked here and only the verdict leaves:
/// - a PIN against the account's stored verifier `HMAC(kV, accountRef ‖ PIN)` (keyed, so a
///   dump of the table cannot be brute-forced without the vault's keys), five wrong PINs lock;
/// - a card number by the Luhn check, then tokenized: only a keyed token and the last four digits are kept;
/// - a national id by a format check, then tokenized.
/// Each form is checked once; its verdict is kept so a redelivered submission gets the same answer.
struct SecureForms: Sendable {
    let database: Database
    let logger: Logger
    static let maxWrongPINs = 5

    static let migrations: [Migration] = [
        Migration("005_secure_forms", sql: """
            CREATE TABLE {schema}.pin_verifiers (
                account_key         bytea PRIMARY KEY,       -- HMAC(kA, accountRef)
                archive_key_version integer NOT NULL,
                verifier            bytea NOT NULL,          -- HMAC(kV, accountRef || PIN), never the PIN
                wrong_attempts      integer NOT NULL DEFAULT 0,
                updated_at          timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE {schema}.value_tokens (
                token               text PRIMARY KEY,        -- keyed hash of the card number or national id
                kind                text NOT NULL,
                last4               text,
                archive_key_version integer NOT NULL,
                created_at          timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE {schema}.secure_form_checks (
                form_id    uuid PRIMARY KEY,
                kind       text NOT NULL,
                outcome    text NOT NULL,
                last4      text,
                token      text,
                checked_at timestamptz NOT NULL DEFAULT now()
            );
            """),
    ]

    struct Keys: Sendable {
        let archive: VersionedKey
        let account: VersionedKey
        let verifier: VersionedKey
        let token: VersionedKey

        init(_ archive: VersionedKey) {
            self.archive = archive
            account = archive.derived("veil.pin-account.v1")
            verifier = archive.derived("veil.pin-verifier.v1")
            token = archive.derived("veil.value-token.v1")
        }

        func verifier(accountRef: some DataProtocol, pin: String) -> [UInt8] {
            verifier.hash(Array(accountRef) + [0] + Array(pin.utf8))
        }
    }

    static func isPIN(_ pin: String) -> Bool { (4...12).contains(pin.count) && pin.allSatisfy { $0.isASCII && $0.isNumber } }

    /// Files PIN verifiers (upsert by account; a new PIN resets the wrong-attempt count).
    func file(_ pins: [PinVerifierRecord], keys: VaultKeySet) async throws {
        guard let archive = keys.current(.archive) else { throw StageError.transient("vault.no_key", "vault keys not loaded") }
        let k = Keys(archive)
        var rows: [[UInt8]: [UInt8]] = [:]
        for record in pins where record.accountRef.count == 32 && Self.isPIN(record.pin) {
            rows[k.account.hash(record.accountRef)] = k.verifier(accountRef: record.accountRef, pin: record.pin)
        }
        guard !rows.isEmpty else { return }
        let list = Array(rows)
        let table = database.table("pin_verifiers")
        try await database.client.query("""
            INSERT INTO \(unescaped: table) (account_key, archive_key_version, verifier)
            SELECT a, \(Int32(archive.version)), v FROM unnest(\(list.map { ByteBuffer(bytes: $0.key) })::bytea[],
                                                              \(list.map { ByteBuffer(bytes: $0.value) })::bytea[]) AS t(a, v)
            ON CONFLICT (account_key) DO UPDATE SET verifier = EXCLUDED.verifier, archive_key_version = EXCLUDED.archive_key_version,
                wrong_attempts = 0, updated_at = now()
            WHERE \(unescaped: table).verifier <> EXCLUDED.verifier
            """, logger: logger)
        logger.info("PIN verifiers filed", metadata: ["count": "\(list.count)"])
    }

    /// Checks a submitted form and returns the verdict, sealed to the dispatcher.
    func check(_ envelope: VerifiedEnvelope, message: KafkaMessage, codec: EnvelopeCodec, keys: VaultKeySet) async throws -> OutgoingMessage {
        guard let bytes = envelope.payload(PartLabel.secureValue),
              let value = try? ContractCoding.decode(SecureValuePayload.self, from: bytes),
              let formID = UUID(uuidString: value.formId) else {
            throw StageError.permanent("vault.bad_payload", "no readable secure-value part sealed to the key-vault")
        }
        // Ingress's assertion names the form: a value sealed for one form cannot be posted to another.
        let (_, claims) = try AssertionCheck.verified(envelope, subject: value.formId, directory: codec.directory,
                                                      errorCode: "vault.bad_assertion")
        // Only forms the dispatcher asked, for this account, in time: no PIN probing without an agent's request.
        guard let request = value.request, request.formId == value.formId, request.kind == value.kind,
              request.accountRef == claims.accountRef, let expires = request.expiresAtMs,
              expires > Int64(Date().timeIntervalSince1970 * 1000), let signature = request.signature,
              let keyID = request.signerKeyId, let version = request.signerVersion,
              let signer = codec.directory.activeSigningKey(KeyReference(keyID: keyID, version: version)),
              signer.owner == ServiceName.dispatcher.rawValue, signer.key.isValidSignature(signature, for: request.signedBytes) else {
            throw StageError.permanent("vault.unrequested_form", "the form was not signed by the dispatcher for this account, or expired")
        }
        guard let archive = keys.current(.archive) else { throw StageError.transient("vault.no_key", "vault keys not loaded") }
        let k = Keys(archive)
        let result = try await database.transaction { connection -> SecureFormResult in
            let checks = database.table("secure_form_checks")
            // A form is checked once: a redelivery (or a second answer) gets the first verdict.
            let previous = try await connection.query("""
                SELECT kind, outcome, last4, token FROM \(unescaped: checks) WHERE form_id = \(formID) FOR UPDATE
                """, logger: logger).collect()
            if let row = previous.first {
                let (kind, outcome, last4, token) = try row.decode((String, String, String?, String?).self)
                return SecureFormResult(formId: value.formId, kind: SecureFormKind(rawValue: kind) ?? value.kind,
                                        outcome: SecureFormOutcome(rawValue: outcome) ?? .invalid,
                                        accountRef: claims.accountRef, last4: last4, token: token)
            }
            var result = SecureFormResult(formId: value.formId, kind: value.kind, outcome: .invalid, accountRef: claims.accountRef)
            switch value.kind {
            case .pin:
                result.outcome = try await checkPIN(value.value, accountRef: claims.accountRef, keys: k, on: connection)
            case .card:
                let digits = value.value.filter { $0 != " " && $0 != "-" }
                if (12...19).contains(digits.count), digits.allSatisfy({ $0.isASCII && $0.isNumber }), Self.luhnValid(digits) {
                    result.outcome = .tokenized
                    result.last4 = String(digits.suffix(4))
                    result.token = try await tokenize("card", digits, last4: result.last4, keys: k, on: connection)
                }
            case .nationalID:
                let id = value.value.uppercased().filter { $0 != " " && $0 != "-" }
                if (6...20).contains(id.count), id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) {
                    result.outcome = .tokenized
                    result.token = try await tokenize("national-id", id, last4: nil, keys: k, on: connection)
                }
            }
            try await connection.query("""
                INSERT INTO \(unescaped: checks) (form_id, kind, outcome, last4, token)
                VALUES (\(formID), \(value.kind.rawValue), \(result.outcome.rawValue), \(result.last4), \(result.token))
                """, logger: logger)
            return result
        }
        logger.info("secure form checked", metadata: ["form.id": "\(value.formId)", "kind": "\(value.kind.rawValue)",
                                                      "outcome": "\(result.outcome.rawValue)"])
        let draft = EnvelopeDraft(id: .derived(from: envelope.header.id, stage: "key-vault.secure-form"), type: MessageType.secureFormVerified,
                                  parts: [.sealed(PartLabel.secureFormResult, payload: ContractCoding.encode(result),
                                                  to: [ServiceName.dispatcher.rawValue])])
        return try codec.message(draft, topic: Topic.secureFormsResults.name, key: Array(value.formId.utf8))
    }

    private func checkPIN(_ pin: String, accountRef: Data, keys k: Keys, on connection: PostgresConnection) async throws -> SecureFormOutcome {
        let table = database.table("pin_verifiers")
        let accountKey = ByteBuffer(bytes: k.account.hash(accountRef))
        let rows = try await connection.query("""
            SELECT verifier, wrong_attempts FROM \(unescaped: table) WHERE account_key = \(accountKey) FOR UPDATE
            """, logger: logger).collect()
        guard let (stored, wrong) = try rows.first?.decode((ByteBuffer, Int).self) else { return .notVerified }
        guard wrong < Self.maxWrongPINs else { return .locked }
        let given = Self.isPIN(pin) ? k.verifier(accountRef: accountRef, pin: pin) : []
        let matches = ConstantTime.equal(given, stored.readableBytesView)
        try await connection.query("""
            UPDATE \(unescaped: table) SET wrong_attempts = \(matches ? 0 : wrong + 1), updated_at = now() WHERE account_key = \(accountKey)
            """, logger: logger)
        return matches ? .verified : .notVerified
    }

    private func tokenize(_ kind: String, _ value: String, last4: String?, keys k: Keys, on connection: PostgresConnection) async throws -> String {
        let token = "tok_" + k.token.hash(Array((kind + ":" + value).utf8)).prefix(16).hexEncoded
        try await connection.query("""
            INSERT INTO \(unescaped: database.table("value_tokens")) (token, kind, last4, archive_key_version)
            VALUES (\(token), \(kind), \(last4), \(Int32(k.archive.version))) ON CONFLICT (token) DO NOTHING
            """, logger: logger)
        return token
    }

    /// The Luhn (mod 10) check of a card number's digits.
    static func luhnValid(_ digits: String) -> Bool {
        var sum = 0
        for (index, character) in digits.reversed().enumerated() {
            guard let digit = character.wholeNumberValue else { return false }
            if index % 2 == 1 {
                let doubled = digit * 2
                sum += doubled > 9 ? doubled - 9 : doubled
            } else {
                sum += digit
            }
        }
        return sum % 10 == 0
    }
}
