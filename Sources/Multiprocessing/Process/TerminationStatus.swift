#if canImport(Glibc)
import Glibc
#endif

/// A POSIX signal, by number, with its conventional name.
public struct Signal: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    /// The signal's number (`SIGTERM` is 15 on Linux).
    public let rawValue: Int32

    /// The signal numbered `rawValue`.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// `SIGHUP`: the controlling terminal hung up.
    public static let hangup = Signal(rawValue: SIGHUP)
    /// `SIGINT`: an interrupt, as from Ctrl-C (``ChildProcess/interrupt()``).
    public static let interrupt = Signal(rawValue: SIGINT)
    /// `SIGQUIT`: quit with a core dump.
    public static let quit = Signal(rawValue: SIGQUIT)
    /// `SIGILL`: an illegal instruction; how a Swift runtime trap ends a process on some machines.
    public static let illegalInstruction = Signal(rawValue: SIGILL)
    /// `SIGTRAP`: a trap; how a Swift runtime trap (`fatalError`, overflow, bad unwrap) ends a process on x86.
    public static let trap = Signal(rawValue: SIGTRAP)
    /// `SIGABRT`: `abort()`.
    public static let abort = Signal(rawValue: SIGABRT)
    /// `SIGBUS`: a bad memory access.
    public static let busError = Signal(rawValue: SIGBUS)
    /// `SIGFPE`: an arithmetic fault.
    public static let floatingPointException = Signal(rawValue: SIGFPE)
    /// `SIGKILL`: killed, uncatchably (``ChildProcess/kill()``, or a hard resource limit).
    public static let kill = Signal(rawValue: SIGKILL)
    /// `SIGSEGV`: an access to memory that is not mapped.
    public static let segmentationViolation = Signal(rawValue: SIGSEGV)
    /// `SIGPIPE`: a write to a pipe nobody reads.
    public static let brokenPipe = Signal(rawValue: SIGPIPE)
    /// `SIGALRM`: an alarm clock.
    public static let alarm = Signal(rawValue: SIGALRM)
    /// `SIGTERM`: a polite request to end (``ChildProcess/terminate()``).
    public static let terminate = Signal(rawValue: SIGTERM)
    /// `SIGUSR1`, for the program's own use.
    public static let user1 = Signal(rawValue: SIGUSR1)
    /// `SIGUSR2`, for the program's own use.
    public static let user2 = Signal(rawValue: SIGUSR2)
    /// `SIGCHLD`: a child stopped or ended.
    public static let childStatusChanged = Signal(rawValue: SIGCHLD)
    /// `SIGCONT`: continue a stopped process.
    public static let `continue` = Signal(rawValue: SIGCONT)
    /// `SIGSTOP`: stop, uncatchably.
    public static let stop = Signal(rawValue: SIGSTOP)
    /// `SIGXCPU`: the process used up its CPU-time limit (``ResourceLimits/cpuSeconds``).
    public static let cpuTimeLimitExceeded = Signal(rawValue: SIGXCPU)
    /// `SIGXFSZ`: the process wrote past its file-size limit.
    public static let fileSizeLimitExceeded = Signal(rawValue: SIGXFSZ)

    /// The C name, such as `SIGSEGV`, or `signal N` for a number without one.
    public var name: String { signalName(rawValue) ?? "signal \(rawValue)" }

    /// The name and the system's words for it: `SIGSEGV (Segmentation fault)`.
    public var description: String {
        guard let words = strsignal(rawValue) else { return name }
        return "\(name) (\(String(cString: words)))"
    }
}

/// Signal names by number, as a switch: a child names signals in its crash messages at start, and a
/// switch costs nothing to set up (a dictionary global was built anew in every child).
private func signalName(_ number: Int32) -> String? {
    switch number {
    case SIGHUP: "SIGHUP"
    case SIGINT: "SIGINT"
    case SIGQUIT: "SIGQUIT"
    case SIGILL: "SIGILL"
    case SIGTRAP: "SIGTRAP"
    case SIGABRT: "SIGABRT"
    case SIGBUS: "SIGBUS"
    case SIGFPE: "SIGFPE"
    case SIGKILL: "SIGKILL"
    case SIGUSR1: "SIGUSR1"
    case SIGSEGV: "SIGSEGV"
    case SIGUSR2: "SIGUSR2"
    case SIGPIPE: "SIGPIPE"
    case SIGALRM: "SIGALRM"
    case SIGTERM: "SIGTERM"
    case SIGSTKFLT: "SIGSTKFLT"
    case SIGCHLD: "SIGCHLD"
    case SIGCONT: "SIGCONT"
    case SIGSTOP: "SIGSTOP"
    case SIGTSTP: "SIGTSTP"
    case SIGTTIN: "SIGTTIN"
    case SIGTTOU: "SIGTTOU"
    case SIGURG: "SIGURG"
    case SIGXCPU: "SIGXCPU"
    case SIGXFSZ: "SIGXFSZ"
    case SIGVTALRM: "SIGVTALRM"
    case SIGPROF: "SIGPROF"
    case SIGWINCH: "SIGWINCH"
    case SIGIO: "SIGIO"
    case SIGPWR: "SIGPWR"
    case SIGSYS: "SIGSYS"
    default: nil
    }
}

/// How a process ended: with an exit code, or killed by a signal.
///
/// ``ChildProcess/exitCode`` gives the same fact in Python's view (a signal as a negative number);
/// this type keeps the two cases apart.
public enum TerminationStatus: Hashable, Sendable, CustomStringConvertible {
    /// The process called `exit` (or returned from its task) with this code.
    case exited(Int32)
    /// A signal ended the process.
    case signaled(Signal)

    /// The status Python's `exitcode` would show: the code, or minus the signal number.
    public init(pythonExitCode code: Int32) {
        self = code < 0 ? .signaled(Signal(rawValue: -code)) : .exited(code)
    }

    /// Python's view: the exit code, or minus the signal's number.
    public var pythonExitCode: Int32 {
        switch self {
        case .exited(let code): code
        case .signaled(let signal): -signal.rawValue
        }
    }

    /// Whether the process exited with code 0.
    public var isSuccess: Bool { self == .exited(0) }

    /// `exited(0)`, `signaled(SIGKILL (Killed))`.
    public var description: String {
        switch self {
        case .exited(let code): "exited(\(code))"
        case .signaled(let signal): "signaled(\(signal))"
        }
    }
}

/// An operating-system process id.
public struct ProcessIdentifier: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    /// The number the kernel gave the process.
    public let rawValue: Int32

    /// The process numbered `rawValue`.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The id of the calling process.
    public static var current: ProcessIdentifier { ProcessIdentifier(rawValue: getpid()) }

    /// The number, as text.
    public var description: String { "\(rawValue)" }
}
