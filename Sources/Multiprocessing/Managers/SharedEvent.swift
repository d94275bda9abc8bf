import Distributed

/// A flag that processes set, clear and wait for, hosted by a manager (Python's `manager.Event()`).
public distributed actor SharedEvent: SharedObject {
    private var flag = false
    private let changed = ChangeSignal()

    /// Makes the event in its manager (cleared); use ``SharedObjectManager/makeEvent()``.
    public init(actorSystem: ManagerActorSystem) {
        self.actorSystem = actorSystem
    }

    /// Sets the flag and wakes every waiter.
    public distributed func set() {
        flag = true
        changed.notifyAll()
    }

    /// Clears the flag.
    public distributed func clear() { flag = false }

    /// Whether the flag is set.
    public distributed func isSet() -> Bool { flag }

    /// Waits until the flag is set or `timeout` passes (nil waits without limit); returns the flag.
    public distributed func wait(timeout: Duration?) async -> Bool {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while !flag {
            guard await changed.wait(until: deadline) else { return flag }
        }
        return true
    }
}

extension SharedObjectManager {
    /// Makes a cleared ``SharedEvent`` in the manager (Python's `manager.Event()`).
    ///
    /// - Throws: ``MultiprocessingError/Code/managerUnavailable``.
    public func makeEvent() async throws -> SharedEvent { try await make(SharedEvent.self) }
}
