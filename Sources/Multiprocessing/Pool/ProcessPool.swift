import Logging

/// A pool of worker processes that run ``PoolTask`` work: Python's `multiprocessing.Pool`, made so that
/// it never hangs.
///
/// ```swift
/// struct Square: PoolTask {
///     func run(_ input: Int) throws -> Int { input * input }
/// }
/// let pool = try ProcessPool(workers: 4)
/// let squares = try pool.map(Square(), 1...100)
/// pool.close()
/// try pool.join(timeout: .seconds(10))
/// ```
///
/// What Python's pool does not:
/// - A worker that dies (SIGKILL, a segfault, `fatalError`, a resource limit) fails only the input it was
///   running, with an error naming its pid and signal; inputs queued behind it go to other workers, and a
///   new worker takes its place.
/// - A per-input `timeout` kills and replaces a worker whose input runs too long; that input fails with
///   ``MultiprocessingError/Code/timedOut``.
/// - `maxTasksPerChild` and `maxMemoryPerChild` recycle workers; deaths and recycles go to a `Logger`.
/// - An `initializer` that fails breaks the pool with a typed error that says why, instead of starting
///   workers again forever.
/// - Cancelling an awaiting Swift task cancels its work (killing the worker that runs it).
/// - Inputs are read lazily by ``imap(_:_:chunkSize:timeout:window:)`` (backpressure).
///
/// Workers are daemons: they die with the program, and ignore SIGINT so that Ctrl-C reaches only the
/// parent. A pool that is never closed does not hold up the program's exit. Dropping the pool
/// terminates it (Python's `__del__`).
///
/// Python's `starmap` has no separate form: a task's `Input` is any `Codable` value, so several
/// arguments travel as one struct (Swift tuples are not `Codable`).
public final class ProcessPool: @unchecked Sendable {
    let supervisor: PoolSupervisor
    /// The start method of the workers.
    public let context: ProcessContext
    /// How many workers the pool keeps.
    public let workerCount: Int

    /// Starts a pool.
    ///
    /// - Parameters:
    ///   - workers: how many worker processes; by default ``cpuCount()``.
    ///   - context: their start method. Spawn and forkserver workers run ``PoolTask`` and
    ///     ``AsyncPoolTask`` work; fork workers run ``PoolTask`` work only.
    ///   - initializer: run by each worker as it starts, before any input, under every start method
    ///     (Python's `initializer` and `initargs`: the arguments are its stored properties); for
    ///     settings that a worker keeps for all its inputs (a process-wide value, an opened file). If
    ///     it throws, or its worker dies while it runs, the pool is broken: workers are not started again
    ///     (Python's pool starts them forever), every input not ended and every later submission fail
    ///     with ``MultiprocessingError/Code/brokenPool``, whose message carries the initializer's error.
    ///   - maxTasksPerChild: a worker ends and is replaced after this many inputs (Python's
    ///     `maxtasksperchild`); nil keeps workers for the pool's life.
    ///   - maxMemoryPerChild: a worker whose resident memory passes this many bytes after an input ends
    ///     and is replaced (the input's result is kept).
    ///   - workerSettings: each worker's ``ChildSettings``, such as ``ResourceLimits``. A worker that a
    ///     limit kills fails the input it ran, with the limit named in the error.
    ///   - logger: where worker deaths, timeouts and recycles are reported; by default ``diagnostics``.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a count below 1, or an initializer
    ///   whose type a spawned worker cannot find (private, or declared in a function);
    ///   ``MultiprocessingError/Code/invalidState`` in a daemon process, and the errors of
    ///   ``ChildProcess/start()`` when a worker cannot start.
    public convenience init(
        workers: Int? = nil, context: ProcessContext = .default, initializer: (any ProcessTask)? = nil,
        maxTasksPerChild: Int? = nil, maxMemoryPerChild: Int? = nil, workerSettings: ChildSettings = ChildSettings(),
        logger: Logger? = nil
    ) throws {
        try self.init(
            workers: workers, context: context, initializer: initializer, maxTasksPerChild: maxTasksPerChild,
            maxMemoryPerChild: maxMemoryPerChild, workerSettings: workerSettings, logger: logger, closure: nil)
    }

