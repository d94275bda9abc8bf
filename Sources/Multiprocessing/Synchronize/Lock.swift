#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The ownership word of a lock that survives its holder: 64 bits in shared memory.
///
/// Zero when free. Otherwise the low 32 bits hold the holder's pid, plus bit 30 ("the previous holder
/// died; this holding took over") and bit 31 ("someone may be asleep on the word"); the high 32 bits
/// hold the holder's start time, so a reused pid is never mistaken for the holder. Contended waiters
/// spin briefly, then sleep on a futex over the low half. While they sleep they wake now and then
/// (2 ms, doubling to 100 ms) to check that the holder is still alive; if it is not, one of them
/// takes the lock over with a single compare-and-swap.
struct OwnershipWord: @unchecked Sendable {
    static let sleepers: UInt64 = 1 << 31
    static let ownerDied: UInt64 = 1 << 30
    static let flags = sleepers | ownerDied

    let word: UnsafeMutablePointer<Atomic<UInt64>>

    /// The holder's identity without flags, or 0 when free.
    var owner: UInt64 { word.pointee.load(ordering: .relaxed) & ~Self.flags }

    /// Whether `identity` holds the word after taking it over from a dead holder.
    func tookOver(_ identity: UInt64) -> Bool {
        let value = word.pointee.load(ordering: .relaxed)
        return value & Self.ownerDied != 0 && value & ~Self.flags == identity
    }

    @inline(__always)
    func tryAcquire(as identity: UInt64) -> Bool {
        word.pointee.compareExchange(expected: 0, desired: identity, ordering: .acquiring).exchanged
    }

    /// Python's acquire: false when not acquired (not blocking, or the deadline passed).
    @inline(__always) @discardableResult
    func acquire(as identity: UInt64, blocking: Bool, timeout: Duration?) -> Bool {
        tryAcquire(as: identity) || (blocking && acquireContended(as: identity, until: .after(timeout)))
    }

    /// Waits for the word (spin, then futex), taking it over if its holder died.
    func acquireContended(as identity: UInt64, until deadline: Deadline) -> Bool {
        var index = 0
        let schedule = OwnerCheck.Schedule()
        while !acquireStep(as: identity, until: deadline, index: index, schedule: schedule) {
            if deadline.hasPassed { return false }
            index += 1
        }
        return true
    }

    /// One step of a wait (the `index`th, counting from 0): spins on the first, then takes the word if
    /// it is free or sleeps once on it, until woken, `sliceEnd` or the next look at the holder's
    /// liveness (by `schedule`); takes the word over if that look finds the holder dead. Returns
    /// whether it took the word.
    func acquireStep(as identity: UInt64, until sliceEnd: Deadline, index: Int, schedule: OwnerCheck.Schedule) -> Bool {
        if index == 0, !sliceEnd.hasPassed,
           Futex.spin(until: { word.pointee.load(ordering: .relaxed) == 0 && tryAcquire(as: identity) }) {
            return true
        }
        while true {
            var current = word.pointee.load(ordering: .relaxed)
            if current == 0 {
                // Others may be asleep too: keep the flag so that the release wakes one of them.
                let desired = identity | Self.sleepers
                if word.pointee.compareExchange(expected: 0, desired: desired, ordering: .acquiring).exchanged {
                    return true
                }
                continue
            }
            if current & Self.sleepers == 0 {
                let flagged = current | Self.sleepers
                guard word.pointee.compareExchange(expected: current, desired: flagged, ordering: .relaxed).exchanged
                else { continue }
                current = flagged
            }
            let wakeUp = sliceEnd.earlier(schedule.next)
            if Futex.wait(Futex.lowHalf(word), expected: UInt32(truncatingIfNeeded: current), until: wakeUp) {
                return tryAcquireFlagged(as: identity)
            }
            return schedule.isDue() ? takeOverIfDead(observed: current, as: identity) : tryAcquireFlagged(as: identity)
        }
    }

