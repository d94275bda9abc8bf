import Distributed

/// A first-in first-out queue hosted by a manager (Python's `manager.Queue()`), typed by its element.
///
/// ``put(_:timeout:)`` waits while the queue is full and ``get(timeout:)`` while it is empty, without
/// holding the manager: other calls go on meanwhile. A caller whose process ends while it waits in
/// ``get(timeout:)`` takes nothing: the element stays for the next caller.
public distributed actor SharedQueue<Element: Codable & Sendable>: SharedObject {
    private var elements: [Element] = []
    private var head = 0
    private var capacity = 0
    private let changed = ChangeSignal()

    /// Makes an unbounded queue in its manager; use ``SharedObjectManager/makeQueue(of:maxSize:)``.
    public init(actorSystem: ManagerActorSystem) {
        self.actorSystem = actorSystem
    }

    /// Sets the most elements the queue holds; 0 or less means no limit.
    distributed func setMaxSize(_ maxSize: Int) { capacity = max(maxSize, 0) }

    private var count: Int { elements.count - head }
    private var isFull: Bool { capacity > 0 && count >= capacity }

    /// Appends `element`, waiting up to `timeout` for room (nil waits without limit, zero does not wait).
    ///
    /// - Throws: ``MultiprocessingError/Code/full`` when there was no room in time.
    public distributed func put(_ element: Element, timeout: Duration? = nil) async throws {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while isFull {
            guard await changed.wait(until: deadline) else { break }
        }
        try Task.checkCancellation()
        guard !isFull else { throw MultiprocessingError(.full, "the queue is full").with(timeout: timeout) }
        elements.append(element)
        changed.notifyAll()
    }

    /// Appends every element of `batch` in one call, waiting for room as ``put(_:timeout:)`` does for
    /// each.
    ///
    /// - Throws: ``MultiprocessingError/Code/full`` when there was no room in time; the elements before
    ///   that one were added.
    public distributed func put(contentsOf batch: [Element], timeout: Duration? = nil) async throws {
        for element in batch { try await put(element, timeout: timeout) }
    }

    /// Removes and returns the first element, waiting up to `timeout` for one (nil waits without limit,
    /// zero does not wait).
    ///
    /// - Throws: ``MultiprocessingError/Code/empty`` when none came in time.
    public distributed func get(timeout: Duration? = nil) async throws -> Element {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while count == 0 {
            guard await changed.wait(until: deadline) else { break }
        }
        try Task.checkCancellation()
        guard count > 0 else { throw MultiprocessingError(.empty, "the queue is empty").with(timeout: timeout) }
        let element = elements[head]
        head += 1
        if head > 64 && head * 2 > elements.count {
            elements.removeFirst(head)
            head = 0
        }
        changed.notifyAll()
        return element
    }

    /// How many elements the queue holds (Python's `qsize()`).
    public distributed func size() -> Int { count }

    /// Whether the queue holds nothing.
    public distributed func isEmpty() -> Bool { count == 0 }

    /// Whether the queue holds its maximum.
    public distributed func isAtCapacity() -> Bool { isFull }
}

extension SharedObjectManager {
    /// Makes a ``SharedQueue`` in the manager (Python's `manager.Queue(maxsize)`).
    ///
    /// - Parameters:
    ///   - type: the element type.
    ///   - maxSize: the most elements it holds; 0 means no limit.
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable``.
    public func makeQueue<Element: Codable & Sendable>(of type: Element.Type = Element.self, maxSize: Int = 0) async throws
        -> SharedQueue<Element>
    {
        let queue = try await make(SharedQueue<Element>.self)
        if maxSize > 0 { try await queue.setMaxSize(maxSize) }
        return queue
    }
}
