#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Distributed
import Synchronization

/// The distributed actor system of shared objects: actors hosted by a manager and called from any
/// process that holds a reference to them.
///
/// Every process has one, ``shared``. In a manager's process it hosts the shared objects; in every
/// process it turns calls on references to objects of other processes into messages, over one
/// connection per (process, manager) that all calls share. References decode with it automatically
/// wherever they arrive (in a child's task, a ``Connection`` message, or another shared object's
/// arguments), so you rarely name it: declare your own shared types as
/// `distributed actor Counter: SharedObject` and make them with ``SharedObjectManager/make(_:)``.
public final class ManagerActorSystem: DistributedActorSystem, @unchecked Sendable {
    /// Shared objects are named by their manager's address and a number.
    public typealias ActorID = SharedObjectID
    /// Arguments and results of distributed methods are `Codable`.
    public typealias SerializationRequirement = Codable
    /// How calls are recorded.
    public typealias InvocationEncoder = ManagerInvocationEncoder
    /// How calls are read back in the manager.
    public typealias InvocationDecoder = ManagerInvocationDecoder
    /// How results go back.
    public typealias ResultHandler = ManagerResultHandler

    /// This process's system.
    public static let shared = ManagerActorSystem()

    /// The manager address whose objects are being made (set while a manager creates one).
    @TaskLocal static var hostingAddress: ConnectionAddress?
    /// The connection, in a manager, that the running call came from.
    @TaskLocal static var currentCaller: UInt64?

    private let state = Mutex(State())

    private struct State {
        var nextNumber: UInt64 = 1
        /// Objects this process hosts, kept alive while their manager runs.
        var hosted: [SharedObjectID: any DistributedActor] = [:]
        /// Addresses this process serves.
        var served: Set<ConnectionAddress> = []
        var links: [ConnectionAddress: ManagerLink] = [:]
        var keys: [ConnectionAddress: [UInt8]] = [:]
    }

    private init() {}

    /// How long connecting to a manager may take before calls fail with
    /// ``MultiprocessingError/Code/managerUnavailable``.
    static let connectTimeout: Duration = .seconds(5)

    // MARK: DistributedActorSystem

    /// Finds a hosted object, or returns nil for one hosted elsewhere (its calls go over the network).
    ///
    /// - Throws: ``MultiprocessingError/Code/notFound`` when this process serves the address but hosts
    ///   no such object; ``MultiprocessingError/Code/invalidArgument`` when it has another type.
    public func resolve<Act>(id: SharedObjectID, as actorType: Act.Type) throws -> Act?
    where Act: DistributedActor, Act.ID == SharedObjectID {
        var (actor, served) = state.withLock { ($0.hosted[id], $0.served.contains(id.manager)) }
        if actor == nil, !served, let own = servedAddress(reachedAs: id.manager) {
            (actor, served) = (state.withLock { $0.hosted[SharedObjectID(manager: own, number: id.number)] }, true)
        }
        guard let actor else {
            if served { throw MultiprocessingError(.notFound, "the manager at \(id.manager) hosts no object \(id.number)") }
            return nil
        }
        guard let typed = actor as? Act else {
            throw MultiprocessingError(.invalidArgument, "shared object \(id) is a \(type(of: actor)), not a \(Act.self)")
        }
        return typed
    }

    /// The address this process serves on that `address` reaches, when that is not `address` itself: a
    /// manager listening on every interface (`0.0.0.0:PORT`) hosts the objects that another process names
    /// by one of this machine's addresses and that port.
    private func servedAddress(reachedAs address: ConnectionAddress) -> ConnectionAddress? {
        guard case .tcp(let host, let port) = address else { return nil }
        let wildcard = state.withLock { state in
            ["0.0.0.0", "::", ""].lazy.map { ConnectionAddress.tcp(host: $0, port: port) }.first { state.served.contains($0) }
        }
        guard let wildcard, mp_is_local_host(host) != 0 else { return nil }
        return wildcard
    }

    /// Numbers a new object for the manager that is making it.
    public func assignID<Act>(_ actorType: Act.Type) -> SharedObjectID where Act: DistributedActor, Act.ID == SharedObjectID {
        let number = state.withLock { state -> UInt64 in
            defer { state.nextNumber += 1 }
            return state.nextNumber
        }
        return SharedObjectID(manager: Self.hostingAddress ?? SharedObjectID.unserved, number: number)
    }

    /// Keeps an object made by a manager alive for as long as the manager runs.
    public func actorReady<Act>(_ actor: Act) where Act: DistributedActor, Act.ID == SharedObjectID {
        guard actor.id.manager != SharedObjectID.unserved else { return }
        state.withLock { $0.hosted[actor.id] = actor }
    }

    /// Forgets an object.
    public func resignID(_ id: SharedObjectID) {
        _ = state.withLock { $0.hosted.removeValue(forKey: id) }
    }

    /// A fresh call recording.
    public func makeInvocationEncoder() -> ManagerInvocationEncoder { ManagerInvocationEncoder() }

