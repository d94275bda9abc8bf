#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// A reentrant lock shared by processes: Python's `multiprocessing.RLock`, made robust.
///
/// The thread that holds it may acquire it again; it is free once that thread has released it as many
/// times as it acquired it. Only the holding thread (of the holding process) may release it. Because
/// it belongs to a thread, it has no `async` forms: a Swift task may change threads at any `await`.
/// Use ``ProcessLock`` from async code.
///
/// When the holding process dies, the next acquirer takes it over exactly as with ``ProcessLock``: its
/// acquire returns `true` with a recursion level of 1, and ``previousOwnerDied`` is `true` until
/// it releases the lock completely.
public final class ProcessRLock: ProcessLocking, @unchecked Sendable, Codable, CustomStringConvertible {
    let region: SharedRegion
    let ownership: OwnershipWord
    /// The kernel id of the holding thread (0 when free); written only by the holder.
    private let holderThread: UnsafeMutablePointer<Atomic<UInt32>>
    /// The recursion level; written only by the holder.
    private let level: UnsafeMutablePointer<Atomic<UInt32>>

    /// A new, unlocked reentrant lock.
    /// - Throws: ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public convenience init() throws { try self.init(region: SharedRegion(.rlock)) }

    private init(region: SharedRegion) {
        self.region = region
        ownership = OwnershipWord(word: region.atomic64(SharedRegion.dataOffset))
        holderThread = region.atomic32(SharedRegion.dataOffset + 8)
        level = region.atomic32(SharedRegion.dataOffset + 12)
    }

    /// Acquires the lock, or raises its recursion level when the calling thread holds it already.
    ///
    /// - Parameters:
    ///   - blocking: when false, returns at once (the timeout is ignored).
    ///   - timeout: how long to wait at most; nil waits as long as it takes.
    /// - Returns: whether the lock was acquired (`true` also after taking it over from a dead holder).
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) -> Bool {
        let me = OwnerCheck.me
        if isHeldByCaller(me) {
            level.pointee.add(1, ordering: .relaxed)
            return true
        }
        guard ownership.acquire(as: me, blocking: blocking, timeout: timeout) else { return false }
        take(level: 1)
        return true
    }

    /// Lowers the recursion level and frees the lock when it reaches zero.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when the calling thread does not hold it.
    public func release() throws {
        guard isHeldByCaller(OwnerCheck.me) else {
            throw MultiprocessingError(.invalidState, "cannot release a ProcessRLock that this thread does not hold")
        }
        if level.pointee.subtract(1, ordering: .relaxed).newValue == 0 {
            holderThread.pointee.store(0, ordering: .relaxed)
            ownership.release()
        }
    }

    /// Whether this thread holds the lock after taking it over from a holder that died without
    /// releasing it. Stays true until the lock is released completely.
    public var previousOwnerDied: Bool {
        let me = OwnerCheck.me
        return isHeldByCaller(me) && ownership.tookOver(me)
    }

    /// Whether any process or thread holds the lock now (CPython 3.14's `locked()`). The answer may be
    /// stale by the time it is read; use it for diagnostics, not to decide whether to acquire.
    public func locked() -> Bool { ownership.owner != 0 }

    /// The pid of the process holding the lock, or nil when it is free.
    public var owner: Int32? {
        let identity = ownership.owner
        return identity == 0 ? nil : Int32(truncatingIfNeeded: identity)
    }

    /// The recursion level: 0 when free.
    public var recursionLevel: Int { owner == nil ? 0 : Int(level.pointee.load(ordering: .relaxed)) }

    /// `ProcessRLock(owner: 1234, level: 2)` or `ProcessRLock(unlocked)`.
    public var description: String {
        owner.map { "ProcessRLock(owner: \($0), level: \(recursionLevel))" } ?? "ProcessRLock(unlocked)"
    }

    // MARK: ProcessCondition support

    /// Whether the calling thread of this process holds the lock.
    func isHeldByCaller(_ me: UInt64 = OwnerCheck.me) -> Bool {
        ownership.owner == me && holderThread.pointee.load(ordering: .relaxed) == mp_sync_thread_id()
    }

    /// Records the calling thread as holder at `level` (the ownership word is already taken).
    private func take(level newLevel: UInt32) {
        holderThread.pointee.store(mp_sync_thread_id(), ordering: .relaxed)
        level.pointee.store(newLevel, ordering: .relaxed)
    }

    /// Frees the lock completely for a condition wait; returns the level to restore.
    func releaseCompletely() -> UInt32 {
        let saved = level.pointee.exchange(0, ordering: .relaxed)
        holderThread.pointee.store(0, ordering: .relaxed)
        ownership.release()
        return saved
    }

    /// Takes the lock back after a condition wait at the level it had.
    func reacquire(level saved: UInt32) {
        ownership.acquire(as: OwnerCheck.me, blocking: true, timeout: nil)
        take(level: saved)
    }

    // MARK: Crossing a process boundary

    /// Encodes the lock for a child's task or a ``Connection/send(_:)-70itn`` message.
    public func encode(to encoder: any Encoder) throws { try region.encode(to: encoder) }

    /// Decodes a lock sent by another process: the same lock, shared.
    public convenience init(from decoder: any Decoder) throws {
        try self.init(region: SharedRegion(.rlock, from: decoder))
    }
}
