#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// A child process running a task: Python's `multiprocessing.Process`.
///
/// Create it with a ``ProcessTask`` value (any start method) or, under the fork start method only, a
/// closure; then ``start()`` it and ``join(timeout:)-3h2i9`` it. The object is lifecycle only: how the child
/// is created is the business of its ``ProcessContext``'s start method.
///
/// ```swift
/// let child = ChildProcess(Piao(name: "User1"), name: "piao")
/// try child.start()
/// try child.join(timeout: .seconds(10))
/// print(child.exitCode ?? "still running")
/// ```
public final class ChildProcess: @unchecked Sendable, CustomStringConvertible {
    enum Work: @unchecked Sendable {
        case task(any Codable & Sendable)
        case closure(@Sendable () throws -> Void)
    }

    struct State {
        var work: Work?
        var name: String?
        var daemon: Bool
        var authkey: [UInt8]
        var handle: (any ChildHandle)?
        var parentEnd: Int32 = -1
        var exitCode: Int32?
        var failure: ChildFailure?
        var pid: Int32?
        var closed = false
        /// Per-child settings (``ChildSettings``), and the parent's side of them once started.
        var settings = ChildSettings()
        var settingsLink: ChildSettingsLink?
    }

    /// The context whose start method creates the child.
    public let context: ProcessContext
    let state: Mutex<State>

    /// A child that will run `task`.
    ///
    /// - Parameters:
    ///   - task: the work; its type must be declared at file scope or nested in a type.
    ///   - name: the child's name; by default `Process-N` (`Process-N:M` when started by a child).
    ///   - daemon: whether the child is a daemon; by default the creating process's own flag.
    ///   - context: the start method; by default the process-wide one.
    public init<T: ProcessTask>(_ task: T, name: String? = nil, daemon: Bool? = nil, context: ProcessContext = .default) {
        self.context = context
        state = Mutex(State(work: .task(task), name: name, daemon: daemon ?? currentProcess().daemon, authkey: currentProcess().authkey))
    }

    /// A child that will run an async task (see ``AsyncProcessTask``).
    ///
    /// - Parameters:
    ///   - task: the work; its type must be declared at file scope or nested in a type.
    ///   - name: the child's name; by default `Process-N` (`Process-N:M` when started by a child).
    ///   - daemon: whether the child is a daemon; by default the creating process's own flag.
    ///   - context: the start method; by default the process-wide one.
    public init<T: AsyncProcessTask>(_ task: T, name: String? = nil, daemon: Bool? = nil, context: ProcessContext = .default) {
        self.context = context
        state = Mutex(State(work: .task(task), name: name, daemon: daemon ?? currentProcess().daemon, authkey: currentProcess().authkey))
    }

    /// A child that will run a closure. Only the fork start method can run a closure, and the child may
    /// run only synchronous code; ``start()`` refuses other start methods with a clear error.
    public init(name: String? = nil, daemon: Bool? = nil, context: ProcessContext, body: @escaping @Sendable () throws -> Void) {
        self.context = context
        state = Mutex(State(work: .closure(body), name: name, daemon: daemon ?? currentProcess().daemon, authkey: currentProcess().authkey))
    }

    deinit {
        state.withLock { state in
            state.handle?.release()
            Syscall.close(state.parentEnd)
        }
    }

    // MARK: Properties

    /// The child's name.
    public var name: String {
        get { state.withLock { $0.name ?? "Process-?" } }
        set { state.withLock { $0.name = newValue } }
    }

    /// Whether the child is a daemon: terminated when its parent exits, killed when its parent dies,
    /// and not allowed to start children of its own.
    public var daemon: Bool { state.withLock { $0.daemon } }

    /// Sets ``daemon``; only before ``start()`` (Python's `p.daemon = True`).
    /// - Throws: ``MultiprocessingError/Code/invalidState`` once the process has started.
    public func setDaemon(_ daemon: Bool) throws {
        try state.withLock { state in
            guard state.handle == nil, state.exitCode == nil else {
                throw MultiprocessingError(.invalidState, "process has already started")
            }
            state.daemon = daemon
        }
    }

    /// The key children use to authenticate connections; inherited from the creating process.
    public var authkey: [UInt8] {
        get { state.withLock { $0.authkey } }
        set { state.withLock { $0.authkey = newValue } }
    }

    /// The OS process id, or nil before ``start()``.
    public var pid: Int32? { state.withLock { $0.pid } }

    /// The exit code: nil while the child runs (or before start), 0 when ``ProcessTask/run()`` returned,
    /// `n` after `exit(n)`, 1 when `run()` threw, and `-N` when signal `N` ended it. Reading it reaps an
    /// ended child.
    public var exitCode: Int32? {
        let (handle, known) = state.withLock { ($0.handle, $0.exitCode) }
        if let known { return known }
        guard let handle, let code = try? handle.exitCode() else { return nil }
        finish(code)
        return code
    }

