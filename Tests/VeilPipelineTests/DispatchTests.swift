import DispatcherService
import Foundation
import Logging
import PostgresNIO
import Testing
import VeilStore

/// A dispatcher database of its own (a fresh schema) and engines on it, as replicas would have.
struct DispatchWorld {
    let schema = "dispatch_\(UUID().uuidString.prefix(8).lowercased())"
    let admin: DatabaseConfiguration

    init() throws {
        guard let url = ProcessInfo.processInfo.environment["DATABASE_URL"] else {
            Issue.record("DATABASE_URL is not set: run the tests with `make test`, which starts PostgreSQL")
            throw CancellationError()
        }
        admin = try DatabaseConfiguration(url: url)
    }

    /// Runs `body` with `replicas` engines, each with its own connection pool.
    func run<T: Sendable>(replicas: Int = 1, policy: AssignmentPolicy = AssignmentPolicy(),
                          _ body: @Sendable ([AssignmentEngine]) async throws -> T) async throws -> T {
        var logger = Logger(label: "test")
        logger.logLevel = .error
        let databases = try (0..<replicas).map { _ in try Database(configuration: admin, schema: schema, logger: logger) }
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for database in databases { group.addTask { try await database.run() } }
            defer { group.cancelAll() }
            for database in databases { try await database.migrate(Dispatcher.migrations) }
            return try await body(databases.map { AssignmentEngine(database: $0, policy: policy, logger: logger) })
        }
    }

    static func request(_ category: String = "outage", priority: Int = 1, region: String? = "north",
                        skills: [String] = ["network"]) -> DispatchRequest {
        DispatchRequest(id: UUID(), category: category, priority: priority, region: region, requiredSkills: skills)
    }
}

/// Moves the database's idea of a row's time instead of sleeping past it: a test that sleeps
/// one second and then expects the next statement to run within the next second fails on a
/// loaded machine (it did, in CI).
func execute(_ engine: AssignmentEngine, _ sql: String) async throws {
    _ = try await engine.database.client.query(PostgresQuery(unsafeSQL: sql.replacingOccurrences(of: "{schema}", with: engine.database.schema)))
        .collect()
}

/// The decision functions keep references whole without foreign keys (migration 024): every
/// reservation names a filed request and a known technician, every assigned request a known one.
func expectNoOrphans(_ engine: AssignmentEngine, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let orphans = try await count(engine, """
        SELECT (SELECT count(*) FROM {schema}.reservations r
                WHERE NOT EXISTS (SELECT 1 FROM {schema}.dispatch_requests d WHERE d.id = r.request_id)
                   OR NOT EXISTS (SELECT 1 FROM {schema}.technicians t WHERE t.id = r.technician_id))
             + (SELECT count(*) FROM {schema}.dispatch_requests d
                WHERE d.technician_id IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM {schema}.technicians t WHERE t.id = d.technician_id))
        """)
    #expect(orphans == 0, "reservations or requests naming rows that do not exist", sourceLocation: sourceLocation)
}

func count(_ engine: AssignmentEngine, _ sql: String) async throws -> Int {
    let rows = try await engine.database.client.query(PostgresQuery(unsafeSQL: sql.replacingOccurrences(of: "{schema}", with: engine.database.schema)))
        .collect()
    return try rows.first?.decode(Int.self) ?? 0
}

