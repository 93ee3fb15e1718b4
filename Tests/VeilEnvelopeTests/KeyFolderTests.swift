import Foundation
import Testing
@testable import VeilEnvelope

@Suite("Key folders (veilctl keys)")
struct KeyFolderTests {
    func temporaryFolder() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("veil-keys-\(UUID())")
    }

    func mode(_ url: URL) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: url.path)
        return try #require(attributes[.posixPermissions] as? Int) & 0o777
    }

    @Test("keys init writes every file 0600 and every folder 0700, with a verifiable directory")
    func initWritesPrivateFiles() throws {
        let root = temporaryFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        let folder = try KeyFolder.createDevelopmentKeys(at: root)
        #expect(try mode(root) == 0o700)
        var files = 0
        let enumerator = try #require(FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil))
        for case let url as URL in enumerator {
            let isFolder = (try? url.resourceValues(forKeys: [.isDirectoryKey]).isDirectory) ?? false
            #expect(try mode(url) == (isFolder ? 0o700 : 0o600), "\(url.lastPathComponent)")
            if !isFolder { files += 1 }
        }
        // 9 parties × 2 keys, the directory key and its public half, the signed directory.
        #expect(files == 9 * 2 + 3 + KeyFolder.developmentSecrets.count)
        let store = try folder.directoryStore()
        let owners = Set(store.directory.keys.map(\.owner))
        #expect(owners == Set(KeyDirectory.veilServices + ["upstream-exporter", "provider-demo"]))
        #expect(store.directory.allowlist == KeyDirectory.veilAllowlist.sorted { ($0.topic, $0.type) < ($1.topic, $1.type) })
        #expect(throws: KeyError.io) { try KeyFolder.createDevelopmentKeys(at: root) }
    }

    @Test("identities from the folder seal and verify against its directory")
    func servicesTalk() throws {
        let root = temporaryFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        let folder = try KeyFolder.createDevelopmentKeys(at: root)
        let store = try folder.directoryStore()
        let sealed = try EnvelopeSealer(identity: folder.identity("ingress"), directory: store).seal(EnvelopeDraft(
            type: VeilWorld.received.type, parts: [.sealed("p", payload: [42], to: ["anonymizer"])]))
        let verified = try EnvelopeVerifier(identity: folder.identity("anonymizer"), directory: store)
            .verify(sealed.bytes, topic: VeilWorld.received.topic)
        #expect(verified.payload("p") == [42])
    }

    @Test("rotate and retire through the folder reissue the directory with higher serials")
    func rotateAndRetire() throws {
        let root = temporaryFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        let folder = try KeyFolder.createDevelopmentKeys(at: root)
        let running = try folder.directoryStore()
        let old = try EnvelopeSealer(identity: folder.identity("ingress"), directory: running).seal(EnvelopeDraft(
            type: VeilWorld.received.type, parts: [.sealed("p", payload: [1], to: ["anonymizer"])]))

        #expect(try folder.rotate("ingress") == 2)
        #expect(try folder.identity("ingress").signingVersions == [1, 2])
        #expect(try running.accept(folder.signedDirectory()))
        let verifier = try EnvelopeVerifier(identity: folder.identity("anonymizer"), directory: running)
        #expect(throws: Never.self) { try verifier.verify(old.bytes, topic: VeilWorld.received.topic) }

        try folder.retire("ingress", purpose: .signing, version: 1)
        #expect(try running.accept(folder.signedDirectory()))
        #expect(running.serial == 3)
        let again = try EnvelopeVerifier(identity: folder.identity("anonymizer"), directory: running)
        #expect(throws: EnvelopeError.retiredKey) { try again.verify(old.bytes, topic: VeilWorld.received.topic) }
        #expect(throws: KeyError.unknownParty) { try folder.retire("nobody", purpose: .signing, version: 1) }
        for file in ["signing.v2.key", "encryption.v2.key"] {
            #expect(try mode(root.appendingPathComponent("ingress").appendingPathComponent(file)) == 0o600)
        }
    }
}
