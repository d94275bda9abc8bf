#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A queue of values shared by processes: Python's `multiprocessing.Queue`, typed.
///
/// Create it before starting children and hand it to them inside their task, under any start method
/// (a child may pass it on to its own children), or send it over a ``Connection``. Any number of
/// processes may put and get. Items are `Codable` values, encoded with ``BinaryEncoder``; a value that
/// holds a descriptor (a lock, a connection) cannot travel through a queue and its put fails.
///
/// ```swift
/// let queue = try ProcessQueue<Job>(maxSize: 100)
/// try queue.put(Job(id: 1))
/// let job = try queue.get(timeout: .seconds(5))
/// ```
///
/// The items live in shared memory: a put copies the encoded value there and returns, with no
/// background thread, so a child that puts and exits at once has delivered everything, and joining a
/// producer before reading all it put never deadlocks (Python's can): without a `maxSize`, a put waits
/// for a consumer only once 2 GiB are in the queue. Values of up to 1 GiB encoded
/// are carried; a put of a larger one throws ``MultiprocessingError/Code/invalidArgument``.
///
/// **Guarantees.** Items from one producer arrive in the order it put them. A value that cannot be
/// encoded fails its put with ``MultiprocessingError/Code/transport``, takes no room and leaves the
/// queue usable.
///
/// **When a process dies.** A producer killed during a put either published the whole item or
/// nothing: no reader ever sees part of a value, and the next producer takes its place within a few
/// milliseconds (100 ms at most). A consumer killed during a get loses at most that one item: a get
/// decodes the item in place and only then moves past it with one store, so a consumer killed before
/// that store (while waiting, reading or decoding) leaves the item for the next consumer, and one
/// killed after it held the decoded item, which is gone with it. Nothing else is lost.
///
/// **Waiting.** Blocking calls spin briefly, then sleep on a futex. The `async` forms wait on a small
/// shared set of threads, never one per call, and end promptly with `CancellationError` when their
/// task is cancelled (the item then was not put, or not taken).
public class ProcessQueue<Element: Codable & Sendable>: @unchecked Sendable, Codable, AsyncSequence {
    let ring: QueueRing
    private let closed = Atomic<Bool>(false)
    /// The coders of every put and get (kept, so that none is made per item).
    private let encoder = BinaryEncoder()
    private let decoder = BinaryDecoder()

    /// The largest `maxSize`.
    static var largestMaxSize: Int { 1 << 27 }

