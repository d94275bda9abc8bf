/// A fixed number of trivially copyable values in shared memory, without a lock: Python's `RawArray`.
///
/// A random-access, mutable collection whose elements every holder shares: create it before starting
/// children and hand it to them in their task (any start method), or send it over a ``Connection``.
/// Element access is unsynchronized; integer elements also have atomic operations.
/// As with Swift's `Array`, an index out of range is a programming error and stops the program.
///
/// ```swift
/// let squares = try RawSharedArray<Int>(repeating: 0, count: 100)
/// // in a child: for i in squares.indices { squares[i] = i * i }
/// ```
public final class RawSharedArray<Element: BitwiseCopyable>: RandomAccessCollection, MutableCollection,
    @unchecked Sendable, Codable
{
    @usableFromInline let storage: SharedElements<Element>

    /// A new shared array of `count` copies of `repeatedValue`.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a negative or too large count;
    ///   ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public init(repeating repeatedValue: Element, count: Int) throws {
        storage = try SharedElements(count: count) { buffer in
            // The memory starts zero-filled: writing zeros would only touch every page for nothing.
            let isZero = withUnsafeBytes(of: repeatedValue) { $0.allSatisfy { $0 == 0 } }
            if !isZero { buffer.initialize(repeating: repeatedValue) }
        }
    }

    /// A new shared array holding `elements`.
    /// - Throws: ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public init(_ elements: some Collection<Element>) throws {
        storage = try SharedElements(count: elements.count) { _ = $0.initialize(from: elements) }
    }

    /// The position of the first element (always 0).
    @inlinable public var startIndex: Int { 0 }
    /// The position after the last element (the count).
    @inlinable public var endIndex: Int { storage.count }

    /// The element at `position` (an unsynchronized read or write of shared memory).
    @inlinable
    public subscript(position: Int) -> Element {
        get {
            precondition(position >= 0 && position < storage.count, "RawSharedArray index \(position) out of range")
            return storage.base[position]
        }
        set {
            precondition(position >= 0 && position < storage.count, "RawSharedArray index \(position) out of range")
            storage.base[position] = newValue
        }
    }

    /// Runs `body` with the shared memory itself, for bulk reads and writes; the pointer is valid only
    /// inside `body`.
    @inlinable
    public func withUnsafeMutableBufferPointer<R, E: Error>(_ body: (UnsafeMutableBufferPointer<Element>) throws(E) -> R) throws(E) -> R {
        try withExtendedLifetime(storage) { () throws(E) -> R in try body(storage.buffer) }
    }

    /// Encodes the array for a child's task or a ``Connection/send(_:)-70itn`` message.
    /// - Throws: ``MultiprocessingError/Code/transport`` outside a task or message.
    public func encode(to encoder: any Encoder) throws { try storage.encode(to: encoder) }

    /// Decodes an array sent by another process: the same memory, shared.
    /// - Throws: ``MultiprocessingError/Code/transport`` when the memory is missing or of another type or length.
    public init(from decoder: any Decoder) throws { storage = try SharedElements(from: decoder) }

    @usableFromInline
    func address(_ index: Int) -> UnsafeMutablePointer<Element> {
        precondition(index >= 0 && index < storage.count, "shared array index \(index) out of range")
        return storage.base + index
    }
}

extension RawSharedArray where Element: FixedWidthInteger {
    /// Reads element `index` atomically.
    @inlinable public func load(at index: Int) -> Element { SharedAtomic.load(address(index)) }
    /// Writes element `index` atomically.
    @inlinable public func store(_ newValue: Element, at index: Int) { SharedAtomic.store(newValue, address(index)) }
    /// Adds `delta` to element `index` atomically (wrapping on overflow); returns the new value.
    @inlinable @discardableResult
    public func add(_ delta: Element, at index: Int) -> Element { SharedAtomic.add(delta, address(index)) }
    /// Replaces element `index` with `desired` atomically if it equals `expected`; returns whether it
    /// did and the value it found.
    @inlinable @discardableResult
    public func compareExchange(expected: Element, desired: Element, at index: Int) -> (exchanged: Bool, original: Element) {
        SharedAtomic.compareExchange(expected, desired, address(index))
    }
}

