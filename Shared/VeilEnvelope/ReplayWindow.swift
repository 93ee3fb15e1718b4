import Synchronization
import VeilCore

/// The message ids accepted within the freshness window, to refuse replays.
///
/// An id is remembered until its created-at plus the allowed skew has passed:
/// after that the envelope is refused as stale anyway. Memory is bounded by
/// `capacity`; when full, the oldest entry is forgotten (a replay of it after
/// that is still dropped by the idempotent consumer downstream, invariant 3).
/// Thread-safe; shared by all verifiers of one process.
public final class ReplayWindow: Sendable {
    private struct State {
        var expiries: [MessageID: UInt64] = [:]
        var queue: [(id: MessageID, expiry: UInt64)] = []
        var head = 0

        mutating func forget(at index: Int) {
            let entry = queue[index]
            if expiries[entry.id] == entry.expiry { expiries[entry.id] = nil }
        }
    }

    /// Most ids remembered at once.
    public let capacity: Int
    private let state = Mutex(State())

    /// A window remembering at most `capacity` ids (about 100 bytes each).
    public init(capacity: Int = 1_000_000) {
        self.capacity = max(1, capacity)
    }

    /// How many ids are remembered now.
    public var count: Int { state.withLock { $0.expiries.count } }

    /// Forgets `id`, so it is accepted again (its message was given up, not applied).
    public func forget(_ id: MessageID) {
        state.withLock { _ = $0.expiries.removeValue(forKey: id) }
    }

    /// Records `id` and returns true, or returns false if it is already
    /// remembered and not yet expired.
    func recordIfNew(_ id: MessageID, expiresAt expiry: UInt64, now: UInt64) -> Bool {
        state.withLock { state in
            // Forget expired ids from the front (insertion order, so expiries
            // are only roughly sorted; the capacity bounds what lags behind).
            while state.head < state.queue.count, state.queue[state.head].expiry < now {
                state.forget(at: state.head)
                state.head += 1
            }
            if let known = state.expiries[id], known >= now { return false }
            while state.expiries.count >= capacity, state.head < state.queue.count {
                state.forget(at: state.head)
                state.head += 1
            }
            if state.head > 1024, state.head * 2 > state.queue.count {
                state.queue.removeFirst(state.head)
                state.head = 0
            }
            state.expiries[id] = expiry
            state.queue.append((id, expiry))
            return true
        }
    }
}
