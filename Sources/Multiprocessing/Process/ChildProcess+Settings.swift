#if canImport(Glibc)
import Glibc
#endif

extension ChildProcess {
    /// A child that will run `task` with per-child `settings` (limits, environment, working directory,
    /// standard streams).
    ///
    /// - Parameters:
    ///   - task: the work; its type must be declared at file scope or nested in a type.
    ///   - name: the child's name; by default `Process-N` (`Process-N:M` when started by a child).
    ///   - daemon: whether the child is a daemon; by default the creating process's own flag.
    ///   - settings: what the child applies to itself before its task runs.
    ///   - context: the start method; by default the process-wide one.
    public convenience init<T: ProcessTask>(
        _ task: T, name: String? = nil, daemon: Bool? = nil, settings: ChildSettings, context: ProcessContext = .default
    ) {
        self.init(task, name: name, daemon: daemon, context: context)
        state.withLock { $0.settings = settings }
    }

    /// The child's per-child settings (``ChildSettings``).
    public var settings: ChildSettings { state.withLock { $0.settings } }

    /// Replaces the child's settings; only before ``start()``.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` once the process has started or closed.
    public func setSettings(_ settings: ChildSettings) throws {
        try state.withLock { state in
            guard state.handle == nil, state.exitCode == nil, !state.closed else {
                throw MultiprocessingError(.invalidState, "settings can only change before the process starts")
            }
            state.settings = settings
        }
    }

    /// Everything the child wrote to its standard output, when ``ChildSettings/standardOutput`` is
    /// ``ChildOutput/capture``. Waits, at most `timeout` (nil: as long as it takes), until every writer
    /// has closed the pipe: the child, and any process it started that inherited the stream. The parent
    /// drains the pipe while the child runs, so a child never blocks on it however much it writes.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when output is not captured or the child has
    ///   not started; ``MultiprocessingError/Code/timedOut`` when a writer still holds the pipe open.
    public func capturedOutput(timeout: Duration? = nil) throws -> [UInt8] {
        try capture(\.output, "standardOutput").collect(until: .after(timeout), timeout: timeout, pid: pid)
    }

    /// Everything the child wrote to its standard error, when ``ChildSettings/standardError`` is
    /// ``ChildOutput/capture``; see ``capturedOutput(timeout:)-9qq4v``.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when standard error is not captured or the
    ///   child has not started; ``MultiprocessingError/Code/timedOut`` when a writer still holds the pipe open.
    public func capturedErrorOutput(timeout: Duration? = nil) throws -> [UInt8] {
        try capture(\.errorOutput, "standardError").collect(until: .after(timeout), timeout: timeout, pid: pid)
    }

    /// Everything the child wrote to its standard output, as ``capturedOutput(timeout:)-9qq4v`` gives it,
    /// waiting on the package's event loop so that no thread is held. Cancellation ends the wait with
    /// `CancellationError`; the output keeps being collected for a later call.
    public func capturedOutput(timeout: Duration? = nil) async throws -> [UInt8] {
        try await capture(\.output, "standardOutput").collect(until: .after(timeout), timeout: timeout, pid: pid)
    }

    /// Everything the child wrote to its standard error, waiting on the event loop; see
    /// ``capturedOutput(timeout:)-7qwb6``.
    public func capturedErrorOutput(timeout: Duration? = nil) async throws -> [UInt8] {
        try await capture(\.errorOutput, "standardError").collect(until: .after(timeout), timeout: timeout, pid: pid)
    }

    private func capture(_ path: KeyPath<ChildSettingsLink, OutputCapture?>, _ stream: String) throws -> OutputCapture {
        try state.withLock { state in
            guard let link = state.settingsLink else {
                throw MultiprocessingError(.invalidState, "the process has not started")
            }
            guard let capture = link[keyPath: path] else {
                throw MultiprocessingError(.invalidState, "the child's \(stream) is not captured (set it to .capture)")
            }
            return capture
        }
    }

    /// How the child ended, once it has: ``TerminationStatus/exited(_:)`` with its code or
    /// ``TerminationStatus/signaled(_:)`` with the signal. Nil while it runs or before start. Reading it
    /// reaps an ended child. ``exitCode`` is the same fact in Python's view.
    public var terminationStatus: TerminationStatus? { exitCode.map(TerminationStatus.init(pythonExitCode:)) }

    /// Which of the child's ``ResourceLimits`` ended it, once it has ended: ``LimitExceeded/cpuTime``
    /// when it used up its CPU time, ``LimitExceeded/memory`` when an allocation failed under its memory
    /// limit. Nil while it runs, and when it ended otherwise.
    public var exceededLimit: LimitExceeded? {
        guard let status = terminationStatus else { return nil }
        return state.withLock { $0.settingsLink?.exceededLimit(status) }
    }

    /// The child's process id, or nil before ``start()``.
    public var processIdentifier: ProcessIdentifier? { pid.map(ProcessIdentifier.init(rawValue:)) }

    /// Whether the child is a daemon: the spelling beside ``isAlive`` of ``daemon``.
    public var isDaemon: Bool { daemon }

    /// Whether ``close()`` has been called.
    public var isClosed: Bool { state.withLock { $0.closed } }
}

extension ChildProcess: Hashable {
    /// Two process objects are equal when they are the same object, so a child can key a dictionary
    /// (Python's `workers[p.sentinel]` pattern with ``wait(_:timeout:)-91uhk``).
    public static func == (lhs: ChildProcess, rhs: ChildProcess) -> Bool { lhs === rhs }

    /// Hashes the object's identity.
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}
