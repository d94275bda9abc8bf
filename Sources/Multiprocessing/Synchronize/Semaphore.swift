#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A counting semaphore shared by processes: Python's `multiprocessing.Semaphore`.
///
/// ``acquire(blocking:timeout:)-7qd76`` takes a unit, waiting while there is none; ``release()`` gives one
/// back. Any process may release, as in Python, and a plain semaphore has no upper bound (see
/// ``ProcessBoundedSemaphore``).
///
/// **When a holder dies.** The semaphore records, per process, how many units it took and has not
/// given back. A process waiting for a unit checks every few milliseconds (2 ms, doubling to 100 ms)
/// for processes that ended (killed, crashed or exited) while holding units, and returns their units,
/// as long as the value plus the units held by living processes stays at most the initial value. So:
/// - a semaphore used as a pool of N resources (`ProcessSemaphore(N)`, each process acquires, then
///   releases) gets back every unit a dead process held;
/// - a semaphore used for signalling (starting at 0, one process releases, another acquires) never
///   invents units: what a consumer took is consumed, dead or alive;
/// - units another process released on a dead holder's behalf are not returned twice, unless the
///   semaphore's value had grown past its initial value by other releases.
/// Any number of processes and threads may be waiting meanwhile: a waiter asleep for a unit does not
/// count as holding one. Non-blocking acquires do not look for dead holders. At most 256 processes
/// are tracked at a time; units taken by others are not recovered.
public class ProcessSemaphore: ProcessLocking, @unchecked Sendable, Codable, CustomStringConvertible {
    let region: SharedRegion
    private let count: UnsafeMutablePointer<Atomic<UInt32>>
    /// How many waiters are asleep on the count.
    let sleepers: UnsafeMutablePointer<Atomic<UInt32>>
    private let initial: UInt32
    private let isBounded: Bool
    private let recovery: OwnershipWord
    private static let holderSlots = 256
    private static let holdersOffset = 128
    /// Per holder slot, a 32-bit count of this process's waiters asleep for a unit, counted in the
    /// slot's units but not held.
    private static let waitingOffset = holdersOffset + holderSlots * 8

    /// A semaphore holding `value` units (Python's `Semaphore(value=1)`).
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a negative value or one above `Int32.max`;
    ///   ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public convenience init(_ value: Int = 1) throws { try self.init(region: Self.makeRegion(value, bounded: false)) }

    static func makeRegion(_ value: Int, bounded: Bool) throws -> SharedRegion {
        guard (0...Int(Int32.max)).contains(value) else {
            throw MultiprocessingError(
                .invalidArgument, "semaphore initial value must be between 0 and \(Int32.max), not \(value)")
        }
        let region = try SharedRegion(.semaphore)
        region.atomic32(SharedRegion.dataOffset).pointee.store(UInt32(value), ordering: .relaxed)
        region.atomic32(SharedRegion.dataOffset + 8).pointee.store(UInt32(value), ordering: .relaxed)
        region.atomic32(SharedRegion.dataOffset + 12).pointee.store(bounded ? 1 : 0, ordering: .releasing)
        return region
    }

    init(region: SharedRegion) {
        self.region = region
        count = region.atomic32(SharedRegion.dataOffset)
        sleepers = region.atomic32(SharedRegion.dataOffset + 4)
        initial = region.atomic32(SharedRegion.dataOffset + 8).pointee.load(ordering: .relaxed)
        isBounded = region.atomic32(SharedRegion.dataOffset + 12).pointee.load(ordering: .acquiring) != 0
        recovery = OwnershipWord(word: region.atomic64(SharedRegion.dataOffset + 16))
    }

    /// The number of free units (Python's `get_value()`).
    public var value: Int { Int(count.pointee.load(ordering: .relaxed)) }

