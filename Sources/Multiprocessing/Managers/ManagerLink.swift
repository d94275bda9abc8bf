#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// This process's one connection to one manager, shared by every call to that manager's objects.
///
/// One party at a time reads the replies (it holds the read turn). A call that finds nobody reading
/// reads its own reply on the thread it runs on, for at most ``ownReplyWait``: a manager call that
/// runs at once is answered in microseconds, and reading the answer in place spares the two thread
/// wake-ups of handing it over (a reader thread's, then the cooperative pool's). When the reply is
/// slower than that, or while other calls are pending, the turn goes to the link's reader thread,
/// which reads until no call is pending and then parks; the call suspends without holding a thread.
/// Measured with `mp-bench --filter manager-actor-call` (2-CPU machine, nearly idle), together with
/// the manager running calls on its reading thread: 13,900 calls/s before, 25,000-33,600 after; with
/// both receives spinning for the other side's measured answer time (see `readOwnReply`), 75,000.
///
/// Each call sends a request with a fresh id; whoever reads resumes the call whose id a reply
/// carries, so calls from many tasks overlap on the one connection. When the connection is lost (the
/// manager died or shut down, the network dropped) every pending call fails at once with
/// ``MultiprocessingError/Code/managerUnavailable``, and the link is dropped so that the next call
/// connects again.
///
/// A link to a manager on this machine (a Unix socket address) moves its messages into shared memory
/// right after it connects (see ``ManagerChannel``); one over TCP uses the socket alone.
///
/// A link belongs to the process that made it (``owner``): a process forked from it must make its
/// own, or two processes would read one stream.
final class ManagerLink: @unchecked Sendable {
    let address: ConnectionAddress
    /// The process that made the link, the only one that may use it.
    let owner = getpid()
    /// A second descriptor for the same socket, for sending: whole messages, in order, without making a
    /// caller wait for room.
    private let writer: ManagerWriter
    /// The receiving end, read only by the holder of the read turn.
    private let reader: ManagerReceiver
    /// The channel's ring of requests, when the messages go through a ``ManagerChannel``.
    private let requests: ManagerChannel.Ring?
    private let state = Mutex(State())
    private let onLoss: @Sendable (ManagerLink) -> Void
    /// Posted when the read turn passes to the reader thread (or the link is lost).
    private let turnPassed = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    /// How long a call reads its own reply before it lets the reader thread wait for it.
    static let ownReplyWait = Duration.microseconds(200)

    private struct State {
        var nextID: UInt64 = 1
        var pending: [UInt64: CheckedContinuation<ManagerReply, any Error>] = [:]
        var failure: MultiprocessingError?
        /// Whether a call or the reader thread holds the read turn.
        var reading = false
        var readerStarted = false
    }

    /// Connects and authenticates.
    ///
    /// - Throws: ``MultiprocessingError/Code/authenticationFailed`` for a wrong key;
    ///   ``MultiprocessingError/Code/managerUnavailable`` when nothing answers at `address` in time.
    init(address: ConnectionAddress, authkey: [UInt8], timeout: Duration, onLoss: @escaping @Sendable (ManagerLink) -> Void) throws {
        self.address = address
        self.onLoss = onLoss
        let connection: Connection
        do {
            connection = try Connection(connectingTo: address, authkey: authkey, timeout: timeout)
        } catch let error as MultiprocessingError where error.code == .system || error.code == .timedOut || error.code == .endOfFile {
            throw MultiprocessingError(.managerUnavailable, "cannot reach the manager at \(address): \(error)", errno: error.errno)
        }
        if case .tcp = address {
            try Syscall.setKeepAlive(try connection.fileno, idle: 1, interval: 1, probes: 2, userTimeout: .seconds(4))
        }
        // The connection that did the handshake reads, in case it holds bytes that came after it.
        let reader = ManagerReceiver(connection)
        let writer = ManagerSender(try Connection(adopting: try Syscall.duplicate(try connection.fileno), readable: false, writable: true))
        var channel: ManagerChannel?
        if case .unix = address {
            do {
                channel = try Self.attachChannel(reader: reader, writer: writer, timeout: timeout)
            } catch let error as MultiprocessingError where error.code != .managerUnavailable {
                throw MultiprocessingError(.managerUnavailable, "the manager at \(address) stopped answering: \(error)", errno: error.errno)
            }
        }
        self.reader = reader
        self.writer = ManagerWriter(writer)
        requests = channel?.ring(writtenBy: .client)
        sem_init(turnPassed, 0, 0)
    }

