import Distributed

/// A type of shared object that a manager can make: a `distributed actor` of the ``ManagerActorSystem``
/// (Python's `BaseManager.register`, with no registration step).
///
/// ```swift
/// distributed actor Counter: SharedObject {
///     var total = 0
///     distributed func add(_ amount: Int) -> Int {
///         total += amount
///         return total
///     }
/// }
/// let counter = try await manager.make(Counter.self)
/// let now = try await counter.add(5)
/// ```
///
/// Arguments and results of `distributed` methods are `Codable`; errors they throw come back to the
/// caller as themselves when `Codable`, otherwise as ``MultiprocessingError/Code/remote`` with their
/// type name and description. The manager finds the type by its mangled name, as a child finds a
/// ``ProcessTask``: declare it at file scope (internal or public), not `private` and not inside a function.
/// The implicit `init(actorSystem:)` of a distributed actor whose properties all have initial values
/// satisfies the requirement.
public protocol SharedObject: DistributedActor, Codable where ActorSystem == ManagerActorSystem {
    /// Makes the object in its manager.
    init(actorSystem: ManagerActorSystem)
}

/// A shared object that wants to know when a caller's connection ends (its process ended, or it
/// disconnected), to let go of what that caller held.
protocol CallerAwareObject: DistributedActor {
    func callerLeft(_ caller: UInt64) async
}
