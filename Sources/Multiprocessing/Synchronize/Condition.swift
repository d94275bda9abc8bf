#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A condition variable shared by processes: Python's `multiprocessing.Condition`.
///
/// It pairs a lock (by default a new ``ProcessRLock``, as in Python; or a ``ProcessLock`` you give it) with a queue
/// of waiters. Hold the lock, check the shared state, and ``wait(timeout:)-3mwe1`` until another process
/// changes it and calls ``notify(_:)`` or ``notifyAll()``:
///
/// ```swift
/// try condition.withLock {
///     try condition.wait(until: { !items.isEmpty }, timeout: .seconds(5))
///     ...
/// }
/// ```
///
/// Waiters are woken oldest first, and `notify(n)` wakes exactly `min(n, waiters)` of them: a woken
/// `wait` returns `true`, a timed-out one `false`. At most 248 processes or threads may wait at once.
///
/// The lock is robust like ``ProcessLock``: when a process dies holding it, the next process to acquire it
/// (or to wake from a wait) takes it over, and ``previousOwnerDied`` is `true`. A waiter whose process
/// died while waiting is skipped by ``notify(_:)`` (the notification goes to a live waiter) and its
/// slot is freed; only a waiter that dies after being notified and before its `wait` returns takes
/// that notification with it, as a waiter that returned and then died would.
///
/// The `async` forms need a condition built on a ``ProcessLock``: a ``ProcessRLock`` belongs to a thread, and a
/// task may change threads at any `await`.
public final class ProcessCondition: ProcessLocking, @unchecked Sendable, Codable {
    private enum Underlying: @unchecked Sendable {
        case lock(ProcessLock)
        case rlock(ProcessRLock)
    }

    private let underlying: Underlying
    private let region: SharedRegion

    private enum SlotState: UInt32 { case free = 0, waiting = 1, notified = 2 }
    private static let slotCount = (SharedRegion.size - 128) / 16
    private var nextOrder: UnsafeMutablePointer<Atomic<UInt32>> { region.atomic32(SharedRegion.dataOffset) }

    /// A condition with a new ``ProcessRLock``, as Python's `Condition()`.
    /// - Throws: ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public convenience init() throws { try self.init(.rlock(ProcessRLock())) }

    /// A condition over an existing ``ProcessLock``.
    public convenience init(lock: ProcessLock) throws { try self.init(.lock(lock)) }

    /// A condition over an existing ``ProcessRLock``.
    public convenience init(lock: ProcessRLock) throws { try self.init(.rlock(lock)) }

    private init(_ underlying: Underlying, region: SharedRegion? = nil) throws {
        self.underlying = underlying
        self.region = try region ?? SharedRegion(.condition)
    }

    // MARK: The lock