    /// Moves the connection's messages into a new ``ManagerChannel`` (see
    /// ``ManagerRequest/Kind/attachChannel``) and returns it. When the channel cannot be made or the
    /// manager refuses it, the link keeps using the socket (and says why in ``diagnostics``): nil.
    ///
    /// - Throws: the errors of the socket when the manager stops answering.
    static func attachChannel(reader: ManagerReceiver, writer: ManagerSender, timeout: Duration) throws -> ManagerChannel? {
        let channel: ManagerChannel
        do {
            channel = try ManagerChannel()
        } catch {
            diagnostics.notice("manager calls go over the socket: no shared memory for them: \(error)")
            return nil
        }
        try writer.send(ManagerRequest(id: 0, kind: .attachChannel).write)
        if let failure = try reader.receive(timeout: timeout, ManagerReply.init(reading:)).failure {
            diagnostics.notice("manager calls go over the socket: the manager refused shared memory: \(failure.error)")
            return nil
        }
        try writer.connection.sendDescriptor(channel.fd)
        if let failure = try reader.receive(timeout: timeout, ManagerReply.init(reading:)).failure {
            diagnostics.notice("manager calls go over the socket: the manager could not map shared memory: \(failure.error)")
            return nil
        }
        writer.attach(channel, as: .client)
        reader.attach(channel, as: .client)
        return channel
    }

    /// Whether the link's messages travel through a ``ManagerChannel``.
    var usesChannel: Bool { requests != nil }

    /// The bytes of requests written to the channel that the manager has not read yet (0 without a
    /// channel): read without any lock, so that a test can see a writer stuck on a full ring.
    var unreadRequestBytes: Int { requests?.unreadBytes ?? 0 }

    /// How many calls wait for their reply.
    var pendingCalls: Int { state.withLock { $0.pending.count } }

    deinit {
        sem_destroy(turnPassed)
        turnPassed.deallocate()
    }

