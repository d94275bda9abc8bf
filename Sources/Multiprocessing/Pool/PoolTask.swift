/// Work a pool runs many times: it takes an input and returns an output. Python's function passed to
/// `Pool.map` or `ProcessPoolExecutor.submit`.
///
/// Declare a `Codable` type whose stored properties are the settings shared by every call (they travel
/// to a worker once per job), and put the work in ``run(_:)``. As with ``ProcessTask``, a worker started
/// by the spawn or forkserver method finds the type by its mangled name, so declare it at file scope or
/// nested in another type, not `private`, `fileprivate` or inside a function.
///
/// ```swift
/// struct Square: PoolTask {
///     func run(_ input: Int) throws -> Int { input * input }
/// }
/// ```
///
/// An error thrown by ``run(_:)`` fails that call only and comes back to the caller (as itself when it is
/// `Codable`, otherwise by type name and description); the worker goes on with the next input.
public protocol PoolTask: Codable, Sendable {
    /// What one call takes.
    associatedtype Input: Codable & Sendable
    /// What one call returns.
    associatedtype Output: Codable & Sendable
    /// The work for one input, run in a worker process.
    func run(_ input: Input) throws -> Output
}

/// Work a pool runs many times that may `await`: an async ``PoolTask``.
///
/// A worker runs ``run(_:)`` on the Swift concurrency runtime (spawn and forkserver workers; the fork
/// method refuses async work for the reason given at ``AsyncProcessTask``).
public protocol AsyncPoolTask: Codable, Sendable {
    /// What one call takes.
    associatedtype Input: Codable & Sendable
    /// What one call returns.
    associatedtype Output: Codable & Sendable
    /// The work for one input, run in a worker process.
    func run(_ input: Input) async throws -> Output
}
