import Distributed

/// A list hosted by a manager (Python's `manager.list()`), typed by its element.
///
/// Indexes out of range throw ``MultiprocessingError/Code/invalidArgument`` (Python's `IndexError`).
public distributed actor SharedList<Element: Codable & Sendable>: SharedObject {
    private var storage: [Element] = []

    /// Makes an empty list in its manager; use ``SharedObjectManager/makeList(_:)``.
    public init(actorSystem: ManagerActorSystem) {
        self.actorSystem = actorSystem
    }

    private func check(_ index: Int, allowingEnd: Bool = false) throws {
        guard index >= 0, index < storage.count || (allowingEnd && index == storage.count) else {
            throw MultiprocessingError(.invalidArgument, "list index \(index) out of range (count \(storage.count))")
        }
    }

    /// Appends `element` (Python's `append`).
    public distributed func append(_ element: Element) { storage.append(element) }

    /// Appends every element of `elements` in one call (Python's `extend`).
    public distributed func append(contentsOf elements: [Element]) { storage.append(contentsOf: elements) }

    /// The element at `index` (Python's `l[i]`).
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for an index out of range.
    public distributed func element(at index: Int) throws -> Element {
        try check(index)
        return storage[index]
    }

    /// Replaces the element at `index` (Python's `l[i] = x`).
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for an index out of range.
    public distributed func setElement(_ element: Element, at index: Int) throws {
        try check(index)
        storage[index] = element
    }

    /// Inserts `element` before `index` (`index` may be the count).
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for an index out of range.
    public distributed func insert(_ element: Element, at index: Int) throws {
        try check(index, allowingEnd: true)
        storage.insert(element, at: index)
    }

    /// Removes and returns the element at `index` (Python's `pop(i)`).
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for an index out of range.
    public distributed func remove(at index: Int) throws -> Element {
        try check(index)
        return storage.remove(at: index)
    }

    /// Removes and returns the last element, or nil when empty (Python's `pop()`).
    public distributed func popLast() -> Element? { storage.popLast() }

    /// How many elements there are (Python's `len(l)`).
    public distributed func count() -> Int { storage.count }

    /// A copy of the whole list in one call (Python's `l[:]`).
    public distributed func snapshot() -> [Element] { storage }

    /// Removes every element (Python's `clear()`).
    public distributed func removeAll() { storage.removeAll() }
}

extension SharedObjectManager {
    /// Makes a ``SharedList`` in the manager holding `initial` (Python's `manager.list(initial)`).
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable``; ``MultiprocessingError/Code/transport``
    ///   when `initial` cannot be encoded.
    public func makeList<Element: Codable & Sendable>(_ initial: [Element] = []) async throws -> SharedList<Element> {
        let list = try await make(SharedList<Element>.self)
        if !initial.isEmpty { try await list.append(contentsOf: initial) }
        return list
    }
}
