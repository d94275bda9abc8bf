#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Distributed
import Synchronization

/// A manager's server: hosts shared objects and serves calls to them from other processes, on a Unix
/// or TCP address guarded by an authkey (the serving half of Python's `BaseManager`).
///
/// ``SharedObjectManager/init(address:authkey:context:timeout:)`` runs one in a child process; run one
/// in the current process with ``run()`` to offer objects on the network:
///
/// ```swift
/// let server = try ManagerServer(address: .tcp(host: "0.0.0.0", port: 50000), authkey: key)
/// try await server.run()   // until a client calls shutdown, or server.shutdown()
/// ```
///
/// Each connected process is served concurrently: a thread per connection reads its requests (as in
/// Python's manager; the link type documents the measured reason), every request runs in a task of its own (started on the reading thread), and the
/// objects (actors) order the calls to each of them. When a client's connection ends, its calls still
/// running are cancelled (a queue `get` it waited in takes nothing) and objects let go of what it held
/// (a ``SharedLock`` it held is released).
public final class ManagerServer: @unchecked Sendable {
    /// Where clients connect (for TCP port 0, the port that was picked).
    public let address: ConnectionAddress
    private let listener: Listener
    private let system = ManagerActorSystem.shared
    private let state = Mutex(State())

    private struct State {
        var nextCaller: UInt64 = 1
        var clients: [UInt64: ServedClient] = [:]
        var stopped = false
    }

    /// Listens on `address` (a fresh Unix socket address when nil).
    ///
    /// - Parameters:
    ///   - address: where to listen; nil picks a fresh Unix socket address.
    ///   - authkey: the key clients must prove they know (CPython's HMAC handshake); nil uses this
    ///     process's ``CurrentProcess/authkey``, which child processes inherit.
    /// - Throws: ``MultiprocessingError/Code/system`` when the address cannot be bound;
    ///   ``MultiprocessingError/Code/invalidArgument`` for a malformed address.
    public init(address: ConnectionAddress? = nil, authkey: [UInt8]? = nil) throws {
        listener = try Listener(address: address, authkey: authkey ?? currentProcess().authkey, handshakeTimeout: .seconds(10))
        self.address = listener.address
        system.beginServing(self.address)
        system.remember(key: authkey ?? currentProcess().authkey, for: self.address)
    }

    deinit { shutdown() }

    /// Serves clients until ``shutdown()`` or a client's ``SharedObjectManager/shutdown(timeout:)``.
    ///
    /// - Throws: ``MultiprocessingError/Code/system`` when accepting fails for a reason other than one
    ///   client's failure.
    public func run() async throws {
        defer { shutdown() }
        for try await connection in listener.connections {
            try serve(connection)
        }
    }

    /// Stops serving: closes the listener and every client's connection (their pending and later calls
    /// fail with ``MultiprocessingError/Code/managerUnavailable``) and lets the hosted objects go.
    /// Calling it twice is harmless.
    public func shutdown() {
        let clients = state.withLock { state -> [ServedClient] in
            if state.stopped { return [] }
            state.stopped = true
            defer { state.clients = [:] }
            return Array(state.clients.values)
        }
        listener.close()
        for client in clients { client.close() }
        system.endServing(address)
    }

    private func serve(_ connection: Connection) throws {
        // The accepted connection reads: it may hold bytes of the first request, read during the handshake.
        let reader = ManagerReceiver(connection)
        let writer = ManagerSender(try Connection(adopting: try Syscall.duplicate(try connection.fileno), readable: false, writable: true))
        let client = state.withLock { state -> ServedClient? in
            guard !state.stopped else { return nil }
            defer { state.nextCaller += 1 }
            let client = ServedClient(caller: state.nextCaller, writer: writer)
            state.clients[client.caller] = client
            return client
        }
        guard let client else { return connection.close() }
        if case .tcp = address, let fd = try? connection.fileno {
            try? Syscall.setKeepAlive(fd, idle: 1, interval: 1, probes: 2, userTimeout: .seconds(4))
        }
        // The reading thread starts directly, not from a task: a reply that waits for room may hold a
        // thread of the cooperative pool (in a manager's own process, its only one).
        let end: @Sendable () -> Void = { [self] in
            connection.close()
            Task { await dropClient(client) }
        }
        do {
            try startThread { [self] in
                readRequests(from: reader, for: client)
                end()
            }
        } catch {
            diagnostics.warning("manager at \(address) cannot serve a client: \(error)")
            end()
        }
    }

    private func readRequests(from reader: ManagerReceiver, for client: ServedClient) {
        while true {
            guard let request = try? reader.receive(ManagerRequest.init(reading:)) else { return }
            switch request.kind {
            case .attachChannel:
                attachChannel(request, reader: reader, for: client)
            case .shutdown:
                client.reply(ManagerReply(id: request.id))
                shutdown()
                return
            case .ping:
                client.reply(ManagerReply(id: request.id))
            case .create, .call:
                // In a manager's own process (an async child, whose global executor is drained by its
                // main thread) the jobs the call enqueues run here, so a call to an idle object is
                // answered without waking that thread (elsewhere this does nothing).
                mp_executor_help_begin()
                client.track(request.id) { [self] in await handle(request, from: client) }
                mp_executor_help_end()
                // Most calls have just been answered from here: the next receive measures how soon the
                // caller's next request follows and spins that long.
                reader.answerExpected(sentAt: Deadline.monotonicNow())
            }
        }
    }