/// A fixed number of trivially copyable values in shared memory, guarded by a process-shared lock:
/// Python's `Array`.
///
/// Each element access takes the lock, as in Python; `withLock` (blocking or `async`) holds it for a bulk read or
/// update. The lock is a new ``ProcessRLock`` unless one is given, and ``lock`` reaches it; ``raw``
/// is the array without the lock (Python's `get_obj()`).
///
/// ```swift
/// let totals = try SharedArray<Double>(repeating: 0, count: 4)
/// try totals.withLock { buffer in for i in buffer.indices { buffer[i] += 1 } }
/// ```
public final class SharedArray<Element: BitwiseCopyable>: RandomAccessCollection, MutableCollection,
    @unchecked Sendable, Codable
{
    /// The array without its lock (Python's `get_obj()`).
    public let raw: RawSharedArray<Element>
    private let box: SharedLockBox

    /// A new shared array of `count` copies of `repeatedValue`, guarded by `lock` (a new
    /// ``ProcessRLock`` when nil).
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a negative or too large count;
    ///   ``MultiprocessingError/Code/system`` when the shared memory or lock cannot be created.
    public init(repeating repeatedValue: Element, count: Int, lock: (any ProcessLocking & Codable)? = nil) throws {
        raw = try RawSharedArray(repeating: repeatedValue, count: count)
        box = SharedLockBox(try lock ?? ProcessRLock())
    }

    /// A new shared array holding `elements`, guarded by `lock` (a new ``ProcessRLock`` when nil).
    /// - Throws: ``MultiprocessingError/Code/system`` when the shared memory or lock cannot be created.
    public init(_ elements: some Collection<Element>, lock: (any ProcessLocking & Codable)? = nil) throws {
        raw = try RawSharedArray(elements)
        box = SharedLockBox(try lock ?? ProcessRLock())
    }

    /// The lock that guards the array (Python's `get_lock()`).
    public var lock: any ProcessLocking & Codable { box.lock }

    /// The position of the first element (always 0).
    public var startIndex: Int { 0 }
    /// The position after the last element (the count).
    public var endIndex: Int { raw.endIndex }

    /// The element at `position`, read or written while holding the lock.
    public subscript(position: Int) -> Element {
        get { lock.withLock { raw[position] } }
        set { lock.withLock { raw[position] = newValue } }
    }

    /// Runs `body` on the elements while holding the lock; changes are visible to every process.
    /// The pointer is valid only inside `body`.
    public func withLock<R, E: Error>(_ body: (UnsafeMutableBufferPointer<Element>) throws(E) -> R) throws(E) -> R {
        try lock.withLock { () throws(E) -> R in try raw.withUnsafeMutableBufferPointer(body) }
    }

    /// Runs `body` on the elements while holding the lock, waiting for the lock on a thread of its own
    /// (body included, as a ``ProcessRLock`` belongs to the thread that took it), so no Swift
    /// concurrency thread is blocked. The pointer is valid only inside `body`.
    /// - Throws: ``MultiprocessingError/Code/system`` when no thread can be started, or what `body` throws.
    public func withLock<R: Sendable>(_ body: @escaping @Sendable (UnsafeMutableBufferPointer<Element>) throws -> R) async throws -> R {
        try await withBlockingThread { try self.withLock(body) }
    }

    /// Encodes the array and its lock for a child's task or a ``Connection/send(_:)-70itn`` message.
    /// - Throws: ``MultiprocessingError/Code/transport`` outside a task or message.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        try container.encode(raw)
        try container.encode(box)
    }

    /// Decodes an array sent by another process: the same memory and the same lock.
    /// - Throws: ``MultiprocessingError/Code/transport`` when the memory or lock is missing or of another type.
    public init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        raw = try container.decode(RawSharedArray<Element>.self)
        box = try container.decode(SharedLockBox.self)
    }
}

extension SharedArray where Element: FixedWidthInteger {
    /// Reads element `index` atomically, without the lock.
    @inlinable public func load(at index: Int) -> Element { raw.load(at: index) }
    /// Writes element `index` atomically, without the lock.
    @inlinable public func store(_ newValue: Element, at index: Int) { raw.store(newValue, at: index) }
    /// Adds `delta` to element `index` atomically (wrapping on overflow), without the lock; returns the new value.
    @inlinable @discardableResult
    public func add(_ delta: Element, at index: Int) -> Element { raw.add(delta, at: index) }
    /// Replaces element `index` with `desired` atomically if it equals `expected`, without the lock;
    /// returns whether it did and the value it found.
    @inlinable @discardableResult
    public func compareExchange(expected: Element, desired: Element, at index: Int) -> (exchanged: Bool, original: Element) {
        raw.compareExchange(expected: expected, desired: desired, at: index)
    }
}