    /// Sends `request` (its id is filled in here) and waits for its reply.
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable`` when the connection is or gets lost;
    ///   ``MultiprocessingError/Code/transport`` when the request cannot be encoded; `CancellationError`
    ///   when the calling task is cancelled (the manager may still run the call; its reply is dropped).
    func call(_ request: ManagerRequest) async throws -> ManagerReply {
        var request = request
        let id = state.withLock { state -> UInt64 in
            defer { state.nextID += 1 }
            return state.nextID
        }
        request.id = id
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ManagerReply, any Error>) in
                let failure = state.withLock { state -> MultiprocessingError? in
                    if let failure = state.failure { return failure }
                    state.pending[id] = continuation
                    return nil
                }
                if let failure { return continuation.resume(throwing: failure) }
                if Task.isCancelled { return finish(id, throwing: CancellationError()) }
                // A request with room for it now goes out on the calling thread; any other is written by
                // the writer's own thread: the calling task waits without holding one (see ManagerWriter).
                writer.send(ManagerSender.message(request.write)) { [self] outcome, atOnce in sent(outcome, id, readingReply: atOnce) }
            }
        } onCancel: {
            finish(id, throwing: CancellationError())
        }
    }

    /// After call `id`'s request was written (or failed to be): fails the call, or loses the link, or
    /// sees that its reply is read: on this thread when `readingReply` (see `readOwnReply`), else by the
    /// reader thread (the writer's thread, which wrote it, goes on with the requests queued after it).
    private func sent(_ outcome: Result<Void, any Error>, _ id: UInt64, readingReply: Bool) {
        do {
            try outcome.get()
        } catch {
            return lose("sending to it failed: \(error)")
        }
        guard takeReadTurn() else { return }
        if readingReply {
            readOwnReply(id, sentAt: Deadline.monotonicNow())
        } else {
            passTurn()
        }
    }

    /// Takes the read turn if nobody holds it (and the link is not lost).
    private func takeReadTurn() -> Bool {
        state.withLock { state -> Bool in
            guard !state.reading, state.failure == nil else { return false }
            state.reading = true
            return true
        }
    }

    /// With the read turn: reads until call `id` (sent at `sent`) is answered, for at most
    /// ``ownReplyWait``; then passes the turn on if calls are still pending.
    private func readOwnReply(_ id: UInt64, sentAt sent: UInt64) {
        // The request went out through the writer: the receive spins for the manager's usual answer time.
        reader.answerExpected(sentAt: sent)
        let deadline = Deadline.after(Self.ownReplyWait)
        while state.withLock({ $0.pending[id] != nil }) {
            guard let left = deadline.remainingNanoseconds, left > 0 else { break }
            do {
                dispatch(try reader.receive(timeout: .nanoseconds(left), ManagerReply.init(reading:)))
            } catch let error as MultiprocessingError where error.code == .timedOut {
                break
            } catch {
                return lost(reading: error)
            }
        }
        passTurn()
    }

    /// Gives up the read turn: to the reader thread while calls are pending, else to nobody.
    private func passTurn() {
        let start = state.withLock { state -> Bool? in
            guard !state.pending.isEmpty, state.failure == nil else {
                state.reading = false
                return nil
            }
            defer { state.readerStarted = true }
            return !state.readerStarted
        }
        guard let start else { return }
        // A thread started directly: the callers may hold every thread of the cooperative pool (a
        // child's tasks all run on its main thread), blocked writing requests while the manager waits for
        // room to write the replies that this thread reads.
        if start {
            do { try startThread { [self] in readForOthers() } } catch {
                return lose("its replies cannot be read: \(error)")
            }
        }
        sem_post(turnPassed)
    }

    /// The reader thread: each time it is given the read turn, reads until no call is pending.
    private func readForOthers() {
        while true {
            while sem_wait(turnPassed) != 0 {}
            while true {
                let done = state.withLock { state -> Bool in
                    if state.failure != nil { return true }
                    if state.pending.isEmpty { state.reading = false }
                    return state.pending.isEmpty
                }
                if done { break }
                do {
                    dispatch(try reader.receive(ManagerReply.init(reading:)))
                } catch {
                    lost(reading: error)
                    break
                }
            }
            if isLost { return }
        }
    }

    private func dispatch(_ reply: ManagerReply) { finish(reply.id, .success(reply)) }

    private func lost(reading error: any Error) {
        if let error = error as? MultiprocessingError, error.code == .endOfFile {
            lose("it closed the connection (it shut down or its process ended)")
        } else {
            lose("\(error)")
        }
    }

    /// Ends the pending call `id`, if it is still pending, with `error`.
    private func finish(_ id: UInt64, throwing error: any Error) { finish(id, .failure(error)) }

    /// Ends the pending call `id`, if it is still pending, with `outcome`.
    private func finish(_ id: UInt64, _ outcome: Result<ManagerReply, any Error>) {
        state.withLock { $0.pending.removeValue(forKey: id) }?.resume(with: outcome)
    }

    /// Fails every pending and later call on this link, and closes it.
    func lose(_ why: String) {
        let error = MultiprocessingError(.managerUnavailable, "the manager at \(address) is unavailable: \(why)")
        let (pending, wakeReader) = state.withLock { state -> ([CheckedContinuation<ManagerReply, any Error>], Bool) in
            let first = state.failure == nil
            if first { state.failure = error }
            defer { state.pending = [:] }
            return (Array(state.pending.values), first && state.readerStarted)
        }
        for continuation in pending { continuation.resume(throwing: error) }
        // Wakes a reading party, which then finds the link failed; the descriptors close with the link.
        if let fd = try? reader.connection.fileno { shutdown(fd, Int32(SHUT_RDWR)) }
        if wakeReader { sem_post(turnPassed) }
        onLoss(self)
    }

    /// Whether the link lost its connection.
    var isLost: Bool { state.withLock { $0.failure != nil } }
}
