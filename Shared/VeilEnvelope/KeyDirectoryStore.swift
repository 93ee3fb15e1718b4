import Crypto
import Synchronization

/// The key directory a service uses right now, replaced at run time by newer
/// signed directories (the lead wires it to follow the compacted topic
/// `veil.keys.directory.v1`).
///
/// Thread-safe: sealers and verifiers take a snapshot per message (a lock and
/// a reference copy); `accept(_:)` verifies outside the lock and swaps in a
/// directory only if its serial is higher.
public final class KeyDirectoryStore: Sendable {
    private let trusted: [UInt32: Curve25519.Signing.PublicKey]
    private let current: Mutex<ResolvedDirectory>

    /// Starts from `initial`, which must verify under one of the `trusted` directory keys (by version).
    public init(trusting trusted: [UInt32: Curve25519.Signing.PublicKey], initial: SignedKeyDirectory) throws(KeyError) {
        self.trusted = trusted
        let resolved = try ResolvedDirectory(initial.verified(trusting: trusted))
        self.current = Mutex(resolved)
    }

    /// The directory in use.
    public var directory: KeyDirectory { snapshot().document }

    /// The serial of the directory in use.
    public var serial: UInt64 { snapshot().document.serial }

    /// Verifies `signed` and makes it current if its serial is higher.
    ///
    /// Returns false when it is the directory already in use (re-reading a
    /// compacted topic); throws `KeyError.directoryStale` for an older serial
    /// or a different document under the same serial, and the signature and
    /// format errors of `SignedKeyDirectory.verified(trusting:)`.
    @discardableResult
    public func accept(_ signed: SignedKeyDirectory) throws(KeyError) -> Bool {
        let resolved = try ResolvedDirectory(signed.verified(trusting: trusted))
        let outcome: Result<Bool, KeyError> = current.withLock { current in
            if resolved.document.serial > current.document.serial {
                current = resolved
                return .success(true)
            }
            if resolved.document == current.document { return .success(false) }
            return .failure(.directoryStale)
        }
        return try outcome.get()
    }

    func snapshot() -> ResolvedDirectory { current.withLock { $0 } }
}