    /// Takes the word if it is free, marking that others may sleep on it.
    private func tryAcquireFlagged(as identity: UInt64) -> Bool {
        word.pointee.compareExchange(expected: 0, desired: identity | Self.sleepers, ordering: .acquiring).exchanged
    }

    /// Wakes every sleeper on the word: a spurious wake-up for all but a cancelled async waiter.
    func interruptSleepers() { Futex.wake(Futex.lowHalf(word)) }

    /// Waits on ``WaitPool`` for the word, taking it over if its holder died. Returns false when
    /// `deadline` passed first.
    /// - Throws: `CancellationError` when `cancellable` and the task was cancelled before it took the word.
    func acquireAsync(as identity: UInt64, until deadline: Deadline, cancellable: Bool = true) async throws -> Bool {
        if tryAcquire(as: identity) { return true }
        let schedule = OwnerCheck.Schedule()
        let taken = try await WaitPool.shared.wait(
            until: deadline, cancellable: cancellable, interrupt: { self.interruptSleepers() }
        ) { sliceEnd, index in
            self.acquireStep(as: identity, until: sliceEnd, index: index, schedule: schedule) ? true : nil
        }
        return taken ?? false
    }

    /// Takes the word over when it still holds `observed` and that holder has died.
    private func takeOverIfDead(observed: UInt64, as identity: UInt64) -> Bool {
        let current = word.pointee.load(ordering: .relaxed)
        guard current != 0, current & ~Self.flags == observed & ~Self.flags,
              !OwnerCheck.isAlive(current & ~Self.flags)
        else { return false }
        let desired = identity | Self.sleepers | Self.ownerDied
        let taken = word.pointee.compareExchange(expected: current, desired: desired, ordering: .acquiring).exchanged
        if taken { diagnostics.notice("took over a lock whose holder (process identity \(current & ~Self.flags)) died") }
        return taken
    }

    /// Frees the word and wakes a sleeper if there may be one; returns the value it held.
    @inline(__always) @discardableResult
    func release() -> UInt64 {
        let old = word.pointee.exchange(0, ordering: .releasing)
        if old & Self.sleepers != 0 { Futex.wake(Futex.lowHalf(word), count: 1) }
        return old
    }
}

/// A primitive held between ``acquire(blocking:timeout:)`` and ``release()``: ``ProcessLock``,
/// ``ProcessRLock``, ``ProcessSemaphore`` (holding one unit) and ``ProcessCondition`` (holding its lock).
/// Like Foundation's `NSLocking`, it brings ``withLock(_:)``.
public protocol ProcessLocking: AnyObject, Sendable {
    /// Acquires, waiting at most `timeout` (nil: as long as it takes) when `blocking`. Returns whether
    /// it acquired.
    @discardableResult
    func acquire(blocking: Bool, timeout: Duration?) -> Bool
    /// Releases what ``acquire(blocking:timeout:)`` acquired.
    func release() throws
}

extension ProcessLocking {
    /// Runs `body` between an acquire (waiting as long as it takes) and a release: Python's
    /// `with lock:`. The release happens even when `body` throws.
    @inlinable
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        acquire(blocking: true, timeout: nil)
        defer { try? release() }
        return try body()
    }
}

/// A lock shared by processes: Python's `multiprocessing.Lock`, made robust.
///
/// Create it before starting children and hand it to them inside their task (any start method; a
/// child may pass it on to its own children). At most one holder at a time, across all processes and
/// all threads of a process: the lock belongs to a process, not a thread, so a second `acquire` in the
/// same process waits like any other, and any thread of the holding process may release it. Any
/// process may release a held lock, as in Python.
///
/// ```swift
/// let lock = try ProcessLock()
/// lock.withLock { counter += 1 }
/// ```
///
/// **When a holder dies.** If the process holding the lock ends without releasing it (killed, crashed,
/// exited), a waiting ``acquire(blocking:timeout:)-zcw0`` takes the lock over within a few milliseconds
/// (at most 100 ms into a long wait) and returns `true`; ``previousOwnerDied`` is then `true` until
/// the new holder releases, so it can check or repair what the lock protected:
///
/// ```swift
/// lock.withLock {
///     if lock.previousOwnerDied { repairSharedState() }
///     ...
/// }
/// ```
///
/// A non-blocking acquire (`blocking: false`) never looks for a dead holder; any acquire that may
/// wait does, including one with a zero timeout.
public final class ProcessLock: ProcessLocking, @unchecked Sendable, Codable, CustomStringConvertible {
    let region: SharedRegion
    let ownership: OwnershipWord

