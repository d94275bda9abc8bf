import Logging

/// A pool whose workers run one closure, under the fork start method only: Python's `Pool` with a lambda
/// under fork.
///
/// A closure cannot be encoded; it reaches a worker only as part of the memory the worker copies when it
/// is forked, so the pool is made for that one closure, and its workers (and their replacements) are
/// forked after it exists. Workers run synchronous code only (see ``AsyncProcessTask`` for why).
///
/// ```swift
/// let offset = 10
/// let pool = try ClosurePool(workers: 2) { (x: Int) in x + offset }
/// print(try pool.map([1, 2, 3]))   // [11, 12, 13]
/// ```
public final class ClosurePool<Input: Codable & Sendable, Output: Codable & Sendable>: Sendable {
    /// The pool that runs the closure.
    let pool: ProcessPool

    /// Starts fork workers that run `body`.
    ///
    /// - Parameters: as ``ProcessPool/init(workers:context:initializer:maxTasksPerChild:maxMemoryPerChild:workerSettings:logger:)``;
    ///   `context` must use the fork start method.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for another start method (a closure cannot
    ///   reach a spawned worker; use a ``PoolTask`` there), and the errors of
    ///   ``ProcessPool/init(workers:context:initializer:maxTasksPerChild:maxMemoryPerChild:workerSettings:logger:)``.
    public init(
        workers: Int? = nil, context: ProcessContext = ProcessContext(.fork), maxTasksPerChild: Int? = nil,
        maxMemoryPerChild: Int? = nil, workerSettings: ChildSettings = ChildSettings(), logger: Logger? = nil,
        _ body: @escaping @Sendable (Input) throws -> Output
    ) throws {
        guard context.startMethod == .fork else {
            throw MultiprocessingError(
                .invalidArgument,
                "a closure reaches only workers started by fork (ProcessContext(.fork)); under \(context.startMethod) declare a PoolTask type instead")
        }
        pool = try ProcessPool(
            workers: workers, context: context, initializer: nil, maxTasksPerChild: maxTasksPerChild,
            maxMemoryPerChild: maxMemoryPerChild, workerSettings: workerSettings, logger: logger, closure: PoolClosure(body))
    }

    private func makeCall(chunkSize: Int?, count: Int, timeout: Duration?) throws -> PoolCall {
        if let chunkSize, chunkSize < 1 { throw MultiprocessingError(.invalidArgument, "chunkSize must be at least 1, not \(chunkSize)") }
        let share = max(1, (count + 4 * pool.workerCount - 1) / (4 * pool.workerCount))
        return PoolCall(
            taskName: [], task: [], kind: PoolWire.syncJob, chunkSize: chunkSize ?? share, timeout: timeout, taskDescription: "closure",
            batches: pool.supervisor.batchesAllowed)
    }

    /// Hands `input` to a worker and returns at once.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` once the pool is closed or terminated.
    public func submit(_ input: Input, timeout: Duration? = nil) throws -> PoolResult<Output> {
        let call = try makeCall(chunkSize: 1, count: 1, timeout: timeout)
        try PoolFeeder.feed(call, [input], into: pool.supervisor)
        return PoolResult(call: call, supervisor: pool.supervisor, goal: .item(0)) { try $0.value(0, as: Output.self) }
    }

    /// Runs the closure on every input and returns each input's outcome, in input order.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` once the pool is closed or terminated.
    @inlinable
    public func mapResults<S: Sequence<Input>>(_ inputs: S, chunkSize: Int? = nil, timeout: Duration? = nil) throws -> [Result<Output, any Error>] {
        // (Inlined so that the inputs are copied by code specialized for their type.)
        try mapResults(inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout)
    }

    /// Runs the closure on every input and returns the outputs in input order.
    /// - Throws: the first failed input's error (see ``PoolResult/get(timeout:)``), and
    ///   ``MultiprocessingError/Code/invalidState`` once the pool is closed or terminated.
    @inlinable
    public func map<S: Sequence<Input>>(_ inputs: S, chunkSize: Int? = nil, timeout: Duration? = nil) throws -> [Output] {
        try map(inputArray: Array(inputs), chunkSize: chunkSize, timeout: timeout)
    }

    @usableFromInline
    func mapResults(inputArray inputs: [Input], chunkSize: Int?, timeout: Duration?) throws -> [Result<Output, any Error>] {
        let call = try run(inputs, chunkSize: chunkSize, timeout: timeout)
        return (0..<call.count).map { index in Result { try call.value(index, as: Output.self) } }
    }

    @usableFromInline
    func map(inputArray inputs: [Input], chunkSize: Int?, timeout: Duration?) throws -> [Output] {
        let call = try run(inputs, chunkSize: chunkSize, timeout: timeout)
        return try call.values(call.count, as: Output.self)
    }

    /// Hands the inputs to the workers and waits until each has ended.
    private func run(_ inputs: [Input], chunkSize: Int?, timeout: Duration?) throws -> PoolCall {
        let call = try makeCall(chunkSize: chunkSize, count: inputs.count, timeout: timeout)
        try PoolFeeder.feed(call, inputs, into: pool.supervisor)
        _ = call.wait(for: .count(inputs.count), until: .never)
        return call
    }

    /// Accepts no more work (see ``ProcessPool/close()``).
    public func close() { pool.close() }
    /// Kills the workers now (see ``ProcessPool/terminate()``).
    public func terminate() { pool.terminate() }
    /// Waits for the workers to end (see ``ProcessPool/join(timeout:)-(Duration?)``).
    /// - Throws: ``MultiprocessingError/Code/invalidState`` before ``close()`` or ``terminate()``.
    @discardableResult
    public func join(timeout: Duration? = nil) throws -> Bool { try pool.join(timeout: timeout) }
    /// Awaits the end of the workers without holding a thread (see ``ProcessPool/join()``).
    /// - Throws: ``MultiprocessingError/Code/invalidState`` before ``close()`` or ``terminate()``, and
    ///   `CancellationError`.
    public func join() async throws { try await pool.join() }
}
