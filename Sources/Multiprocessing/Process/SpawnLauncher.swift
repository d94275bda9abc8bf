#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// The spawn start method: `posix_spawn` of the running executable, whose constructor hands control
/// to ``multiprocessingChildMain(_:)`` before `main` runs.
enum SpawnLauncher: Launcher {
    /// Spawns a child that reads its bootstrap, with its task, from the request's child end (descriptor 3
    /// there); the bootstrap is written before the spawn, so the child need not wait for it.
    static func launch(_ request: inout LaunchRequest) throws -> any ChildHandle {
        let (task, _) = try request.taskForFreshProgram(.spawn)
        request.bootstrap.work = task
        try request.makeBootstrapPair()
        let rest = try request.startBootstrap(request.bootstrapMessage(), on: request.parentEnd)
        let handle = try PidfdHandle(pid: spawnSelf(keeping: request.childEnd, variable: MP_CHILD_ENV))
        try request.finishBootstrap(rest, for: handle)
        return handle
    }

    /// Spawns this executable with `fd` as descriptor 3 and `variable=3` in its environment.
    static func spawnSelf(keeping fd: Int32, variable: String) throws -> Int32 {
        let argv0 = CommandLine.arguments.first ?? "multiprocessing-child"
        var environment = childEnvironment()
        environment.append("\(variable)=3")
        var pid: pid_t = 0
        let cStrings = ([argv0] + environment).map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        var argv: [UnsafeMutablePointer<CChar>?] = [cStrings[0], nil]
        var envp: [UnsafeMutablePointer<CChar>?] = Array(cStrings[1...]) + [nil]
        let result = mp_spawn("/proc/self/exe", &argv, &envp, fd, &pid)
        guard result == 0 else { throw MultiprocessingError.system("posix_spawn", errno: result) }
        return pid
    }

    /// The parent's environment without the package's own variables, plus crash-report settings that
    /// keep a crashing child quick to report (the backtracer costs tens of milliseconds).
    private static func childEnvironment() -> [String] {
        var result: [String] = []
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if !text.hasPrefix("MULTIPROCESSING_") && !text.hasPrefix("SWIFT_BACKTRACE=") { result.append(text) }
            entry += 1
        }
        result.append("SWIFT_BACKTRACE=enable=no")
        return result
    }
}
