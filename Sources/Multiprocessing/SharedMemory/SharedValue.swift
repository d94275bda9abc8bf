/// One trivially copyable value in shared memory, without a lock: Python's `RawValue`.
///
/// Create it before starting children and hand it to them in their task, or send it over a
/// ``Connection``: every holder reads and writes the same memory (any start method). Plain reads and
/// writes of ``value`` are not synchronized; integers also have atomic ``load()``, ``store(_:)``,
/// ``add(_:)`` and ``compareExchange(expected:desired:)``.
///
/// ```swift
/// let hits = try RawSharedValue<Int>(0)
/// hits.add(1)            // atomic, in any process
/// ```
public final class RawSharedValue<Element: BitwiseCopyable>: @unchecked Sendable, Codable {
    @usableFromInline let storage: SharedElements<Element>

    /// A new shared value holding `initial`.
    /// - Throws: ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public init(_ initial: Element) throws {
        storage = try SharedElements(count: 1) { $0.initialize(repeating: initial) }
    }

    /// The value (a plain, unsynchronized read or write of shared memory).
    @inlinable
    public var value: Element {
        get { storage.base.pointee }
        set { storage.base.pointee = newValue }
    }

    /// Runs `body` with the shared memory itself; the pointer is valid only inside `body`.
    @inlinable
    public func withUnsafeMutablePointer<R, E: Error>(_ body: (UnsafeMutablePointer<Element>) throws(E) -> R) throws(E) -> R {
        try withExtendedLifetime(storage) { () throws(E) -> R in try body(storage.base) }
    }

    /// Encodes the value for a child's task or a ``Connection/send(_:)-70itn`` message.
    /// - Throws: ``MultiprocessingError/Code/transport`` outside a task or message.
    public func encode(to encoder: any Encoder) throws { try storage.encode(to: encoder) }

    /// Decodes a value sent by another process: the same memory, shared.
    /// - Throws: ``MultiprocessingError/Code/transport`` when the memory is missing or of another type.
    public init(from decoder: any Decoder) throws { storage = try SharedElements(from: decoder) }
}

extension RawSharedValue where Element: FixedWidthInteger {
    /// Reads the value atomically.
    @inlinable public func load() -> Element { SharedAtomic.load(storage.base) }
    /// Writes the value atomically.
    @inlinable public func store(_ newValue: Element) { SharedAtomic.store(newValue, storage.base) }
    /// Adds `delta` atomically (wrapping on overflow); returns the new value.
    @inlinable @discardableResult
    public func add(_ delta: Element) -> Element { SharedAtomic.add(delta, storage.base) }
    /// Replaces the value with `desired` atomically if it equals `expected`; returns whether it did
    /// and the value it found.
    @inlinable @discardableResult
    public func compareExchange(expected: Element, desired: Element) -> (exchanged: Bool, original: Element) {
        SharedAtomic.compareExchange(expected, desired, storage.base)
    }
}

/// One trivially copyable value in shared memory, guarded by a process-shared lock: Python's `Value`.
///
/// Reading and writing ``value`` take the lock, as in Python; `withLock` (blocking or `async`) holds it for a
/// read-modify-write. The lock is a new ``ProcessRLock`` unless one is given (share one lock among
/// several values by passing it to each), and ``lock`` reaches it. Integers also have lock-free
/// atomic operations (``load()``, ``add(_:)``...), which do not take the lock.
///
/// ```swift
/// let total = try SharedValue<Double>(0)
/// try total.withLock { $0 += 2.5 }      // in any process that received `total`
/// ```
public final class SharedValue<Element: BitwiseCopyable>: @unchecked Sendable, Codable {
    /// The value without its lock (Python's `get_obj()`).
    public let raw: RawSharedValue<Element>
    private let box: SharedLockBox

    /// A new shared value holding `initial`, guarded by `lock` (a new ``ProcessRLock`` when nil).
    /// - Throws: ``MultiprocessingError/Code/system`` when the shared memory or lock cannot be created.
    public init(_ initial: Element, lock: (any ProcessLocking & Codable)? = nil) throws {
        raw = try RawSharedValue(initial)
        box = SharedLockBox(try lock ?? ProcessRLock())
    }

    /// The lock that guards the value (Python's `get_lock()`).
    public var lock: any ProcessLocking & Codable { box.lock }

    /// The value, read or written while holding the lock.
    public var value: Element {
        get { lock.withLock { raw.value } }
        set { lock.withLock { raw.value = newValue } }
    }

    /// Runs `body` on the value while holding the lock; the change is visible to every process.
    public func withLock<R, E: Error>(_ body: (inout Element) throws(E) -> R) throws(E) -> R {
        try lock.withLock { () throws(E) -> R in try raw.withUnsafeMutablePointer { (p) throws(E) -> R in try body(&p.pointee) } }
    }

    /// Runs `body` on the value while holding the lock, waiting for the lock on a thread of its own
    /// (body included, as a ``ProcessRLock`` belongs to the thread that took it), so no Swift
    /// concurrency thread is blocked.
    /// - Throws: ``MultiprocessingError/Code/system`` when no thread can be started, or what `body` throws.
    public func withLock<R: Sendable>(_ body: @escaping @Sendable (inout Element) throws -> R) async throws -> R {
        try await withBlockingThread { try self.withLock(body) }
    }

    /// Encodes the value and its lock for a child's task or a ``Connection/send(_:)-70itn`` message.
    /// - Throws: ``MultiprocessingError/Code/transport`` outside a task or message.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        try container.encode(raw)
        try container.encode(box)
    }

    /// Decodes a value sent by another process: the same memory and the same lock.
    /// - Throws: ``MultiprocessingError/Code/transport`` when the memory or lock is missing or of another type.
    public init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        raw = try container.decode(RawSharedValue<Element>.self)
        box = try container.decode(SharedLockBox.self)
    }
}

extension SharedValue where Element: FixedWidthInteger {
    /// Reads the value atomically, without the lock.
    @inlinable public func load() -> Element { raw.load() }
    /// Writes the value atomically, without the lock.
    @inlinable public func store(_ newValue: Element) { raw.store(newValue) }
    /// Adds `delta` atomically (wrapping on overflow), without the lock; returns the new value.
    @inlinable @discardableResult
    public func add(_ delta: Element) -> Element { raw.add(delta) }
    /// Replaces the value with `desired` atomically if it equals `expected`, without the lock;
    /// returns whether it did and the value it found.
    @inlinable @discardableResult
    public func compareExchange(expected: Element, desired: Element) -> (exchanged: Bool, original: Element) {
        raw.compareExchange(expected: expected, desired: desired)
    }
}
