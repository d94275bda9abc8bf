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

    /// The manager address a reply being decoded came from (see ``init(from:)``).
    @TaskLocal static var replyingManager: ConnectionAddress?

    private enum CodingKeys: String, CodingKey { case manager, number }

    /// Decodes an ID. A manager listening on every interface (`0.0.0.0`, `::`) names itself by that
    /// address, which means nothing on another host: in a reply from a manager, such an ID takes the host
    /// that this process reached the manager by.
    ///
    /// - Throws: the decoder's errors.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        number = try container.decode(UInt64.self, forKey: .number)
        let manager = try container.decode(ConnectionAddress.self, forKey: .manager)
        if case .tcp(let host, let port) = manager, ["0.0.0.0", "::", ""].contains(host),
            case .tcp(let reached, port) = Self.replyingManager
        {
            self.manager = .tcp(host: reached, port: port)
        } else {
            self.manager = manager
        }
    }

    /// Encodes the manager's address and the number.
    ///
    /// - Throws: the encoder's errors.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(manager, forKey: .manager)
        try container.encode(number, forKey: .number)
    }
}