    /// Why the child failed, once it has ended: the error its task threw (type name, description, and
    /// the value itself when it is `Codable`), or the signal that killed it. Nil while it runs, and when
    /// it returned or called `exit`. Reading it reaps an ended child.
    public var failure: ChildFailure? {
        _ = exitCode
        return state.withLock { $0.failure }
    }

    /// Whether the child has started and not yet ended. False after ``close()``.
    public var isAlive: Bool {
        let started = state.withLock { $0.handle != nil && !$0.closed }
        return started && exitCode == nil
    }

    /// A descriptor that polls readable once the child has ended (use it with ``wait(_:timeout:)-91uhk``).
    /// - Throws: ``MultiprocessingError/Code/invalidState`` before start, ``MultiprocessingError/Code/closed`` after close.
    public var sentinel: Int32 {
        get throws { try startedHandle(for: "get the sentinel of").sentinel }
    }

    /// A repr in Python's style: `<ChildProcess name='Process-1' pid=123 started daemon>`.
    public var description: String {
        let (name, pid, daemon, started, closed) = state.withLock { ($0.name, $0.pid, $0.daemon, $0.handle != nil, $0.closed) }
        let status: String
        if closed { status = "closed" } else if let code = exitCode { status = "stopped exitcode=\(code)" } else if started { status = "started" } else { status = "initial" }
        return "<ChildProcess name='\(name ?? "?")'\(pid.map { " pid=\($0)" } ?? "") \(status)\(daemon ? " daemon" : "")>"
    }

    // MARK: Lifecycle

    /// Starts the child.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when started twice, when closed, or when the
    ///   calling process is a daemon ("daemonic processes are not allowed to have children");
    ///   ``MultiprocessingError/Code/invalidArgument`` for a closure under spawn or forkserver, or a task
    ///   type a child cannot find; ``MultiprocessingError/Code/unsupported`` for an ``AsyncProcessTask``
    ///   under fork; ``MultiprocessingError/Code/system`` when the OS refuses, or when the fork server
    ///   died or hung on every try.
    public func start() throws {
        if currentProcess().daemon {
            throw MultiprocessingError(.invalidState, "daemonic processes are not allowed to have children")
        }
        ChildRegistry.reapEnded()
        let method = context.startMethod
        try state.withLock { state in
            guard !state.closed else { throw MultiprocessingError(.closed, "process object is closed") }
            guard state.handle == nil, state.exitCode == nil, let work = state.work else {
                throw MultiprocessingError(.invalidState, "cannot start a process twice")
            }
            let (identity, defaultName) = ProcessState.nextChild()
            let name = state.name ?? defaultName
            state.name = name
            let me = currentProcess()
            var bootstrap = ChildBootstrap(
                work: nil, name: name, identity: identity, authkey: state.authkey, daemon: state.daemon,
                parentPid: me.pid, parentName: me.name, startMethod: startMethod(allowNone: true)?.rawValue)
            let link: ChildSettingsLink
            do { link = try ChildSettingsLink(state.settings) } catch {
                diagnostics.warning("process \(name) could not start: \(error)")
                throw error
            }
            bootstrap.settings = link.wire
            if case .task(let task) = work { bootstrap.taskName = "\(type(of: task))" } else { bootstrap.taskName = "closure" }
            var request = LaunchRequest(
                bootstrap: bootstrap, work: work, parentOnly: ChildRegistry.parentEnds + link.parentOnly)
            defer { Syscall.close(request.childEnd) }
            do {
                let handle = try method.launcher.launch(&request)
                link.childStarted()
                state.settingsLink = link
                state.handle = handle
                state.pid = handle.pid
                state.parentEnd = request.parentEnd
                state.work = nil
            } catch {
                diagnostics.warning("process \(name) could not start: \(error)")
                link.abandon()
                Syscall.close(request.parentEnd)
                throw error
            }
        }
        ChildRegistry.add(self)
    }

    /// Waits for the child to end, at most `timeout` (nil waits as long as it takes; zero or negative
    /// only checks). Returns whether the child has ended; ``exitCode`` then holds its code.
    /// Signals delivered to this process do not cut the wait short.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` ("can only join a started process") before
    ///   start, ``MultiprocessingError/Code/closed`` after close.
    @discardableResult
    public func join(timeout: Duration? = nil) throws -> Bool {
        let handle = try startedHandle(for: "join")
        if exitCode != nil { return true }
        let deadline = Deadline.after(timeout)
        while true {
            _ = try Syscall.pollReadable([handle.sentinel], until: deadline)
            if exitCode != nil { return true }
            if deadline.hasPassed { return false }
        }
    }

    /// Waits for the child to end as ``join(timeout:)`` does, on the package's event loop (the child's
    /// pidfd), so that no thread is held while it waits.
    ///
    /// Cancellation: cancelling the awaiting task ends the wait promptly with `CancellationError`; the
    /// child keeps running. To stop it as well, call ``terminate()`` or ``kill()`` when the await throws,
    /// or use ``join(timeout:killingOnCancel:)``.
    @discardableResult
    public func join(timeout: Duration? = nil) async throws -> Bool {
        let handle = try startedHandle()
        let deadline = Deadline.after(timeout)
        while exitCode == nil {
            if try await EventLoop.shared.waitReadable(handle.sentinel, until: deadline) == .timedOut {
                return exitCode != nil
            }
        }
        return true
    }