    init(
        workers: Int?, context: ProcessContext, initializer: (any ProcessTask)?, maxTasksPerChild: Int?, maxMemoryPerChild: Int?,
        workerSettings: ChildSettings, logger: Logger?, closure: PoolClosure?, startsOnDemand: Bool = false
    ) throws {
        let count = workers ?? cpuCount()
        self.context = context
        workerCount = count
        if let initializer, context.startMethod != .fork {
            // A spawned worker finds the initializer's type by name: refused here rather than in each worker.
            _ = try TaskEnvelope.typeName(of: type(of: initializer))
        }
        supervisor = try PoolSupervisor(
            PoolSupervisor.Configuration(
                workers: count, context: context, maxTasksPerChild: maxTasksPerChild, maxMemoryPerChild: maxMemoryPerChild,
                settings: workerSettings, logger: logger ?? diagnostics, closure: closure, initializer: initializer,
                startsOnDemand: startsOnDemand))
    }

    deinit { supervisor.terminate() }

    /// The process ids of the workers now running.
    public var workerIdentifiers: [ProcessIdentifier] { supervisor.workerPids.map(ProcessIdentifier.init(rawValue:)) }

    // MARK: One input

    /// Runs `task` on `input` in a worker and waits for the output (Python's `apply`).
    /// - Parameters:
    ///   - task: the work; its stored properties travel to the worker with the input.
    ///   - input: what the task's `run(_:)` receives.
    ///   - timeout: the longest the input may run in its worker; past it the worker is killed and
    ///     replaced. Nil: no limit.
    /// - Throws: the errors of ``PoolResult/get(timeout:)``, and those of ``submit(_:_:timeout:onSuccess:onFailure:)-2vfpk``.
    public func apply<T: PoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) throws -> T.Output {
        try submit(task, input, timeout: timeout).get()
    }

    /// Runs `task` on `input` in a worker and awaits the output; cancelling the awaiting task kills
    /// the worker if it has started the input.
    /// - Throws: the errors of ``PoolResult/value``, and those of ``submit(_:_:timeout:onSuccess:onFailure:)-2vfpk``.
    public func apply<T: PoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) async throws -> T.Output {
        try await submit(task, input, timeout: timeout).value
    }

    /// Runs an async task on `input` in a worker and awaits the output.
    /// - Throws: ``MultiprocessingError/Code/unsupported`` under the fork start method, and the errors of
    ///   ``PoolResult/value``.
    public func apply<T: AsyncPoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) async throws -> T.Output {
        try await submit(task, input, timeout: timeout).value
    }

    /// Hands `input` to a worker and returns at once (Python's `apply_async`).
    ///
    /// - Parameters:
    ///   - task: the work; its stored properties travel to the worker with the input.
    ///   - input: what the task's `run(_:)` receives.
    ///   - timeout: the longest the input may run in its worker.
    ///   - onSuccess: called with the output when it arrives, on the pool's thread (keep it short).
    ///   - onFailure: called with the error when the input fails, on the pool's thread.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` once the pool is closed or terminated;
    ///   ``MultiprocessingError/Code/brokenPool`` once its initializer failed;
    ///   ``MultiprocessingError/Code/invalidArgument`` when the task's type cannot be found by a worker
    ///   (private, or declared in a function); ``MultiprocessingError/Code/transport`` when the task
    ///   value cannot be encoded. An input that cannot be encoded fails its result, not this call.
    public func submit<T: PoolTask>(
        _ task: T, _ input: T.Input, timeout: Duration? = nil,
        onSuccess: (@Sendable (T.Output) -> Void)? = nil, onFailure: (@Sendable (any Error) -> Void)? = nil
    ) throws -> PoolResult<T.Output> {
        try single(task, kind: PoolWire.syncJob, input, T.Output.self, timeout: timeout, onSuccess: onSuccess, onFailure: onFailure)
    }

    /// Hands `input` to a worker that runs an async task, and returns at once.
    /// - Throws: ``MultiprocessingError/Code/unsupported`` under the fork start method, and the errors of
    ///   ``submit(_:_:timeout:onSuccess:onFailure:)``.
    public func submit<T: AsyncPoolTask>(
        _ task: T, _ input: T.Input, timeout: Duration? = nil,
        onSuccess: (@Sendable (T.Output) -> Void)? = nil, onFailure: (@Sendable (any Error) -> Void)? = nil
    ) throws -> PoolResult<T.Output> {
        try single(task, kind: PoolWire.asyncJob, input, T.Output.self, timeout: timeout, onSuccess: onSuccess, onFailure: onFailure)
    }

    // MARK: Many inputs

    /// Runs `task` on every input and returns the outputs in input order (Python's `map`).
    ///
    /// Each chunk's inputs travel as one encoded array, and its outputs come back as one when all of its
    /// inputs succeed (as Python pickles a chunk whole); an input that fails, or cannot be encoded or
    /// decoded, still fails alone. Calls with a `timeout`, and pools that recycle workers by count or
    /// memory, send inputs one by one, since those limits apply to each input.
    ///
    /// - Parameters:
    ///   - task: the work; its stored properties travel to each worker once per chunk.
    ///   - inputs: what the task's `run(_:)` receives, one call each.
    ///   - chunkSize: inputs sent to a worker at a time; by default about a quarter of an even share.
    ///   - timeout: the longest each input may run in its worker.
    ///   - progress: called on this thread with (inputs ended, inputs) as they end.
    /// - Throws: the first failed input's error (in input order; see ``PoolResult/get(timeout:)``), after
    ///   every input has ended; and the errors of ``submit(_:_:timeout:onSuccess:onFailure:)-2vfpk``.
    ///   ``mapResults(_:_:chunkSize:timeout:progress:)`` gives every input's outcome instead.
    @inlinable
    public func map<T: PoolTask, S: Sequence<T.Input>>(
        _ task: T, _ inputs: S, chunkSize: Int? = nil, timeout: Duration? = nil, progress: ((Int, Int) -> Void)? = nil
    ) throws -> [T.Output] {
        // (Inlined so that the inputs are copied by code specialized for their type; see submitMap.)
        try map(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout, progress: progress)
    }

    @usableFromInline
    func map<T: PoolTask>(
        _ task: T, inputArray inputs: [T.Input], chunkSize: Int?, timeout: Duration?, progress: ((Int, Int) -> Void)?
    ) throws -> [T.Output] {
        let result = try submitMap(task, inputArray: inputs, chunkSize: chunkSize, timeout: timeout)
        Self.report(result.call, to: progress)
        return try result.get()
    }

    /// Calls `progress` with (ended, total) each time more inputs of `call` ended, until all have.
    private static func report(_ call: PoolCall, to progress: ((Int, Int) -> Void)?) {
        guard let progress else { return }
        var seen = -1
        let total = call.count
        while seen < total {
            let done = call.waitForProgress(beyond: seen, until: .never)
            if done != seen { progress(done, total) }
            seen = done
        }
    }

    /// Runs `task` on every input and awaits the outputs in input order; cancelling the awaiting task
    /// cancels the inputs not ended.
    /// - Throws: the errors of ``map(_:_:chunkSize:timeout:progress:)``, and `CancellationError`.
    @inlinable
    public func map<T: PoolTask, S: Sequence<T.Input>>(
        _ task: T, _ inputs: S, chunkSize: Int? = nil, timeout: Duration? = nil
    ) async throws -> [T.Output] {
        try await submitMap(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout).value
    }

    /// Runs an async task on every input and awaits the outputs in input order.
    /// - Throws: ``MultiprocessingError/Code/unsupported`` under fork, and the errors of
    ///   ``map(_:_:chunkSize:timeout:progress:)``.
    @inlinable
    public func map<T: AsyncPoolTask, S: Sequence<T.Input>>(
        _ task: T, _ inputs: S, chunkSize: Int? = nil, timeout: Duration? = nil
    ) async throws -> [T.Output] {
        try await submitMap(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout).value
    }

    @usableFromInline
    func submitMap<T: AsyncPoolTask>(_ task: T, inputArray inputs: [T.Input], chunkSize: Int?, timeout: Duration?) throws -> PoolResult<[T.Output]> {
        let call = try makeCall(task, kind: PoolWire.asyncJob, chunkSize: chunkSize, count: inputs.count, timeout: timeout)
        return try mapResult(call, inputs, T.Output.self)
    }

    /// Runs `task` on every input and returns each input's outcome, in input order: a failed input
    /// (thrown error, dead worker, timeout) does not hide the others' outputs. `progress` is called on
    /// this thread with (inputs ended, inputs) as they end.
    /// - Throws: the errors of ``submit(_:_:timeout:onSuccess:onFailure:)-2vfpk``.
    @inlinable
    public func mapResults<T: PoolTask, S: Sequence<T.Input>>(
        _ task: T, _ inputs: S, chunkSize: Int? = nil, timeout: Duration? = nil, progress: ((Int, Int) -> Void)? = nil
    ) throws -> [Result<T.Output, any Error>] {
        try mapResults(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout, progress: progress)
    }

    @usableFromInline
    func mapResults<T: PoolTask>(
        _ task: T, inputArray inputs: [T.Input], chunkSize: Int?, timeout: Duration?, progress: ((Int, Int) -> Void)?
    ) throws -> [Result<T.Output, any Error>] {
        let result = try submitMap(task, inputArray: inputs, chunkSize: chunkSize, timeout: timeout)
        Self.report(result.call, to: progress)
        result.wait()
        return (0..<result.call.count).map { index in Result { try result.call.value(index, as: T.Output.self) } }
    }

    /// Hands every input to the workers and returns at once (Python's `map_async`); the result's value
    /// is the outputs in input order, and its ``PoolResult/progress`` counts ended inputs.
    /// - Throws: the errors of ``submit(_:_:timeout:onSuccess:onFailure:)-2vfpk``.
    @inlinable
    public func submitMap<T: PoolTask, S: Sequence<T.Input>>(
        _ task: T, _ inputs: S, chunkSize: Int? = nil, timeout: Duration? = nil
    ) throws -> PoolResult<[T.Output]> {
        // The pool's code is generic and runs unspecialized: copying a range element by element there
        // costs about 100 ns an element. Inlined, this copy is specialized for the caller's sequence.
        try submitMap(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout)
    }

    @usableFromInline
    func submitMap<T: PoolTask>(_ task: T, inputArray inputs: [T.Input], chunkSize: Int?, timeout: Duration?) throws -> PoolResult<[T.Output]> {
        let call = try makeCall(task, kind: PoolWire.syncJob, chunkSize: chunkSize, count: inputs.count, timeout: timeout)
        return try mapResult(call, inputs, T.Output.self)
    }

    /// The outputs in input order as they arrive, reading `inputs` lazily (Python's `imap`): at most
    /// `window` inputs are in the pool at a time, so an endless sequence works.
    ///
    /// Iterate it with `for` (blocking), with `for try await` (without holding a thread), or call
    /// ``PoolResults/next(timeout:)``. A failed input throws its error from the iteration at its place.
    /// - Parameters:
    ///   - task: the work; its stored properties travel to each worker with the inputs.
    ///   - inputs: what the task's `run(_:)` receives, read as the window allows.
    ///   - chunkSize: inputs sent to a worker at a time.
    ///   - timeout: the longest each input may run in its worker.
    ///   - window: inputs handed out ahead of the consumer; by default 4 chunks per worker.
    /// - Throws: the errors of ``submit(_:_:timeout:onSuccess:onFailure:)-2vfpk``.
    public func imap<T: PoolTask, S: Sequence<T.Input>>(
        _ task: T, _ inputs: S, chunkSize: Int = 1, timeout: Duration? = nil, window: Int? = nil
    ) throws -> PoolResults<T.Output> where S: Sendable {
        let call = try makeCall(task, kind: PoolWire.syncJob, chunkSize: chunkSize, count: nil, timeout: timeout)
        return PoolResults(call: call, supervisor: supervisor, inputs: inputs, ordered: true, window: window ?? 4 * workerCount * max(1, chunkSize))
    }

    /// The outputs in the order they end, reading `inputs` lazily (Python's `imap_unordered`).
    /// - Throws: the errors of ``imap(_:_:chunkSize:timeout:window:)``.
    public func imapUnordered<T: PoolTask, S: Sequence<T.Input>>(
        _ task: T, _ inputs: S, chunkSize: Int = 1, timeout: Duration? = nil, window: Int? = nil
    ) throws -> PoolResults<T.Output> where S: Sendable {
        let call = try makeCall(task, kind: PoolWire.syncJob, chunkSize: chunkSize, count: nil, timeout: timeout)
        return PoolResults(call: call, supervisor: supervisor, inputs: inputs, ordered: false, window: window ?? 4 * workerCount * max(1, chunkSize))
    }

    // MARK: Lifecycle

    /// Accepts no more work; the workers end once every input handed in has ended (Python's `close`).
    public func close() { supervisor.close() }

    /// Kills the workers now (SIGKILL); inputs that have not ended fail with
    /// ``MultiprocessingError/Code/closed`` (Python's `terminate`).
    public func terminate() { supervisor.terminate() }

    /// Waits until every worker has ended, at most `timeout`; returns whether they have (Python's `join`).
    /// - Throws: ``MultiprocessingError/Code/invalidState`` before ``close()`` or ``terminate()``, as Python's
    ///   `ValueError`.
    @discardableResult
    public func join(timeout: Duration? = nil) throws -> Bool {
        guard supervisor.phase != .running else { throw MultiprocessingError(.invalidState, "pool is still running; close() or terminate() it first") }
        return supervisor.join(until: .after(timeout))
    }

    /// Awaits the end of every worker without holding a thread.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` before ``close()`` or ``terminate()``, and
    ///   `CancellationError`.
    public func join() async throws {
        guard supervisor.phase != .running else { throw MultiprocessingError(.invalidState, "pool is still running; close() or terminate() it first") }
        try await supervisor.join()
    }

    /// Awaits the end of every worker for at most `timeout` without holding a thread, and returns whether
    /// they all ended.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` before ``close()`` or ``terminate()``, and
    ///   `CancellationError` (the workers go on).
    public func join(timeout: Duration) async throws -> Bool {
        guard supervisor.phase != .running else { throw MultiprocessingError(.invalidState, "pool is still running; close() or terminate() it first") }
        return try await supervisor.join(timeout: timeout)
    }

    // MARK: Internals

    func makeCall<T: Codable & Sendable>(_ task: T, kind: UInt8, chunkSize: Int?, count: Int?, timeout: Duration?) throws -> PoolCall {
        if kind == PoolWire.asyncJob && context.startMethod == .fork {
            throw MultiprocessingError(.unsupported, "async pool work needs spawn or forkserver workers; fork workers run synchronous code only")
        }
        if let chunkSize, chunkSize < 1 {
            throw MultiprocessingError(.invalidArgument, "chunkSize must be at least 1, not \(chunkSize)")
        }
        if let timeout, timeout <= .zero {
            throw MultiprocessingError(.invalidArgument, "timeout must be positive, not \(timeout)")
        }
        let name = try TaskEnvelope.typeName(of: T.self)
        let encoded: [UInt8]
        do { encoded = try BinaryEncoder().encode(task) } catch {
            throw MultiprocessingError(.transport, "the task \(T.self) could not be encoded: \(error)")
        }
        var size = chunkSize ?? 1
        if chunkSize == nil, let count, count > 0 {
            // Python's default: inputs split in four chunks per worker.
            let share = count / (4 * workerCount)
            size = max(1, share + (count % (4 * workerCount) == 0 ? 0 : 1))
        }
        return PoolCall(
            taskName: Array(name.utf8), task: encoded, kind: kind, chunkSize: size, timeout: timeout, taskDescription: "\(T.self)",
            batches: supervisor.batchesAllowed)
    }

    private func single<T: Codable & Sendable, Input: Encodable & Sendable, Output: Decodable & Sendable>(
        _ task: T, kind: UInt8, _ input: Input, _: Output.Type, timeout: Duration?,
        onSuccess: (@Sendable (Output) -> Void)?, onFailure: (@Sendable (any Error) -> Void)?
    ) throws -> PoolResult<Output> {
        let call = try makeCall(task, kind: kind, chunkSize: 1, count: 1, timeout: timeout)
        if onSuccess != nil || onFailure != nil {
            call.onOutcome = { [unowned call] index, outcome in
                do {
                    let value = try call.value(of: outcome, index, as: Output.self)
                    onSuccess?(value)
                } catch {
                    onFailure?(error)
                }
            }
        }
        try PoolFeeder.feed(call, [input], into: supervisor)
        return PoolResult(call: call, supervisor: supervisor, goal: .item(0)) { call in try call.value(0, as: Output.self) }
    }

    private func mapResult<Input: Encodable & Sendable, Output: Decodable & Sendable>(
        _ call: PoolCall, _ inputs: [Input], _: Output.Type
    ) throws -> PoolResult<[Output]> {
        try PoolFeeder.feed(call, inputs, into: supervisor)
        let count = inputs.count
        return PoolResult(call: call, supervisor: supervisor, goal: .count(count)) { call in try call.values(count, as: Output.self) }
    }
}

