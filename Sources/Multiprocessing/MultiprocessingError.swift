#if canImport(Glibc)
import Glibc
#endif

/// The one error type thrown by this package.
///
/// Switch on ``code`` to learn what happened; ``description`` says it in words, with the facts
/// (pid, exit status, errno) that the failing call knew. Python's exceptions map to codes:
/// `queue.Full` → ``Code/full``, `queue.Empty` → ``Code/empty``, `TimeoutError` → ``Code/timedOut``,
/// `BufferTooShort` → ``Code/bufferTooShort``, `AuthenticationError` → ``Code/authenticationFailed``,
/// `EOFError` → ``Code/endOfFile``, `BrokenBarrierError` → ``Code/brokenBarrier``,
/// `ValueError` → ``Code/invalidArgument`` or ``Code/invalidState``, `RemoteError` → ``Code/remote``.
public struct MultiprocessingError: Error, Sendable, CustomStringConvertible, Equatable {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// A stable name for the code.
        public let rawValue: String
        /// Creates a code from its name; only the package makes codes.
        init(_ rawValue: String) { self.rawValue = rawValue }
        /// The code's name.
        public var description: String { rawValue }

        /// A blocking call gave up after its timeout.
        public static let timedOut = Code("timedOut")
        /// A queue is full and the caller would not wait (Python's `queue.Full`).
        public static let full = Code("full")
        /// A queue is empty and the caller would not wait (Python's `queue.Empty`).
        public static let empty = Code("empty")
        /// A receive buffer was too small; ``MultiprocessingError/payload`` holds the whole message.
        public static let bufferTooShort = Code("bufferTooShort")
        /// The peer failed the authentication handshake, or rejected ours.
        public static let authenticationFailed = Code("authenticationFailed")
        /// The peer closed its end: there is nothing more to receive.
        public static let endOfFile = Code("endOfFile")
        /// The object was closed before this call.
        public static let closed = Code("closed")
        /// An argument was out of range or malformed (Python's `ValueError`).
        public static let invalidArgument = Code("invalidArgument")
        /// The call is not allowed in the object's present state (start twice, join before start, ...).
        public static let invalidState = Code("invalidState")
        /// A barrier was broken by an abort, a reset, or a timeout.
        public static let brokenBarrier = Code("brokenBarrier")
        /// A value could not be encoded or decoded for transfer to another process.
        public static let transport = Code("transport")
        /// An error thrown in another process, carried back by type name and description.
        public static let remote = Code("remote")
        /// A system call failed; ``MultiprocessingError/errno`` tells which error.
        public static let system = Code("system")
        /// A child process ended abnormally where the caller needed it to succeed.
        public static let childFailed = Code("childFailed")
        /// The operation is not supported here (start method, platform, or object kind).
        public static let unsupported = Code("unsupported")
        /// A protocol peer sent bytes that do not follow the protocol.
        public static let protocolViolation = Code("protocolViolation")
        /// Something with that name already exists (Python's `FileExistsError`).
        public static let alreadyExists = Code("alreadyExists")
        /// Nothing has that name (Python's `FileNotFoundError`).
        public static let notFound = Code("notFound")
        /// A message asked for something that is never done for a peer: a pickle that names a class, a
        /// global or a call. Nothing was imported or run.
        public static let refused = Code("refused")
        /// The queue was shut down (Python's `queue.ShutDown`, CPython 3.13).
        public static let shutDown = Code("shutDown")
        /// A worker rank of an MPI pool ended or became unreachable with tasks in flight.
        public static let rankLost = Code("rankLost")
        /// A manager cannot be reached: its process died or shut down, or the network to it dropped.
        /// Every call pending on it and every later call fail with this until it can be reached again.
        public static let managerUnavailable = Code("managerUnavailable")
        /// A pool runs no more work: its initializer failed in a worker (Python's `BrokenProcessPool`).
        public static let brokenPool = Code("brokenPool")
    }

    /// What kind of failure this is.
    public let code: Code
    /// A sentence that says what happened.
    public let message: String
    /// The `errno` of the failing system call, when one failed.
    public let errno: Int32?
    /// Bytes that belong to the failure: the complete message for ``Code/bufferTooShort``.
    public let payload: [UInt8]?
    /// The process the failure concerns, when it concerns one.
    public internal(set) var pid: ProcessIdentifier? = nil
    /// The signal involved: the one that could not be sent, or the one that ended a process.
    public internal(set) var signal: Signal? = nil
    /// The timeout that ran out, for ``Code/timedOut``.
    public internal(set) var timeout: Duration? = nil

    /// Creates an error.
    public init(_ code: Code, _ message: String, errno: Int32? = nil, payload: [UInt8]? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
        self.payload = payload
    }

    /// The message, followed by the system's words for ``errno`` when there is one.
    public var description: String {
        guard let errno else { return "\(code): \(message)" }
        return "\(code): \(message): \(String(cString: strerror(errno))) (errno \(errno))"
    }

    static func system(_ what: String, errno: Int32 = Glibc.errno) -> MultiprocessingError {
        MultiprocessingError(.system, what, errno: errno)
    }

    /// This error with its facts as fields: the process, signal and timeout it concerns.
    func with(pid: Int32? = nil, signal: Int32? = nil, timeout: Duration? = nil) -> MultiprocessingError {
        var error = self
        if let pid { error.pid = ProcessIdentifier(rawValue: pid) }
        if let signal { error.signal = Signal(rawValue: signal) }
        if let timeout { error.timeout = timeout }
        return error
    }
}
