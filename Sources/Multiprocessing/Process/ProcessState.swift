#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// What this process knows about itself and its parent: Python's `current_process()` state.
struct ProcessState: Sendable {
    var name = "MainProcess"
    var identity: [Int] = []
    var authkey: [UInt8]
    var daemon = false
    var childCounter = 0
    var parent: ParentProcess?

    /// The state of the running process.
    static let shared = ForkSafeMutex(ProcessState(authkey: randomBytes(32)))

    /// Reserves the next child identity and its default name (`Process-N`, `Process-N:M` in a child).
    static func nextChild() -> (identity: [Int], name: String) {
        shared.withLock { state in
            state.childCounter += 1
            let identity = state.identity + [state.childCounter]
            return (identity, "Process-" + identity.map(String.init).joined(separator: ":"))
        }
    }
}

/// A snapshot of the running process (Python's `current_process()`).
public struct CurrentProcess: Sendable, CustomStringConvertible {
    /// The process's name: `MainProcess`, or the name its parent gave it.
    public let name: String
    /// The OS process id (Python's `pid` and `ident`).
    public let pid: Int32
    /// The authentication key, inherited from the parent (32 random bytes in the main process).
    public let authkey: [UInt8]
    /// Whether this process is a daemon (daemons may not start children).
    public let daemon: Bool
    /// The process is running, so this is always true.
    public var isAlive: Bool { true }
    /// A running process has no exit code yet, so this is always nil.
    public var exitCode: Int32? { nil }
    /// The child numbers from the main process down to this one (empty in the main process).
    public let identity: [Int]

    /// A repr in Python's style.
    public var description: String { "<CurrentProcess name='\(name)' pid=\(pid)\(daemon ? " daemon" : "")>" }
}

/// The running process (Python's `current_process()`).
public func currentProcess() -> CurrentProcess {
    ProcessState.shared.withLock {
        CurrentProcess(name: $0.name, pid: getpid(), authkey: $0.authkey, daemon: $0.daemon, identity: $0.identity)
    }
}

/// Renames the running process (Python's `current_process().name = ...`).
public func setCurrentProcessName(_ name: String) {
    ProcessState.shared.withLock { $0.name = name }
}

/// Replaces the running process's authentication key, which children inherit
/// (Python's `current_process().authkey = ...`).
public func setCurrentProcessAuthkey(_ key: [UInt8]) {
    ProcessState.shared.withLock { $0.authkey = key }
}

/// The process that started this one, or nil in the main process (Python's `parent_process()`).
public func parentProcess() -> ParentProcess? {
    ProcessState.shared.withLock { $0.parent }
}

/// The number of CPUs online (Python's `cpu_count()`).
public func cpuCount() -> Int {
    max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
}

/// The parent of the running process, as a child sees it: it can tell when the parent has died.
public final class ParentProcess: @unchecked Sendable, CustomStringConvertible {
    /// The parent's process id.
    public let pid: Int32
    /// The parent's name.
    public let name: String
    /// A descriptor that polls readable once the parent has died (the child's end of its bootstrap
    /// connection: the parent holds the other end until it reaps the child).
    public let sentinel: Int32

    init(pid: Int32, name: String, sentinel: Int32) {
        self.pid = pid
        self.name = name
        self.sentinel = sentinel
    }

    /// Whether the parent is still running.
    public var isAlive: Bool {
        (try? Syscall.pollReadable([sentinel], until: .now).isEmpty) ?? false
    }

    /// Waits until the parent has ended or `timeout` passes; returns whether it has ended.
    @discardableResult
    public func join(timeout: Duration? = nil) throws -> Bool {
        try !Syscall.pollReadable([sentinel], until: .after(timeout)).isEmpty
    }

    /// Waits as ``join(timeout:)-9vlv6`` does, on the package's event loop, so that no thread is
    /// held while it waits. Cancellation ends the wait with `CancellationError`.
    @discardableResult
    public func join(timeout: Duration? = nil) async throws -> Bool {
        try await EventLoop.shared.waitReadable(sentinel, until: .after(timeout)) == .ready
    }

    /// A repr in Python's style.
    public var description: String { "<ParentProcess name='\(name)' pid=\(pid)>" }
}

/// `count` bytes from the kernel's random generator.
func randomBytes(_ count: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var filled = 0
    while filled < count {
        let got = bytes.withUnsafeMutableBytes { mp_getrandom($0.baseAddress! + filled, UInt(count - filled)) }
        if got > 0 { filled += got } else if errno != EINTR { break }
    }
    return bytes
}
