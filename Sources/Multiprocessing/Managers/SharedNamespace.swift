import Distributed

/// Named attributes of any `Codable` types, hosted by a manager (Python's `manager.Namespace()`).
///
/// ```swift
/// try await namespace.setValue(42, named: "answer")
/// let answer = try await namespace.value(named: "answer", as: Int.self)
/// ```
public distributed actor SharedNamespace: SharedObject {
    private var attributes: [String: [UInt8]] = [:]

    /// Makes an empty namespace in its manager; use ``SharedObjectManager/makeNamespace()``.
    public init(actorSystem: ManagerActorSystem) {
        self.actorSystem = actorSystem
    }

    /// The encoded value of an attribute, or nil.
    public distributed func encodedValue(named name: String) -> [UInt8]? { attributes[name] }

    /// Sets an attribute's encoded value.
    public distributed func setEncodedValue(_ bytes: [UInt8], named name: String) { attributes[name] = bytes }

    /// Removes an attribute (Python's `del ns.name`); returns whether it existed.
    @discardableResult
    public distributed func removeValue(named name: String) -> Bool { attributes.removeValue(forKey: name) != nil }

    /// The attributes' names.
    public distributed func names() -> [String] { Array(attributes.keys) }

    /// An attribute's value, or nil when it is not set (Python's `ns.name`).
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the attribute holds another type;
    ///   ``MultiprocessingError/Code/managerUnavailable``.
    public nonisolated func value<T: Codable>(named name: String, as type: T.Type = T.self) async throws -> T? {
        guard let bytes = try await encodedValue(named: name) else { return nil }
        return try ManagerCoding.decode(T.self, from: bytes)
    }

    /// Sets an attribute (Python's `ns.name = value`).
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when `value` cannot be encoded;
    ///   ``MultiprocessingError/Code/managerUnavailable``.
    public nonisolated func setValue<T: Codable>(_ value: T, named name: String) async throws {
        try await setEncodedValue(ManagerCoding.encode(value), named: name)
    }
}

extension SharedObjectManager {
    /// Makes an empty ``SharedNamespace`` in the manager (Python's `manager.Namespace()`).
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable``.
    public func makeNamespace() async throws -> SharedNamespace { try await make(SharedNamespace.self) }
}
