import Foundation
import Logging
import NIOCore
import PostgresNIO
import VeilStore

/// How the dispatcher picks a technician, as settings (`VEIL_DISPATCH_*`).
public struct AssignmentPolicy: Sendable, Hashable {
    /// How long a technician has to answer an offer before it moves on.
    public var reservationTimeout: Duration = .seconds(60)
    /// A request nobody could take for this long is escalated (flagged, priority raised).
    public var escalateAfter: Duration = .seconds(600)
    /// Waiting time that counts as one more priority level (aging), so old requests are not starved.
    public var agingStep: Duration = .seconds(300)
    /// Weight of the technician's load (active / capacity, 0…1) in the ranking.
    public var loadWeight: Double = 1.0
    /// Weight of serving outside the technician's home region (0 at home, 1 elsewhere).
    public var regionWeight: Double = 0.5

    public init() {}
}

/// A technician as the dispatcher knows them: what they can do, where, when, and how much at once.
public struct Technician: Sendable, Hashable, Codable {
    public var id: String
    public var name: String
    public var skills: [String]
    /// Regions they serve; `homeRegion` is preferred.
    public var regions: [String]
    public var homeRegion: String?
    /// Requests they may hold at once (offered or assigned).
    public var capacity: Int
    /// `available`, `busy` or `offline`: only `available` technicians get offers.
    public var activity: String
    /// Shift in UTC, `HH:MM` (an overnight shift has start > end); `nil`: always on shift.
    public var shiftStart: String?
    public var shiftEnd: String?
    /// The technician device's Ed25519 and X25519 public keys (raw): alerts are sealed to
    /// the second, answers must be signed with the first.
    public var signingKey: Data?
    public var encryptionKey: Data?
    /// `technician` (alerted on their device) or `agent` (takes chats in the agent console).
    public var kind: WorkerKind

    public init(id: String, name: String, skills: [String], regions: [String], homeRegion: String? = nil,
                capacity: Int = 1, activity: String = "available", shiftStart: String? = nil, shiftEnd: String? = nil,
                signingKey: Data? = nil, encryptionKey: Data? = nil, kind: WorkerKind = .technician) {
        self.kind = kind
        self.signingKey = signingKey
        self.encryptionKey = encryptionKey
        self.id = id
        self.name = name
        self.skills = skills
        self.regions = regions
        self.homeRegion = homeRegion
        self.capacity = capacity
        self.activity = activity
        self.shiftStart = shiftStart
        self.shiftEnd = shiftEnd
    }
}

/// Who can take a request: technicians (field work) and agents (chats) share one
/// reservation model and one table; a request only ever goes to its own kind.
public enum WorkerKind: String, Sendable, Hashable, Codable, CaseIterable {
    case technician, agent
}

/// What the engine needs to know about a request that needs a technician or an agent.
public struct DispatchRequest: Sendable, Hashable {
    public var id: UUID
    public var category: String
    /// Higher is more urgent.
    public var priority: Int
    public var region: String?
    public var requiredSkills: [String]
    public var workerKind: WorkerKind

    public init(id: UUID, category: String, priority: Int, region: String?, requiredSkills: [String],
                workerKind: WorkerKind = .technician) {
        self.workerKind = workerKind
        self.id = id
        self.category = category
        self.priority = priority
        self.region = region
        self.requiredSkills = requiredSkills
    }
}

/// An offer of one request to one technician, waiting for an answer until `expiresAt`.
public struct Reservation: Sendable, Hashable {
    public var id: UUID
    public var requestID: UUID
    public var technicianID: String
    public var expiresAt: Date
}

/// A technician's answer to an offer.
public enum ReservationAnswer: String, Sendable, Hashable, Codable {
    case accept, decline
}

public struct AssignmentError: Error, Sendable, CustomStringConvertible {
    public let code: String
    public let reason: String
    public var description: String { "AssignmentError(\(code)): \(reason)" }
    static func notFound(_ what: String) -> AssignmentError { AssignmentError(code: "dispatch.not_found", reason: "\(what) not found") }
    static func notPending(_ id: UUID) -> AssignmentError {
        AssignmentError(code: "dispatch.not_pending", reason: "reservation \(id) was already answered or timed out")
    }
    static func invalid(_ reason: String) -> AssignmentError { AssignmentError(code: "dispatch.invalid", reason: reason) }
}

/// Technician selection with reservations (the TaskRouter model: workers with
/// activities and capacity, tasks waiting in priority order with aging, reservations
/// that are accepted, declined or time out).
///
/// Every decision is one PostgreSQL transaction that locks the request and the chosen
/// technician's row (`FOR UPDATE SKIP LOCKED`) and counts the offer against the
/// technician's capacity before committing, so any number of dispatcher replicas
/// deciding at once never give a technician more than `capacity` requests.
public struct AssignmentEngine: Sendable {
    public let database: Database
    public let policy: AssignmentPolicy
    public let logger: Logger

    public init(database: Database, policy: AssignmentPolicy, logger: Logger) {
        self.database = database
        self.policy = policy
        self.logger = logger
    }

