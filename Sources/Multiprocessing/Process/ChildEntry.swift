#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// What a parent tells a new child: its work and its identity.
struct ChildBootstrap: Codable, Sendable {
    var work: TaskEnvelope?
    var name: String
    var identity: [Int]
    var authkey: [UInt8]
    var daemon: Bool
    var parentPid: Int32
    var parentName: String
    var startMethod: String?
    /// Per-child settings the child applies before its task (``ChildSettings``).
    var settings: ChildSettingsWire = .none
    /// The task type's name, for the child's messages.
    var taskName: String? = nil
}

/// The bootstrap travels as a list, not as keyed containers: a fresh child decodes it before anything
/// else, and each keyed container type it meets first costs it a scan of all of the program's protocol
/// conformances (for the keys' `CodingKey` conformance), several times the rest of the decoding.
extension ChildBootstrap {
    func encode(to encoder: any Encoder) throws {
        var list = encoder.unkeyedContainer()
        try list.encode(name)
        try list.encode(identity)
        try list.encode(authkey)
        try list.encode(daemon)
        try list.encode(parentPid)
        try list.encode(parentName)
        try list.encodeOptional(startMethod)
        try list.encodeOptional(taskName)
        // Settings that change nothing travel as nil; the child then applies the empty settings.
        try list.encodeOptional(settings.isEmpty ? nil : settings)
        try list.encodeOptional(work)
    }

    init(from decoder: any Decoder) throws {
        var list = try decoder.unkeyedContainer()
        name = try list.decode(String.self)
        identity = try list.decode([Int].self)
        authkey = try list.decode([UInt8].self)
        daemon = try list.decode(Bool.self)
        parentPid = try list.decode(Int32.self)
        parentName = try list.decode(String.self)
        startMethod = try list.decodeOptional(String.self)
        taskName = try list.decodeOptional(String.self)
        // Not through an optional, whose type would be instantiated at run time.
        settings = try list.decodeNil() ? .none : list.decode(ChildSettingsWire.self)
        work = try list.decodeOptional(TaskEnvelope.self)
    }
}

extension UnkeyedEncodingContainer {
    /// `value`, or a nil in its place.
    mutating func encodeOptional<T: Encodable>(_ value: T?) throws {
        if let value { try encode(value) } else { try encodeNil() }
    }
}

extension UnkeyedDecodingContainer {
    /// A value written by ``UnkeyedEncodingContainer/encodeOptional(_:)``.
    mutating func decodeOptional<T: Decodable>(_ type: T.Type) throws -> T? {
        try decodeNil() ? nil : decode(type)
    }
}

/// The entry of a spawned child, called before `main` by the C shim's constructor with the descriptor
/// of its bootstrap connection. Never returns.
@_cdecl("multiprocessing_child_main")
func spawnedChildMain(_ fd: Int32) {
    multiprocessingChildMain(fd, fresh: true)
}

/// The entry of a spawned or forkserver child, with the descriptor of its bootstrap connection. `fresh`
/// says the process is a new program that has inherited no state from a parent (a spawned child),
/// so there is nothing to forget. Never returns.
func multiprocessingChildMain(_ fd: Int32, fresh: Bool = false) {
    let bootstrap: ChildBootstrap
    Syscall.openNullOnClosedStandardDescriptors()
    CrashReport.install(process: nil, task: nil, running: false, hint: true, limits: nil, memoryReport: -1)
    do {
        try Syscall.setCloseOnExec(fd)
        let connection = try Connection(adopting: fd)
        // The task comes from the parent, whose values the child takes however much memory they need.
        connection.decodingBudget = .unlimited
        bootstrap = try connection.recv(ChildBootstrap.self, timeout: .seconds(120))
        // The connection object is dropped here, but `fd` must stay open for the child's whole life:
        // it is how the child sees its parent die. Keep it by duplicating before the drop.
        let kept = try Syscall.duplicate(fd)
        withExtendedLifetime(connection) {}
        becomeChild(bootstrap, parentSentinel: kept, fresh: fresh)
    } catch {
        writeToStandardError("multiprocessing: child could not start: \(error)\n")
        exit(1)
    }
    guard let work = bootstrap.work else { exit(0) }
    work.runAndExit()
}

