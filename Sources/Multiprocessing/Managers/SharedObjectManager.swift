import Distributed

/// A manager: a server process that hosts shared objects, and the handle to reach it (Python's
/// `multiprocessing.Manager()`, `SyncManager` and `BaseManager`).
///
/// Start one in a child process, or connect to one that runs elsewhere (on another host, by address
/// and authkey), then make shared objects in it. The objects are distributed actors: their methods are
/// `async` calls that any process holding a reference can make; a reference travels to children inside
/// a task value, over connections, and inside other shared objects.
///
/// ```swift
/// let manager = try SharedObjectManager()
/// let scores = try await manager.makeDictionary([String: Int].self)
/// try await scores.setValue(3, forKey: "ada")
/// let child = ChildProcess(Worker(scores: scores))   // the reference crosses in the task
/// ```
///
/// Calls to a manager on this machine (a Unix socket address, the default) travel through shared memory
/// that the caller's process and the manager share, a few microseconds each; the socket stays open to
/// wake a side that sleeps and to notice a side that is gone. A manager on a TCP address is reached over
/// the socket alone.
///
/// When the manager's process dies or the network to it drops, every call pending on it and every later
/// one fails within seconds with ``MultiprocessingError/Code/managerUnavailable``; none hangs. A
/// manager started here is a daemon child: it ends with this process however this process ends.
/// The handle is `Codable`: a child that receives it can reach the manager with the right key.
public struct SharedObjectManager: Sendable, Codable {
    /// Where the manager listens.
    public let address: ConnectionAddress
    let authkey: [UInt8]
    /// The manager's process, when this process started it.
    public let process: ChildProcess?

    /// Starts a manager in a child process and waits until it listens (Python's `Manager()` /
    /// `BaseManager.start()`); ``start(address:authkey:context:timeout:)`` is the same without holding a
    /// thread while it waits.
    ///
    /// - Parameters:
    ///   - address: where the manager listens; nil picks a fresh Unix socket address.
    ///   - authkey: the key callers must know; nil uses this process's ``CurrentProcess/authkey``,
    ///     which children inherit.
    ///   - context: the start method of the manager's process.
    ///   - timeout: how long the manager may take to start listening.
    /// - Throws: the error the manager met when it tried to listen (``MultiprocessingError/Code/system``
    ///   for an address in use); ``MultiprocessingError/Code/childFailed`` when its process ended before it
    ///   listened; ``MultiprocessingError/Code/timedOut``; the errors of ``ChildProcess/start()``.
    public init(address: ConnectionAddress? = nil, authkey: [UInt8]? = nil, context: ProcessContext = .default,
                timeout: Duration = .seconds(30)) throws {
        let key = authkey ?? currentProcess().authkey
        let (child, report) = try Self.launch(address: address, authkey: key, context: context)
        let started = try Self.started(child, Result { try report.recv(ManagerStarted.self, timeout: timeout) })
        self.init(address: started, authkey: key, process: child)
    }

    /// Starts a manager in a child process as ``init(address:authkey:context:timeout:)`` does, awaiting its
    /// report on the event loop. Cancellation ends the wait with `CancellationError` and kills the manager.
    ///
    /// - Throws: the errors of ``init(address:authkey:context:timeout:)``; `CancellationError`.
    public static func start(address: ConnectionAddress? = nil, authkey: [UInt8]? = nil, context: ProcessContext = .default,
                             timeout: Duration = .seconds(30)) async throws -> SharedObjectManager {
        let key = authkey ?? currentProcess().authkey
        let (child, report) = try launch(address: address, authkey: key, context: context)
        let outcome: Result<ManagerStarted, any Error>
        do { outcome = .success(try await report.recv(ManagerStarted.self, timeout: timeout)) } catch { outcome = .failure(error) }
        return SharedObjectManager(address: try started(child, outcome), authkey: key, process: child)
    }

    /// Starts the manager's process; returns it and the connection its report arrives on.
    private static func launch(address: ConnectionAddress?, authkey: [UInt8], context: ProcessContext) throws -> (ChildProcess, Connection) {
        let (report, reportSender) = try makePipe(duplex: false)
        let child = ChildProcess(ManagerServerTask(address: address, authkey: authkey, report: reportSender),
                                 name: "SharedObjectManager", daemon: true, context: context)
        try child.start()
        reportSender.close()
        return (child, report)
    }

    /// The address the manager listens on, from its report; or the error, once its process is ended.
    private static func started(_ child: ChildProcess, _ report: Result<ManagerStarted, any Error>) throws -> ConnectionAddress {
        switch report {
        case .success(let started):
            guard let failure = started.failure else { return started.address }
            _ = try? child.join(timeout: .seconds(5))
            throw failure
        case .failure(let error as MultiprocessingError) where error.code == .endOfFile:
            _ = try? child.join(timeout: .seconds(5))
            throw MultiprocessingError(.childFailed, "the manager's process ended before it listened (exit code \(child.exitCode.map(String.init) ?? "unknown"))")
        case .failure(let error):
            try? child.kill()
            _ = try? child.join(timeout: .seconds(5))
            throw error
        }
    }