@Suite("Dispatch: technician selection, reservations and the queue", .timeLimit(.minutes(3)))
struct DispatchTests {
    @Test("only eligible technicians get offers: skills, region, activity, shift and free capacity; then the least loaded, at home first")
    func eligibilityAndRanking() async throws {
        try await DispatchWorld().run { engines in
            let engine = engines[0]
            let hour = Calendar(identifier: .gregorian).dateComponents(in: TimeZone(identifier: "UTC")!, from: Date()).hour!
            let offShift = (String(format: "%02d:00", (hour + 2) % 24), String(format: "%02d:00", (hour + 3) % 24))
            let onShift = (String(format: "%02d:00", (hour + 23) % 24), String(format: "%02d:00", (hour + 1) % 24))  // may wrap midnight
            for t in [
                Technician(id: "no-skill", name: "A", skills: ["billing"], regions: ["north"], capacity: 3),
                Technician(id: "elsewhere", name: "B", skills: ["network"], regions: ["south"], capacity: 3),
                Technician(id: "offline", name: "C", skills: ["network"], regions: ["north"], capacity: 3, activity: "offline"),
                Technician(id: "off-shift", name: "D", skills: ["network"], regions: ["north"], capacity: 3,
                           shiftStart: offShift.0, shiftEnd: offShift.1),
                Technician(id: "visiting", name: "E", skills: ["network", "fiber"], regions: ["north", "south"], homeRegion: "south",
                           capacity: 2, shiftStart: onShift.0, shiftEnd: onShift.1),
                Technician(id: "local", name: "F", skills: ["network"], regions: ["north"], homeRegion: "north", capacity: 2),
            ] { try await engine.upsert(t) }

            let first = try #require(try await engine.submit(DispatchWorld.request()))
            #expect(first.technicianID == "local", "home region preferred at equal load")
            let second = try #require(try await engine.submit(DispatchWorld.request()))
            #expect(second.technicianID == "visiting", "local is half loaded now: 0.5 load > 0.5 away-from-home")
            let third = try #require(try await engine.submit(DispatchWorld.request()))
            #expect(third.technicianID == "local")
            let fourth = try #require(try await engine.submit(DispatchWorld.request()))
            #expect(fourth.technicianID == "visiting")
            #expect(try await engine.submit(DispatchWorld.request()) == nil, "everyone eligible is at capacity: it waits")
            #expect(try await engine.submit(DispatchWorld.request(skills: ["network", "fiber"])) == nil)
            let stats = try await engine.statistics()
            #expect(stats.waiting == 2 && stats.offered == 4)
        }
    }

    @Test("every decision picks the technician the full ranking picks, with more than 16 at home and busier or idler ones away")
    func decisionsMatchTheFullRanking() async throws {
        try await DispatchWorld().run { engines in
            let engine = engines[0]
            let policy = AssignmentPolicy()
            var random = SystemRandomNumberGenerator()
            // 66 technicians. A third live in the north and are busy (60–80 % loaded); the rest
            // live in the south or east, are idler (0–30 %) and also serve the north; every
            // eleventh has no home region. For a request in the north, more than 16 eligible
            // technicians are at home and idler ones away interleave with them in rank.
            for i in 0..<66 {
                let home = ["north", "south", "east"][i % 3]
                let serves = home == "north" ? ["north"] : [home, "north"]
                let id = String(format: "t%02d", i)
                try await engine.upsert(Technician(id: id, name: id, skills: ["network"], regions: serves,
                                                   homeRegion: i % 11 == 0 ? nil : home, capacity: 10))
                let load = home == "north" ? Int.random(in: 6...8, using: &random) : Int.random(in: 0...3, using: &random)
                try await execute(engine, """
                    UPDATE {schema}.technicians SET active_load = \(load),
                        last_offer_at = CASE WHEN random() < 0.3 THEN NULL ELSE now() - random() * interval '1 hour' END
                    WHERE id = '\(id)'
                    """)
            }
            for round in 0..<60 {
                let region = round % 4 == 3 ? "south" : "north"
                let rows = try await engine.database.client.query(PostgresQuery(unsafeSQL: """
                    SELECT id, active_load, capacity, home_region, extract(epoch FROM last_offer_at)::float8
                    FROM \(engine.database.schema).technicians
                    WHERE activity = 'available' AND active_load < capacity AND regions @> ARRAY['\(region)']
                    """)).collect()
                var expected: (rank: Double, lastOffer: Double?, id: String)?
                for row in rows {
                    let (id, load, capacity, home, lastOffer) = try row.decode((String, Int, Int, String?, Double?).self)
                    let rank = policy.loadWeight * Double(load) / Double(max(capacity, 1)) + policy.regionWeight * (home == region ? 0 : 1)
                    let candidate = (rank: rank, lastOffer: lastOffer, id: id)
                    // rank, then last offer (never offered first), then id
                    func before(_ a: (rank: Double, lastOffer: Double?, id: String), _ b: (rank: Double, lastOffer: Double?, id: String)) -> Bool {
                        if a.rank != b.rank { return a.rank < b.rank }
                        switch (a.lastOffer, b.lastOffer) {
                        case (nil, .some): return true
                        case (.some, nil): return false
                        case let (x?, y?) where x != y: return x < y
                        default: return a.id < b.id
                        }
                    }
                    if expected == nil || before(candidate, expected!) { expected = candidate }
                }
                let offer = try await engine.submit(DispatchWorld.request(region: region))
                #expect(offer?.technicianID == expected?.id, "round \(round), region \(region), \(rows.count) eligible")
            }
        }
    }