    public static let migrations: [Migration] = [
        Migration("010_dispatch_assignment", sql: """
            CREATE TABLE {schema}.technicians (
                id            text PRIMARY KEY,
                name          text NOT NULL,
                skills        text[] NOT NULL DEFAULT '{}',
                regions       text[] NOT NULL DEFAULT '{}',
                home_region   text,
                capacity      integer NOT NULL CHECK (capacity >= 0),
                active_load   integer NOT NULL DEFAULT 0 CHECK (active_load >= 0),
                activity      text NOT NULL DEFAULT 'available' CHECK (activity IN ('available', 'busy', 'offline')),
                shift_start   time,
                shift_end     time,
                last_offer_at timestamptz,
                updated_at    timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE {schema}.dispatch_requests (
                id              uuid PRIMARY KEY,
                category        text NOT NULL,
                priority        integer NOT NULL,
                region          text,
                required_skills text[] NOT NULL DEFAULT '{}',
                status          text NOT NULL CHECK (status IN ('waiting', 'offered', 'assigned', 'completed', 'cancelled')),
                technician_id   text REFERENCES {schema}.technicians (id),
                created_at      timestamptz NOT NULL DEFAULT now(),
                escalated_at    timestamptz,
                assigned_at     timestamptz
            );
            CREATE INDEX dispatch_requests_waiting ON {schema}.dispatch_requests (priority DESC, created_at) WHERE status = 'waiting';
            CREATE TABLE {schema}.reservations (
                id            uuid PRIMARY KEY,
                request_id    uuid NOT NULL REFERENCES {schema}.dispatch_requests (id),
                technician_id text NOT NULL REFERENCES {schema}.technicians (id),
                status        text NOT NULL CHECK (status IN ('pending', 'accepted', 'declined', 'timed_out', 'completed')),
                reason        text,
                offered_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
                expires_at    timestamptz NOT NULL,
                answered_at   timestamptz,
                UNIQUE (request_id, technician_id)
            );
            CREATE INDEX reservations_pending ON {schema}.reservations (expires_at) WHERE status = 'pending';
            """),
        Migration("012_dispatch_technician_devices", sql: """
            ALTER TABLE {schema}.technicians ADD COLUMN device_signing_key bytea;
            ALTER TABLE {schema}.technicians ADD COLUMN device_encryption_key bytea;
            """),
        Migration("013_dispatch_candidate_indexes", sql: """
            -- Eligibility filters (skills @> …, region = ANY (regions)) by index, not by scanning every technician.
            CREATE INDEX technicians_skills ON {schema}.technicians USING gin (skills);
            CREATE INDEX technicians_regions ON {schema}.technicians USING gin (regions);
            """),
        Migration("014_dispatch_transfers", sql: """
            ALTER TABLE {schema}.reservations DROP CONSTRAINT reservations_status_check;
            ALTER TABLE {schema}.reservations ADD CONSTRAINT reservations_status_check
                CHECK (status IN ('pending', 'accepted', 'declined', 'timed_out', 'completed', 'transferred'));
            """),
        Migration("015_dispatch_worker_kinds", sql: """
            -- Agents (chats) are workers like technicians, with the same reservations; a request goes to its own kind only.
            ALTER TABLE {schema}.technicians ADD COLUMN kind text NOT NULL DEFAULT 'technician' CHECK (kind IN ('technician', 'agent'));
            ALTER TABLE {schema}.dispatch_requests ADD COLUMN worker_kind text NOT NULL DEFAULT 'technician'
                CHECK (worker_kind IN ('technician', 'agent'));
            """),
        // The decision as PL/pgSQL functions: a call is cheap to parse, the statements
        // inside are planned once per connection (not at every decision, which cost
        // ~0.75 ms of the ~3 ms), and `submit_request` records and offers a request in one
        // round trip. The rules are the same as before, in one transaction: lock the request,
        // pick and lock the technician (`FOR UPDATE … SKIP LOCKED`; PostgreSQL re-checks the
        // capacity condition on the row it locks), record the reservation, count it, mark
        // the request offered.
        Migration("020_dispatch_decision_functions", sql: """
            CREATE FUNCTION {schema}.offer_request(p_request uuid, p_reservation uuid, p_timeout_seconds float8,
                                                   p_load_weight float8, p_region_weight float8)
            RETURNS TABLE (technician_id text, expires_at timestamptz)
            LANGUAGE plpgsql AS $$
            #variable_conflict use_column
            DECLARE
                v_region text;
                v_skills text[];
                v_kind text;
                v_offered text[];
                v_technician text;
                v_expires timestamptz;
                v_time time := (now() AT TIME ZONE 'UTC')::time;
                v_top integer := 16;
            BEGIN
                SELECT r.region, r.required_skills, r.worker_kind INTO v_region, v_skills, v_kind
                FROM {schema}.dispatch_requests r
                WHERE r.id = p_request AND r.status = 'waiting' FOR UPDATE SKIP LOCKED;
                IF NOT FOUND THEN RETURN; END IF;
                -- Who already had it (declined, timed out), read once rather than per candidate row.
                v_offered := ARRAY(SELECT o.technician_id FROM {schema}.reservations o WHERE o.request_id = p_request);
                -- The best `v_top` eligible technicians by rank, unlocked (a bounded sort, not a sort of every
                -- eligible one), then the best of those that can be locked and still has room: PostgreSQL
                -- re-checks activity and capacity on the row version it locks. If all of them were taken by
                -- concurrent decisions, once more over everyone eligible.
                LOOP
                    WITH top AS (
                        SELECT t.id FROM {schema}.technicians t
                        WHERE t.kind = v_kind AND t.activity = 'available' AND t.active_load < t.capacity
                          AND t.skills @> v_skills
                          AND (v_region IS NULL OR t.regions @> ARRAY[v_region])
                          AND (t.shift_start IS NULL
                               OR (t.shift_start <= t.shift_end AND v_time >= t.shift_start AND v_time < t.shift_end)
                               OR (t.shift_start > t.shift_end AND (v_time >= t.shift_start OR v_time < t.shift_end)))
                          AND t.id <> ALL (v_offered)
                        ORDER BY p_load_weight * t.active_load / GREATEST(t.capacity, 1)
                                 + p_region_weight * (CASE WHEN t.home_region IS NOT DISTINCT FROM v_region THEN 0 ELSE 1 END),
                                 t.last_offer_at NULLS FIRST, t.id
                        LIMIT v_top
                    )
                    SELECT t.id INTO v_technician FROM {schema}.technicians t JOIN top ON top.id = t.id
                    WHERE t.activity = 'available' AND t.active_load < t.capacity
                    ORDER BY p_load_weight * t.active_load / GREATEST(t.capacity, 1)
                             + p_region_weight * (CASE WHEN t.home_region IS NOT DISTINCT FROM v_region THEN 0 ELSE 1 END),
                             t.last_offer_at NULLS FIRST, t.id
                    LIMIT 1
                    FOR UPDATE OF t SKIP LOCKED;
                    EXIT WHEN v_technician IS NOT NULL OR v_top IS NULL;
                    v_top := NULL;  -- no limit
                END LOOP;
                IF v_technician IS NULL THEN RETURN; END IF;
                INSERT INTO {schema}.reservations AS n (id, request_id, technician_id, status, expires_at)
                VALUES (p_reservation, p_request, v_technician, 'pending', clock_timestamp() + make_interval(secs => p_timeout_seconds))
                RETURNING n.expires_at INTO v_expires;
                UPDATE {schema}.technicians t SET active_load = t.active_load + 1, last_offer_at = clock_timestamp()
                WHERE t.id = v_technician;
                UPDATE {schema}.dispatch_requests d SET status = 'offered' WHERE d.id = p_request;
                technician_id := v_technician;
                expires_at := v_expires;
                RETURN NEXT;
            END
            $$;
            CREATE FUNCTION {schema}.submit_request(p_request uuid, p_category text, p_priority integer, p_region text,
                                                    p_skills text[], p_kind text, p_reservation uuid, p_timeout_seconds float8,
                                                    p_load_weight float8, p_region_weight float8)
            RETURNS TABLE (technician_id text, expires_at timestamptz)
            LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {schema}.dispatch_requests (id, category, priority, region, required_skills, status, worker_kind)
                VALUES (p_request, p_category, p_priority, p_region, p_skills, 'waiting', p_kind)
                ON CONFLICT (id) DO NOTHING;
                RETURN QUERY SELECT * FROM {schema}.offer_request(p_request, p_reservation, p_timeout_seconds,
                                                                  p_load_weight, p_region_weight);
            END
            $$;
            """),
        // A decision used to cost in proportion to the technicians *eligible* for it: the
        // candidate query filtered and ranked every one of them (~1.4 µs a row here; 1.6–2.6 ms
        // of a ~3 ms decision with 1,000 eligible, from pg_stat_statements). The rank is
        // `load weight × load + region weight × (away from home)`, so with a positive load
        // weight the best candidates are the least loaded at home and the least loaded away:
        // two index scans in load order, each stopping after 16, the away one only down to
        // the load at which an away technician could still beat the 16th at home. The
        // union holds the best 16 by rank; from them the best that can be locked is taken, as
        // before, and the scan over everyone stays for the rest (no region, a weight of zero
        // or less, all 16 locked by concurrent decisions).
        Migration("022_dispatch_ranked_candidates", sql: """
            DROP INDEX {schema}.technicians_skills;
            DROP INDEX {schema}.technicians_regions;
            CREATE INDEX technicians_home_by_load ON {schema}.technicians
                (kind, home_region, ((active_load::float8) / GREATEST(capacity, 1)), last_offer_at NULLS FIRST, id)
                WHERE activity = 'available' AND active_load < capacity;
            CREATE INDEX technicians_by_load ON {schema}.technicians
                (kind, ((active_load::float8) / GREATEST(capacity, 1)), last_offer_at NULLS FIRST, id)
                WHERE activity = 'available' AND active_load < capacity;
            CREATE OR REPLACE FUNCTION {schema}.offer_request(p_request uuid, p_reservation uuid, p_timeout_seconds float8,
                                                              p_load_weight float8, p_region_weight float8)
            RETURNS TABLE (technician_id text, expires_at timestamptz)
            LANGUAGE plpgsql AS $$
            #variable_conflict use_column
            DECLARE
                v_region text;
                v_skills text[];
                v_kind text;
                v_offered text[];
                v_technician text;
                v_expires timestamptz;
                v_time time := (now() AT TIME ZONE 'UTC')::time;
                v_top integer := 16;
                v_candidate text;
                v_seen integer := 0;
            BEGIN
                SELECT r.region, r.required_skills, r.worker_kind INTO v_region, v_skills, v_kind
                FROM {schema}.dispatch_requests r
                WHERE r.id = p_request AND r.status = 'waiting' FOR UPDATE SKIP LOCKED;
                IF NOT FOUND THEN RETURN; END IF;
                v_offered := ARRAY(SELECT o.technician_id FROM {schema}.reservations o WHERE o.request_id = p_request);
                IF p_load_weight > 0 AND v_region IS NOT NULL THEN
                    -- `home`: the 16 least loaded eligible at home (ties: longest since an offer, then id);
                    -- `away`: the 16 least loaded away, only as loaded as could still rank with the 16th
                    -- at home (everyone away when fewer than 16 are at home; a hair over, for rounding).
                    -- Of those, the best 16 by rank, in order; then the first that can be locked and still
                    -- has room: PostgreSQL re-checks the row it locks.
                    FOR v_candidate IN
                        WITH home AS (
                            SELECT t.id, t.last_offer_at, (t.active_load::float8) / GREATEST(t.capacity, 1) AS load,
                                   p_load_weight * t.active_load / GREATEST(t.capacity, 1) AS rank
                            FROM {schema}.technicians t
                            WHERE t.kind = v_kind AND t.home_region = v_region
                              AND t.activity = 'available' AND t.active_load < t.capacity
                              AND t.skills @> v_skills AND t.regions @> ARRAY[v_region]
                              AND (t.shift_start IS NULL
                                   OR (t.shift_start <= t.shift_end AND v_time >= t.shift_start AND v_time < t.shift_end)
                                   OR (t.shift_start > t.shift_end AND (v_time >= t.shift_start OR v_time < t.shift_end)))
                              AND t.id <> ALL (v_offered)
                            ORDER BY (t.active_load::float8) / GREATEST(t.capacity, 1), t.last_offer_at NULLS FIRST, t.id
                            LIMIT 16
                        ), away AS (
                            SELECT t.id, t.last_offer_at,
                                   p_load_weight * t.active_load / GREATEST(t.capacity, 1) + p_region_weight AS rank
                            FROM {schema}.technicians t
                            WHERE t.kind = v_kind
                              AND (t.active_load::float8) / GREATEST(t.capacity, 1)
                                  <= (SELECT CASE WHEN count(*) < 16 THEN 'Infinity'::float8
                                                  ELSE max(h.load) - p_region_weight / p_load_weight + 1e-9 END FROM home h)
                              AND t.home_region IS DISTINCT FROM v_region
                              AND t.activity = 'available' AND t.active_load < t.capacity
                              AND t.skills @> v_skills AND t.regions @> ARRAY[v_region]
                              AND (t.shift_start IS NULL
                                   OR (t.shift_start <= t.shift_end AND v_time >= t.shift_start AND v_time < t.shift_end)
                                   OR (t.shift_start > t.shift_end AND (v_time >= t.shift_start OR v_time < t.shift_end)))
                              AND t.id <> ALL (v_offered)
                            ORDER BY (t.active_load::float8) / GREATEST(t.capacity, 1), t.last_offer_at NULLS FIRST, t.id
                            LIMIT 16
                        )
                        SELECT c.id FROM (SELECT id, rank, last_offer_at FROM home
                                          UNION ALL SELECT id, rank, last_offer_at FROM away) c
                        ORDER BY c.rank, c.last_offer_at NULLS FIRST, c.id
                        LIMIT 16
                    LOOP
                        v_seen := v_seen + 1;
                        SELECT t.id INTO v_technician FROM {schema}.technicians t
                        WHERE t.id = v_candidate AND t.activity = 'available' AND t.active_load < t.capacity
                        FOR UPDATE SKIP LOCKED;
                        EXIT WHEN v_technician IS NOT NULL;
                    END LOOP;
                    -- Nobody eligible (the scans skip no locked row): the request waits.
                    IF v_seen = 0 THEN RETURN; END IF;
                    -- All 16 taken by concurrent decisions: look at everyone.
                    v_top := NULL;
                END IF;
                WHILE v_technician IS NULL LOOP
                    WITH top AS (
                        SELECT t.id FROM {schema}.technicians t
                        WHERE t.kind = v_kind AND t.activity = 'available' AND t.active_load < t.capacity
                          AND t.skills @> v_skills
                          AND (v_region IS NULL OR t.regions @> ARRAY[v_region])
                          AND (t.shift_start IS NULL
                               OR (t.shift_start <= t.shift_end AND v_time >= t.shift_start AND v_time < t.shift_end)
                               OR (t.shift_start > t.shift_end AND (v_time >= t.shift_start OR v_time < t.shift_end)))
                          AND t.id <> ALL (v_offered)
                        ORDER BY p_load_weight * t.active_load / GREATEST(t.capacity, 1)
                                 + p_region_weight * (CASE WHEN t.home_region IS NOT DISTINCT FROM v_region THEN 0 ELSE 1 END),
                                 t.last_offer_at NULLS FIRST, t.id
                        LIMIT v_top
                    )
                    SELECT t.id INTO v_technician FROM {schema}.technicians t JOIN top ON top.id = t.id
                    WHERE t.activity = 'available' AND t.active_load < t.capacity
                    ORDER BY p_load_weight * t.active_load / GREATEST(t.capacity, 1)
                             + p_region_weight * (CASE WHEN t.home_region IS NOT DISTINCT FROM v_region THEN 0 ELSE 1 END),
                             t.last_offer_at NULLS FIRST, t.id
                    LIMIT 1
                    FOR UPDATE OF t SKIP LOCKED;
                    EXIT WHEN v_top IS NULL;
                    v_top := NULL;  -- no limit
                END LOOP;
                IF v_technician IS NULL THEN RETURN; END IF;
                INSERT INTO {schema}.reservations AS n (id, request_id, technician_id, status, expires_at)
                VALUES (p_reservation, p_request, v_technician, 'pending', clock_timestamp() + make_interval(secs => p_timeout_seconds))
                RETURNING n.expires_at INTO v_expires;
                UPDATE {schema}.technicians t SET active_load = t.active_load + 1, last_offer_at = clock_timestamp()
                WHERE t.id = v_technician;
                UPDATE {schema}.dispatch_requests d SET status = 'offered' WHERE d.id = p_request;
                technician_id := v_technician;
                expires_at := v_expires;
                RETURN NEXT;
            END
            $$;
            """),
        // A new request used to be inserted as waiting, locked and read back, checked for
        // earlier offers and updated to offered: three statements and a dead row version per
        // decision for what the caller already knows. The choice is now its own function
        // (`pick_worker`, the rules of 022 unchanged) and `submit_request` picks first, then
        // files the request once with its final status; a request filed before (a redelivery)
        // goes through `offer_request` as before.
        Migration("023_dispatch_submit_in_one_write", sql: """
            CREATE FUNCTION {schema}.pick_worker(p_kind text, p_region text, p_skills text[], p_offered text[],
                                                 p_load_weight float8, p_region_weight float8)
            RETURNS text
            LANGUAGE plpgsql AS $$
            #variable_conflict use_column
            DECLARE
                v_technician text;
                v_time time := (now() AT TIME ZONE 'UTC')::time;
                v_top integer := 16;
                v_candidate text;
                v_seen integer := 0;
            BEGIN
                IF p_load_weight > 0 AND p_region IS NOT NULL THEN
                    -- `home`: the 16 least loaded eligible at home (ties: longest since an offer, then id);
                    -- `away`: the 16 least loaded away, only as loaded as could still rank with the 16th
                    -- at home (everyone away when fewer than 16 are at home; a hair over, for rounding).
                    -- Of those, the best 16 by rank, in order; then the first that can be locked and still
                    -- has room: PostgreSQL re-checks the row it locks.
                    FOR v_candidate IN
                        WITH home AS (
                            SELECT t.id, t.last_offer_at, (t.active_load::float8) / GREATEST(t.capacity, 1) AS load,
                                   p_load_weight * t.active_load / GREATEST(t.capacity, 1) AS rank
                            FROM {schema}.technicians t
                            WHERE t.kind = p_kind AND t.home_region = p_region
                              AND t.activity = 'available' AND t.active_load < t.capacity
                              AND t.skills @> p_skills AND t.regions @> ARRAY[p_region]
                              AND (t.shift_start IS NULL
                                   OR (t.shift_start <= t.shift_end AND v_time >= t.shift_start AND v_time < t.shift_end)
                                   OR (t.shift_start > t.shift_end AND (v_time >= t.shift_start OR v_time < t.shift_end)))
                              AND t.id <> ALL (p_offered)
                            ORDER BY (t.active_load::float8) / GREATEST(t.capacity, 1), t.last_offer_at NULLS FIRST, t.id
                            LIMIT 16
                        ), away AS (
                            SELECT t.id, t.last_offer_at,
                                   p_load_weight * t.active_load / GREATEST(t.capacity, 1) + p_region_weight AS rank
                            FROM {schema}.technicians t
                            WHERE t.kind = p_kind
                              AND (t.active_load::float8) / GREATEST(t.capacity, 1)
                                  <= (SELECT CASE WHEN count(*) < 16 THEN 'Infinity'::float8
                                                  ELSE max(h.load) - p_region_weight / p_load_weight + 1e-9 END FROM home h)
                              AND t.home_region IS DISTINCT FROM p_region
                              AND t.activity = 'available' AND t.active_load < t.capacity
                              AND t.skills @> p_skills AND t.regions @> ARRAY[p_region]
                              AND (t.shift_start IS NULL
                                   OR (t.shift_start <= t.shift_end AND v_time >= t.shift_start AND v_time < t.shift_end)
                                   OR (t.shift_start > t.shift_end AND (v_time >= t.shift_start OR v_time < t.shift_end)))
                              AND t.id <> ALL (p_offered)
                            ORDER BY (t.active_load::float8) / GREATEST(t.capacity, 1), t.last_offer_at NULLS FIRST, t.id
                            LIMIT 16
                        )
                        SELECT c.id FROM (SELECT id, rank, last_offer_at FROM home
                                          UNION ALL SELECT id, rank, last_offer_at FROM away) c
                        ORDER BY c.rank, c.last_offer_at NULLS FIRST, c.id
                        LIMIT 16
                    LOOP
                        v_seen := v_seen + 1;
                        SELECT t.id INTO v_technician FROM {schema}.technicians t
                        WHERE t.id = v_candidate AND t.activity = 'available' AND t.active_load < t.capacity
                        FOR UPDATE SKIP LOCKED;
                        EXIT WHEN v_technician IS NOT NULL;
                    END LOOP;
                    -- Nobody eligible (the scans skip no locked row): the request waits.
                    IF v_seen = 0 THEN RETURN NULL; END IF;
                    -- All 16 taken by concurrent decisions: look at everyone.
                    v_top := NULL;
                END IF;
                WHILE v_technician IS NULL LOOP
                    WITH top AS (
                        SELECT t.id FROM {schema}.technicians t
                        WHERE t.kind = p_kind AND t.activity = 'available' AND t.active_load < t.capacity
                          AND t.skills @> p_skills
                          AND (p_region IS NULL OR t.regions @> ARRAY[p_region])
                          AND (t.shift_start IS NULL
                               OR (t.shift_start <= t.shift_end AND v_time >= t.shift_start AND v_time < t.shift_end)
                               OR (t.shift_start > t.shift_end AND (v_time >= t.shift_start OR v_time < t.shift_end)))
                          AND t.id <> ALL (p_offered)
                        ORDER BY p_load_weight * t.active_load / GREATEST(t.capacity, 1)
                                 + p_region_weight * (CASE WHEN t.home_region IS NOT DISTINCT FROM p_region THEN 0 ELSE 1 END),
                                 t.last_offer_at NULLS FIRST, t.id
                        LIMIT v_top
                    )
                    SELECT t.id INTO v_technician FROM {schema}.technicians t JOIN top ON top.id = t.id
                    WHERE t.activity = 'available' AND t.active_load < t.capacity
                    ORDER BY p_load_weight * t.active_load / GREATEST(t.capacity, 1)
                             + p_region_weight * (CASE WHEN t.home_region IS NOT DISTINCT FROM p_region THEN 0 ELSE 1 END),
                             t.last_offer_at NULLS FIRST, t.id
                    LIMIT 1
                    FOR UPDATE OF t SKIP LOCKED;
                    EXIT WHEN v_top IS NULL;
                    v_top := NULL;  -- no limit
                END LOOP;
                RETURN v_technician;
            END
            $$;
            CREATE FUNCTION {schema}.record_offer(p_request uuid, p_reservation uuid, p_technician text, p_timeout_seconds float8)
            RETURNS timestamptz
            LANGUAGE plpgsql AS $$
            DECLARE
                v_expires timestamptz;
            BEGIN
                INSERT INTO {schema}.reservations AS n (id, request_id, technician_id, status, expires_at)
                VALUES (p_reservation, p_request, p_technician, 'pending', clock_timestamp() + make_interval(secs => p_timeout_seconds))
                RETURNING n.expires_at INTO v_expires;
                UPDATE {schema}.technicians t SET active_load = t.active_load + 1, last_offer_at = clock_timestamp()
                WHERE t.id = p_technician;
                RETURN v_expires;
            END
            $$;
            CREATE OR REPLACE FUNCTION {schema}.offer_request(p_request uuid, p_reservation uuid, p_timeout_seconds float8,
                                                              p_load_weight float8, p_region_weight float8)
            RETURNS TABLE (technician_id text, expires_at timestamptz)
            LANGUAGE plpgsql AS $$
            #variable_conflict use_column
            DECLARE
                v_region text;
                v_skills text[];
                v_kind text;
                v_offered text[];
                v_technician text;
            BEGIN
                SELECT r.region, r.required_skills, r.worker_kind INTO v_region, v_skills, v_kind
                FROM {schema}.dispatch_requests r
                WHERE r.id = p_request AND r.status = 'waiting' FOR UPDATE SKIP LOCKED;
                IF NOT FOUND THEN RETURN; END IF;
                v_offered := ARRAY(SELECT o.technician_id FROM {schema}.reservations o WHERE o.request_id = p_request);
                v_technician := {schema}.pick_worker(v_kind, v_region, v_skills, v_offered, p_load_weight, p_region_weight);
                IF v_technician IS NULL THEN RETURN; END IF;
                expires_at := {schema}.record_offer(p_request, p_reservation, v_technician, p_timeout_seconds);
                UPDATE {schema}.dispatch_requests d SET status = 'offered' WHERE d.id = p_request;
                technician_id := v_technician;
                RETURN NEXT;
            END
            $$;
            CREATE OR REPLACE FUNCTION {schema}.submit_request(p_request uuid, p_category text, p_priority integer, p_region text,
                                                               p_skills text[], p_kind text, p_reservation uuid, p_timeout_seconds float8,
                                                               p_load_weight float8, p_region_weight float8)
            RETURNS TABLE (technician_id text, expires_at timestamptz)
            LANGUAGE plpgsql AS $$
            #variable_conflict use_column
            DECLARE
                v_technician text;
            BEGIN
                v_technician := {schema}.pick_worker(p_kind, p_region, p_skills, '{}'::text[], p_load_weight, p_region_weight);
                INSERT INTO {schema}.dispatch_requests (id, category, priority, region, required_skills, status, worker_kind)
                VALUES (p_request, p_category, p_priority, p_region, p_skills,
                        CASE WHEN v_technician IS NULL THEN 'waiting' ELSE 'offered' END, p_kind)
                ON CONFLICT (id) DO NOTHING;
                IF NOT FOUND THEN
                    -- Filed before (a redelivery, or a concurrent submit of the same id): offered
                    -- already, or offered now by the rules for a waiting request (its earlier
                    -- offers excluded). The technician picked above is not offered.
                    RETURN QUERY SELECT * FROM {schema}.offer_request(p_request, p_reservation, p_timeout_seconds,
                                                                      p_load_weight, p_region_weight);
                    RETURN;
                END IF;
                IF v_technician IS NULL THEN RETURN; END IF;
                expires_at := {schema}.record_offer(p_request, p_reservation, v_technician, p_timeout_seconds);
                technician_id := v_technician;
                RETURN NEXT;
            END
            $$;
            """),
        // The hot path's foreign keys checked what its own transaction had just made sure of:
        // a reservation names the request `submit_request` inserted (or `offer_request`
        // locked) and the technician `pick_worker` locked, in the same transaction, and
        // neither table ever deletes a row. Each check is a `SELECT … FOR KEY SHARE` run from
        // an after-trigger per inserted row (and one queued for the request's empty
        // `technician_id`): `Deploy/local/pgbench-dispatch.sh` with BASELINE_SQL re-adding them
        // and VARIANT_SQL dropping them (8 clients, 1,000 technicians, three rounds) gave
        // 1,916–2,107 calls/s with them and 2,581–2,719 without. The dispatch tests check for
        // orphans instead (`expectNoOrphans`).
        Migration("024_dispatch_decisions_without_foreign_keys", sql: """
            ALTER TABLE {schema}.reservations DROP CONSTRAINT IF EXISTS reservations_request_id_fkey,
                                              DROP CONSTRAINT IF EXISTS reservations_technician_id_fkey;
            ALTER TABLE {schema}.dispatch_requests DROP CONSTRAINT IF EXISTS dispatch_requests_technician_id_fkey;
            """),
        // The same guards on statuses, kinds and counts, as domains instead of table CHECK
        // constraints. PostgreSQL compiles a table's CHECK expressions afresh for every
        // statement that inserts or updates a row (each of the decision's three writes, all
        // seven checks each time), while a domain's check is compiled once into the cached
        // plan and runs only for the columns a statement assigns. Clients see the base types
        // (a domain is sent as its base type), so nothing reads differently.
        // `Deploy/local/pgbench-dispatch.sh`, BASELINE_SQL the CHECK constraints and
        // VARIANT_SQL these domains, six rounds on one schema: 2,925–3,428 against
        // 3,190–3,768 calls/s, the domains ahead in every round (+3 to +24 %).
        Migration("025_dispatch_guards_as_domains", sql: """
            CREATE DOMAIN {schema}.dispatch_count AS integer CHECK (VALUE >= 0);
            CREATE DOMAIN {schema}.dispatch_activity AS text CHECK (VALUE IN ('available', 'busy', 'offline'));
            CREATE DOMAIN {schema}.dispatch_worker_kind AS text CHECK (VALUE IN ('technician', 'agent'));
            CREATE DOMAIN {schema}.dispatch_request_status AS text
                CHECK (VALUE IN ('waiting', 'offered', 'assigned', 'completed', 'cancelled'));
            CREATE DOMAIN {schema}.dispatch_reservation_status AS text
                CHECK (VALUE IN ('pending', 'accepted', 'declined', 'timed_out', 'completed', 'transferred'));
            ALTER TABLE {schema}.technicians
                DROP CONSTRAINT technicians_capacity_check, DROP CONSTRAINT technicians_active_load_check,
                DROP CONSTRAINT technicians_activity_check, DROP CONSTRAINT technicians_kind_check,
                ALTER COLUMN capacity TYPE {schema}.dispatch_count, ALTER COLUMN active_load TYPE {schema}.dispatch_count,
                ALTER COLUMN activity TYPE {schema}.dispatch_activity, ALTER COLUMN kind TYPE {schema}.dispatch_worker_kind;
            ALTER TABLE {schema}.dispatch_requests
                DROP CONSTRAINT dispatch_requests_status_check, DROP CONSTRAINT dispatch_requests_worker_kind_check,
                ALTER COLUMN status TYPE {schema}.dispatch_request_status,
                ALTER COLUMN worker_kind TYPE {schema}.dispatch_worker_kind;
            ALTER TABLE {schema}.reservations DROP CONSTRAINT reservations_status_check,
                ALTER COLUMN status TYPE {schema}.dispatch_reservation_status;
            """),
    ]