    private init(address: ConnectionAddress, authkey: [UInt8], process: ChildProcess) {
        self.address = address
        self.authkey = authkey
        self.process = process
        ManagerActorSystem.shared.remember(key: authkey, for: address)
    }

    private init(address: ConnectionAddress, authkey: [UInt8]) {
        self.address = address
        self.authkey = authkey
        self.process = nil
    }

    /// Connects to a manager that runs elsewhere (Python's `BaseManager(address, authkey).connect()`),
    /// proving the key with CPython's HMAC handshake.
    ///
    /// - Throws: ``MultiprocessingError/Code/authenticationFailed`` for a wrong key;
    ///   ``MultiprocessingError/Code/managerUnavailable`` when nothing answers at `address`.
    public static func connect(to address: ConnectionAddress, authkey: [UInt8]) async throws -> SharedObjectManager {
        // A handshake of its own, so that a wrong key fails here even while this process already has a
        // connection to that manager; the key is remembered only once proved.
        do {
            try Connection(connectingTo: address, authkey: authkey, timeout: ManagerActorSystem.connectTimeout).close()
        } catch let error as MultiprocessingError where error.code != .authenticationFailed {
            throw MultiprocessingError(.managerUnavailable, "cannot reach the manager at \(address): \(error)", errno: error.errno)
        }
        ManagerActorSystem.shared.remember(key: authkey, for: address)
        let manager = SharedObjectManager(address: address, authkey: authkey)
        try await manager.ping()
        return manager
    }

    /// Asks the manager to answer, proving it is reachable (a health check).
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable``,
    ///   ``MultiprocessingError/Code/authenticationFailed``.
    public func ping() async throws {
        _ = try await ManagerActorSystem.shared.request(ManagerRequest(id: 0, kind: .ping), to: address)
    }

    /// Makes a shared object of your own type in the manager and returns the reference to it (Python's
    /// registered typeid call, `manager.Counter()`).
    ///
    /// - Throws: ``MultiprocessingError/Code/notFound`` when the manager's program has no such type
    ///   (declare it at file scope; a remote manager must be built from a program that has it);
    ///   ``MultiprocessingError/Code/managerUnavailable``.
    public func make<Object: SharedObject>(_ type: Object.Type) async throws -> Object {
        let name = try TaskEnvelope.typeName(of: Object.self)
        let reply = try await ManagerActorSystem.shared.request(ManagerRequest(id: 0, kind: .create, target: name), to: address)
        let id = try SharedObjectID.$replyingManager.withValue(address) { try ManagerCoding.decode(SharedObjectID.self, from: reply.value) }
        return try Object.resolve(id: id, using: .shared)
    }

    /// Stops the manager (Python's `shutdown()`): it answers, closes every client's connection (their
    /// calls fail with ``MultiprocessingError/Code/managerUnavailable``), and its process exits; waits
    /// up to `timeout` for that process when this process started it, then kills it.
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable`` when the manager was already gone.
    public func shutdown(timeout: Duration = .seconds(10)) async throws {
        _ = try await ManagerActorSystem.shared.request(ManagerRequest(id: 0, kind: .shutdown), to: address)
        guard let process else { return }
        if try await !process.join(timeout: timeout) {
            try process.kill()
            _ = try await process.join(timeout: timeout)
        }
    }

    private enum CodingKeys: String, CodingKey { case address, authkey }

    /// Decodes a handle sent by another process: its key is remembered for calls to the manager.
    ///
    /// - Throws: the decoder's errors.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        address = try container.decode(ConnectionAddress.self, forKey: .address)
        authkey = try container.decode([UInt8].self, forKey: .authkey)
        process = nil
        ManagerActorSystem.shared.remember(key: authkey, for: address)
    }

    /// Encodes the address and the key (so send a handle only to processes you trust with the key).
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(address, forKey: .address)
        try container.encode(authkey, forKey: .authkey)
    }
}

extension SharedObject {
    /// Makes this object in `manager`: `try await Counter.make(in: manager)`, the same as
    /// ``SharedObjectManager/make(_:)``.
    ///
    /// - Throws: the errors of ``SharedObjectManager/make(_:)``.
    public static func make(in manager: SharedObjectManager) async throws -> Self {
        try await manager.make(Self.self)
    }
}

/// What a manager's process reports once it listens, or why it could not.
struct ManagerStarted: Codable, Sendable {
    var address: ConnectionAddress
    var carriedFailure: CarriedError?

    init(address: ConnectionAddress, failure: MultiprocessingError?) {
        self.address = address
        carriedFailure = failure.map(CarriedError.init)
    }

    var failure: MultiprocessingError? { carriedFailure?.error }
}

/// The work of a manager's process: listen, report the address, serve until shutdown.
struct ManagerServerTask: AsyncProcessTask {
    let address: ConnectionAddress?
    let authkey: [UInt8]
    let report: Connection

    func run() async throws {
        let server: ManagerServer
        do {
            server = try ManagerServer(address: address, authkey: authkey)
        } catch let error as MultiprocessingError {
            try await report.send(ManagerStarted(address: address ?? .unix(""), failure: error))
            return
        }
        try await report.send(ManagerStarted(address: server.address, failure: nil))
        report.close()
        try await server.run()
    }
}
