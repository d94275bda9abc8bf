#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// A started child as its start method sees it: what ``ChildProcess`` needs to watch, signal and reap
/// it, whatever created it (Python's `Popen` objects).
protocol ChildHandle: AnyObject, Sendable {
    /// The child's process id.
    var pid: Int32 { get }
    /// A descriptor that polls readable once the child has ended.
    var sentinel: Int32 { get }
    /// The exit code once the child has ended (reaping it), or nil while it runs.
    func exitCode() throws -> Int32?
    /// Sends `signal` to the child, unless it has already been reaped.
    func send(signal: Int32) throws
    /// Closes the handle's descriptors.
    func release()
}

/// A child of this process, watched through a pidfd: spawn and fork children.
final class PidfdHandle: ChildHandle, @unchecked Sendable {
    let pid: Int32
    private(set) var pidfd: Int32
    private var code: Int32?

    init(pid: Int32) throws {
        self.pid = pid
        pidfd = mp_pidfd_open(pid)
        if pidfd < 0 { throw MultiprocessingError.system("pidfd_open(\(pid))").with(pid: pid) }
        try Syscall.setCloseOnExec(pidfd)
    }

    var sentinel: Int32 { pidfd }

    func exitCode() throws -> Int32? {
        if let code { return code }
        var status: Int32 = 0
        let result = try Syscall.retrying("waitid(\(pid))") { mp_pidfd_wait(pidfd, 1, &status) }
        if result == 0 { return nil }
        code = status
        return status
    }

    func send(signal: Int32) throws {
        guard code == nil else { return }
        try signalProcess(pidfd: pidfd, pid: pid, signal)
    }

    func release() {
        Syscall.close(pidfd)
        pidfd = -1
    }

    deinit { release() }
}

/// Sends `signal` through a pidfd (no risk of hitting a recycled pid); a process that has already
/// ended is not an error.
func signalProcess(pidfd: Int32, pid: Int32, _ signal: Int32) throws {
    guard pidfd >= 0 else { return }
    if mp_pidfd_send_signal(pidfd, signal) < 0 && errno != ESRCH {
        throw MultiprocessingError.system("pidfd_send_signal(\(pid), \(signal))").with(pid: pid, signal: signal)
    }
}