    // MARK: Technicians (the admin API and `veilctl` seed them)

    /// Creates or updates a technician; their current load is kept.
    public func upsert(_ t: Technician) async throws {
        guard t.capacity >= 0, ["available", "busy", "offline"].contains(t.activity) else {
            throw AssignmentError.invalid("capacity must be >= 0 and activity available, busy or offline")
        }
        guard (t.shiftStart == nil) == (t.shiftEnd == nil),
              [t.shiftStart, t.shiftEnd].allSatisfy({ $0 == nil || Self.isClockTime($0!) }) else {
            throw AssignmentError.invalid("shiftStart and shiftEnd must both be HH:MM (UTC) or both absent")
        }
        guard [t.signingKey, t.encryptionKey].allSatisfy({ $0 == nil || $0!.count == 32 }) else {
            throw AssignmentError.invalid("device keys must be raw 32-byte public keys")
        }
        let signing = t.signingKey.map { ByteBuffer(bytes: $0) }, encryption = t.encryptionKey.map { ByteBuffer(bytes: $0) }
        let rows = try await database.client.query("""
            INSERT INTO \(unescaped: table("technicians")) (id, name, skills, regions, home_region, capacity, activity, shift_start, shift_end,
                device_signing_key, device_encryption_key, kind)
            VALUES (\(t.id), \(t.name), \(t.skills), \(t.regions), \(t.homeRegion), \(t.capacity), \(t.activity),
                    \(t.shiftStart)::time, \(t.shiftEnd)::time, \(signing), \(encryption), \(t.kind.rawValue))
            ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind, skills = EXCLUDED.skills, regions = EXCLUDED.regions,
                home_region = EXCLUDED.home_region, capacity = EXCLUDED.capacity, activity = EXCLUDED.activity,
                shift_start = EXCLUDED.shift_start, shift_end = EXCLUDED.shift_end,
                device_signing_key = coalesce(EXCLUDED.device_signing_key, \(unescaped: table("technicians")).device_signing_key),
                device_encryption_key = coalesce(EXCLUDED.device_encryption_key, \(unescaped: table("technicians")).device_encryption_key),
                updated_at = now()
            WHERE \(unescaped: table("technicians")).kind = EXCLUDED.kind
            RETURNING id
            """, logger: logger).collect()
        // An id is a technician or an agent for good: updating it as the other kind is refused.
        guard !rows.isEmpty else { throw AssignmentError.invalid("\(t.id) exists as another kind of worker than \(t.kind.rawValue)") }
    }