    /// Waits for the child to end as ``join(timeout:)-3h2i9`` does, and when the awaiting task is
    /// cancelled, kills the child (SIGKILL), reaps it, and then throws `CancellationError`.
    @discardableResult
    public func join(timeout: Duration? = nil, killingOnCancel: Bool) async throws -> Bool {
        do {
            return try await join(timeout: timeout)
        } catch is CancellationError where killingOnCancel {
            try? kill()
            // A SIGKILLed child ends within milliseconds: reap it before reporting the cancellation.
            let reap: () throws -> Bool = { try self.join(timeout: .seconds(10)) }
            _ = try? reap()
            throw CancellationError()
        }
    }

    /// Asks the child to stop with SIGTERM (its exit code becomes -15 unless it handles the signal).
    /// - Throws: ``MultiprocessingError/Code/invalidState`` ("can only terminate a started process") before
    ///   start, ``MultiprocessingError/Code/closed`` after close, ``MultiprocessingError/Code/system`` when
    ///   the signal cannot be sent.
    public func terminate() throws { try startedHandle(for: "terminate").send(signal: SIGTERM) }

    /// Stops the child with SIGKILL (exit code -9).
    /// - Throws: ``MultiprocessingError/Code/invalidState`` ("can only kill a started process") before
    ///   start, ``MultiprocessingError/Code/closed`` after close, ``MultiprocessingError/Code/system`` when
    ///   the signal cannot be sent.
    public func kill() throws { try startedHandle(for: "kill").send(signal: SIGKILL) }

    /// Sends SIGINT, Python's `interrupt()`.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` ("can only interrupt a started process") before
    ///   start, ``MultiprocessingError/Code/closed`` after close, ``MultiprocessingError/Code/system`` when
    ///   the signal cannot be sent.
    public func interrupt() throws { try startedHandle(for: "interrupt").send(signal: SIGINT) }

    /// Sends `signal` to the child and to every process descended from it, so that nothing it started
    /// outlives it. The tree is frozen with SIGSTOP while it is collected, so no process escapes by
    /// forking meanwhile.
    public func terminateTree(signal: Int32 = SIGTERM) throws {
        let handle = try startedHandle(for: "terminate the tree of")
        guard exitCode == nil else { return }
        try handle.send(signal: SIGSTOP)
        ProcessTree.signalDescendants(of: handle.pid, signal)
        try handle.send(signal: signal)
        try handle.send(signal: SIGCONT)
    }

    /// Releases the child's resources (Python's `close()`); afterwards every call but ``close()`` and
    /// the plain properties fails. Closing twice is harmless.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` while the child is still running.
    public func close() throws {
        let running = state.withLock { $0.handle != nil && $0.exitCode == nil && !$0.closed }
        if running && exitCode == nil {
            throw MultiprocessingError(
                .invalidState, "cannot close a process while it is still running; join() or terminate() it first")
        }
        state.withLock { state in
            state.handle?.release()
            state.handle = nil
            state.work = nil
            state.closed = true
        }
        ChildRegistry.remove(self)
    }

    // MARK: Internals

    /// The parent's end of the bootstrap connection while the child runs (for forked siblings to close).
    var parentEndDescriptor: Int32? {
        state.withLock { $0.parentEnd >= 0 ? $0.parentEnd : nil }
    }

    /// The handle of the started child; `action` names the call for the error when there is none
    /// ("can only terminate a started process").
    private func startedHandle(for action: String = "join") throws -> any ChildHandle {
        try state.withLock { state in
            if state.closed { throw MultiprocessingError(.closed, "process object is closed") }
            guard let handle = state.handle else {
                throw MultiprocessingError(
                    .invalidState, state.exitCode == nil ? "can only \(action) a started process" : "process has ended")
            }
            return handle
        }
    }

    /// Records the exit code and lets go of what the running child needed.
    private func finish(_ code: Int32) {
        state.withLock { state in
            guard state.exitCode == nil else { return }
            if code < 0 {
                state.failure = .killed(by: -code)
            } else if code == 1, state.parentEnd >= 0 {
                state.failure = FailureReport.receive(from: state.parentEnd)?.failure
            }
            state.exitCode = code
            Syscall.close(state.parentEnd)
            state.parentEnd = -1
        }
        ChildRegistry.remove(self)
    }
}

extension ChildProcess: Waitable {
    /// The child's ``sentinel``: ready once the child has ended.
    public var waitDescriptor: Int32 { get throws { try sentinel } }
}

extension ParentProcess: Waitable {
    /// The parent's ``ParentProcess/sentinel``: ready once the parent has died.
    public var waitDescriptor: Int32 { sentinel }
}
