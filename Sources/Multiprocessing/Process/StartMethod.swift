#if canImport(Glibc)
import Glibc
#endif

/// How a child process is created (Python's start methods).
public enum StartMethod: String, CaseIterable, Sendable, CustomStringConvertible {
    /// Start a fresh copy of the running executable (`posix_spawn`), which runs only the task.
    /// The default: safe with threads, Dispatch and Swift concurrency in the parent.
    case spawn
    /// Take a child from a small single-threaded server process, started on first use, which forks
    /// copies of itself ahead of need (two wait at a time). Faster than spawn, and just as safe; the
    /// server is restarted if it dies.
    case forkserver
    /// Fork the calling process. The only method that can run a capturing closure, but the child
    /// may run only synchronous code: locks held by other threads at fork time stay held.
    case fork

    /// The method's name, as Python spells it.
    public var description: String { rawValue }
}

/// A start method to create children with: Python's context objects (`get_context("spawn")`).
///
/// ``default`` follows the process-wide start method (``setStartMethod(_:force:)``) at the time a
/// child starts; a context made with ``init(_:)`` always uses its method.
public struct ProcessContext: Sendable, Hashable, CustomStringConvertible {
    /// The fixed method, or nil to follow the process-wide default.
    let fixedMethod: StartMethod?

    /// A context bound to `method`.
    public init(_ method: StartMethod) { fixedMethod = method }

    private init(following: ()) { fixedMethod = nil }

    /// The context that follows the process-wide default start method.
    public static var `default`: ProcessContext { ProcessContext(following: ()) }

    /// The method a child started now would use.
    public var startMethod: StartMethod { fixedMethod ?? resolvedDefaultStartMethod() }

    /// The start method's name.
    public var description: String { startMethod.rawValue }
}

let defaultStartMethod = ForkSafeMutex<StartMethod?>(nil)

/// Sets the start method that ``ProcessContext/default`` uses (Python's `set_start_method`).
///
/// - Parameters:
///   - method: the method, or nil (with `force`) to return to the unset state.
///   - force: replace a method that was already set or already used.
/// - Throws: ``MultiprocessingError/Code/invalidState`` ("context has already been set") when a method
///   is already fixed and `force` is false.
public func setStartMethod(_ method: StartMethod?, force: Bool = false) throws {
    try defaultStartMethod.withLock { current in
        if current != nil && !force {
            throw MultiprocessingError(.invalidState, "context has already been set")
        }
        current = method
    }
}

/// The process-wide start method (Python's `get_start_method`). Unless `allowNone` is true, an unset
/// method is fixed to ``StartMethod/spawn`` by this call, as Python fixes its default on first use.
public func startMethod(allowNone: Bool = false) -> StartMethod? {
    defaultStartMethod.withLock { current in
        if current == nil && !allowNone { current = .spawn }
        return current
    }
}

/// The start methods this platform supports, default first (Python's `get_all_start_methods`).
public func allStartMethods() -> [StartMethod] { [.spawn, .forkserver, .fork] }

func resolvedDefaultStartMethod() -> StartMethod { startMethod() ?? .spawn }