    /// Sets a technician's activity (`available`, `busy`, `offline`).
    public func setActivity(_ technicianID: String, _ activity: String) async throws {
        guard ["available", "busy", "offline"].contains(activity) else { throw AssignmentError.invalid("unknown activity \(activity)") }
        let rows = try await database.client.query("""
            UPDATE \(unescaped: table("technicians")) SET activity = \(activity), updated_at = now() WHERE id = \(technicianID) RETURNING id
            """, logger: logger).collect()
        guard !rows.isEmpty else { throw AssignmentError.notFound("technician \(technicianID)") }
    }

    // MARK: Requests

    /// Files a request that needs a technician and tries to offer it at once.
    /// Idempotent by request id (a redelivered request is not filed twice).
    /// - Returns: the offer made, if someone was eligible.
    @discardableResult
    public func submit(_ request: DispatchRequest) async throws -> Reservation? {
        let statement = submitStatement(request)
        return reservation(statement.reservation, for: request.id, try await database.client.first(statement, logger: logger))
    }

    /// `submit` within the caller's transaction.
    func submit(_ request: DispatchRequest, on connection: PostgresConnection) async throws -> Reservation? {
        let statement = submitStatement(request)
        return reservation(statement.reservation, for: request.id, try await connection.first(statement, logger: logger))
    }

