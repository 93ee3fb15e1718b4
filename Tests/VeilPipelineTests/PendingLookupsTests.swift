import Foundation
@testable import IngressService
import Synchronization
import Testing
import VeilContracts
import VeilKafka

/// The table of point-of-sale lookups waiting for the key-vault's reply: every way a
/// lookup ends (answered early, answered late, timed out, cancelled, shut down) and
/// that nothing is left behind in any of them.
@Suite("Pending point-of-sale lookups")
struct PendingLookupsTests {
    final class Flag: Sendable {
        private let value = Atomic<Bool>(false)
        func set() { value.store(true, ordering: .releasing) }
        var isSet: Bool { value.load(ordering: .acquiring) }
    }

    static func answer(_ id: String) -> HouseholdAnswer {
        HouseholdAnswer(lookupId: id, found: true, householdId: "HH-\(id)")
    }

    @Test("a reply that arrives while the lookup is still being published is kept and returned")
    func replyDuringPublish() async throws {
        let pending = PendingLookups()
        let result = try await pending.exchange("a", timeout: .seconds(60)) {
            #expect(pending.deliver(Self.answer("a")))
        }
        #expect(result == Self.answer("a"))
        #expect(pending.count == 0)
    }

    @Test("a reply after the caller started waiting wakes it; a second copy of it finds no waiter")
    func replyWhileWaiting() async throws {
        let pending = PendingLookups()
        let published = Flag()
        let lookup = Task { try await pending.exchange("b", timeout: .seconds(60)) { published.set() } }
        while !published.isSet { await Task.yield() }
        try await Task.sleep(for: .milliseconds(20))
        #expect(pending.deliver(Self.answer("b")))
        #expect(try await lookup.value == Self.answer("b"))
        #expect(!pending.deliver(Self.answer("b")))
        #expect(pending.count == 0)
    }

    @Test("no reply: the sweeper answers nil after the deadline, and a late reply finds no waiter")
    func timeout() async throws {
        let pending = PendingLookups(sweepInterval: .milliseconds(5))
        let sweeper = Task { await pending.sweep() }
        defer { sweeper.cancel() }
        let result = try await pending.exchange("c", timeout: .milliseconds(50)) {}
        #expect(result == nil)
        #expect(!pending.deliver(Self.answer("c")))
        #expect(pending.count == 0)
    }

    @Test("only overdue lookups expire; the others keep waiting and get their reply")
    func onlyOverdueExpire() async throws {
        let pending = PendingLookups()
        let short = Task { try await pending.exchange("short", timeout: .milliseconds(1)) {} }
        let long = Task { try await pending.exchange("long", timeout: .seconds(60)) {} }
        while pending.count < 2 { await Task.yield() }
        try await Task.sleep(for: .milliseconds(20))
        var expired = 0
        while expired == 0 { expired += pending.expireOverdue(); await Task.yield() }
        #expect(try await short.value == nil)
        #expect(pending.count == 1)
        #expect(pending.deliver(Self.answer("long")))
        #expect(try await long.value == Self.answer("long"))
    }

    @Test("a replica drops replies to lookups it never made")
    func foreignReply() {
        #expect(!PendingLookups().deliver(Self.answer("someone-else's")))
    }

    @Test("a replica verifies only the replies keyed with a lookup it is waiting for (and any without a key)")
    func repliesSelectedByKey() async throws {
        let pending = PendingLookups()
        let published = Flag()
        let lookup = Task { try await pending.exchange("mine", timeout: .seconds(60)) { published.set() } }
        while !published.isSet { await Task.yield() }
        func reply(_ key: String?, offset: Int64) -> KafkaMessage {
            KafkaMessage(topic: Topic.posLookupReplies.name, partition: 0, offset: offset, key: key.map { Array($0.utf8) }, value: [1])
        }
        let batch = [reply("other-replica's", offset: 0), reply("mine", offset: 1), reply(nil, offset: 2), reply("mine-not", offset: 3)]
        #expect(pending.addressedHere(batch, key: \.keyText).map(\.offset) == [1, 2])
        #expect(pending.deliver(Self.answer("mine")))
        #expect(try await lookup.value == Self.answer("mine"))
        // Answered and collected: a redelivered copy is not verified again.
        #expect(pending.addressedHere(batch, key: \.keyText).map(\.offset) == [2])
    }

    @Test("a cancelled lookup (the till hung up) returns nil at once and leaves nothing behind")
    func cancelled() async throws {
        let pending = PendingLookups()
        let lookup = Task { try await pending.exchange("d", timeout: .seconds(3600)) {} }
        while pending.count < 1 { await Task.yield() }
        lookup.cancel()
        #expect(try await lookup.value == nil)
        #expect(pending.count == 0)
    }

    @Test("a failed publish throws and leaves nothing behind")
    func failedPublish() async {
        struct BrokerDown: Error {}
        let pending = PendingLookups()
        await #expect(throws: BrokerDown.self) {
            try await pending.exchange("e", timeout: .seconds(60)) { throw BrokerDown() }
        }
        #expect(pending.count == 0)
    }

    @Test("at shutdown every waiting lookup is answered nil and new ones are refused without publishing")
    func shutdown() async throws {
        let pending = PendingLookups()
        let sweeper = Task { await pending.sweep() }
        let waiting = Task { try await pending.exchange("f", timeout: .seconds(3600)) {} }
        while pending.count < 1 { await Task.yield() }
        sweeper.cancel()
        await sweeper.value
        #expect(try await waiting.value == nil)
        let published = Flag()
        #expect(try await pending.exchange("g", timeout: .seconds(3600)) { published.set() } == nil)
        #expect(!published.isSet)
        #expect(pending.count == 0)
    }
}

extension KafkaMessage {
    var keyText: String? { key.map { String(decoding: $0, as: UTF8.self) } }
}
