import Multiprocessing
import Synchronization

/// A progress report: how many inputs of a call have finished (succeeded or failed), of how many. Called
/// on the MPI thread as results arrive: keep it short.
public typealias MPIProgress = @Sendable (_ finished: Int, _ total: Int) -> Void

extension MPIPool {
    /// Runs `task` on every input across the worker ranks and returns the outputs in input order
    /// (Python's `Pool.map`), waiting until every input has ended. Inputs travel in batches of
    /// `chunkSize` (by default a quarter of an even share per worker).
    ///
    /// - Parameters:
    ///   - timeout: the longest each input may run in its local worker, as for the local pool; past it
    ///     the worker is killed and the input fails. Nil: the pool's `taskTimeout`.
    ///   - progress: called on the MPI thread with (inputs ended, inputs) as batches end.
    /// - Throws: the first failed input's error, in input order: the task's own error when it is
    ///   `Codable` and known here, else ``MultiprocessingError/Code/remote``;
    ///   ``MultiprocessingError/Code/childFailed`` for a crash or a broken limit;
    ///   ``MultiprocessingError/Code/timedOut`` past `timeout`; ``MultiprocessingError/Code/rankLost``;
    ///   ``MultiprocessingError/Code/transport``, ``MultiprocessingError/Code/invalidArgument``, or
    ///   ``MultiprocessingError/Code/invalidState`` after ``shutdown(timeout:)``.
    ///   ``mapResults(_:_:chunkSize:timeout:)`` gives every input's outcome instead.
    @inlinable
    public func map<T: PoolTask>(
        _ task: T, _ inputs: some Sequence<T.Input>, chunkSize: Int? = nil, timeout: Duration? = nil, progress: MPIProgress? = nil
    ) throws -> [T.Output] {
        // Each call is inlined so that the inputs become an array in code specialised for their sequence
        // type, as the local pool's calls are: run unspecialised here, `Array(inputs)` walks a
        // `Range<Int>` an element at a time through its witnesses, about 100 ns an input.
        try map(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout, progress: progress)
    }

    @usableFromInline
    func map<T: PoolTask>(
        _ task: T, inputArray inputs: [T.Input], chunkSize: Int?, timeout: Duration?, progress: MPIProgress?
    ) throws -> [T.Output] {
        let job = try start(task, inputs, chunkSize: chunkSize, timeout: timeout, progress: progress, as: T.Output.self)
        return try job.wait(timeout: nil, until: { $0.isComplete }, take: { try $0.outputs() })
    }

    /// ``map(_:_:chunkSize:timeout:progress:)`` for an ``AsyncPoolTask``.
    /// - Throws: as ``map(_:_:chunkSize:timeout:progress:)``.
    @inlinable
    public func map<T: AsyncPoolTask>(
        _ task: T, _ inputs: some Sequence<T.Input>, chunkSize: Int? = nil, timeout: Duration? = nil, progress: MPIProgress? = nil
    ) throws -> [T.Output] {
        try map(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout, progress: progress)
    }

    @usableFromInline
    func map<T: AsyncPoolTask>(
        _ task: T, inputArray inputs: [T.Input], chunkSize: Int?, timeout: Duration?, progress: MPIProgress?
    ) throws -> [T.Output] {
        let job = try start(task, inputs, chunkSize: chunkSize, timeout: timeout, progress: progress, as: T.Output.self)
        return try job.wait(timeout: nil, until: { $0.isComplete }, take: { try $0.outputs() })
    }

    /// ``map(_:_:chunkSize:timeout:progress:)`` waiting on the Swift concurrency runtime; cancellation
    /// ends the wait with `CancellationError` (the inputs already sent still run).
    /// - Throws: as ``map(_:_:chunkSize:timeout:progress:)``, or `CancellationError`.
    @inlinable
    public func map<T: PoolTask>(
        _ task: T, _ inputs: some Sequence<T.Input>, chunkSize: Int? = nil, timeout: Duration? = nil
    ) async throws -> [T.Output] {
        try await map(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout)
    }

    @usableFromInline
    func map<T: PoolTask>(
        _ task: T, inputArray inputs: [T.Input], chunkSize: Int?, timeout: Duration?
    ) async throws -> [T.Output] {
        let job = try start(task, inputs, chunkSize: chunkSize, timeout: timeout, progress: nil, as: T.Output.self)
        return try await job.wait(until: { $0.isComplete }, take: { try $0.outputs() })
    }

