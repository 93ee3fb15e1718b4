import Foundation
import Testing
import VeilCore
@testable import VeilEnvelope

@Suite("Replay window")
struct ReplayWindowTests {
    @Test("an id is new once, then a replay until it expires")
    func expiry() {
        let window = ReplayWindow()
        let id = MessageID.generate()
        #expect(window.recordIfNew(id, expiresAt: 1_000, now: 500))
        #expect(!window.recordIfNew(id, expiresAt: 1_000, now: 999))
        #expect(!window.recordIfNew(id, expiresAt: 1_000, now: 1_000))
        // Past its expiry it is forgotten (the verifier refuses it as stale before asking).
        #expect(window.recordIfNew(MessageID.generate(), expiresAt: 5_000, now: 1_001))
        #expect(window.count == 1)
        #expect(window.recordIfNew(id, expiresAt: 6_000, now: 1_001))
    }

    @Test("memory is bounded by the capacity")
    func capacity() {
        let window = ReplayWindow(capacity: 100)
        for i in 0..<10_000 { _ = window.recordIfNew(MessageID.generate(), expiresAt: 1_000_000, now: UInt64(i)) }
        #expect(window.count == 100)
    }

    @Test("concurrent verifiers agree: each id is accepted exactly once")
    func concurrency() async {
        let window = ReplayWindow()
        let ids = (0..<2_000).map { _ in MessageID.generate() }
        let accepted = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<4 {
                group.addTask { ids.filter { window.recordIfNew($0, expiresAt: 10, now: 1) }.count }
            }
            return await group.reduce(0, +)
        }
        #expect(accepted == ids.count)
    }
}