    @Test("an idle technician away beats sixteen at home only when their load outweighs the region weight, just over or just under it")
    func awayJustOverTheRegionWeight() async throws {
        // Default weights: load 1.0, region 0.5. Seventeen at home in the west at 6/10 rank
        // 0.6; one away (home east, also serving the west) at 0/10 ranks 0.5 and wins. At 4/10
        // the home ones rank 0.4 and win. The first case needs the away candidates although
        // the 16th at home is barely loaded enough for anyone away to rank: a decision that
        // skipped them whenever that margin is under 0.2 fails here (tried).
        for (homeLoad, awayWins) in [(6, true), (4, false)] {
            try await DispatchWorld().run { engines in
                let engine = engines[0]
                for i in 0..<17 {
                    let id = String(format: "home%02d", i)
                    try await engine.upsert(Technician(id: id, name: id, skills: ["network"], regions: ["west"], homeRegion: "west", capacity: 10))
                    try await execute(engine, "UPDATE {schema}.technicians SET active_load = \(homeLoad) WHERE id = '\(id)'")
                }
                try await engine.upsert(Technician(id: "away", name: "away", skills: ["network"], regions: ["east", "west"],
                                                   homeRegion: "east", capacity: 10))
                let offer = try #require(try await engine.submit(DispatchWorld.request(region: "west")))
                #expect((offer.technicianID == "away") == awayWins, "home at \(homeLoad)/10: offered to \(offer.technicianID)")
            }
        }
    }

    @Test("the tables refuse an unknown status, kind or activity and a negative load or capacity")
    func guardsOnStatusesKindsAndCounts() async throws {
        try await DispatchWorld().run { engines in
            let engine = engines[0]
            try await engine.upsert(Technician(id: "t1", name: "T1", skills: ["network"], regions: ["north"], homeRegion: "north", capacity: 2))
            let offer = try #require(try await engine.submit(DispatchWorld.request()))
            let refused = [
                "UPDATE {schema}.technicians SET active_load = -1 WHERE id = 't1'",
                "UPDATE {schema}.technicians SET capacity = -1 WHERE id = 't1'",
                "UPDATE {schema}.technicians SET activity = 'napping' WHERE id = 't1'",
                "UPDATE {schema}.technicians SET kind = 'robot' WHERE id = 't1'",
                "UPDATE {schema}.dispatch_requests SET status = 'lost' WHERE id = '\(offer.requestID)'",
                "UPDATE {schema}.dispatch_requests SET worker_kind = 'robot' WHERE id = '\(offer.requestID)'",
                "UPDATE {schema}.reservations SET status = 'maybe' WHERE id = '\(offer.id)'",
                "INSERT INTO {schema}.reservations (id, request_id, technician_id, status, expires_at) VALUES (gen_random_uuid(), '\(offer.requestID)', 't1', 'maybe', now())",
            ]
            for sql in refused {
                await #expect(throws: PSQLError.self, "accepted: \(sql)") { try await execute(engine, sql) }
                do { try await execute(engine, sql) } catch let error as PSQLError {
                    #expect(error.serverInfo?[.sqlState] == "23514", "\(sql): \(String(reflecting: error))")
                }
            }
            // The same columns take every value the code writes.
            try await execute(engine, "UPDATE {schema}.technicians SET activity = 'busy', kind = 'agent', active_load = 0 WHERE id = 't1'")
            try await execute(engine, "UPDATE {schema}.reservations SET status = 'transferred' WHERE id = '\(offer.id)'")
            try await execute(engine, "UPDATE {schema}.dispatch_requests SET status = 'cancelled' WHERE id = '\(offer.requestID)'")
        }
    }

