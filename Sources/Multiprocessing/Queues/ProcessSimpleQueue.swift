/// An unbounded queue with only the essentials: Python's `multiprocessing.SimpleQueue`, typed.
///
/// Shared by processes exactly as ``ProcessQueue`` (same memory, same guarantees when a process dies),
/// without a bound, timeouts or no-wait forms: `put(_:)` never waits for room (until a backlog of
/// about 2 GiB; a put that finds a consumer slower than itself may pause up to 5 ms for it to catch
/// up, so that a steady stream reuses the same memory), `get()` waits as long as it takes.
public final class ProcessSimpleQueue<Element: Codable & Sendable>: @unchecked Sendable, Codable {
    private let queue: ProcessQueue<Element>

    /// A new, empty queue.
    /// - Throws: ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public init() throws { queue = try ProcessQueue(maxSize: 0) }

    /// Puts `item` at the end of the queue: Python's `put(obj)`.
    /// - Throws: ``MultiprocessingError/Code/closed`` after ``close()`` in this process;
    ///   ``MultiprocessingError/Code/transport`` when the value cannot be encoded;
    ///   ``MultiprocessingError/Code/invalidArgument`` when it encodes to more than 1 GiB.
    public func put(_ item: Element) throws { try queue.put(item) }

    /// Puts `item` without blocking a thread.
    /// - Throws: `CancellationError` when the task is cancelled while waiting for room; the errors of `put(_:)`.
    public func put(_ item: Element) async throws { try await queue.put(item) }

    /// Removes and returns the first item, waiting as long as it takes: Python's `get()`.
    /// - Throws: ``MultiprocessingError/Code/closed`` after ``close()`` in this process;
    ///   ``MultiprocessingError/Code/transport`` when the item does not decode as `Element`.
    public func get() throws -> Element { try queue.get() }

    /// Removes and returns the first item without blocking a thread.
    /// - Throws: `CancellationError` when the task is cancelled while waiting; the errors of `get()`.
    public func get() async throws -> Element { try await queue.get() }

    /// Whether the queue holds no item (Python's `empty()`); may be stale when read.
    public var isEmpty: Bool { queue.isEmpty }

    /// Says that this process will use the queue no more (Python's `close()`): later puts and gets
    /// through this object throw ``MultiprocessingError/Code/closed``.
    public func close() { queue.close() }

    /// Encodes the queue for a child's task or a ``Connection/send(_:)-70itn`` message.
    /// - Throws: ``MultiprocessingError/Code/transport`` outside a task or a connection message.
    public func encode(to encoder: any Encoder) throws { try queue.encode(to: encoder) }

    /// Decodes a queue sent by another process: the same queue, shared.
    /// - Throws: ``MultiprocessingError/Code/transport`` when the message does not carry a queue.
    public init(from decoder: any Decoder) throws { queue = try ProcessQueue(from: decoder) }
}
