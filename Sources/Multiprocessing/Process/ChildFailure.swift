#if canImport(Glibc)
import Glibc
#endif

/// Why a child process failed, as its parent sees it after the child ended (``ChildProcess/failure``):
/// the error its task threw, or the signal that killed it. Python shows these only as the child's
/// traceback and exit code; here they are values.
///
/// ```swift
/// try child.join(timeout: .seconds(10))
/// if let failure = child.failure {
///     if let mine = failure.error(as: ParseError.self) { ... }   // the thrown value itself
///     print(failure.typeName ?? "signal", failure.message)
/// }
/// ```
public struct ChildFailure: Error, Sendable, CustomStringConvertible {
    /// The thrown error's type name (`String(reflecting:)`, e.g. `MyModule.ParseError`), or nil when a
    /// signal ended the child.
    public let typeName: String?
    /// The thrown error's description (`String(describing:)`), or the signal in words.
    public let message: String
    /// The signal that ended the child (its exit code is `-signal`), or nil when its task threw.
    public let signal: Int32?
    /// The thrown error itself, decoded in the parent, when its type is `Codable`, declared at file
    /// scope (or nested in a type), and its value could be encoded; nil otherwise.
    public let error: (any Error)?

    /// The thrown error as `type`, or nil when it was of another type or did not cross.
    public func error<E: Error>(as type: E.Type) -> E? { error as? E }

    /// The signal's name, e.g. `SIGKILL`, or nil when the task threw.
    public var signalName: String? { signal.map { Signal(rawValue: $0).name } }

    /// The failure in one line: `ParseError: bad header` or `killed by signal SIGKILL (9)`.
    public var description: String {
        if let typeName { return "\(typeName): \(message)" }
        return message
    }

    init(typeName: String?, message: String, signal: Int32?, error: (any Error)?) {
        self.typeName = typeName
        self.message = message
        self.signal = signal
        self.error = error
    }

    /// The failure of a child that signal `number` ended.
    static func killed(by number: Int32) -> ChildFailure {
        var words = ""
        if let text = strsignal(number) { words = ": " + String(cString: text) }
        return ChildFailure(
            typeName: nil, message: "killed by signal \(Signal(rawValue: number).name) (\(number))\(words)", signal: number, error: nil)
    }
}

/// What a child whose task threw sends its parent over the bootstrap connection just before it exits.
struct FailureReport: Codable, Sendable {
    /// Reports are kept well under a socket buffer, so the dying child never blocks on a parent that
    /// reads only after the child has ended.
    static let sizeLimit = 64 * 1024

    var typeName: String
    var message: String
    /// The mangled name of the error's type and its encoding, when it is Codable.
    var valueType: String?
    var value: [UInt8]?

    init(_ error: any Error) {
        typeName = String(reflecting: type(of: error))
        message = String(String(describing: error).utf8.prefix(Self.sizeLimit / 4)) ?? ""
        if let encodable = error as? any Encodable, let name = _mangledTypeName(type(of: error)), !name.contains("$"),
            let bytes = try? BinaryEncoder().encode(encodable), bytes.count <= Self.sizeLimit / 2
        {
            valueType = name
            value = bytes
        }
    }

    /// Sends the report over `fd` (best effort: the child is ending anyway).
    func send(over fd: Int32) {
        guard let copy = try? Syscall.duplicate(fd), let connection = try? Connection(adopting: copy) else { return }
        try? connection.send(self)
        connection.close()
    }

    /// Reads a report the ended child left on `fd`, if it left one.
    static func receive(from fd: Int32) -> FailureReport? {
        guard let ready = try? Syscall.pollReadable([fd], until: .now), !ready.isEmpty,
            let copy = try? Syscall.duplicate(fd), let connection = try? Connection(adopting: copy)
        else { return nil }
        defer { connection.close() }
        return try? connection.recv(FailureReport.self, timeout: .milliseconds(100))
    }

    /// The failure as the parent shows it, with the error value decoded when its type is known here.
    var failure: ChildFailure {
        var decoded: (any Error)?
        if let valueType, let value, let type = _typeByName(valueType) as? any (Error & Decodable).Type {
            decoded = try? decodeError(type, from: value)
        }
        return ChildFailure(typeName: typeName, message: message, signal: nil, error: decoded)
    }
}

private func decodeError<E: Error & Decodable>(_ type: E.Type, from bytes: [UInt8]) throws -> any Error {
    try BinaryDecoder().decode(E.self, from: bytes)
}
