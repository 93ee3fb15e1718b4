import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One version of a 256-bit symmetric key (an HMAC key such as `kP.id`, `kT` or
/// `k2`, or an AEAD key). Printing or reflecting it never shows key material.
public struct VersionedKey: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public let version: UInt32
    public let key: SymmetricKey

    public init(version: UInt32, key: SymmetricKey) {
        self.version = version
        self.key = key
    }

    /// A key from exactly 32 raw bytes.
    public init?(version: UInt32, raw: some Collection<UInt8>) {
        guard raw.count == 32 else { return nil }
        self.init(version: version, key: SymmetricKey(data: Array(raw)))
    }

    public static func generate(version: UInt32) -> VersionedKey {
        VersionedKey(version: version, key: SymmetricKey(size: .bits256))
    }

    /// The raw 32 bytes, for sealing at rest or granting. Handle with care.
    public var rawBytes: [UInt8] { key.withUnsafeBytes { Array($0) } }

    /// `HMAC-SHA256(key, message)`: every hash in Veil is keyed, so an enumerable
    /// input (a phone number) cannot be recovered by tabulating all inputs.
    public func hash(_ message: some DataProtocol) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: message, using: key))
    }

    /// The same keyed hash with the key schedule done once, for hashing many messages
    /// under one key (HMAC otherwise hashes the key's two pads again for each message).
    public var hasher: KeyedHasher { KeyedHasher(self) }

    /// A subkey for one purpose (HKDF-SHA256 with `info`), so one stored key serves several uses separately.
    public func derived(_ info: String) -> VersionedKey {
        VersionedKey(version: version, key: HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Array(info.utf8), outputByteCount: 32))
    }

    /// `seal` with a caller-supplied 12-byte nonce, for bulk work that draws its
    /// randomness in one piece (`RandomBytes`). A nonce must never repeat under a key.
    public func seal(_ plaintext: some DataProtocol, aad: some DataProtocol, nonce: some DataProtocol) throws -> [UInt8] {
        Array(try ChaChaPoly.seal(plaintext, using: key, nonce: ChaChaPoly.Nonce(data: nonce), authenticating: aad).combined)
    }

    /// ChaCha20-Poly1305 combined box (nonce ‖ ciphertext ‖ tag), bound to `aad`.
    public func seal(_ plaintext: some DataProtocol, aad: some DataProtocol = [UInt8]()) throws -> [UInt8] {
        Array(try ChaChaPoly.seal(plaintext, using: key, authenticating: aad).combined)
    }

    /// Opens a box made by `seal(_:aad:)`; throws if it was altered or the key or `aad` differ.
    public func open(_ box: some DataProtocol, aad: some DataProtocol = [UInt8]()) throws -> [UInt8] {
        Array(try ChaChaPoly.open(ChaChaPoly.SealedBox(combined: box), using: key, authenticating: aad))
    }

    public var description: String { "VersionedKey(v\(version), redacted)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["version": version], displayStyle: .struct) }
}

/// The versions of one key, newest used for new data and every version kept for
/// opening and verifying old data until it is retired.
public struct KeyRing: Sendable, CustomStringConvertible {
    public private(set) var versions: [UInt32: VersionedKey]
    /// The version new data uses (the newest active one).
    public private(set) var current: VersionedKey?

    public init(_ keys: [VersionedKey] = [], current: UInt32? = nil) {
        versions = Dictionary(keys.map { ($0.version, $0) }, uniquingKeysWith: { $1 })
        let chosen = current ?? keys.map(\.version).max()
        self.current = chosen.flatMap { versions[$0] }
    }

    public subscript(version: UInt32) -> VersionedKey? { versions[version] }
    public var isEmpty: Bool { versions.isEmpty }
    public var description: String { "KeyRing(\(versions.keys.sorted().map { "v\($0)" }), current: v\(current?.version ?? 0))" }
}

/// `HMAC-SHA256` under one key with the inner and outer pads hashed once; each
/// `hash` continues from a copy of that state. Same output as `VersionedKey.hash`.
public struct KeyedHasher: Sendable {
    public let version: UInt32
    private let initial: HMAC<SHA256>

    public init(_ key: VersionedKey) {
        version = key.version
        initial = HMAC<SHA256>(key: key.key)
    }

    public func hash(_ message: some DataProtocol) -> [UInt8] {
        var state = initial
        state.update(data: message)
        return Array(state.finalize())
    }
}

/// Cryptographically secure random bytes drawn from the operating system in one
/// call per refill rather than one per key or nonce (the per-call system call
/// showed up in bulk filing). Not shared between threads: each worker keeps its own.
public struct RandomBytes {
    private var buffer: [UInt8]
    private var index: Int

    #if canImport(Glibc)
    private static let urandom: Int32 = {
        let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        precondition(fd >= 0, "cannot open /dev/urandom: errno \(errno)")
        return fd
    }()
    #endif

    /// `capacity`: bytes drawn per refill.
    public init(capacity: Int = 4096) {
        buffer = [UInt8](repeating: 0, count: max(64, capacity))
        index = buffer.count
    }

    /// The next `count` random bytes (at most the capacity).
    public mutating func take(_ count: Int) -> ArraySlice<UInt8> {
        precondition(count <= buffer.count, "asked for more random bytes than one refill holds")
        if index + count > buffer.count { refill() }
        defer { index += count }
        return buffer[index..<index + count]
    }

    private mutating func refill() {
        buffer.withUnsafeMutableBytes { raw in
            #if canImport(Glibc)
            // The kernel's CSPRNG (what getrandom(2) reads; Glibc's module map does not export
            // getrandom itself), through one descriptor kept open for the process.
            var filled = 0
            while filled < raw.count {
                let got = read(Self.urandom, raw.baseAddress! + filled, raw.count - filled)
                if got > 0 { filled += got } else { precondition(got < 0 && errno == EINTR, "reading /dev/urandom failed: errno \(errno)") }
            }
            #else
            arc4random_buf(raw.baseAddress!, raw.count)
            #endif
        }
        index = 0
    }
}
