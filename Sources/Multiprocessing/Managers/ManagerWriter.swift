#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The sending side of one manager connection, shared by everyone who sends on it (a link's calls, a
/// server's replies to one client): writes each message whole and in order, and never makes a caller
/// wait for room.
///
/// A message goes out on the caller's thread when nothing is queued or being written and there is room
/// for all of it now. Any other message (one larger than a channel's ring never has room) joins a queue,
/// which a thread of its own writes in order, waiting for room as long as the other side takes to make it. So a task
/// thread is never held by a peer that stops reading: a SIGSTOPped client cannot hold the threads a
/// manager runs its other clients' calls on, nor a stalled manager a caller's. (A child's tasks all run
/// on its main thread, and a manager process's on one or two: before, a large reply to a client that
/// read nothing held one of them until the client read or died.)
final class ManagerWriter: @unchecked Sendable {
    /// The sender, used only by the party that holds the turn: a caller inside `state`'s lock that writes
    /// at once, or the queue's thread while `draining`.
    let sender: ManagerSender
    private let state = Mutex(State())

    /// Work for the sender, in the order it was handed in.
    typealias Job = @Sendable (ManagerSender) -> Void

    private struct State {
        var queue: [Job] = []
        /// Whether the queue's thread holds the sender.
        var draining = false
    }

    init(_ sender: ManagerSender) { self.sender = sender }

    /// Sends `message` (whole frames, from ``ManagerSender/message(_:)``) and hands the outcome to `then`,
    /// with whether the message went out on this thread. `then` runs without any lock held.
    func send(_ message: [UInt8], then: @escaping @Sendable (_ outcome: Result<Void, any Error>, _ atOnce: Bool) -> Void) {
        let outcome = state.withLock { state -> Result<Void, any Error>? in
            guard state.queue.isEmpty, !state.draining, sender.hasRoom(for: message.count) else { return nil }
            return Result { try sender.put(message) }
        }
        if let outcome { return then(outcome, true) }
        enqueue { sender in then(Result { try sender.put(message) }, false) }
    }

    /// Runs `job` with the sender after every message handed in before it (at once when there is none).
    func perform(_ job: @escaping Job) {
        let ran = state.withLock { state -> Bool in
            guard state.queue.isEmpty, !state.draining else { return false }
            job(sender)
            return true
        }
        if !ran { enqueue(job) }
    }

    /// Queues `job`, and starts the queue's thread if it is not running. When no thread can start, the
    /// caller writes the queue itself (waiting, as every caller did before the queue).
    private func enqueue(_ job: @escaping Job) {
        let start = state.withLock { state -> Bool in
            state.queue.append(job)
            defer { state.draining = true }
            return !state.draining
        }
        guard start else { return }
        do {
            try startThread { [self] in drain() }
        } catch {
            drain()
        }
    }

    /// Runs the queued jobs in order until the queue is empty.
    private func drain() {
        while true {
            let job = state.withLock { state -> Job? in
                guard !state.queue.isEmpty else {
                    state.draining = false
                    return nil
                }
                return state.queue.removeFirst()
            }
            guard let job else { return }
            job(sender)
        }
    }
}