    /// The async ``map(_:_:chunkSize:timeout:progress:)`` for an ``AsyncPoolTask``.
    /// - Throws: as ``map(_:_:chunkSize:timeout:progress:)``, or `CancellationError`.
    @inlinable
    public func map<T: AsyncPoolTask>(
        _ task: T, _ inputs: some Sequence<T.Input>, chunkSize: Int? = nil, timeout: Duration? = nil
    ) async throws -> [T.Output] {
        try await map(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout)
    }

    @usableFromInline
    func map<T: AsyncPoolTask>(
        _ task: T, inputArray inputs: [T.Input], chunkSize: Int?, timeout: Duration?
    ) async throws -> [T.Output] {
        let job = try start(task, inputs, chunkSize: chunkSize, timeout: timeout, progress: nil, as: T.Output.self)
        return try await job.wait(until: { $0.isComplete }, take: { try $0.outputs() })
    }

    /// ``map(_:_:chunkSize:timeout:progress:)`` giving every input's outcome, in input order, instead of
    /// throwing the first failure.
    /// - Throws: the errors of starting the work only (see ``submit(_:_:timeout:)``).
    @inlinable
    public func mapResults<T: PoolTask>(
        _ task: T, _ inputs: some Sequence<T.Input>, chunkSize: Int? = nil, timeout: Duration? = nil
    ) throws -> [Result<T.Output, any Error>] {
        try mapResults(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout)
    }

    @usableFromInline
    func mapResults<T: PoolTask>(
        _ task: T, inputArray inputs: [T.Input], chunkSize: Int?, timeout: Duration?
    ) throws -> [Result<T.Output, any Error>] {
        let job = try start(task, inputs, chunkSize: chunkSize, timeout: timeout, progress: nil, as: T.Output.self)
        return try job.wait(timeout: nil, until: { $0.isComplete }, take: { job in (0..<job.count).map { job.result($0) } })
    }

    /// Runs `task` on every input and gives each input's result in input order as it is ready (Python's
    /// `Pool.imap`): a failed input is a `.failure` in its place and the others go on.
    /// - Parameter timeout: the longest each input may run in its local worker.
    /// - Throws: the errors of starting the work (see ``submit(_:_:timeout:)``).
    @inlinable
    public func imap<T: PoolTask>(
        _ task: T, _ inputs: some Sequence<T.Input>, chunkSize: Int = 1, timeout: Duration? = nil, progress: MPIProgress? = nil
    ) throws -> MPIResults<T.Output> {
        try imap(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout, progress: progress)
    }

    @usableFromInline
    func imap<T: PoolTask>(
        _ task: T, inputArray inputs: [T.Input], chunkSize: Int, timeout: Duration?, progress: MPIProgress?
    ) throws -> MPIResults<T.Output> {
        MPIResults(try start(task, inputs, chunkSize: chunkSize, timeout: timeout, progress: progress, as: T.Output.self), ordered: true)
    }

    /// ``imap(_:_:chunkSize:timeout:progress:)`` with results in the order they finish (Python's
    /// `Pool.imap_unordered`).
    /// - Throws: as ``imap(_:_:chunkSize:timeout:progress:)``.
    @inlinable
    public func imapUnordered<T: PoolTask>(
        _ task: T, _ inputs: some Sequence<T.Input>, chunkSize: Int = 1, timeout: Duration? = nil, progress: MPIProgress? = nil
    ) throws -> MPIResults<T.Output> {
        try imapUnordered(task, inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout, progress: progress)
    }

    @usableFromInline
    func imapUnordered<T: PoolTask>(
        _ task: T, inputArray inputs: [T.Input], chunkSize: Int, timeout: Duration?, progress: MPIProgress?
    ) throws -> MPIResults<T.Output> {
        MPIResults(try start(task, inputs, chunkSize: chunkSize, timeout: timeout, progress: progress, as: T.Output.self), ordered: false)
    }

    /// Runs `task` on one input on some worker rank and waits for its output (Python's `Pool.apply`).
    /// - Parameter timeout: the longest the input may run in its local worker.
    /// - Throws: as ``map(_:_:chunkSize:timeout:progress:)``.
    public func apply<T: PoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) throws -> T.Output {
        try submit(task, input, timeout: timeout).get()
    }

    /// ``apply(_:_:timeout:)`` waiting on the Swift concurrency runtime.
    /// - Throws: as ``map(_:_:chunkSize:timeout:progress:)``, or `CancellationError`.
    public func apply<T: PoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) async throws -> T.Output {
        try await submit(task, input, timeout: timeout).value
    }

    /// Starts `task` on one input and returns at once with a handle to its result (Python's
    /// `Executor.submit` and `Pool.apply_async`).
    /// - Parameter timeout: the longest the input may run in its local worker.
    /// - Throws: ``MultiprocessingError/Code/transport`` when the task or input cannot be encoded;
    ///   ``MultiprocessingError/Code/invalidArgument`` for a task type another process cannot find;
    ///   ``MultiprocessingError/Code/invalidState`` after ``shutdown(timeout:)``.
    public func submit<T: PoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) throws -> MPIFuture<T.Output> {
        MPIFuture(try start(task, [input], chunkSize: 1, timeout: timeout, progress: nil, as: T.Output.self))
    }

    /// ``submit(_:_:timeout:)`` for an ``AsyncPoolTask``.
    /// - Throws: as ``submit(_:_:timeout:)``.
    public func submit<T: AsyncPoolTask>(_ task: T, _ input: T.Input, timeout: Duration? = nil) throws -> MPIFuture<T.Output> {
        MPIFuture(try start(task, [input], chunkSize: 1, timeout: timeout, progress: nil, as: T.Output.self))
    }
}

