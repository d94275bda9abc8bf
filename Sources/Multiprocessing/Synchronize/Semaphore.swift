#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A counting semaphore shared by processes: Python's `multiprocessing.Semaphore`.
///
/// ``acquire(blocking:timeout:)`` takes a unit, waiting while there is none; ``release()`` gives one
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
/// Non-blocking acquires do not look for dead holders. At most 256 processes are tracked at a time;
/// units taken by others are not recovered.
public class ProcessSemaphore: ProcessLocking, @unchecked Sendable, Codable, CustomStringConvertible {
    let region: SharedRegion
    private let count: UnsafeMutablePointer<Atomic<UInt32>>
    private let sleepers: UnsafeMutablePointer<Atomic<UInt32>>
    private let initial: UInt32
    private let isBounded: Bool
    private let recovery: OwnershipWord
    private static let holderSlots = 256
    private static let holdersOffset = 128

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

    /// Takes a unit without blocking a Swift concurrency thread. See ``acquire(blocking:timeout:)``.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) async throws -> Bool {
        let holder = recordHold()
        if tryTake() { return true }
        let deadline = Deadline.after(timeout)
        var taken = false
        defer { if !taken { dropHold(holder) } }
        if blocking { taken = try await withBlockingThread { self.takeContended(until: deadline, holder: holder) } }
        return taken
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

    /// Runs `body` holding a unit taken without blocking a Swift concurrency thread (Python's
    /// `with semaphore:`).
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
        if Futex.spin(until: { count.pointee.load(ordering: .relaxed) > 0 && tryTake() }) { return true }
        sleepers.pointee.add(1, ordering: .sequentiallyConsistent)
        defer { sleepers.pointee.subtract(1, ordering: .relaxed) }
        var slice = OwnerCheck.firstSlice
        while !tryTake() {
            let wakeUp = OwnerCheck.wakeUp(deadline, slice: slice)
            if Futex.wait(Futex.address(count), expected: 0, until: wakeUp) { continue }
            if returnUnitsOfDeadHolders(ownPending: holder == nil ? 0 : 1) { continue }
            if deadline.hasPassed { return false }
            slice = OwnerCheck.next(after: slice)
        }
        return true
    }

    // MARK: Holders

    /// Holder slot `index`: pid in the low 32 bits, units held in the high 32 bits; 0 when free.
    private func holder(_ index: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        region.atomic64(Self.holdersOffset + index * 8)
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
    /// most the initial value; the caller's own pending unit (`ownPending`) does not count as held.
    /// Units that do not fit stay recorded for a later pass. Returns whether any unit came back.
    private func returnUnitsOfDeadHolders(ownPending: UInt64) -> Bool {
        recovery.acquire(as: OwnerCheck.me, blocking: true, timeout: nil)
        defer { recovery.release() }
        var living: UInt64 = 0
        var dead: [Int] = []
        for index in 0..<Self.holderSlots {
            let current = holder(index).pointee.load(ordering: .relaxed)
            guard current != 0 else { continue }
            if OwnerCheck.isAlive(current & 0xFFFF_FFFF) { living += current >> 32 } else { dead.append(index) }
        }
        living -= min(living, ownPending)
        let orphaned = dead.reduce(0) { $0 + holder($1).pointee.load(ordering: .relaxed) >> 32 }
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
        guard returned > 0 else { return false }
        var left = returned
        for index in dead where left > 0 {
            let slot = holder(index).pointee.load(ordering: .relaxed)
            let taken = min(slot >> 32, left)
            left -= taken
            holder(index).pointee.store(taken == slot >> 32 ? 0 : slot - (taken << 32), ordering: .relaxed)
        }
        Futex.wake(Futex.address(count), count: Int32(min(returned, UInt64(Int32.max))))
        return true
    }

    // MARK: Crossing a process boundary

    /// Encodes the semaphore for a child's task or a ``Connection/send(_:)`` message.
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
