#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// Where a spawn or forkserver child's configuration must live, said wherever a child dies of reading
/// something its program's `main.swift` would have set.
let sharedConfigurationHint = """
    Hint: a spawn or forkserver child runs its task before the program's main.swift, so variables declared \
    at the top level of main.swift are not set in the child, and reading one crashes it. Keep shared \
    configuration in the task's stored properties, or in a global declared in another file (initialised on \
    first use); or use ProcessContext(.fork).
    """

/// The messages a child writes to standard error when a signal ends it, as Python names a failed
/// process: which process, which task, which signal, and the hint when it applies.
enum CrashReport {
    /// The signals a crash ends with (Swift's runtime traps are SIGILL or SIGTRAP).
    static let crashSignals: [Int32] = [SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE]

    /// Installs (or replaces) the child's messages. `task` is the task type's name; `running` says
    /// whether the task has been received; `hint` whether the main.swift hint applies (spawn and
    /// forkserver); `memoryReport` receives a byte when an allocation fails under a memory limit.
    /// The crash signals' message is put together by the handler from its parts, so that a child
    /// builds no strings here unless it runs under limits.
    static func install(process: String?, task: String?, running: Bool, hint: Bool, limits: ResourceLimits?, memoryReport: Int32) {
        withOptionalCString(process) { process in
            withOptionalCString(task) { task in
                withOptionalCString(hint ? sharedConfigurationHint : nil) { hint in
                    _ = mp_crash_report_install(process, task, running ? 1 : 0, hint)
                }
            }
        }
        guard let limits, limits.cpuSeconds != nil || limits.memoryLimitDescription != nil else { return }
        var who = process.map { "Process \($0)" } ?? "A child process"
        who += " (pid \(getpid())\(task.map { ", task \($0)" } ?? ""))"
        let when = running ? "while running its task" : "before its task started"
        if let cpu = limits.cpuSeconds {
            _ = mp_crash_report_set(SIGXCPU, "\(who) used up its CPU-time limit of \(cpu) s and was killed by \(Signal.cpuTimeLimitExceeded.name).\n")
        }
        if let memory = limits.memoryLimitDescription {
            mp_crash_report_memory("\(who) ran out of memory under its limit (\(memory)): an allocation failed \(when).\n", memoryReport)
        }
    }
}

/// Calls `body` with `text` as a C string, or with nil.
private func withOptionalCString<R>(_ text: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let text else { return body(nil) }
    return text.withCString(body)
}
