import Foundation
import Logging
import PostgresNIO
import Testing
import VeilContracts
import VeilEnvelope
import VeilKafka
import VeilService

extension PipelineSuites {
    @Suite("Key custody: only the key's holder can compute its step", .serialized, .timeLimit(.minutes(3)))
    struct KeyCustodyTests {
        func sqlState(_ error: any Error) -> String? {
            (error as? PSQLError)?.serverInfo?[.sqlState]
        }

        @Test("the matcher's role reads tokens and encrypted records only; no other role reads the vault's tables")
        func databaseRoles() async throws {
            let world = try await PipelineWorld.start([.keyVault])
            defer { Task { await world.stop() } }
            _ = try await world.export(csv: Customers(count: 5).csv)
            try await world.waitUntilFiled(5)

            let readable = try await world.asRole(.matcher) { client in
                try await client.query("SELECT t.token, r.record_ciphertext, r.wrapped_data_key FROM key_vault.match_tokens t JOIN key_vault.filed_records r USING (customer_ref)")
                    .collect().count
            }
            #expect(readable == 5)
            let forbidden: [(ServiceName, String)] = [
                (.matcher, "SELECT * FROM key_vault.vault_keys"),
                (.matcher, "SELECT encrypted_a FROM key_vault.filed_records"),
                (.anonymizer, "SELECT * FROM key_vault.vault_keys"),
                (.anonymizer, "SELECT * FROM key_vault.match_tokens"),
                (.merger, "SELECT * FROM key_vault.vault_keys"),
                (.merger, "SELECT * FROM key_vault.filed_records"),
                (.ingress, "SELECT * FROM key_vault.vault_keys"),
            ]
            for (service, sql) in forbidden {
                do {
                    _ = try await world.asRole(service) { client in try await client.query(PostgresQuery(unsafeSQL: sql)).collect() }
                    Issue.record("\(service.rawValue) could run: \(sql)")
                } catch {
                    #expect(sqlState(error) == "42501", "\(service.rawValue): \(sql) is refused for lack of privilege")
                }
            }
            // At rest, key material is sealed under the master key: no row holds a usable key.
            let sealed = try await world.adminStrings("SELECT length(sealed_material)::text FROM key_vault.vault_keys")
            #expect(sealed.count == 4 && sealed.allSatisfy { $0 == String(12 + 32 + 16) })
            await world.stop()
        }

        @Test("kT is granted to the anonymizer alone and the record key to the merger alone")
        func grants() async throws {
            let world = try await PipelineWorld.start([.keyVault])
            defer { Task { await world.stop() } }
            let grants = try await world.readAll([Topic.keysGrants.name], count: 2, firstWait: .seconds(20))
            #expect(grants.count == 2)
            let directory = try world.keys.directoryStore()
            for party in ["anonymizer", "merger", "matcher", "ingress", "provider-demo"] {
                let verifier = EnvelopeVerifier(identity: try world.keys.identity(party), directory: directory)
                var opened: [KeyGrant.Purpose] = []
                for message in grants {
                    switch Result(catching: { try verifier.verify(message.value, topic: message.topic, now: Date()) }) {
                    case .success(let envelope):
                        let grant = try ContractCoding.decode(KeyGrant.self, from: try #require(envelope.payload(PartLabel.grant)))
                        opened.append(grant.purpose)
                    case .failure(let error):
                        #expect((error as? EnvelopeError) == .notARecipient, "\(party): \(error)")
                    }
                }
                switch party {
                case "anonymizer": #expect(opened == [.thirdPartyHash])
                case "merger": #expect(opened == [.record])
                default: #expect(opened.isEmpty, "\(party) opened a grant")
                }
            }
            await world.stop()
        }
    }
}
