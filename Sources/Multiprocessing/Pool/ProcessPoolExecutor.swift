import Logging

/// A pool for `async` code: Python's `concurrent.futures.ProcessPoolExecutor`.
///
/// ```swift
/// let executor = try ProcessPoolExecutor(maxWorkers: 4)
/// let square = try await executor.run(Square(), 12)          // 144
/// let future = try executor.submit(Square(), 5)              // Python's Future
/// print(try await future.value)
/// let squares = try await executor.map(Square(), 1...100)
/// try await executor.shutdown()
/// ```
///
/// Unlike Python's executor a dead worker does not break it: the worker fails only the input it was
/// running (with its pid and signal) and is replaced, and later submissions work. Only a failed
/// `initializer` breaks it. Cancelling the task that
/// awaits a submission cancels it; if a worker already runs it, that worker is killed and replaced.
/// It shares the machinery of ``ProcessPool`` (see there for timeouts and recycling).
public final class ProcessPoolExecutor: Sendable {
    /// The pool that runs the work.
    public let pool: ProcessPool

    /// Makes the executor; its workers start on demand, as Python's executor starts them: a submission
    /// that no idle worker can take starts one more, up to `maxWorkers`, and started workers stay.
    ///
    /// - Parameters: as ``ProcessPool/init(workers:context:initializer:maxTasksPerChild:maxMemoryPerChild:workerSettings:logger:)``,
    ///   with `maxWorkers` for its `workers`. An `initializer` that fails breaks the executor as it
    ///   breaks the pool (Python's `BrokenProcessPool`): submissions fail with
    ///   ``MultiprocessingError/Code/brokenPool``.
    /// - Throws: the errors of ``ProcessPool/init(workers:context:initializer:maxTasksPerChild:maxMemoryPerChild:workerSettings:logger:)``.
    public init(
        maxWorkers: Int? = nil, context: ProcessContext = .default, initializer: (any ProcessTask)? = nil,
        maxTasksPerChild: Int? = nil, maxMemoryPerChild: Int? = nil, workerSettings: ChildSettings = ChildSettings(),
        logger: Logger? = nil
    ) throws {
        pool = try ProcessPool(
            workers: maxWorkers, context: context, initializer: initializer, maxTasksPerChild: maxTasksPerChild,
            maxMemoryPerChild: maxMemoryPerChild, workerSettings: workerSettings, logger: logger, closure: nil,
            startsOnDemand: true)
    }

    /// Hands `input` to a worker and returns its future at once (Python's `submit`); await
    /// ``PoolResult/value`` for the output.
    /// - Throws: the errors of ``ProcessPool/submit(_:_:timeout:onSuccess:onFailure:)-2vfpk``; after
    ///   ``shutdown(wait:cancelPending:)``, ``MultiprocessingError/Code/invalidState``.
    public func submit<T: PoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) throws -> PoolResult<T.Output> {
        try pool.submit(task, input, timeout: timeout)
    }

    /// Hands `input` to a worker that runs an async task, and returns its future at once.
    /// - Throws: ``MultiprocessingError/Code/unsupported`` under fork, and the errors of
    ///   ``submit(_:_:timeout:)``.
    public func submit<T: AsyncPoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) throws -> PoolResult<T.Output> {
        try pool.submit(task, input, timeout: timeout)
    }

    /// Runs `task` on `input` in a worker and awaits the output.
    /// - Throws: the errors of ``PoolResult/value`` and of ``submit(_:_:timeout:)-9u13z``.
    public func run<T: PoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) async throws -> T.Output {
        try await submit(task, input, timeout: timeout).value
    }

    /// Runs an async task on `input` in a worker and awaits the output.
    /// - Throws: the errors of ``PoolResult/value`` and of ``submit(_:_:timeout:)-9u13z``.
    public func run<T: AsyncPoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) async throws -> T.Output {
        try await submit(task, input, timeout: timeout).value
    }

    /// Runs `task` on every input and awaits the outputs in input order (Python's `map`, collected).
    /// - Throws: the first failed input's error, and the errors of ``submit(_:_:timeout:)-9u13z``.
    @inlinable
    public func map<T: PoolTask, S: Sequence<T.Input>>(
        _ task: T, _ inputs: S, chunkSize: Int = 1, timeout: Duration? = nil
    ) async throws -> [T.Output] {
        try await pool.map(task, inputs, chunkSize: chunkSize, timeout: timeout)
    }

    /// The outputs in input order as they arrive, reading `inputs` lazily (Python's `map` iterator).
    /// - Throws: the errors of ``ProcessPool/imap(_:_:chunkSize:timeout:window:)``.
    public func results<T: PoolTask, S: Sequence<T.Input> & Sendable>(
        _ task: T, _ inputs: S, chunkSize: Int = 1, timeout: Duration? = nil
    ) throws -> PoolResults<T.Output> {
        try pool.imap(task, inputs, chunkSize: chunkSize, timeout: timeout)
    }

    /// Accepts no more work; with `wait`, awaits the end of the work already submitted and of the
    /// workers (Python's `shutdown(wait, cancel_futures)`).
    ///
    /// - Parameters:
    ///   - wait: whether to await the end of the submitted work and of the workers.
    ///   - cancelPending: whether submissions not yet handed to a worker fail with `CancellationError`
    ///     instead of running (Python's `cancel_futures`). Those running, and the few a worker holds
    ///     ready behind the one it runs, finish; ``killWorkers()`` stops them too.
    /// - Throws: `CancellationError` when the awaiting task is cancelled while it waits.
    public func shutdown(wait: Bool = true, cancelPending: Bool = false) async throws {
        if cancelPending { pool.supervisor.cancelPending() }
        pool.close()
        if wait { try await pool.join() }
    }

    /// Kills the workers now; work not ended fails with ``MultiprocessingError/Code/closed``
    /// (Python 3.14's `kill_workers`).
    public func killWorkers() { pool.terminate() }
}