/// Encodes inputs and hands them to the supervisor; an input that cannot be encoded fails alone.
enum PoolFeeder {
    /// One input's encoding (or the error it fails with), or a batch of inputs encoded as one array.
    enum Unit {
        case single(Result<[UInt8], any Error>)
        case batch([UInt8], count: Int, singles: @Sendable () -> [Result<[UInt8], any Error>])

        var count: Int {
            if case .batch(_, let count, _) = self { return count }
            return 1
        }
    }

    /// Inputs are encoded and handed over in slices, so that workers start while later inputs are
    /// encoded. A call that ``PoolCall/batches`` encodes each chunk as one array (one encoding and one
    /// copy into its job instead of one per input); a chunk whose array cannot be encoded goes input by
    /// input, so that only the inputs that cannot be encoded fail.
    static func feed<Input: Encodable & Sendable>(_ call: PoolCall, _ values: [Input], into supervisor: PoolSupervisor) throws {
        let encoder = BinaryEncoder()
        // Slices end on chunk boundaries.
        let slice = call.batches ? max(1, 4096 / call.chunkSize) * call.chunkSize : 4096
        var start = 0
        repeat {
            let end = min(values.count, start + slice)
            var units: [Unit] = []
            if call.batches {
                var chunkStart = start
                while chunkStart < end {
                    let chunk = values[chunkStart..<min(end, chunkStart + call.chunkSize)]
                    if chunk.count > 1, let bytes = try? encoder.encode(Array(chunk)) {
                        units.append(.batch(bytes, count: chunk.count) { chunk.map { input in Result { try BinaryEncoder().encode(input) } } })
                    } else {
                        units += chunk.map { input in .single(Result { try encoder.encode(input) }) }
                    }
                    chunkStart += chunk.count
                }
            } else {
                units = values[start..<end].map { input in .single(Result { try encoder.encode(input) }) }
            }
            try feed(call, units: units, into: supervisor)
            start = end
        } while start < values.count
    }