    private func submitStatement(_ request: DispatchRequest) -> SubmitRequestStatement {
        SubmitRequestStatement(request: request.id, category: request.category, priority: Int32(clamping: request.priority),
                               region: request.region, skills: request.requiredSkills, kind: request.workerKind.rawValue,
                               reservation: UUID(), timeoutSeconds: policy.reservationTimeout.seconds,
                               loadWeight: policy.loadWeight, regionWeight: policy.regionWeight)
    }

    /// The offer a decision function returned (its row, if any).
    private func reservation(_ id: UUID, for requestID: UUID, _ row: (technician: String, expiresAt: Date)?) -> Reservation? {
        row.map { Reservation(id: id, requestID: requestID, technicianID: $0.technician, expiresAt: $0.expiresAt) }
    }

    /// Offers a waiting request to the best eligible technician, if any; returns the offer.
    ///
    /// One call of `offer_request` (migration 020), so one round trip and its own
    /// transaction: it locks the request and the chosen technician (`FOR UPDATE … SKIP
    /// LOCKED`; PostgreSQL re-checks the capacity condition on the row it locks), records
    /// the reservation, counts it against the technician's capacity and marks the request
    /// offered, all or nothing.
    public func offer(_ requestID: UUID) async throws -> Reservation? {
        let reservationID = UUID()
        let rows = try await database.client.query("""
            SELECT technician_id, expires_at FROM \(unescaped: table("offer_request"))(
                \(requestID), \(reservationID), \(policy.reservationTimeout.seconds), \(policy.loadWeight), \(policy.regionWeight))
            """, logger: logger)
        let first = try await rows.decode((String, Date).self).reduce(nil as (String, Date)?) { $0 ?? $1 }
        return reservation(reservationID, for: requestID, first)
    }

