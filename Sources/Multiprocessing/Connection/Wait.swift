#if canImport(Glibc)
import Glibc
#endif

/// Something ``wait(_:timeout:)-91uhk`` can wait on: an object with a descriptor that becomes
/// readable when the object is ready (a ``Connection`` with a message, a ``Listener`` with a client, a
/// child process's sentinel once it has ended).
public protocol Waitable {
    /// The descriptor to wait on for readability.
    var waitDescriptor: Int32 { get throws }
    /// Whether the object is ready without waiting, for example because it already holds received
    /// data. The default is false.
    var isReadyWithoutWaiting: Bool { get }
}

extension Waitable {
    /// False: readiness is decided by the descriptor alone.
    public var isReadyWithoutWaiting: Bool { false }
}

extension Connection: Waitable {
    /// The connection's descriptor (see ``fileno``).
    public var waitDescriptor: Int32 { get throws { try fileno } }
    /// Whether received bytes are already buffered, so that a receive starts without waiting.
    public var isReadyWithoutWaiting: Bool { hasBufferedBytes }
}

extension Int32: Waitable {
    /// The descriptor itself: a raw descriptor or a process sentinel can be waited on directly.
    public var waitDescriptor: Int32 { self }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes, and returns the ready ones in
/// their original order (Python's `multiprocessing.connection.wait`).
///
/// A connection is ready when a message or end of file can be read, a listener when a client waits, a
/// sentinel when its process has ended. A zero or negative `timeout` checks and returns at once; nil
/// waits without limit. An empty result means the timeout passed. Signals do not cut the wait short.
///
/// - Throws: ``MultiprocessingError/Code/closed`` when an object is closed,
///   ``MultiprocessingError/Code/invalidArgument`` when a descriptor is not open.
public func wait<Object: Waitable>(_ objects: [Object], timeout: Duration? = nil) throws -> [Object] {
    try readyIndexes(objects.map { $0 as any Waitable }, timeout: timeout).map { objects[$0] }
}

/// Waits on objects of different kinds at once, for example connections and process sentinels, as
/// ``wait(_:timeout:)-91uhk`` does. (The generic form is preferred when all objects have one
/// type, so that the result keeps it.)
@_disfavoredOverload
public func wait(_ objects: [any Waitable], timeout: Duration? = nil) throws -> [any Waitable] {
    try readyIndexes(objects, timeout: timeout).map { objects[$0] }
}

/// Waits as ``wait(_:timeout:)-91uhk`` does, on the package's event loop, so that no thread is
/// held while it waits. Cancellation ends the wait with `CancellationError`; nothing is consumed.
public func wait<Object: Waitable & Sendable>(_ objects: [Object], timeout: Duration? = nil) async throws -> [Object] {
    try await awaitReadyIndexes(objects.map { $0 as any Waitable }, timeout: timeout).map { objects[$0] }
}

/// Waits on objects of different kinds at once, on the package's event loop.
@_disfavoredOverload
public func wait(_ objects: [any Waitable & Sendable], timeout: Duration? = nil) async throws -> [any Waitable & Sendable] {
    try await awaitReadyIndexes(objects.map { $0 as any Waitable }, timeout: timeout).map { objects[$0] }
}

/// The indexes of the ready objects, waiting on the event loop.
func awaitReadyIndexes(_ objects: [any Waitable], timeout: Duration?) async throws -> [Int] {
    let ready = try readyIndexes(objects, timeout: .zero)
    if !ready.isEmpty { return ready }
    let descriptors = try objects.map { try $0.waitDescriptor }
    _ = try await EventLoop.shared.wait(for: descriptors.map { ($0, .readable) }, until: .after(timeout))
    return try readyIndexes(objects, timeout: .zero)
}

/// The indexes of the ready objects: those that hold data already, or else those whose descriptors
/// become readable before the timeout.
func readyIndexes(_ objects: [any Waitable], timeout: Duration?) throws -> [Int] {
    let descriptors = try objects.map { try $0.waitDescriptor }
    let buffered = objects.indices.filter { objects[$0].isReadyWithoutWaiting }
    if !buffered.isEmpty {
        // Report the others that are ready too, without waiting for them.
        let others = try Syscall.pollReadable(descriptors, until: .now)
        return Array(Set(buffered + others)).sorted()
    }
    return try Syscall.pollReadable(descriptors, until: .after(timeout))
}
