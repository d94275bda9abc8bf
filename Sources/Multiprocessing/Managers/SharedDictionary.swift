import Distributed

/// A dictionary hosted by a manager (Python's `manager.dict()`), typed by its keys and values.
///
/// Each method is one round trip; ``update(_:)``, ``snapshot()`` and ``updateAndSnapshot(_:)`` move
/// many entries in one. Values may be references to other shared objects (a dictionary of queues).
public distributed actor SharedDictionary<Key: Codable & Hashable & Sendable, Value: Codable & Sendable>: SharedObject {
    private var storage: [Key: Value] = [:]

    /// Makes an empty dictionary in its manager; use ``SharedObjectManager/makeDictionary(_:)-([Key:Value].)``.
    public init(actorSystem: ManagerActorSystem) {
        self.actorSystem = actorSystem
    }

    /// The value for `key`, or nil (Python's `d.get(key)`).
    public distributed func value(forKey key: Key) -> Value? { storage[key] }

    /// Sets the value for `key` (Python's `d[key] = value`).
    public distributed func setValue(_ value: Value, forKey key: Key) { storage[key] = value }

    /// Removes `key` and returns its value, or nil when it was absent (Python's `d.pop(key, None)`).
    public distributed func removeValue(forKey key: Key) -> Value? { storage.removeValue(forKey: key) }

    /// Sets every entry of `entries` in one call (Python's `d.update(entries)`).
    ///
    /// The entries travel as an array of keys and an array of values, which the package's coder
    /// writes and reads in one piece for integer and floating-point types (a `[Key: Value]` argument
    /// goes through a keyed container, entry by entry).
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable`` when the manager cannot be reached;
    ///   ``MultiprocessingError/Code/transport`` when an entry cannot be encoded.
    public nonisolated func update(_ entries: [Key: Value]) async throws {
        try await merge(keys: Array(entries.keys), values: Array(entries.values))
    }

    /// Sets `values[i]` for `keys[i]`; the two arrays are as long as each other.
    distributed func merge(keys: [Key], values: [Value]) throws {
        guard keys.count == values.count else {
            throw MultiprocessingError(.transport, "an update carries \(keys.count) keys and \(values.count) values")
        }
        storage.reserveCapacity(storage.count + keys.count)
        for index in keys.indices { storage[keys[index]] = values[index] }
    }

    /// A copy of the whole dictionary in one call (Python's `d.copy()`).
    public distributed func snapshot() -> [Key: Value] { storage }

    /// Sets `entries` and returns a copy of the result, in one round trip.
    public distributed func updateAndSnapshot(_ entries: [Key: Value]) -> [Key: Value] {
        storage.merge(entries) { _, new in new }
        return storage
    }

    /// The values for `keys`, nil for those absent, in one call.
    public distributed func values(forKeys keys: [Key]) -> [Value?] { keys.map { storage[$0] } }

    /// The value for `key`, first setting it to `value` when absent (Python's `d.setdefault`).
    public distributed func value(forKey key: Key, insertingIfAbsent value: Value) -> Value {
        if let existing = storage[key] { return existing }
        storage[key] = value
        return value
    }

    /// Whether `key` has a value (Python's `key in d`).
    public distributed func contains(_ key: Key) -> Bool { storage[key] != nil }

    /// How many entries there are (Python's `len(d)`).
    public distributed func count() -> Int { storage.count }

    /// The keys, in no particular order.
    public distributed func keys() -> [Key] { Array(storage.keys) }

    /// Removes every entry (Python's `d.clear()`).
    public distributed func removeAll() { storage.removeAll() }
}

extension SharedObjectManager {
    /// Makes a ``SharedDictionary`` in the manager holding `initial` (Python's `manager.dict(initial)`).
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable``; ``MultiprocessingError/Code/transport``
    ///   when `initial` cannot be encoded.
    public func makeDictionary<Key: Codable & Hashable & Sendable, Value: Codable & Sendable>(_ initial: [Key: Value] = [:])
        async throws -> SharedDictionary<Key, Value>
    {
        let dictionary = try await make(SharedDictionary<Key, Value>.self)
        if !initial.isEmpty { try await dictionary.update(initial) }
        return dictionary
    }

    /// Makes an empty ``SharedDictionary`` with the given key and value types:
    /// `try await manager.makeDictionary([String: Int].self)`.
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable``.
    public func makeDictionary<Key: Codable & Hashable & Sendable, Value: Codable & Sendable>(_ type: [Key: Value].Type)
        async throws -> SharedDictionary<Key, Value>
    {
        try await make(SharedDictionary<Key, Value>.self)
    }
}