    /// Offers waiting requests, most urgent first (priority plus one level per `agingStep`
    /// waited), oldest first within a level. Returns the offers made.
    public func offerWaiting(limit: Int = 100) async throws -> [Reservation] {
        let aging = max(1, policy.agingStep.seconds)
        let waiting = try await database.client.query("""
            SELECT id FROM \(unescaped: table("dispatch_requests")) WHERE status = 'waiting'
            ORDER BY priority + floor(extract(epoch FROM now() - created_at) / \(aging)) DESC, created_at
            LIMIT \(limit)
            """, logger: logger).collect()
        var offers: [Reservation] = []
        for row in waiting {
            if let offer = try await offer(try row.decode(UUID.self)) { offers.append(offer) }
        }
        return offers
    }

    /// Records a technician's answer. Accept: the request is assigned. Decline: the offer
    /// is released and the request offered to the next candidate (returned).
    @discardableResult
    public func answer(_ reservationID: UUID, technicianID: String, _ answer: ReservationAnswer,
                       reason: String? = nil) async throws -> Reservation? {
        let requestID: UUID = try await database.transaction { connection in
            let rows = try await connection.query("""
                UPDATE \(unescaped: table("reservations"))
                SET status = \(answer == .accept ? "accepted" : "declined"), reason = \(reason), answered_at = clock_timestamp()
                WHERE id = \(reservationID) AND technician_id = \(technicianID) AND status = 'pending' AND expires_at > clock_timestamp()
                RETURNING request_id
                """, logger: logger).collect()
            guard let requestID = try rows.first?.decode(UUID.self) else { throw AssignmentError.notPending(reservationID) }
            switch answer {
            case .accept:
                try await connection.query("""
                    UPDATE \(unescaped: table("dispatch_requests"))
                    SET status = 'assigned', technician_id = \(technicianID), assigned_at = clock_timestamp() WHERE id = \(requestID)
                    """, logger: logger)
            case .decline:
                try await release(technicianID, requestID: requestID, on: connection)
            }
            return requestID
        }
        return answer == .decline ? try await offer(requestID) : nil
    }

