#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// This process's one connection to one manager, shared by every call to that manager's objects.
///
/// Replies are read by a thread of the link's own, in blocking receives (which spin briefly before they
/// sleep), not by a task on the event loop: one thread per (process, manager), never one per call.
/// Measured with `mp-bench --filter manager-actor-call` on a busy 2-CPU machine: about 9,000 calls/s
/// this way against about 5,700 with the reply awaited on the event loop, whose thread then wakes the
/// caller's (one wake-up more per call).
///
/// Each call sends a request with a fresh id and suspends; a reading task resumes the call whose id a
/// reply carries, so calls from many tasks overlap on the one connection. When the connection is lost
/// (the manager died or shut down, the network dropped) every pending call fails at once with
/// ``MultiprocessingError/Code/managerUnavailable``, and the link is dropped so that the next call
/// connects again.
final class ManagerLink: @unchecked Sendable {
    let address: ConnectionAddress
    /// A second descriptor for the same socket, for sending; a lock keeps whole messages from interleaving.
    private let writer: Mutex<Connection>
    /// The receiving end, read only by the reading task.
    private let reader: Connection
    private let state = Mutex(State())
    private let onLoss: @Sendable (ManagerLink) -> Void

    private struct State {
        var nextID: UInt64 = 1
        var pending: [UInt64: CheckedContinuation<ManagerReply, any Error>] = [:]
        var failure: MultiprocessingError?
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
        reader = connection
        writer = Mutex(try Connection(adopting: try Syscall.duplicate(try connection.fileno), readable: false, writable: true))
        Task.detached { [self] in _ = try? await withBlockingThread { self.readReplies() } }
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
                do {
                    try writer.withLock { try $0.send(request) }
                } catch let error as MultiprocessingError where error.code == .transport {
                    finish(id, throwing: error)
                } catch {
                    lose("sending to it failed: \(error)")
                }
            }
        } onCancel: {
            finish(id, throwing: CancellationError())
        }
    }

    /// Ends the pending call `id`, if it is still pending, with `error`.
    private func finish(_ id: UInt64, throwing error: any Error) {
        state.withLock { $0.pending.removeValue(forKey: id) }?.resume(throwing: error)
    }

    private func readReplies() {
        while true {
            let reply: ManagerReply
            do {
                reply = try reader.recv(ManagerReply.self)
            } catch let error as MultiprocessingError where error.code == .endOfFile {
                return lose("it closed the connection (it shut down or its process ended)")
            } catch {
                return lose("\(error)")
            }
            state.withLock { $0.pending.removeValue(forKey: reply.id) }?.resume(returning: reply)
        }
    }

    /// Fails every pending and later call on this link, and closes it.
    func lose(_ why: String) {
        let error = MultiprocessingError(.managerUnavailable, "the manager at \(address) is unavailable: \(why)")
        let pending = state.withLock { state -> [CheckedContinuation<ManagerReply, any Error>] in
            if state.failure == nil { state.failure = error }
            defer { state.pending = [:] }
            return Array(state.pending.values)
        }
        for continuation in pending { continuation.resume(throwing: error) }
        // Wakes the reading task, which then finds the link failed; the descriptors close with the link.
        if let fd = try? reader.fileno { shutdown(fd, Int32(SHUT_RDWR)) }
        onLoss(self)
    }

    /// Whether the link lost its connection.
    var isLost: Bool { state.withLock { $0.failure != nil } }
}