    /// A new queue holding at most `maxSize` items; 0 or less means no bound (Python's `Queue(maxsize=0)`).
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a `maxSize` above 134,217,728;
    ///   ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public init(maxSize: Int = 0) throws {
        guard maxSize <= Self.largestMaxSize else {
            throw MultiprocessingError(.invalidArgument, "queue maxSize must be at most \(Self.largestMaxSize), not \(maxSize)")
        }
        ring = QueueRing(try QueueMemory(maxSize: UInt32(Swift.max(0, maxSize))))
    }

    /// The bound given at creation; 0 for none.
    public var maxSize: Int { Int(ring.memory.maxSize) }

    /// The number of items in the queue (Python's `qsize()`). Others may change it at any moment.
    public var count: Int { ring.count }

    /// Whether the queue holds no item (Python's `empty()`); may be stale when read.
    public var isEmpty: Bool { ring.count == 0 }

    /// Whether the queue holds `maxSize` items (Python's `full()`); never for an unbounded queue.
    public var isFull: Bool { maxSize > 0 && ring.count >= maxSize }

    // MARK: Putting

    /// Puts `item` at the end of the queue: Python's `put(obj, block, timeout)`.
    ///
    /// - Parameters:
    ///   - item: the value to put.
    ///   - blocking: when false, throws ``MultiprocessingError/Code/full`` at once if there is no room
    ///     (the timeout is ignored).
    ///   - timeout: how long to wait for room at most; nil waits as long as it takes.
    /// - Throws: ``MultiprocessingError/Code/full`` when there was no room in time;
    ///   ``MultiprocessingError/Code/shutDown`` after ``shutdown(immediate:)``;
    ///   ``MultiprocessingError/Code/closed`` after ``close()`` in this process;
    ///   ``MultiprocessingError/Code/transport`` when the value cannot be encoded;
    ///   ``MultiprocessingError/Code/invalidArgument`` when it encodes to more than 1 GiB.
    public func put(_ item: Element, blocking: Bool = true, timeout: Duration? = nil) throws {
        try checkOpen(for: "put")
        // Copied into the ring straight from the encoder's buffer.
        let outcome = try encoder.withEncoding(of: item) { bytes in
            try Self.checkSize(bytes.count)
            // The deadline (a read of the clock) and the attempt only for a put that has to wait.
            if ring.putAtOnce(bytes) { return QueueRing.Status.done }
            let attempt = QueueRing.Attempt(blocking: blocking)
            defer { ring.abandonPut(attempt) }
            let deadline = Deadline.after(blocking ? timeout : nil)
            var index = 0
            while true {
                if let outcome = ring.putStep(bytes, attempt, until: deadline, index: index) { return outcome }
                if deadline.hasPassed { return QueueRing.Status.busy }
                index += 1
            }
        }
        try check(outcome)
    }

    /// Puts `item` without blocking a thread; see `put(_:blocking:timeout:)`.
    /// - Throws: `CancellationError` when the task is cancelled while waiting for room (the item was
    ///   not put); the errors of `put(_:blocking:timeout:)`; ``MultiprocessingError/Code/system``
    ///   when no thread could be started to wait on.
    public func put(_ item: Element, blocking: Bool = true, timeout: Duration? = nil) async throws {
        let payload = try encode(item)
        let attempt = QueueRing.Attempt(blocking: false, waitsNext: blocking)
        let first = payload.withUnsafeBytes { ring.putStep($0, attempt, until: .now, index: 1) }
        ring.abandonPut(attempt)
        if case .busy? = first, blocking {
            let attempt = QueueRing.Attempt(blocking: true)
            let ring = self.ring
            do {
                let outcome = try await WaitPool.shared.wait(until: .after(timeout), interrupt: { ring.interruptPut() }) { sliceEnd, index in
                    payload.withUnsafeBytes { ring.putStep($0, attempt, until: sliceEnd, index: index) }
                }
                ring.abandonPut(attempt)
                try check(outcome ?? .busy)
            } catch {
                ring.abandonPut(attempt)
                throw error
            }
            return
        }
        try check(first ?? .busy)
    }

    /// Puts `item` only if there is room now: Python's `put_nowait(obj)`.
    /// - Throws: ``MultiprocessingError/Code/full`` when there is no room; the other errors of
    ///   `put(_:blocking:timeout:)`.
    public func putNoWait(_ item: Element) throws { try put(item, blocking: false) }

    private func encode(_ item: Element) throws -> [UInt8] {
        try checkOpen(for: "put")
        let payload = try encoder.encode(item)
        try Self.checkSize(payload.count)
        return payload
    }

    private static func checkSize(_ count: Int) throws {
        guard QueueRing.recordSize(count) <= QueueRing.largestRecord else {
            throw MultiprocessingError(.invalidArgument, "a value of \(count) bytes is larger than a queue carries (1 GiB)")
        }
    }

    private func check(_ outcome: QueueRing.Status) throws {
        switch outcome {
        case .done: return
        case .busy: throw MultiprocessingError(.full, "the queue is full")
        case .shutDown: throw MultiprocessingError(.shutDown, "put on a queue that was shut down")
        }
    }

    // MARK: Getting

    /// Removes and returns the first item: Python's `get(block, timeout)`.
    ///
    /// - Parameters:
    ///   - blocking: when false, throws ``MultiprocessingError/Code/empty`` at once if there is no item
    ///     (the timeout is ignored).
    ///   - timeout: how long to wait for an item at most; nil waits as long as it takes.
    /// - Throws: ``MultiprocessingError/Code/empty`` when no item came in time;
    ///   ``MultiprocessingError/Code/shutDown`` when the queue is shut down and empty;
    ///   ``MultiprocessingError/Code/closed`` after ``close()`` in this process;
    ///   ``MultiprocessingError/Code/transport`` when the item does not decode as `Element` (it is
    ///   removed all the same).
    public func get(blocking: Bool = true, timeout: Duration? = nil) throws -> Element {
        try checkOpen(for: "get")
        // The deadline (a read of the clock) and the attempt only for a get that has to wait.
        return try ring.getAtOnce(read: { try decoder.decode(Element.self, from: $0) }) {
            try getWaiting(blocking: blocking, timeout: timeout)
        }
    }

    /// A get that found no item at once (or the consumer lock taken): `get(blocking:timeout:)`'s steps.
    private func getWaiting(blocking: Bool, timeout: Duration?) throws -> Element {
        let attempt = QueueRing.Attempt(blocking: blocking)
        let deadline = Deadline.after(blocking ? timeout : nil)
        // The step returns the item rather than setting an `Element?`: this code runs unspecialized,
        // where each use of `Element?` would look up its type metadata at run time.
        var index = 0
        while true {
            do {
                return try ring.getStep(attempt, until: deadline, index: index) { bytes in
                    try decoder.decode(Element.self, from: bytes)
                }
            } catch let end as QueueRing.StepEnd {
                switch end {
                case .busy: try check(got: .busy, nil)
                case .shutDown: try check(got: .shutDown, nil)
                case .again:
                    if deadline.hasPassed {
                        ring.abandonGet(attempt)
                        try check(got: .busy, nil)
                    }
                    index += 1
                }
            }
        }
    }

    /// Removes and returns the first item without blocking a thread; see `get(blocking:timeout:)`.
    /// - Throws: `CancellationError` when the task is cancelled while waiting (no item was taken);
    ///   the errors of `get(blocking:timeout:)`; ``MultiprocessingError/Code/system`` when no
    ///   thread could be started to wait on.
    public func get(blocking: Bool = true, timeout: Duration? = nil) async throws -> Element {
        try checkOpen()
        let box = Received()
        let first = ring.getStep(QueueRing.Attempt(blocking: false), until: .now, index: 1, consume: box.take)
        if case .busy? = first, blocking {
            let attempt = QueueRing.Attempt(blocking: true)
            let ring = self.ring
            do {
                let outcome = try await WaitPool.shared.wait(until: .after(timeout), interrupt: { ring.interruptGet() }) { sliceEnd, index in
                    ring.getStep(attempt, until: sliceEnd, index: index, consume: box.take)
                }
                ring.abandonGet(attempt)
                return try value(outcome ?? .busy, box.item, box.failure)
            } catch {
                ring.abandonGet(attempt)
                throw error
            }
        }
        return try value(first ?? .busy, box.item, box.failure)
    }

    /// What an async get's step decoded, handed from a pool thread to the task (one step at a time).
    private final class Received: @unchecked Sendable {
        var item: Element?
        var failure: (any Error)?
        @Sendable func take(_ bytes: UnsafeRawBufferPointer) {
            do { item = try ProcessQueue.decode(bytes) } catch { failure = error }
        }
    }

    /// Removes and returns the first item only if there is one now: Python's `get_nowait()`.
    /// - Throws: ``MultiprocessingError/Code/empty`` when there is none; the other errors of
    ///   `get(blocking:timeout:)`.
    public func getNoWait() throws -> Element { try get(blocking: false) }

    private static func decode(_ bytes: UnsafeRawBufferPointer) throws -> Element {
        try BinaryDecoder().decode(Element.self, from: bytes)
    }

    private func value(_ outcome: QueueRing.Status, _ item: Element?, _ failure: (any Error)?) throws -> Element {
        if case .done = outcome, let item { return item }
        try check(got: outcome, failure)
        preconditionFailure("a get that took no item did not throw")
    }

    /// Throws the error of a get that ended with `outcome` and has no item (`failure`: why its item
    /// did not decode).
    private func check(got outcome: QueueRing.Status, _ failure: (any Error)?) throws {
        switch outcome {
        case .done: throw failure ?? MultiprocessingError(.transport, "an item could not be decoded")
        case .busy: throw MultiprocessingError(.empty, "the queue is empty")
        case .shutDown: throw MultiprocessingError(.shutDown, "get on a queue that was shut down and is empty")
        }
    }

    @inline(__always)
    private func checkOpen(for call: StaticString = "get") throws {
        if closed.load(ordering: .relaxed) { throw Self.closedError(call) }
    }

    private static func closedError(_ call: StaticString) -> MultiprocessingError {
        MultiprocessingError(.closed, "\(call) on a closed queue")
    }

    // MARK: Ending

    /// Says that this process will use the queue no more (Python's `close()`): later puts and gets
    /// through this object throw ``MultiprocessingError/Code/closed``. Other processes, and items
    /// already put, are not affected; everything put is already in shared memory, so there is nothing
    /// to flush (Python's `join_thread()` has no counterpart).
    public func close() { closed.store(true, ordering: .relaxed) }

    /// Shuts the queue down for every process, as CPython 3.13's `Queue.shutdown(immediate)`: later and
    /// waiting puts throw ``MultiprocessingError/Code/shutDown``; gets return the items left, then throw it.
    /// With `immediate`, the items left are discarded instead, each counting as a finished task for
    /// `ProcessJoinableQueue.join(timeout:)`, so joiners return once the items already taken are
    /// marked done.
    public func shutdown(immediate: Bool = false) { ring.shutDown(immediate: immediate) }

    /// Whether ``shutdown(immediate:)`` was called, in any process.
    public var isShutDown: Bool { ring.isShutDown }

    // MARK: Async sequence

    /// Gets items one after another: `for try await item in queue`. The sequence ends when the queue
    /// is shut down and empty, and throws what `get(blocking:timeout:)` throws otherwise.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let queue: ProcessQueue<Element>

        /// The next item, waiting as long as it takes; nil once the queue is shut down and empty.
        /// - Throws: `CancellationError` when the task is cancelled while waiting; ``MultiprocessingError``
        ///   as `ProcessQueue/get(blocking:timeout:)` throws it.
        public mutating func next() async throws -> Element? {
            do { return try await queue.get() } catch let error as MultiprocessingError where error.code == .shutDown {
                return nil
            }
        }
    }

    /// An iterator over the items, for `for try await`.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(queue: self) }

    // MARK: Crossing a process boundary

    /// Encodes the queue for a child's task or a ``Connection/send(_:)-70itn`` message.
    /// - Throws: ``MultiprocessingError/Code/transport`` outside a task or a connection message.
    public func encode(to encoder: any Encoder) throws { try ring.memory.encode(to: encoder, as: "a ProcessQueue") }

    /// Decodes a queue sent by another process: the same queue, shared.
    /// - Throws: ``MultiprocessingError/Code/transport`` when the message does not carry a queue.
    public required init(from decoder: any Decoder) throws {
        ring = QueueRing(try QueueMemory(from: decoder, as: "a ProcessQueue"))
    }
}