    /// Acquires the condition's lock. See ``ProcessLock/acquire(blocking:timeout:)-zcw0``.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) -> Bool {
        switch underlying {
        case .lock(let lock): lock.acquire(blocking: blocking, timeout: timeout)
        case .rlock(let lock): lock.acquire(blocking: blocking, timeout: timeout)
        }
    }

    /// Acquires the condition's ``ProcessLock`` without blocking a thread. Cancellation acts as for
    /// ``ProcessLock/acquire(blocking:timeout:)-zcw0``.
    /// - Throws: ``MultiprocessingError/Code/unsupported`` when the condition's lock is a ``ProcessRLock``;
    ///   `CancellationError` when the task is cancelled while waiting;
    ///   ``MultiprocessingError/Code/system`` when no thread could be started to wait on.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) async throws -> Bool {
        try await plainLock().acquire(blocking: blocking, timeout: timeout)
    }

    /// Releases the condition's lock.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when it is not held (by this thread, for a ProcessRLock).
    public func release() throws {
        switch underlying {
        case .lock(let lock): try lock.release()
        case .rlock(let lock): try lock.release()
        }
    }

    /// Runs `body` while holding the condition's ``ProcessLock``, acquired without blocking a thread.
    /// - Throws: ``MultiprocessingError/Code/unsupported`` when the condition's lock is a ``ProcessRLock``;
    ///   `CancellationError` when the task is cancelled while waiting for the lock; what `body` throws.
    public func withLock<R>(
        isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> sending R
    ) async throws -> sending R {
        try await plainLock().withLock(body)
    }

    /// Whether the caller holds the lock after taking it over from a holder that died.
    public var previousOwnerDied: Bool {
        switch underlying {
        case .lock(let lock): lock.previousOwnerDied
        case .rlock(let lock): lock.previousOwnerDied
        }
    }

    // MARK: Waiting

    /// Releases the lock, waits until notified or until `timeout` passes, and takes the lock back
    /// (completely, for a ProcessRLock held several times). Returns whether it was notified.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when the caller does not hold the lock, or
    ///   when 248 others are already waiting.
    @discardableResult
    public func wait(timeout: Duration? = nil) throws -> Bool { try wait(until: .after(timeout)) }

    /// Like ``wait(timeout:)``, without blocking a thread: the wait runs on a small shared set of
    /// threads however many tasks wait.
    ///
    /// **Cancellation.** Cancelling the task ends the wait promptly: the call takes the lock back (the
    /// caller holds it whenever `wait` returns or throws, so an enclosing `withLock` stays correct),
    /// gives its waiter slot up, hands a notification it had just received on to another waiter, and
    /// throws `CancellationError`. It returns normally when it was notified and had the lock back
    /// before the cancellation was seen.
    /// - Throws: also ``MultiprocessingError/Code/unsupported`` when the condition's lock is a ``ProcessRLock``;
    ///   `CancellationError` when the task is cancelled while waiting;
    ///   ``MultiprocessingError/Code/system`` when no thread could be started to wait on.
    @discardableResult
    public func wait(timeout: Duration? = nil) async throws -> Bool { try await wait(until: .after(timeout)) }

    /// Waits until `predicate` is true (Python's `wait_for`): checks it, then waits and checks again
    /// after each wake-up, until it holds or `timeout` passes. Returns the predicate's last value.
    /// Call it holding the lock; the predicate runs with the lock held.
    @discardableResult
    public func wait(until predicate: () throws -> Bool, timeout: Duration? = nil) throws -> Bool {
        let deadline = Deadline.after(timeout)
        while try !predicate() {
            if deadline.hasPassed { return false }
            try wait(until: deadline)
        }
        return true
    }

    /// Like ``wait(until:timeout:)``, without blocking a thread. Cancellation acts as for ``wait(timeout:)-3mwe1``.
    /// - Throws: also ``MultiprocessingError/Code/unsupported`` when the condition's lock is a ``ProcessRLock``;
    ///   `CancellationError` when the task is cancelled while waiting;
    ///   ``MultiprocessingError/Code/system`` when no thread could be started to wait on.
    @discardableResult
    public func wait(
        isolation: isolated (any Actor)? = #isolation, until predicate: () throws -> Bool, timeout: Duration? = nil
    ) async throws -> Bool {
        let deadline = Deadline.after(timeout)
        while try !predicate() {
            if deadline.hasPassed { return false }
            try await wait(until: deadline)
        }
        return true
    }

    @discardableResult
    private func wait(until deadline: Deadline) throws -> Bool {
        let (slot, saved) = try enqueue()
        sleep(on: slot, until: deadline)
        switch underlying {
        case .lock(let lock): lock.acquire()
        case .rlock(let lock): lock.reacquire(level: saved)
        }
        return dequeue(slot)
    }

    @discardableResult
    private func wait(until deadline: Deadline) async throws -> Bool {
        let lock = try plainLock()
        let (slot, _) = try enqueue()
        do {
            _ = try await WaitPool.shared.wait(
                until: deadline, interrupt: { Futex.wake(Futex.address(self.state(slot))) }
            ) { sliceEnd, index in
                self.sleepStep(on: slot, until: sliceEnd, index: index) ? true : nil
            }
        } catch {
            // Cancelled: take the lock back (the caller holds it when wait returns or throws), give the
            // slot up, and pass a notification it received on to another waiter.
            _ = try? await lock.ownership.acquireAsync(as: OwnerCheck.me, until: .never, cancellable: false)
            if dequeue(slot) { try? notify(1) }
            throw error
        }
        _ = try await lock.ownership.acquireAsync(as: OwnerCheck.me, until: .never, cancellable: false)
        return dequeue(slot)
    }

    /// Wakes the `count` longest-waiting waiters (fewer if fewer wait). Call it holding the lock.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when the caller does not hold the lock.
    public func notify(_ count: Int = 1) throws {
        try checkHeld("notify")
        var woken = 0
        while woken < count {
            var oldest: Int?
            var oldestAge: UInt32 = 0
            let next = nextOrder.pointee.load(ordering: .relaxed)
            for slot in 0..<Self.slotCount where isWaiting(slot) {
                let age = next &- order(slot).pointee.load(ordering: .relaxed)
                if oldest == nil || age > oldestAge { (oldest, oldestAge) = (slot, age) }
            }
            guard let oldest else { return }
            if wakeIfAlive(oldest) { woken += 1 }
        }
    }

    /// Wakes every waiter. Call it holding the lock.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when the caller does not hold the lock.
    public func notifyAll() throws {
        try checkHeld("notify")
        for slot in 0..<Self.slotCount where isWaiting(slot) {
            wakeIfAlive(slot)
        }
    }

    // MARK: Internals

    /// How many waiter slots are taken (waiting or notified, not yet given back).
    var takenSlots: Int {
        (0..<Self.slotCount).count { state($0).pointee.load(ordering: .relaxed) != SlotState.free.rawValue }
    }

    private func state(_ slot: Int) -> UnsafeMutablePointer<Atomic<UInt32>> { region.atomic32(128 + slot * 16) }
    private func order(_ slot: Int) -> UnsafeMutablePointer<Atomic<UInt32>> { region.atomic32(128 + slot * 16 + 4) }
    private func waiter(_ slot: Int) -> UnsafeMutablePointer<Atomic<UInt64>> { region.atomic64(128 + slot * 16 + 8) }
    private func isWaiting(_ slot: Int) -> Bool {
        state(slot).pointee.load(ordering: .relaxed) == SlotState.waiting.rawValue
    }

    private func plainLock() throws -> ProcessLock {
        guard case .lock(let lock) = underlying else {
            throw MultiprocessingError(
                .unsupported,
                "a ProcessRLock belongs to a thread, so its ProcessCondition has no async forms; "
                    + "use ProcessCondition(lock: ProcessLock())")
        }
        return lock
    }

    private func checkHeld(_ operation: String) throws {
        let held = switch underlying {
        case .lock(let lock): lock.ownership.owner == OwnerCheck.me
        case .rlock(let lock): lock.isHeldByCaller()
        }
        guard held else {
            throw MultiprocessingError(.invalidState, "cannot \(operation) without holding the condition's lock")
        }
    }

    /// Takes a waiter slot and releases the lock; returns the slot and the ProcessRLock level to restore.
    private func enqueue() throws -> (slot: Int, level: UInt32) {
        try checkHeld("wait")
        guard let slot = freeSlot() ?? freeSlotsOfDeadWaiters() else {
            throw MultiprocessingError(.invalidState, "more than \(Self.slotCount) waiters on one ProcessCondition")
        }
        order(slot).pointee.store(nextOrder.pointee.add(1, ordering: .relaxed).oldValue, ordering: .relaxed)
        waiter(slot).pointee.store(OwnerCheck.me, ordering: .relaxed)
        state(slot).pointee.store(SlotState.waiting.rawValue, ordering: .releasing)
        switch underlying {
        case .lock(let lock):
            lock.ownership.release()
            return (slot, 1)
        case .rlock(let lock):
            return (slot, lock.releaseCompletely())
        }
    }

    private func freeSlot() -> Int? {
        (0..<Self.slotCount).first { state($0).pointee.load(ordering: .relaxed) == SlotState.free.rawValue }
    }

    /// Frees the slots of waiters whose process has ended, waiting or notified; returns one of them.
    private func freeSlotsOfDeadWaiters() -> Int? {
        var freed: Int?
        for slot in 0..<Self.slotCount
        where state(slot).pointee.load(ordering: .relaxed) != SlotState.free.rawValue
            && !OwnerCheck.isAlive(waiter(slot).pointee.load(ordering: .relaxed)) {
            state(slot).pointee.store(SlotState.free.rawValue, ordering: .relaxed)
            freed = freed ?? slot
        }
        return freed
    }

    private func sleep(on slot: Int, until deadline: Deadline) {
        var index = 0
        while !sleepStep(on: slot, until: deadline, index: index), !deadline.hasPassed { index += 1 }
    }

    /// One step of a wait in `slot` (the `index`th, counting from 0): spins on the first, then sleeps
    /// once until woken or `sliceEnd`. Returns whether the slot was notified.
    private func sleepStep(on slot: Int, until sliceEnd: Deadline, index: Int) -> Bool {
        let word = state(slot)
        let waiting = SlotState.waiting.rawValue
        if index == 0, Futex.spin(until: { word.pointee.load(ordering: .acquiring) != waiting }) { return true }
        if word.pointee.load(ordering: .acquiring) == waiting {
            Futex.wait(Futex.address(word), expected: waiting, until: sliceEnd)
        }
        return word.pointee.load(ordering: .acquiring) != waiting
    }

    /// Wakes the waiter in `slot` when its process is alive; frees the slot of one that died waiting,
    /// so the notification goes to a live waiter instead. Returns whether it woke one.
    @discardableResult
    private func wakeIfAlive(_ slot: Int) -> Bool {
        let waiter = waiter(slot).pointee.load(ordering: .relaxed)
        guard waiter == OwnerCheck.me || OwnerCheck.isAlive(waiter) else {
            state(slot).pointee.store(SlotState.free.rawValue, ordering: .relaxed)
            return false
        }
        wake(slot)
        return true
    }

    private func wake(_ slot: Int) {
        state(slot).pointee.store(SlotState.notified.rawValue, ordering: .releasing)
        Futex.wake(Futex.address(state(slot)), count: 1)
    }

    /// Gives the slot back (holding the lock again); returns whether the waiter was notified.
    @discardableResult
    private func dequeue(_ slot: Int) -> Bool {
        state(slot).pointee.exchange(SlotState.free.rawValue, ordering: .acquiring) == SlotState.notified.rawValue
    }

    // MARK: Crossing a process boundary

    private enum CodingKeys: String, CodingKey { case lock, rlock, state }

    /// Encodes the condition and its lock for a child's task or a ``Connection/send(_:)-70itn`` message.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch underlying {
        case .lock(let lock): try container.encode(lock, forKey: .lock)
        case .rlock(let lock): try container.encode(lock, forKey: .rlock)
        }
        try region.encode(to: container.superEncoder(forKey: .state))
    }

    /// Decodes a condition sent by another process: the same condition and lock, shared.
    public convenience init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let underlying: Underlying = if container.contains(.lock) {
            .lock(try container.decode(ProcessLock.self, forKey: .lock))
        } else {
            .rlock(try container.decode(ProcessRLock.self, forKey: .rlock))
        }
        try self.init(underlying, region: SharedRegion(.condition, from: container.superDecoder(forKey: .state)))
    }
}