    /// Takes a unit: Python's `acquire(block, timeout)`.
    ///
    /// - Parameters:
    ///   - blocking: when false, returns at once (the timeout is ignored).
    ///   - timeout: how long to wait at most; nil waits as long as it takes.
    /// - Returns: whether a unit was taken.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) -> Bool {
        let holder = recordHold()
        if tryTake() || (blocking && takeContended(until: .after(timeout), holder: holder)) { return true }
        dropHold(holder)
        return false
    }

    /// Takes a unit without blocking a thread: the wait runs on a small shared set of threads however
    /// many tasks wait. See ``acquire(blocking:timeout:)``.
    ///
    /// **Cancellation.** Cancelling the task ends the wait promptly: it throws `CancellationError` and
    /// no unit is taken. When a unit was taken before the cancellation was seen, the call returns
    /// `true` as usual and the caller holds the unit.
    /// - Throws: `CancellationError` when the task is cancelled while waiting;
    ///   ``MultiprocessingError/Code/system`` when no thread could be started to wait on.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) async throws -> Bool {
        let holder = recordHold()
        if tryTake() { return true }
        guard blocking else {
            dropHold(holder)
            return false
        }
        let schedule = OwnerCheck.Schedule()
        do {
            let taken = try await WaitPool.shared.wait(
                until: .after(timeout), interrupt: { Futex.wake(Futex.address(self.count)) }
            ) { sliceEnd, index in
                self.takeStep(until: sliceEnd, holder: holder, index: index, schedule: schedule) ? true : nil
            }
            if taken == nil { dropHold(holder) }
            return taken ?? false
        } catch {
            dropHold(holder)
            throw error
        }
    }

    /// Gives a unit back and wakes a waiter.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when a ``ProcessBoundedSemaphore`` would go above
    ///   its initial value, or any semaphore above `Int32.max`.
    public func release() throws {
        let limit = isBounded ? initial : UInt32(Int32.max)
        var current = count.pointee.load(ordering: .relaxed)
        while true {
            guard current < limit else {
                throw MultiprocessingError(.invalidState, "semaphore or lock released too many times")
            }
            let (exchanged, actual) = count.pointee.compareExchange(
                expected: current, desired: current + 1, ordering: .sequentiallyConsistent)
            if exchanged { break }
            current = actual
        }
        dropHold(holderSlot(create: false))
        if sleepers.pointee.load(ordering: .sequentiallyConsistent) > 0 { Futex.wake(Futex.address(count), count: 1) }
    }

    /// Runs `body` holding a unit taken without blocking a thread (Python's `with semaphore:`).
    /// - Throws: `CancellationError` when the task is cancelled while waiting for a unit (`body` does
    ///   not run); what `body` throws.
    public func withLock<R>(
        isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> sending R
    ) async throws -> sending R {
        try await acquire()
        defer { try? release() }
        return try await body()
    }

    /// `ProcessSemaphore(value: 2)`, or `ProcessBoundedSemaphore(value: 1, initial: 3)`.
    public var description: String {
        isBounded
            ? "ProcessBoundedSemaphore(value: \(value), initial: \(initial))" : "ProcessSemaphore(value: \(value))"
    }

    // MARK: Taking units

    private func tryTake() -> Bool {
        var current = count.pointee.load(ordering: .relaxed)
        while current > 0 {
            let (exchanged, actual) = count.pointee.compareExchange(
                expected: current, desired: current - 1, ordering: .sequentiallyConsistent)
            if exchanged { return true }
            current = actual
        }
        return false
    }

    /// Waits for a unit; `holder` is the caller's slot, where its pending unit is already counted.
    private func takeContended(until deadline: Deadline, holder: Int?) -> Bool {
        var index = 0
        let schedule = OwnerCheck.Schedule()
        while !takeStep(until: deadline, holder: holder, index: index, schedule: schedule) {
            if deadline.hasPassed { return false }
            index += 1
        }
        return true
    }

    /// One step of a wait for a unit (the `index`th, counting from 0): spins on the first, then sleeps
    /// once until woken, `sliceEnd` or the next look for dead holders (by `schedule`), and tries again.
    /// While asleep (and while looking for dead holders) the caller counts as waiting in `holder`, not
    /// as holding. Returns whether it took a unit.
    private func takeStep(until sliceEnd: Deadline, holder: Int?, index: Int, schedule: OwnerCheck.Schedule) -> Bool {
        if index == 0, Futex.spin(until: { count.pointee.load(ordering: .relaxed) > 0 && tryTake() }) { return true }
        sleepers.pointee.add(1, ordering: .sequentiallyConsistent)
        defer { sleepers.pointee.subtract(1, ordering: .relaxed) }
        if tryTake() { return true }
        let waiting = holder.map(waiters)
        waiting?.pointee.add(1, ordering: .sequentiallyConsistent)
        if !Futex.wait(Futex.address(count), expected: 0, until: sliceEnd.earlier(schedule.next)), schedule.isDue() {
            returnUnitsOfDeadHolders()
        }
        waiting?.pointee.subtract(1, ordering: .sequentiallyConsistent)
        return tryTake()
    }

    // MARK: Holders

    /// Holder slot `index`: pid in the low 32 bits, units held in the high 32 bits; 0 when free.
    private func holder(_ index: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        region.atomic64(Self.holdersOffset + index * 8)
    }

    /// How many of holder slot `index`'s units are waiters asleep, not holders.
    private func waiters(_ index: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        region.atomic32(Self.waitingOffset + index * 4)
    }

    /// This process's slot, claimed when `create` and missing; nil when untracked.
    private func holderSlot(create: Bool) -> Int? {
        let pid = UInt64(UInt32(truncatingIfNeeded: OwnerCheck.me))
        let start = Int(pid) % Self.holderSlots
        for probe in 0..<Self.holderSlots {
            let index = (start + probe) % Self.holderSlots
            let current = holder(index).pointee.load(ordering: .relaxed)
            if current & 0xFFFF_FFFF == pid { return index }
            if current == 0 && create { return index }
        }
        return nil
    }

    /// Counts one more unit held by this process (before it takes the unit, so that recovery errs on
    /// the side of returning too little). Returns the slot to undo with ``dropHold(_:)``.
    private func recordHold() -> Int? {
        let pid = UInt64(UInt32(truncatingIfNeeded: OwnerCheck.me))
        while let index = holderSlot(create: true) {
            var current = holder(index).pointee.load(ordering: .relaxed)
            while current == 0 || current & 0xFFFF_FFFF == pid {
                let desired = current == 0 ? pid | 1 << 32 : current + (1 << 32)
                let (exchanged, actual) = holder(index).pointee.compareExchange(
                    expected: current, desired: desired, ordering: .relaxed)
                if exchanged { return index }
                current = actual
            }
        }
        return nil
    }

    /// Counts one unit fewer held by this process, freeing the slot at zero.
    private func dropHold(_ index: Int?) {
        guard let index else { return }
        let pid = UInt64(UInt32(truncatingIfNeeded: OwnerCheck.me))
        var current = holder(index).pointee.load(ordering: .relaxed)
        while current & 0xFFFF_FFFF == pid, current >> 32 > 0 {
            let desired = current >> 32 == 1 ? 0 : current - (1 << 32)
            let (exchanged, actual) = holder(index).pointee.compareExchange(
                expected: current, desired: desired, ordering: .relaxed)
            if exchanged { return }
            current = actual
        }
    }

    /// Returns units held by ended processes, keeping the value plus the units of living holders at
    /// most the initial value; units counted for waiters that are asleep count as not held. Units that
    /// do not fit stay recorded for a later pass; a dead process's waiters are forgotten. Returns
    /// whether any unit came back.
    @discardableResult
    private func returnUnitsOfDeadHolders() -> Bool {
        recovery.acquire(as: OwnerCheck.me, blocking: true, timeout: nil)
        defer { recovery.release() }
        var living: UInt64 = 0
        var orphaned: UInt64 = 0
        var dead: [(index: Int, units: UInt64)] = []
        for index in 0..<Self.holderSlots {
            let current = holder(index).pointee.load(ordering: .relaxed)
            guard current != 0 else { continue }
            let held = (current >> 32) - min(current >> 32, UInt64(waiters(index).pointee.load(ordering: .relaxed)))
            if OwnerCheck.isAlive(current & 0xFFFF_FFFF) {
                living += held
            } else {
                dead.append((index, held))
                orphaned += held
            }
        }
        var current = count.pointee.load(ordering: .relaxed)
        var returned: UInt64 = 0
        while UInt64(current) + living < UInt64(initial), orphaned > 0 {
            returned = min(orphaned, UInt64(initial) - living - UInt64(current))
            let (exchanged, actual) = count.pointee.compareExchange(
                expected: current, desired: current + UInt32(returned), ordering: .sequentiallyConsistent)
            if exchanged { break }
            current = actual
            returned = 0
        }
        var left = returned
        for (index, units) in dead {
            let taken = min(units, left)
            left -= taken
            if taken == units {
                waiters(index).pointee.store(0, ordering: .relaxed)
                holder(index).pointee.store(0, ordering: .relaxed)
            } else {
                let pid = holder(index).pointee.load(ordering: .relaxed) & 0xFFFF_FFFF
                holder(index).pointee.store(pid | (units - taken) << 32, ordering: .relaxed)
                waiters(index).pointee.store(0, ordering: .relaxed)
            }
        }
        guard returned > 0 else { return false }
        Futex.wake(Futex.address(count), count: Int32(min(returned, UInt64(Int32.max))))
        return true
    }

    // MARK: Crossing a process boundary

    /// Encodes the semaphore for a child's task or a ``Connection/send(_:)-70itn`` message.
    public func encode(to encoder: any Encoder) throws { try region.encode(to: encoder) }

    /// Decodes a semaphore sent by another process: the same semaphore, shared.
    public required convenience init(from decoder: any Decoder) throws {
        try self.init(region: SharedRegion(.semaphore, from: decoder))
    }
}

/// A semaphore that may not be released above its initial value: Python's
/// `multiprocessing.BoundedSemaphore`. Releasing it once too often throws
/// ``MultiprocessingError/Code/invalidState``. Units of dead holders come back as for ``ProcessSemaphore``.
public final class ProcessBoundedSemaphore: ProcessSemaphore, @unchecked Sendable {
    /// A bounded semaphore holding `value` units, which is also its bound.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a negative value or one above `Int32.max`.
    public convenience init(_ value: Int = 1) throws { try self.init(region: Self.makeRegion(value, bounded: true)) }

    override init(region: SharedRegion) { super.init(region: region) }
}