    /// Calls a method of an object hosted elsewhere and returns its result.
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable`` when the manager cannot be reached or
    ///   the connection is lost during the call; ``MultiprocessingError/Code/transport`` when an argument
    ///   or the result cannot be encoded or decoded; the error the method threw, as itself when it is
    ///   `Codable`, otherwise as ``MultiprocessingError/Code/remote``.
    public func remoteCall<Act, Err, Res>(
        on actor: Act, target: RemoteCallTarget, invocation: inout ManagerInvocationEncoder, throwing: Err.Type,
        returning: Res.Type
    ) async throws -> Res where Act: DistributedActor, Act.ID == SharedObjectID, Err: Error, Res: Codable {
        let reply = try await send(call: actor.id, target: target, invocation: invocation)
        return try SharedObjectID.$replyingManager.withValue(actor.id.manager) { try ManagerCoding.decode(Res.self, from: reply.value) }
    }

    /// Calls a method that returns nothing, of an object hosted elsewhere. Errors as for
    /// ``remoteCall(on:target:invocation:throwing:returning:)``.
    public func remoteCallVoid<Act, Err>(
        on actor: Act, target: RemoteCallTarget, invocation: inout ManagerInvocationEncoder, throwing: Err.Type
    ) async throws where Act: DistributedActor, Act.ID == SharedObjectID, Err: Error {
        _ = try await send(call: actor.id, target: target, invocation: invocation)
    }

    private func send(call id: SharedObjectID, target: RemoteCallTarget, invocation: ManagerInvocationEncoder) async throws -> ManagerReply {
        let call = ManagerRequest(
            id: 0, kind: .call, object: id.number, target: target.identifier, generics: invocation.generics,
            arguments: invocation.arguments)
        return try await request(call, to: id.manager)
    }

    // MARK: Links to managers

    /// Sends a request to the manager at `address` and returns its reply, throwing the failure it carries.
    func request(_ request: ManagerRequest, to address: ConnectionAddress) async throws -> ManagerReply {
        guard address != SharedObjectID.unserved else {
            throw MultiprocessingError(
                .invalidArgument, "this object was made outside any manager, so no other process can reach it; make it with a SharedObjectManager")
        }
        let reply = try await link(to: address).call(request)
        if let failure = reply.failure { throw failure.error }
        return reply
    }

    /// The link to `address`, connecting when there is none (or the last one was lost).
    ///
    /// A link made by another process (this one was forked from it) counts as none: its socket and
    /// channel are that process's stream, and a second reader would take its replies. It is only
    /// replaced here, never lost or shut down, which would cut the other process's connection too.
    func link(to address: ConnectionAddress) throws -> ManagerLink {
        let (existing, key) = state.withLock { ($0.links[address], $0.keys[address]) }
        if let existing, Self.usable(existing) { return existing }
        let link = try ManagerLink(address: address, authkey: key ?? currentProcess().authkey, timeout: Self.connectTimeout) {
            [weak self] lost in
            self?.state.withLock { state in
                if state.links[lost.address] === lost { state.links[lost.address] = nil }
            }
        }
        let chosen = state.withLock { state -> ManagerLink in
            if let raced = state.links[address], Self.usable(raced) { return raced }  // another task connected meanwhile
            state.links[address] = link
            return link
        }
        if chosen !== link { link.lose("another connection to the same manager was made at the same time") }
        return chosen
    }

    /// Whether `link` can carry this process's calls: it is this process's own, and not lost.
    private static func usable(_ link: ManagerLink) -> Bool {
        link.owner == getpid() && !link.isLost
    }

    /// Remembers the key of the manager at `address`, for links made later.
    func remember(key: [UInt8], for address: ConnectionAddress) {
        state.withLock { $0.keys[address] = key }
    }

    // MARK: Hosting

    /// Marks `address` as served here: references to it resolve to hosted objects.
    func beginServing(_ address: ConnectionAddress) {
        _ = state.withLock { $0.served.insert(address) }
    }

    /// Forgets the objects hosted for `address`.
    func endServing(_ address: ConnectionAddress) {
        // The objects are let go after the lock: their deinit calls resignID, which takes it.
        let leaving = state.withLock { state -> [any DistributedActor] in
            state.served.remove(address)
            let leaving = state.hosted.filter { $0.key.manager == address }
            for id in leaving.keys { state.hosted[id] = nil }
            return Array(leaving.values)
        }
        withExtendedLifetime(leaving) {}
    }

    /// The object hosted under `id`, if any.
    func hostedObject(_ id: SharedObjectID) -> (any DistributedActor)? {
        state.withLock { $0.hosted[id] }
    }

    /// The objects hosted for `address` (to tell them a caller left).
    func hostedObjects(of address: ConnectionAddress) -> [any DistributedActor] {
        state.withLock { $0.hosted.filter { $0.key.manager == address }.map(\.value) }
    }

    /// `userInfo` with this process's system under `actorSystemKey`, unless one is there.
    static func addingSystem(to userInfo: [CodingUserInfoKey: Any]) -> [CodingUserInfoKey: Any] {
        guard userInfo[.actorSystemKey] == nil else { return userInfo }
        var userInfo = userInfo
        userInfo[.actorSystemKey] = shared
        return userInfo
    }
}
