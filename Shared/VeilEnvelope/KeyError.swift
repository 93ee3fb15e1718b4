/// Why keys, a key directory or a key folder could not be loaded, verified or written.
///
/// A struct with a stable code, like `EnvelopeError`. `description` names the
/// code and, for files and variables, the path or variable name — never key
/// material.
public struct KeyError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The stable machine-readable code, e.g. `keys.directory_bad_signature`.
    public let code: String
    /// Where the problem was found (a file path or variable name), never a key.
    public let context: String

    private init(_ code: String, _ context: String = "") {
        self.code = code
        self.context = context
    }

    /// The directory's signature does not verify under the trusted directory key.
    public static let directoryBadSignature = KeyError("keys.directory_bad_signature")
    /// The directory names a directory key version that is not trusted.
    public static let directoryUntrustedKey = KeyError("keys.directory_untrusted_key")
    /// The directory document or its signed wrapper is not well-formed.
    public static let directoryMalformed = KeyError("keys.directory_malformed")
    /// The offered directory's serial is not newer than the one in use.
    public static let directoryStale = KeyError("keys.directory_stale")
    /// A required key file or variable is absent.
    public static let missing = KeyError("keys.missing")
    /// A key file or variable does not hold a base64 32-byte key.
    public static let malformed = KeyError("keys.malformed")
    /// A file could not be read or written.
    public static let io = KeyError("keys.io")
    /// The party or key version is not in the directory.
    public static let unknownParty = KeyError("keys.unknown_party")

    /// The same error, noting where it happened.
    func at(_ context: String) -> KeyError { KeyError(code, context) }

    public static func == (lhs: KeyError, rhs: KeyError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String { context.isEmpty ? "KeyError(\(code))" : "KeyError(\(code), \(context))" }
}
