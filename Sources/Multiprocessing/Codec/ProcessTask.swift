/// Work that runs in a child process: Python's `Process(target=...)` or a `Process` subclass's `run()`.
///
/// Declare a `Codable` type whose stored properties are the arguments, and put the work in ``run()``.
/// Under the spawn and forkserver start methods the value is encoded, sent to the child, decoded there
/// and run; connections, locks and shared memory among its properties arrive open. The child finds
/// the type by its mangled name, so the type must be declared at file scope or nested in another
/// type (internal or public), not `private`/`fileprivate` and not inside a function.
///
/// ```swift
/// struct Piao: ProcessTask {
///     let name: String
///     func run() throws { print("\(name) piaoing") }
/// }
/// let child = ChildProcess(Piao(name: "User1"))
/// try child.start()
/// try child.join()
/// ```
///
/// Returning from ``run()`` ends the child with exit code 0; throwing writes the error to the child's
/// standard error and ends it with exit code 1; calling `exit(n)` ends it with `n`.
public protocol ProcessTask: Codable, Sendable {
    /// The work, run in the child process.
    func run() throws
}

/// Work that runs in a child process and may `await`: an async ``ProcessTask``.
///
/// The child runs ``run()`` on the Swift concurrency runtime and ends when it returns, under the spawn
/// and forkserver start methods: every job the program sends to the global executor runs on the
/// child's main thread, and `Task.sleep` works. Blocking calls inside ``run()`` block the child's other
/// tasks; use their `async` forms. The main actor does not run in the child (its main thread runs
/// the task, and nothing drains the main queue): do not `await` `@MainActor` code there. The fork method
/// refuses async tasks: the runtime times `Task.sleep` on Dispatch's threads, which a forked child of
/// a threaded parent does not have, so the first sleep would never end.
///
/// ```swift
/// struct Fetch: AsyncProcessTask {
///     let reply: Connection
///     func run() async throws {
///         try await Task.sleep(for: .milliseconds(10))
///         try await reply.send("done")
///     }
/// }
/// ```
///
/// A separate protocol (rather than making ``ProcessTask/run()`` `async`) keeps a synchronous task's
/// child free of any concurrency runtime set-up. Returning ends the child with exit code 0, throwing
/// with exit code 1 (the error reaches the parent as ``ChildProcess/failure``).
public protocol AsyncProcessTask: Codable, Sendable {
    /// The work, run in the child process.
    func run() async throws
}

/// A task (a ``ProcessTask`` or an ``AsyncProcessTask``) together with the name the child resolves its
/// type by.
///
/// It lives with the codec, below the process layer, because both a child's work and a barrier's
/// action travel in it.
struct TaskEnvelope: Codable, @unchecked Sendable {
    let task: any Codable & Sendable
    /// The task as the protocol it runs by, when it is known without a cast (a decoded task).
    private let known: Known

    /// Not an optional ``Runnable``: the optional's type would be instantiated at run time.
    private enum Known {
        case unknown
        case known(Runnable)
    }

    /// A task as the protocol it runs by.
    enum Runnable {
        case sync(any ProcessTask)
        case async(any AsyncProcessTask)
    }

    init(_ task: any Codable & Sendable) {
        self.task = task
        known = .unknown
    }

    /// The task as a ``ProcessTask`` or an ``AsyncProcessTask``. A decoded task is known to be one of
    /// them: it is not cast again, since a cast from an existential costs a fresh child a lookup of the
    /// conformance. Any other is cast, and must be one of them.
    var runnable: Runnable {
        if case .known(let runnable) = known { return runnable }
        if let task = task as? any ProcessTask { return .sync(task) }
        return .async(task as! any AsyncProcessTask)
    }

    /// Types resolved by name and names checked for types, kept for the process's life: resolving a
    /// mangled name demangles it each time, and a forkserver child inherits the server's entries, so
    /// it starts with its task type's lookup done. Reset in a forked child (another thread of the parent
    /// may have held the lock at the fork). Lists rather than dictionaries: a program names few task
    /// types, and a dictionary's type costs a fresh child a scan of the program's conformances (its key's
    /// `Hashable`) when the cache is first touched.
    private static let resolved = ForkSafeMutex<[ResolvedType]>([])

    private struct ResolvedType {
        let name: String
        let type: any Any.Type
    }

    /// The type named `name` (a mangled name), as `_typeByName` finds it, remembered for later calls.
    static func resolveType(named name: String) -> (any Any.Type)? {
        if let type = resolved.withLock({ $0.first { $0.name == name }?.type }) { return type }
        guard let type = _typeByName(name) else { return nil }
        resolved.withLock { $0.append(ResolvedType(name: name, type: type)) }
        return type
    }

    /// In a forked child: the lock may have been held by a thread that does not exist here.
    static func forgetLockAfterFork() {
        resolved.resetAfterFork { _ in }
    }

    /// The mangled name of `type`, or an error saying how to make the type reachable from a child.
    static func typeName(of type: any Any.Type) throws -> String {
        if let name = resolved.withLock({ $0.first { $0.type == type }?.name }) { return name }
        return try checkedTypeName(of: type)
    }

    private static func checkedTypeName(of type: any Any.Type) throws -> String {
        guard let name = _mangledTypeName(type) else {
            throw MultiprocessingError(.invalidArgument, "\(type) has no mangled name, so a child process cannot find it")
        }
        // Private, fileprivate and function-local types carry a process-specific address in their
        // mangled name (e.g. `$55c0a07038d4`) that means nothing in another process.
        if name.contains("$") {
            throw MultiprocessingError(
                .invalidArgument,
                "\(type) is private, fileprivate or declared inside a function, so a child process cannot find it; "
                    + "declare it at file scope (internal or public)")
        }
        guard let resolved = Self.resolveType(named: name), resolved == type else {
            throw MultiprocessingError(
                .invalidArgument,
                "\(type) cannot be found by name (\(name)); declare it at file scope (internal or public)")
        }
        return name
    }

    // A list of the type's name and the value, not a keyed container: a spawned child decodes its task
    // first thing, and the first use of a keyed container type costs a scan of every protocol conformance
    // of the program.
    func encode(to encoder: any Encoder) throws {
        var list = encoder.unkeyedContainer()
        try list.encode(Self.typeName(of: type(of: task)))
        try task.encode(to: list.superEncoder())
    }

    init(from decoder: any Decoder) throws {
        var list = try decoder.unkeyedContainer()
        let name = try list.decode(String.self)
        let decoder = try list.superDecoder()
        let named = Self.resolveType(named: name)
        if let type = named as? any ProcessTask.Type {
            let decoded = try type.init(from: decoder)
            task = decoded
            known = .known(.sync(decoded))
        } else if let type = named as? any AsyncProcessTask.Type {
            let decoded = try type.init(from: decoder)
            task = decoded
            known = .known(.async(decoded))
        } else {
            throw MultiprocessingError(.transport, "no task type named \(name) in this program")
        }
    }
}