    /// Hands an accepted request on: the technician's capacity is freed and the request is
    /// offered to the next candidate (never to anyone it was offered before). Returns that offer.
    @discardableResult
    public func transfer(_ reservationID: UUID, technicianID: String) async throws -> Reservation? {
        let requestID: UUID = try await database.transaction { connection in
            let rows = try await connection.query("""
                UPDATE \(unescaped: table("reservations")) SET status = 'transferred', answered_at = clock_timestamp()
                WHERE id = \(reservationID) AND technician_id = \(technicianID) AND status = 'accepted'
                RETURNING request_id
                """, logger: logger).collect()
            guard let requestID = try rows.first?.decode(UUID.self) else { throw AssignmentError.notPending(reservationID) }
            try await connection.query("""
                UPDATE \(unescaped: table("technicians")) SET active_load = greatest(active_load - 1, 0) WHERE id = \(technicianID)
                """, logger: logger)
            try await connection.query("""
                UPDATE \(unescaped: table("dispatch_requests")) SET status = 'waiting', technician_id = NULL, assigned_at = NULL
                WHERE id = \(requestID) AND status = 'assigned'
                """, logger: logger)
            return requestID
        }
        return try await offer(requestID)
    }

    /// Marks an assigned request completed and frees the technician's capacity.
    public func complete(_ requestID: UUID, technicianID: String) async throws {
        try await database.transaction { connection in
            try await complete(requestID, technicianID: technicianID, on: connection)
        }
    }