    /// Serves a client's ``ManagerRequest/Kind/attachChannel``: asks for the channel's descriptor,
    /// maps it, says so, and moves the client's messages into it. On failure the client is told, and
    /// both sides keep using the socket.
    private func attachChannel(_ request: ManagerRequest, reader: ManagerReceiver, for client: ServedClient) {
        guard case .unix = address, !reader.usesChannel else {
            return client.reply(ManagerReply(id: request.id, failure: RemoteFailure(code: .unsupported, "only a Unix socket's connection can move into shared memory, once")))
        }
        client.reply(ManagerReply(id: request.id))
        do {
            let channel = try ManagerChannel(adopting: try reader.connection.recvDescriptor(timeout: .seconds(10)))
            client.reply(ManagerReply(id: request.id))
            client.attach(channel)
            reader.attach(channel, as: .server)
        } catch {
            diagnostics.notice("manager \(address): a client's calls stay on the socket: \(error)")
            client.reply(ManagerReply(id: request.id, failure: RemoteFailure(error)))
        }
    }

    private func dropClient(_ client: ServedClient) async {
        let known = state.withLock { $0.clients.removeValue(forKey: client.caller) != nil }
        client.close()
        guard known else { return }
        for object in system.hostedObjects(of: address) {
            if let aware = object as? any CallerAwareObject { await Self.tell(aware, callerLeft: client.caller) }
        }
    }

    private static func tell<Object: CallerAwareObject>(_ object: Object, callerLeft caller: UInt64) async {
        await object.whenLocal { await $0.callerLeft(caller) }
    }

    private func handle(_ request: ManagerRequest, from client: ServedClient) async {
        switch request.kind {
        case .create:
            do {
                guard let type = _typeByName(request.target) as? any SharedObject.Type else {
                    throw MultiprocessingError(
                        .notFound, "the manager's program has no shared object type named \(request.target) (declare it at file scope)")
                }
                let id = ManagerActorSystem.$hostingAddress.withValue(address) { type.init(actorSystem: system).id }
                client.reply(ManagerReply(id: request.id, value: try ManagerCoding.encode(id)))
            } catch {
                client.reply(ManagerReply(id: request.id, failure: RemoteFailure(error)))
            }
        case .call:
            let id = SharedObjectID(manager: address, number: request.object)
            guard let object = system.hostedObject(id) else {
                return client.reply(ManagerReply(id: request.id, failure: RemoteFailure(code: .notFound, "the manager hosts no object \(id)")))
            }
            var decoder = ManagerInvocationDecoder(request)
            do {
                let plan = try DistributedCallPlan.plan(target: request.target, generics: request.generics)
                let value = try await ManagerActorSystem.$currentCaller.withValue(client.caller) {
                    try await plan.run(on: object, &decoder)
                }
                client.reply(ManagerReply(id: request.id, value: value))
            } catch {
                client.reply(ManagerReply(id: request.id, failure: RemoteFailure(error)))
            }
        case .shutdown, .ping, .attachChannel:
            return
        }
    }
}

/// One connected process, as the server sees it.
private final class ServedClient: @unchecked Sendable {
    let caller: UInt64
    /// Writes the replies whole and in order; a reply that would wait for room (a client that reads
    /// nothing) waits on the writer's own thread, not on the thread that ran the call.
    private let writer: ManagerWriter
    /// The socket's descriptor (the writer's, open as long as this object): ``close()`` shuts it down,
    /// which tells a reply waiting for room in a full channel that the client is gone.
    private let socket: Int32
    private let running = Mutex(Running())

    private struct Running {
        var tasks: [UInt64: Task<Void, Never>] = [:]
        /// Calls that ended before their task was recorded (they ran to the end on the reading thread).
        var ended: Set<UInt64> = []
        var closed = false
    }

    init(caller: UInt64, writer: ManagerSender) {
        self.caller = caller
        socket = (try? writer.connection.fileno) ?? -1
        self.writer = ManagerWriter(writer)
    }

    /// Sends a reply; a client that has gone is noticed by the reading side.
    func reply(_ reply: ManagerReply) {
        let message: [UInt8]
        do {
            message = try ManagerSender.message(reply.write)
        } catch {
            // The reply could not be encoded: fail that call only.
            guard let failure = try? ManagerSender.message(ManagerReply(id: reply.id, failure: RemoteFailure(error)).write)
            else { return }
            message = failure
        }
        writer.send(message) { _, _ in }
    }

    /// Sends the replies through `channel` from now on: after the replies handed in before.
    func attach(_ channel: ManagerChannel) {
        writer.perform { $0.attach(channel, as: .server) }
    }

    /// Runs a request in a task of its own, cancelled if the client leaves first.
    ///
    /// The task starts at once on the reading thread (`Task.immediate`). Its hop onto the object's
    /// actor goes through the global executor; in a manager's own process the reading thread then runs
    /// that job itself (see `readRequests`), so a call to an object that is not busy runs, and its
    /// reply is written, without waking another thread. The reading thread goes back to reading as soon
    /// as the call suspends (an object busy with another call, a queue waiting for an item).
    func track(_ id: UInt64, _ body: @escaping @Sendable () async -> Void) {
        guard !running.withLock({ $0.closed }) else { return }
        let task = Task.immediate { [self] in
            await body()
            forget(id)
        }
        let cancel = running.withLock { running -> Bool in
            if running.ended.remove(id) != nil { return false }
            running.tasks[id] = task
            return running.closed
        }
        if cancel { task.cancel() }
    }

    private func forget(_ id: UInt64) {
        running.withLock { running in
            if running.tasks.removeValue(forKey: id) == nil { running.ended.insert(id) }
        }
    }

    /// Cancels the calls still running and closes the connection.
    func close() {
        let tasks = running.withLock { running -> [Task<Void, Never>] in
            running.closed = true
            defer { running.tasks = [:] }
            return Array(running.tasks.values)
        }
        for task in tasks { task.cancel() }
        if socket >= 0 { shutdown(socket, Int32(SHUT_RDWR)) }
    }
}
