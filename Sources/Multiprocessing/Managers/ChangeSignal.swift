import Synchronization

/// Lets an actor's method wait, without holding the actor, until another call changes its state: a
/// condition variable for the ready-made shared objects (queue, lock, event).
///
/// The waiter registers while it still runs on the actor (the `isolation` parameter), so a change made
/// by the next call on the actor cannot slip in between the check and the wait. A wait ends on
/// ``notifyAll()``, at its deadline, or when its task is cancelled (a caller that left).
final class ChangeSignal: Sendable {
    private let state = Mutex(State())

    private struct State {
        var next: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        /// Waits ended (cancelled, timed out) before they registered.
        var endedEarly: Set<UInt64> = []
    }

    /// Waits for the next ``notifyAll()``; returns false when `deadline` passed first or the task was
    /// cancelled. Callers check their condition again either way.
    func wait(until deadline: ContinuousClock.Instant?, isolation: isolated (any Actor)? = #isolation) async -> Bool {
        if Task.isCancelled { return false }
        if let deadline, deadline <= .now { return false }
        let id = state.withLock { state -> UInt64 in
            defer { state.next += 1 }
            return state.next
        }
        let timer = deadline.map { deadline in
            Task { [self] in
                guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
                resume(id)
            }
        }
        defer {
            timer?.cancel()
            state.withLock { _ = $0.endedEarly.remove(id) }
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation(isolation: isolation) { (continuation: CheckedContinuation<Void, Never>) in
                let ended = state.withLock { state in
                    if state.endedEarly.remove(id) != nil { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if ended { continuation.resume() }
            }
        } onCancel: {
            resume(id)
        }
        if Task.isCancelled { return false }
        if let deadline, deadline <= .now { return false }
        return true
    }

    /// Wakes every waiter.
    func notifyAll() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    private func resume(_ id: UInt64) {
        state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiters.removeValue(forKey: id) else {
                state.endedEarly.insert(id)
                return nil
            }
            return waiter
        }?.resume()
    }
}