    static func feed(_ call: PoolCall, encoded inputs: [Result<[UInt8], any Error>], into supervisor: PoolSupervisor) throws {
        try feed(call, units: inputs.map { .single($0) }, into: supervisor)
    }

    static func feed(_ call: PoolCall, units: [Unit], into supervisor: PoolSupervisor) throws {
        var index = call.reserve(units.reduce(0) { $0 + $1.count })
        var items: [PoolItem] = []
        items.reserveCapacity(units.count)
        var failed: [(Int, PoolOutcome)] = []
        for unit in units {
            switch unit {
            case .single(.success(let bytes)):
                items.append(PoolItem(call: call, index: index, input: bytes))
            case .single(.failure(let error)):
                failed.append((index, .failure(unencodable(call, index, error))))
            case .batch(let bytes, let count, let singles):
                items.append(PoolItem(call: call, index: index, input: bytes, count: count, singles: singles))
            }
            index += unit.count
        }
        if !failed.isEmpty { call.deliver(failed) }
        if !items.isEmpty { try supervisor.submit(items) }
    }

    static func unencodable(_ call: PoolCall, _ index: Int, _ error: any Error) -> MultiprocessingError {
        MultiprocessingError(.transport, "input \(index) of \(call.taskDescription) could not be encoded: \(error)")
    }
}
