/// The identity of a shared object: the address of the manager that hosts it and its number there.
///
/// It is the ``ManagerActorSystem``'s actor ID. A reference to a shared object encodes as its ID, so it
/// can travel to another process (inside a child's task, in a message, or as an argument of another
/// shared object's method); the process that decodes it reaches the object by connecting to
/// ``manager``.
public struct SharedObjectID: Hashable, Sendable, Codable, CustomStringConvertible {
    /// Where the hosting manager listens.
    public let manager: ConnectionAddress
    /// The object's number within its manager.
    public let number: UInt64

    /// `NUMBER@ADDRESS`.
    public var description: String { "\(number)@\(manager)" }

    init(manager: ConnectionAddress, number: UInt64) {
        self.manager = manager
        self.number = number
    }

    /// The address an object made outside any manager gets: it cannot be reached from elsewhere.
    static let unserved = ConnectionAddress.unix("")
}