/// Installs a child's identity, and for a daemon a watcher that ends it when the parent dies. A `fresh`
/// child (a new program) has no parent's state to forget.
func becomeChild(_ bootstrap: ChildBootstrap, parentSentinel: Int32, fresh: Bool = false) {
    Syscall.openNullOnClosedStandardDescriptors()
    applySettings(bootstrap)
    ProcessState.shared.resetAfterFork { state in
        state = ProcessState(
            name: bootstrap.name, identity: bootstrap.identity, authkey: bootstrap.authkey, daemon: bootstrap.daemon,
            parent: ParentProcess(pid: bootstrap.parentPid, name: bootstrap.parentName, sentinel: parentSentinel))
    }
    if !fresh { forgetParentState() }
    defaultStartMethod.resetAfterFork { $0 = bootstrap.startMethod.flatMap(StartMethod.init(rawValue:)) }
    if bootstrap.daemon { watchParent(parentSentinel) }
}

/// Forgets what belongs to the parent: its children, fork server, event loop, wait threads and locks.
func forgetParentState() {
    ChildRegistry.forgetInheritedChildren()
    ForkServerLauncher.forgetInheritedServer()
    EventLoop.forgetAfterFork()
    WaitPool.forgetAfterFork()
    TaskEnvelope.forgetLockAfterFork()
}

/// Applies the child's ``ChildSettings`` and installs its crash messages; a child that cannot apply
/// them says why and ends with code 1 before its task runs.
private func applySettings(_ bootstrap: ChildBootstrap) {
    do {
        try bootstrap.settings.apply()
    } catch {
        writeToStandardError("Process \(bootstrap.name): could not apply its settings: \(error)\n")
        _exit(1)
    }
    CrashReport.install(
        process: bootstrap.name, task: bootstrap.taskName, running: true, hint: bootstrap.work != nil,
        limits: bootstrap.settings.limits, memoryReport: bootstrap.settings.memoryReport?.fd ?? -1)
}

/// Runs a child's work and ends the process: 0 on return, 1 (with the error on standard error) on throw.
/// A forked child ends with `_exit` after flushing, as Python's fork children do: the exit handlers it
/// inherited belong to its parent. Other children end with `exit`, so their own exit handlers run.
/// A thrown error also goes to the parent (``ChildProcess/failure``) over the bootstrap connection.
func runChild(forked: Bool = false, _ body: () throws -> Void) -> Never {
    var code: Int32 = 0
    do {
        try body()
    } catch {
        let (name, parent) = ProcessState.shared.withLock { ($0.name, $0.parent?.sentinel) }
        writeToStandardError("Process \(name):\n\(type(of: error)): \(error)\n")
        if let parent { FailureReport(error).send(over: parent) }
        code = 1
    }
    ExitHooks.run()
    fflush(nil)
    if forked { _exit(code) }
    exit(code)
}

extension TaskEnvelope {
    /// Runs the task in this (child) process and ends it.
    func runAndExit(forked: Bool = false) -> Never {
        switch runnable {
        case .sync(let task): runChild(forked: forked) { try task.run() }
        case .async(let task): runChildAsync(forked: forked) { try await task.run() }
        }
    }
}

/// Runs an async task's body on this thread with the child's own executor (see ``AsyncProcessTask``),
/// then ends the process as ``runChild(forked:_:)`` does. Never inlined: inlined into
/// ``TaskEnvelope/runAndExit(forked:)``, its `Task` creation instantiated `TaskPriority?`'s metadata
/// from its mangled name on entry, in every child, synchronous tasks' too.
@inline(never)
func runChildAsync(forked: Bool = false, _ body: @escaping @Sendable () async throws -> Void) -> Never {
    mp_executor_install()
    let outcome = AsyncOutcome()
    Task {
        do { try await body() } catch { outcome.error = error }
        outcome.done.pointee = 1
    }
    mp_executor_run(outcome.done)
    let error = outcome.error
    runChild(forked: forked) { if let error { throw error } }
}

/// How a child's async body ended; written by the body's task, read once the executor loop stops
/// (both on the child's one executor thread).
private final class AsyncOutcome: @unchecked Sendable {
    let done = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    var error: (any Error)?
    init() { done.initialize(to: 0) }
}

func writeToStandardError(_ text: String) {
    var text = text
    text.withUTF8 { bytes in _ = try? Syscall.writeAll(2, UnsafeRawBufferPointer(bytes)) }
}

/// Ends this (daemon) process as soon as its parent dies, however the parent ended: a thread of its
/// own waits for the bootstrap connection to hang up.
private func watchParent(_ sentinel: Int32) {
    var thread = pthread_t()
    let context = UnsafeMutableRawPointer(bitPattern: Int(sentinel) + 1)
    pthread_create(&thread, nil, { context in
        let fd = Int32(Int(bitPattern: context) - 1)
        mp_set_thread_name("mp-parent-watch")
        _ = try? Syscall.pollReadable([fd], until: .never)
        kill(getpid(), SIGKILL)
        return nil
    }, context)
    pthread_detach(thread)
}