/// The result of one input sent to an ``MPIPool``: Python's `concurrent.futures.Future` and
/// `AsyncResult`.
public struct MPIFuture<Output: Codable & Sendable>: Sendable {
    let job: MPIJob<Output>

    init(_ job: MPIJob<Output>) { self.job = job }

    /// Whether the result has arrived.
    public var isReady: Bool { (try? job.wait(timeout: .zero, until: { $0.isComplete }, take: { _ in true })) ?? false }

    /// The output, waiting at most `timeout` (nil: until it arrives).
    /// - Throws: the input's failure (see ``MPIPool/map(_:_:chunkSize:timeout:progress:)``), or
    ///   ``MultiprocessingError/Code/timedOut`` when it is not ready within `timeout`.
    public func get(timeout: Duration? = nil) throws -> Output {
        try job.wait(timeout: timeout, until: { $0.isComplete }, take: { $0.result(0) }).get()
    }

    /// The output, waiting on the Swift concurrency runtime.
    /// - Throws: the input's failure, or `CancellationError` when the waiting task is cancelled.
    public var value: Output {
        get async throws { try await job.wait(until: { $0.isComplete }, take: { $0.result(0) }).get() }
    }
}

/// The results of ``MPIPool/imap(_:_:chunkSize:timeout:progress:)`` and
/// ``MPIPool/imapUnordered(_:_:chunkSize:timeout:progress:)``, one per input, as a blocking `Sequence` and as
/// an `AsyncSequence`. A failed input is a `.failure` and does not stop the others.
public final class MPIResults<Output: Codable & Sendable>: Sequence, AsyncSequence, Sendable {
    /// One input's output, or the error it failed with.
    public typealias Element = Result<Output, any Error>

    let job: MPIJob<Output>
    let ordered: Bool
    private let position = Mutex(0)

    init(_ job: MPIJob<Output>, ordered: Bool) {
        self.job = job
        self.ordered = ordered
    }

    /// The number of inputs.
    public var count: Int { job.count }

    /// The next result, waiting at most `timeout` (nil: until it arrives); nil after the last one.
    /// - Throws: ``MultiprocessingError/Code/timedOut`` when the next result is not ready within `timeout`.
    public func next(timeout: Duration?) throws -> Element? {
        try position.withLock { position in
            guard position < job.count else { return nil }
            let index = position
            let result = try ordered
                ? job.wait(timeout: timeout, until: { $0.hasResult(index) }, take: { $0.result(index) })
                : job.wait(timeout: timeout, until: { $0.hasArrival(index) }, take: { $0.arrival(index) })
            position += 1
            return result
        }
    }

    /// The next result, waiting on the Swift concurrency runtime; nil after the last one.
    /// - Throws: `CancellationError` when the waiting task is cancelled.
    public func next() async throws -> Element? {
        let index = position.withLock { position -> Int? in
            guard position < job.count else { return nil }
            defer { position += 1 }
            return position
        }
        guard let index else { return nil }
        if ordered { return try await job.wait(until: { $0.hasResult(index) }, take: { $0.result(index) }) }
        return try await job.wait(until: { $0.hasArrival(index) }, take: { $0.arrival(index) })
    }

    /// A blocking iterator over the results not yet taken.
    public struct Iterator: IteratorProtocol {
        let results: MPIResults
        /// The next result, waiting as long as it takes.
        public mutating func next() -> Element? { (try? results.next(timeout: nil)) ?? nil }
    }

    /// An async iterator over the results not yet taken.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let results: MPIResults
        /// The next result.
        /// - Throws: `CancellationError` when the waiting task is cancelled.
        public mutating func next() async throws -> Element? { try await results.next() }
    }

    /// A blocking iterator.
    public func makeIterator() -> Iterator { Iterator(results: self) }
    /// An async iterator.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(results: self) }
}
