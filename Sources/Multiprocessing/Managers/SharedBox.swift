import Distributed

/// One value hosted by a manager (Python's `manager.Value(typecode, value)`), typed.
public distributed actor SharedBox<Value: Codable & Sendable>: SharedObject {
    private var stored: Value?

    /// Makes an empty box in its manager; use ``SharedObjectManager/makeBox(_:)``.
    public init(actorSystem: ManagerActorSystem) {
        self.actorSystem = actorSystem
    }

    /// The value (Python's `v.value`).
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when no value was ever set.
    public distributed func get() throws -> Value {
        guard let stored else { throw MultiprocessingError(.invalidState, "the box holds no value yet") }
        return stored
    }

    /// Replaces the value (Python's `v.value = x`).
    public distributed func set(_ value: Value) { stored = value }

    /// Replaces the value and returns the one before, in one call.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when no value was ever set.
    public distributed func exchange(_ value: Value) throws -> Value {
        guard let old = stored else { throw MultiprocessingError(.invalidState, "the box holds no value yet") }
        stored = value
        return old
    }
}

extension SharedBox where Value: AdditiveArithmetic {
    /// Adds `amount` and returns the new value, in one call (Python's `with v.get_lock(): v.value += n`).
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when no value was ever set.
    public distributed func add(_ amount: Value) throws -> Value {
        guard let old = stored else { throw MultiprocessingError(.invalidState, "the box holds no value yet") }
        stored = old + amount
        return old + amount
    }
}

extension SharedObjectManager {
    /// Makes a ``SharedBox`` in the manager holding `initial` (Python's `manager.Value`).
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable``; ``MultiprocessingError/Code/transport``
    ///   when `initial` cannot be encoded.
    public func makeBox<Value: Codable & Sendable>(_ initial: Value) async throws -> SharedBox<Value> {
        let box = try await make(SharedBox<Value>.self)
        try await box.set(initial)
        return box
    }
}