    /// `complete` within the caller's transaction.
    func complete(_ requestID: UUID, technicianID: String, on connection: PostgresConnection) async throws {
        let rows = try await connection.query("""
            UPDATE \(unescaped: table("dispatch_requests")) SET status = 'completed'
            WHERE id = \(requestID) AND technician_id = \(technicianID) AND status = 'assigned' RETURNING id
            """, logger: logger).collect()
        guard !rows.isEmpty else { throw AssignmentError.notFound("assigned request \(requestID) of \(technicianID)") }
        try await connection.query("""
            UPDATE \(unescaped: table("reservations")) SET status = 'completed'
            WHERE request_id = \(requestID) AND technician_id = \(technicianID) AND status = 'accepted'
            """, logger: logger)
        try await connection.query("""
            UPDATE \(unescaped: table("technicians")) SET active_load = greatest(active_load - 1, 0) WHERE id = \(technicianID)
            """, logger: logger)
    }

    /// Times out unanswered offers (releasing the technicians) and offers those requests
    /// to the next candidates. Returns the new offers.
    public func expireReservations() async throws -> [Reservation] {
        let expired: [(UUID, String)] = try await database.transaction { connection in
            let rows = try await connection.query("""
                UPDATE \(unescaped: table("reservations")) SET status = 'timed_out', answered_at = clock_timestamp()
                WHERE id IN (SELECT id FROM \(unescaped: table("reservations"))
                             WHERE status = 'pending' AND expires_at <= clock_timestamp() FOR UPDATE SKIP LOCKED)
                RETURNING request_id, technician_id
                """, logger: logger).collect()
            var released: [(UUID, String)] = []
            for row in rows {
                let (requestID, technicianID) = try row.decode((UUID, String).self)
                try await release(technicianID, requestID: requestID, on: connection)
                released.append((requestID, technicianID))
            }
            return released
        }
        var offers: [Reservation] = []
        for (requestID, _) in expired {
            if let next = try await offer(requestID) { offers.append(next) }
        }
        return offers
    }

    /// Flags requests that waited longer than `escalateAfter` without a technician and
    /// raises their priority by one. Returns their ids.
    public func escalate() async throws -> [UUID] {
        let rows = try await database.client.query("""
            UPDATE \(unescaped: table("dispatch_requests")) SET escalated_at = now(), priority = priority + 1
            WHERE status = 'waiting' AND escalated_at IS NULL
              AND created_at <= now() - make_interval(secs => \(policy.escalateAfter.seconds))
            RETURNING id
            """, logger: logger).collect()
        return try rows.map { try $0.decode(UUID.self) }
    }

    private func release(_ technicianID: String, requestID: UUID, on connection: PostgresConnection) async throws {
        try await connection.query("""
            UPDATE \(unescaped: table("technicians")) SET active_load = greatest(active_load - 1, 0) WHERE id = \(technicianID)
            """, logger: logger)
        try await connection.query("""
            UPDATE \(unescaped: table("dispatch_requests")) SET status = 'waiting' WHERE id = \(requestID) AND status = 'offered'
            """, logger: logger)
    }

    // MARK: Statistics

    /// Queue and worker statistics (`veilctl dispatch stats`, and the metrics).
    public struct Statistics: Sendable, Hashable, Codable {
        public var waiting: Int
        public var longestWaitSeconds: Double
        public var escalated: Int
        public var offered: Int
        public var assigned: Int
        public var accepted: Int
        public var declined: Int
        public var timedOut: Int
        /// Mean seconds from offer to acceptance.
        public var averageAcceptanceSeconds: Double
    }

    public func statistics() async throws -> Statistics {
        let requests = try await database.client.query("""
            SELECT count(*) FILTER (WHERE status = 'waiting'),
                   coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'waiting')), 0)::float8,
                   count(*) FILTER (WHERE escalated_at IS NOT NULL AND status IN ('waiting', 'offered')),
                   count(*) FILTER (WHERE status = 'offered'),
                   count(*) FILTER (WHERE status = 'assigned')
            FROM \(unescaped: table("dispatch_requests"))
            """, logger: logger).collect()
        let reservations = try await database.client.query("""
            SELECT count(*) FILTER (WHERE status IN ('accepted', 'completed')),
                   count(*) FILTER (WHERE status = 'declined'),
                   count(*) FILTER (WHERE status = 'timed_out'),
                   coalesce(avg(extract(epoch FROM answered_at - offered_at)) FILTER (WHERE status IN ('accepted', 'completed')), 0)::float8
            FROM \(unescaped: table("reservations"))
            """, logger: logger).collect()
        let (waiting, longest, escalated, offered, assigned) = try requests.first!.decode((Int, Double, Int, Int, Int).self)
        let (accepted, declined, timedOut, average) = try reservations.first!.decode((Int, Int, Int, Double).self)
        return Statistics(waiting: waiting, longestWaitSeconds: longest, escalated: escalated, offered: offered, assigned: assigned,
                          accepted: accepted, declined: declined, timedOut: timedOut, averageAcceptanceSeconds: average)
    }

    func table(_ name: String) -> String { database.table(name) }

    static func isClockTime(_ text: String) -> Bool {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let h = Int(parts[0]), let m = Int(parts[1]) else { return false }
        return (0..<24).contains(h) && (0..<60).contains(m) && parts[1].count == 2
    }
}