    @Test("a declined offer goes to the next candidate; an unanswered one times out to the next; an accepted one is assigned")
    func declineTimeoutAccept() async throws {
        try await DispatchWorld().run { engines in
            let engine = engines[0]
            for id in ["t1", "t2", "t3"] {
                try await engine.upsert(Technician(id: id, name: id, skills: ["network"], regions: ["north"], capacity: 1))
            }
            let request = DispatchWorld.request()
            let first = try #require(try await engine.submit(request))
            #expect(try await engine.submit(request) == nil, "a redelivered request is filed and offered once")
            #expect(try await count(engine, "SELECT count(*) FROM {schema}.reservations") == 1)
            let second = try #require(try await engine.answer(first.id, technicianID: first.technicianID, .decline, reason: "too far"))
            #expect(second.technicianID != first.technicianID && second.requestID == request.id)
            await #expect(throws: AssignmentError.self, "an answered offer cannot be answered again") {
                try await engine.answer(first.id, technicianID: first.technicianID, .accept)
            }

            // The second offer goes unanswered past its deadline.
            try await execute(engine, "UPDATE {schema}.reservations SET expires_at = clock_timestamp() - interval '1 second' WHERE id = '\(second.id)'")
            let third = try #require(try await engine.expireReservations().first)
            #expect(![first.technicianID, second.technicianID].contains(third.technicianID), "timed out: the third candidate")
            await #expect(throws: AssignmentError.self, "too late to accept a timed-out offer") {
                try await engine.answer(second.id, technicianID: second.technicianID, .accept)
            }
            #expect(try await engine.answer(third.id, technicianID: third.technicianID, .accept) == nil)
            #expect(try await count(engine, "SELECT count(*) FROM {schema}.dispatch_requests WHERE status = 'assigned'") == 1)
            let stats = try await engine.statistics()
            #expect(stats.accepted == 1 && stats.declined == 1 && stats.timedOut == 1 && stats.assigned == 1)
            #expect(try await count(engine, "SELECT sum(active_load) FROM {schema}.technicians") == 1,
                    "declined and timed-out offers gave their capacity back")

            try await engine.complete(request.id, technicianID: third.technicianID)
            #expect(try await count(engine, "SELECT sum(active_load) FROM {schema}.technicians") == 0)
            try await expectNoOrphans(engine)
        }
    }

    @Test("nobody eligible: requests wait, the most urgent and then the oldest is offered first, and a long wait escalates")
    func waitingQueue() async throws {
        var policy = AssignmentPolicy()
        policy.escalateAfter = .seconds(3600)
        policy.agingStep = .seconds(360_000)
        try await DispatchWorld().run(policy: policy) { engines in
            let engine = engines[0]
            try await engine.upsert(Technician(id: "solo", name: "S", skills: ["network"], regions: ["north"], capacity: 1, activity: "offline"))
            let oldLow = DispatchWorld.request(priority: 1)
            let oldHigh = DispatchWorld.request(priority: 3)
            let newHigh = DispatchWorld.request(priority: 3)
            for r in [oldLow, oldHigh] { #expect(try await engine.submit(r) == nil) }
            // The first two have waited two hours (past escalateAfter, not yet one aging step).
            try await execute(engine, "UPDATE {schema}.dispatch_requests SET created_at = created_at - interval '2 hours' WHERE id IN ('\(oldLow.id)', '\(oldHigh.id)')")
            #expect(try await engine.submit(newHigh) == nil)
            #expect(Set(try await engine.escalate()) == [oldLow.id, oldHigh.id], "waited past escalateAfter")
            #expect(try await engine.escalate().isEmpty, "escalated once")
            #expect(try await engine.statistics().longestWaitSeconds >= 7_200)

            try await engine.setActivity("solo", "available")
            let offers = try await engine.offerWaiting()
            #expect(offers.map(\.requestID) == [oldHigh.id], "highest priority (3 + escalation), oldest first; capacity 1")
            #expect(try await engine.answer(offers[0].id, technicianID: "solo", .decline) == nil,
                    "nobody else can take it: it waits again, never re-offered to who declined it")
            #expect(try await engine.submit(oldHigh) == nil, "redelivered while waiting: still never offered to who declined it")
            let after = try await engine.offerWaiting()
            #expect(after.map(\.requestID) == [newHigh.id], "the declining technician is free again: the next most urgent")
        }
    }

    @Test("two dispatcher replicas deciding at once never give a technician more than its capacity")
    func concurrentReplicasRespectCapacity() async throws {
        try await DispatchWorld().run(replicas: 2) { engines in
            for i in 0..<5 {
                try await engines[0].upsert(Technician(id: "t\(i)", name: "T\(i)", skills: ["network"], regions: ["north"], capacity: 2))
            }
            let requests = (0..<40).map { _ in DispatchWorld.request() }
            let offers = try await withThrowingTaskGroup(of: Reservation?.self) { group in
                for (i, request) in requests.enumerated() {
                    group.addTask { try await engines[i % 2].submit(request) }
                }
                for _ in 0..<4 { group.addTask { try await engines[1].offerWaiting().first } }
                var all: [Reservation] = []
                for try await offer in group { if let offer { all.append(offer) } }
                return all
            }
            let perTechnician = Dictionary(grouping: offers, by: \.technicianID).mapValues(\.count)
            #expect(perTechnician.values.allSatisfy { $0 <= 2 }, "\(perTechnician)")
            // A decision that skipped a technician locked by the other replica left its request
            // waiting; the queue clock's next pass offers it (here, once by hand).
            let more = try await engines[0].offerWaiting()
            #expect(Dictionary(grouping: offers + more, by: \.technicianID).values.allSatisfy { $0.count <= 2 })
            #expect(try await count(engines[0], "SELECT count(*) FROM {schema}.reservations WHERE status = 'pending'") == 10)
            #expect(try await count(engines[0], "SELECT count(*) FROM {schema}.technicians WHERE active_load > capacity") == 0)
            #expect(try await count(engines[0], "SELECT count(*) FROM {schema}.dispatch_requests WHERE status = 'waiting'") == 30)
            try await expectNoOrphans(engines[0])
        }
    }

    @Test("rules decide what a request needs: first match wins, by category, priority, keywords and tier")
    func rules() throws {
        let rules = DispatchRules(rules: [
            .init(name: "urgent outage", when: .init(categories: ["Outage"], minPriority: 3), then: .technician, skills: ["fiber"], priority: 5),
            .init(name: "outage", when: .init(categories: ["outage"]), then: .technician, skills: ["network"]),
            .init(name: "billing", when: .init(keywords: ["refund"]), then: .agent),
            .init(name: "gold", when: .init(tiers: ["gold"]), then: .technician, skills: ["general"]),
        ], default: .none)
        let urgent = rules.decide(.init(category: "outage", priority: 4, description: "no signal", tier: nil))
        #expect(urgent == .init(action: .technician, rule: "urgent outage", skills: ["fiber"], priority: 5))
        #expect(rules.decide(.init(category: "OUTAGE", priority: 1, description: "", tier: nil)).rule == "outage")
        #expect(rules.decide(.init(category: "question", priority: 1, description: "I want a Refund, please", tier: "gold")).action == .agent)
        #expect(rules.decide(.init(category: "question", priority: 1, description: "refunded?", tier: "gold")).rule == "gold",
                "keywords match whole words")
        #expect(rules.decide(.init(category: "question", priority: 1, description: "hello", tier: nil)).action == DispatchRules.Action.none)
    }
}