    /// A new, unlocked lock.
    /// - Throws: ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public init() throws {
        region = try SharedRegion(.lock)
        ownership = OwnershipWord(word: region.atomic64(SharedRegion.dataOffset))
    }

    /// Acquires the lock: Python's `acquire(block, timeout)`.
    ///
    /// - Parameters:
    ///   - blocking: when false, returns at once (the timeout is ignored).
    ///   - timeout: how long to wait at most; nil waits as long as it takes.
    /// - Returns: whether the lock was acquired. When it was taken over from a holder that died,
    ///   the result is `true` and ``previousOwnerDied`` says so.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) -> Bool {
        ownership.acquire(as: OwnerCheck.me, blocking: blocking, timeout: timeout)
    }

    /// Acquires the lock without blocking a thread: the wait runs on a small shared set of threads
    /// however many tasks wait. See ``acquire(blocking:timeout:)``.
    ///
    /// **Cancellation.** Cancelling the task ends the wait promptly: it throws `CancellationError` and
    /// the lock is not taken. When the lock was acquired before the cancellation was seen, the call
    /// returns `true` as usual and the caller holds the lock.
    /// - Throws: `CancellationError` when the task is cancelled while waiting;
    ///   ``MultiprocessingError/Code/system`` when no thread could be started to wait on.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) async throws -> Bool {
        let me = OwnerCheck.me
        if ownership.tryAcquire(as: me) { return true }
        guard blocking else { return false }
        return try await ownership.acquireAsync(as: me, until: .after(timeout))
    }

    /// Releases the lock. Any process may release a held lock, as in Python.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when the lock is not held.
    public func release() throws {
        if ownership.release() == 0 {
            throw MultiprocessingError(.invalidState, "release of an unlocked ProcessLock")
        }
    }

    /// Runs `body` while holding the lock, acquired without blocking a thread.
    /// - Throws: `CancellationError` when the task is cancelled while waiting for the lock (`body`
    ///   does not run); what `body` throws.
    public func withLock<R>(
        isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> sending R
    ) async throws -> sending R {
        try await acquire()
        defer { ownership.release() }
        return try await body()
    }

    /// Whether this process holds the lock after taking it over from a holder that died without
    /// releasing it. Stays true until the lock is released.
    public var previousOwnerDied: Bool { ownership.tookOver(OwnerCheck.me) }

    /// Whether any process or thread holds the lock now (CPython 3.14's `locked()`). The answer may be
    /// stale by the time it is read; use it for diagnostics, not to decide whether to acquire.
    public func locked() -> Bool { ownership.owner != 0 }

    /// The pid of the process holding the lock, or nil when it is free.
    public var owner: Int32? {
        let identity = ownership.owner
        return identity == 0 ? nil : Int32(truncatingIfNeeded: identity)
    }

    /// `ProcessLock(owner: 1234)` or `ProcessLock(unlocked)`.
    public var description: String { owner.map { "ProcessLock(owner: \($0))" } ?? "ProcessLock(unlocked)" }

    /// Encodes the lock for a child's task or a ``Connection/send(_:)-70itn`` message.
    public func encode(to encoder: any Encoder) throws { try region.encode(to: encoder) }

    /// Decodes a lock sent by another process: the same lock, shared.
    public init(from decoder: any Decoder) throws {
        region = try SharedRegion(.lock, from: decoder)
        ownership = OwnershipWord(word: region.atomic64(SharedRegion.dataOffset))
    }
}
