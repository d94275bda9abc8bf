import Distributed

/// A lock hosted by a manager (Python's `manager.Lock()`): any process may release it, as in Python,
/// and, beyond Python, a lock whose holder's process ends (or disconnects) is released, so a killed
/// holder never blocks the others forever.
public distributed actor SharedLock: SharedObject {
    /// The connection that holds the lock (0 for a holder in the manager's own process), or nil.
    private var holder: UInt64?
    private var holderLeft = false
    private let changed = ChangeSignal()

    /// Makes the lock in its manager (unlocked); use ``SharedObjectManager/makeLock()``.
    public init(actorSystem: ManagerActorSystem) {
        self.actorSystem = actorSystem
    }

    /// Takes the lock, waiting up to `timeout` (nil waits without limit, zero does not wait); returns
    /// whether it was taken.
    public distributed func acquire(timeout: Duration?) async -> Bool {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while holder != nil {
            guard await changed.wait(until: deadline) else { break }
        }
        guard holder == nil, !Task.isCancelled else { return false }
        holder = ManagerActorSystem.currentCaller ?? 0
        return true
    }

    /// Releases the lock, whoever took it.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when it is not locked (Python's
    ///   `RuntimeError: release unlocked lock`).
    public distributed func release() throws {
        guard holder != nil else { throw MultiprocessingError(.invalidState, "release of an unlocked lock") }
        holder = nil
        holderLeft = false
        changed.notifyAll()
    }

    /// Whether the lock is held.
    public distributed func isLocked() -> Bool { holder != nil }

    /// Whether the lock was last released because its holder's process ended or disconnected (rather
    /// than by ``release()``), so that the next holder can check what it protects.
    public distributed func previousHolderLeft() -> Bool { holderLeft }
}

extension SharedLock: CallerAwareObject {
    func callerLeft(_ caller: UInt64) async {
        guard holder == caller else { return }
        holder = nil
        holderLeft = true
        changed.notifyAll()
    }
}

extension SharedObjectManager {
    /// Makes an unlocked ``SharedLock`` in the manager (Python's `manager.Lock()`).
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable``.
    public func makeLock() async throws -> SharedLock { try await make(SharedLock.self) }
}
