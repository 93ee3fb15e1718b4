import Crypto
import Synchronization
import VeilCore

/// Subkeys (`VersionedKey.derived(purpose)`) with their HMAC key schedules done, derived
/// once per key version and purpose instead of per request: an HKDF and an HMAC key
/// schedule cost ~15 µs here, and a point-of-sale lookup used to pay that three times in the
/// vault and once in ingress. A version names one key for good, but the cache still
/// compares the key itself, so a key set reloaded with other material under a known version
/// (a botched rotation) derives afresh instead of answering with stale subkeys.
public final class SubkeyCache: Sendable {
    private struct Entry: Hashable {
        let purpose: String
        let version: UInt32
    }

    private let known = Mutex<[Entry: (parent: SymmetricKey, hasher: KeyedHasher)]>([:])

    public init() {}

    /// The keyed hasher of `key.derived(purpose)`.
    public func hasher(_ key: VersionedKey, purpose: String) -> KeyedHasher {
        let entry = Entry(purpose: purpose, version: key.version)
        if let cached = known.withLock({ $0[entry] }), cached.parent == key.key { return cached.hasher }
        let hasher = key.derived(purpose).hasher
        known.withLock { $0[entry] = (key.key, hasher) }
        return hasher
    }
}
