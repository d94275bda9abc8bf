#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// The fork start method: the child is a copy of the caller, which runs the work (a task or a
/// capturing closure) in it. Only synchronous work: a forked child of a threaded parent has no
/// Dispatch threads, which Swift concurrency needs.
enum ForkLauncher: Launcher {
    static func launch(_ request: inout LaunchRequest) throws -> any ChildHandle {
        if case .task(let task) = request.work, !(task is any ProcessTask) {
            throw MultiprocessingError(
                .unsupported,
                "an AsyncProcessTask cannot run in a child started with the fork start method: the Swift "
                    + "runtime runs Task.sleep's timers on Dispatch threads, which a forked child of a "
                    + "threaded parent cannot have; use spawn or forkserver")
        }
        try request.makeBootstrapPair()
        let (bootstrap, work, childEnd) = (request.bootstrap, request.work, request.childEnd)
        let closing = request.parentOnly + [request.parentEnd]
        fflush(nil)
        let pid = closing.withUnsafeBufferPointer { mp_fork($0.baseAddress, Int32($0.count)) }
        if pid == 0 {
            becomeChild(bootstrap, parentSentinel: childEnd)
            switch work {
            case .task(let task): TaskEnvelope(task).runAndExit(forked: true)
            case .closure(let body): runChild(forked: true, body)
            }
        }
        guard pid > 0 else { throw MultiprocessingError.system("fork") }
        return try PidfdHandle(pid: pid)
    }
}
