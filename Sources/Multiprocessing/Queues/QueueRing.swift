#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The algorithm every queue shares: length-prefixed records in a ring of shared memory, written by
/// one producer at a time and read by one consumer at a time.
///
/// **Layout.** The header holds a producer lock and a consumer lock (``OwnershipWord``s, so a holder
/// that dies is taken over), the tail (written only under the producer lock) and the head (written
/// only under the consumer lock), each on its own cache line. Both are 64-bit words: a byte position
/// in the low 36 bits and a count of items in the high 28, so one store publishes a record and counts
/// it. A record is an 8-byte header (payload length, kind) and the payload, padded to 8 bytes.
///
/// **Never torn.** A producer copies its record beyond the tail, then publishes it with one store of
/// the tail; a producer killed before that store leaves only bytes nobody reads, and the next producer
/// takes its lock over and writes over them. A consumer reads a record before it moves the head past
/// it with one store; killed before that store, the record stays for the next consumer.
///
/// **Memory.** The ring is 2 GiB of sparse memory. While the backlog is small, the producer jumps back
/// to the start of the ring (a skip record) once it is 4 MiB in, so a steady stream keeps touching the
/// same few pages; pages above that, touched by a backlog that has since drained, are given back.
/// After a jump, the producer writes the new lap up to the consumer's offset in the previous lap. When
/// it catches up there and the consumer has stopped (its wait for room missed, below), it skips
/// forward instead of waiting: a skip record from its offset to the end of the previous lap's data
/// (``lapEnd``), and on from there, so an unbounded queue never waits for a consumer before its 2 GiB
/// are full. In that state the producer keeps 8 bytes free before the consumer's offset, the room of
/// that skip record.
///
/// **Waiting.** Lock waits spin briefly, then sleep on the lock's futex. The holder of the consumer
/// lock waits for items by sleeping on the tail's low half, and the holder of the producer lock waits
/// for a free slot (a bounded queue at its `maxSize`) on the head's low half; a sleeper count tells the
/// other side to wake it.
///
/// **Waiting for room in bytes.** A producer that is under its bound but out of ring bytes (in
/// practice: back at the ring's start, one lap ahead of a slower consumer, where it may only write up
/// to the consumer's offset) does not wait for each record's room in turn, which would keep it in lock
/// step with the consumer, polling the head's cache line and costing a wake-up per get. It publishes a
/// head position that leaves ``roomSlack`` bytes more than its record needs, and sleeps on a word of
/// its own (the room bell); the consumer that moves the head past that position rings the bell once.
/// The target is always within the items already put, so draining the queue reaches it. A wait that
/// ends without the target reached (a consumer stopped, or died) makes this process wait for exactly
/// its record's room next time, until a consumer reaches a target again.
final class QueueRing: @unchecked Sendable {
    let memory: QueueMemory
    private let producers: OwnershipWord
    private let consumers: OwnershipWord
    private let tail: UnsafeMutablePointer<Atomic<UInt64>>
    private let head: UnsafeMutablePointer<Atomic<UInt64>>
    private let itemSleepers: UnsafeMutablePointer<Atomic<UInt32>>
    private let roomSleepers: UnsafeMutablePointer<Atomic<UInt32>>
    private let state: UnsafeMutablePointer<Atomic<UInt32>>
    private let done: UnsafeMutablePointer<Atomic<UInt64>>
    private let joinSleepers: UnsafeMutablePointer<Atomic<UInt32>>
    private let highWater: UnsafeMutablePointer<Atomic<UInt64>>
    /// Where the data of the lap before the current one ends (after its skip record), and the position
    /// where the current lap starts: written by a producer when it jumps back, before it publishes the
    /// new tail; read only under the producer lock.
    private let lapEnd: UnsafeMutablePointer<Atomic<UInt64>>
    private let lapStart: UnsafeMutablePointer<Atomic<UInt64>>
    /// A patience other than ``roomPatience`` for this queue, in nanoseconds (0: the usual one); for tests
    /// that hold a producer in its wait.
    private let patienceOverride: UnsafeMutablePointer<Atomic<UInt64>>
    /// The head position a producer out of ring bytes waits for, with ``targetSet``; 0 when none waits.
    /// On the head's cache line: the consumer reads it after every move of the head.
    private let roomTarget: UnsafeMutablePointer<Atomic<UInt64>>
    /// Rung (incremented and woken) when the head passes ``roomTarget``, and on shutdown or interruption.
    private let roomBell: UnsafeMutablePointer<Atomic<UInt32>>
    /// Whether this process's last wait for room in bytes ended without its target reached; it then
    /// waits for its record's room only (read and written under the producer lock).
    private var roomWaitMissed = false
    /// A head this process saw, read under the producer lock: the producer reads the consumers' cache
    /// line only when this old value says there may be no room (a past head only overstates the
    /// backlog).
    private var knownHead: UInt64 = 0
    /// A tail this process saw, read under the consumer lock: the consumer reads the producers' cache
    /// line only when it has consumed up to this value (or others consumed past it).
    private var knownTail: UInt64 = 0

    static let positionBits = 36
    static let positionMask: UInt64 = (1 << 36) - 1
    static let countMask: UInt64 = (1 << 28) - 1
    /// The largest record a queue carries (half the ring), so that a put always fits eventually.
    static let largestRecord = QueueMemory.capacity / 2
    /// How far into the ring the producer goes before it jumps back to its start when the backlog allows.
    static let window = 4 << 20
    /// The state's bits.
    static let shutDownFlag: UInt32 = 1
    /// The bytes beyond its record a producer out of ring bytes waits for (a sixteenth of the window):
    /// for the small message of mp-bench's queue workloads, one wake-up per 5,000 gets or so.
    static let roomSlack = window / 16
    /// How long a producer waits for the slack at most before it takes the consumer for stopped: it then
    /// waits for its record's room only, and skips forward when a lap ahead (see ``placement``).
    static let roomPatience = Duration.milliseconds(5)
    /// Marks ``roomTarget`` as set (positions take 36 bits).
    static let targetSet: UInt64 = 1 << 63

    private enum Kind: UInt32 { case item = 1, skip = 2 }
    /// A record's header (length, kind): all of a skip record that skips nothing more, the room a
    /// lapped producer keeps free before the consumer's offset.
    static let headerSize = 8

    init(_ memory: QueueMemory) {
        self.memory = memory
        producers = OwnershipWord(word: memory.atomic64(64))
        consumers = OwnershipWord(word: memory.atomic64(128))
        tail = memory.atomic64(192)
        itemSleepers = memory.atomic32(200)
        head = memory.atomic64(256)
        roomSleepers = memory.atomic32(264)
        state = memory.atomic32(8)
        done = memory.atomic64(320)
        joinSleepers = memory.atomic32(328)
        highWater = memory.atomic64(384)
        lapEnd = memory.atomic64(392)
        lapStart = memory.atomic64(400)
        patienceOverride = memory.atomic64(408)
        roomTarget = memory.atomic64(272)
        roomBell = memory.atomic32(448)
    }

    /// Sets how long this queue's producers wait for room in bytes before they take the consumer for
    /// stopped (every process that uses the queue sees it).
    func setRoomPatience(_ patience: Duration) {
        patienceOverride.pointee.store(Deadline.nanoseconds(in: patience), ordering: .relaxed)
    }

    // MARK: Counts

    private static func position(_ word: UInt64) -> Int { Int(word & positionMask) }
    private static func count(_ word: UInt64) -> UInt64 { word >> positionBits }

    /// Items in the queue now (Python's approximate `qsize()`).
    var count: Int {
        let out = head.pointee.load(ordering: .acquiring)
        let put = tail.pointee.load(ordering: .acquiring)
        return Int((Self.count(put) &- Self.count(out)) & Self.countMask)
    }

    var isShutDown: Bool { state.pointee.load(ordering: .acquiring) & Self.shutDownFlag != 0 }

    // MARK: Putting

    /// How a put or get step ended: `done` (put, or got and handed to the caller), `busy` (no room or
    /// no item, and the caller would not wait), `shutDown`.
    enum Status: Sendable { case done, shutDown, busy }

    /// The size of the record that carries `length` payload bytes. A record of ``lineAlignedFrom``
    /// bytes or more fills whole cache lines, so that a consumer reading it while the producer writes the
    /// next one shares no line with that writer.
    static func recordSize(_ length: Int) -> Int {
        length >= lineAlignedFrom ? (headerSize + length + 63) & ~63 : max(16, (headerSize + length + 7) & ~7)
    }

    /// The payload size from which records are rounded up to whole cache lines (see ``recordSize(_:)``).
    static let lineAlignedFrom = 256

    /// The state of one put or get across the steps of its wait.
    final class Attempt: @unchecked Sendable {
        var holding = false
        lazy var schedule = OwnerCheck.Schedule()
        let blocking: Bool
        /// Whether a non-blocking attempt is the first try of a put that waits afterwards (an async
        /// put), which should wait rather than skip forward (see ``placement``).
        let waitsNext: Bool
        init(blocking: Bool, waitsNext: Bool = false) {
            self.blocking = blocking
            self.waitsNext = waitsNext
        }
    }

    /// Takes `lock` for `attempt` (once): returns false when the step must be tried again, or throws
    /// `busy` for a non-blocking attempt whose lock holder is asleep (the queue is empty or full).
    private func take(_ lock: OwnershipWord, holderAsleep: () -> Bool,
                      _ attempt: Attempt, until sliceEnd: Deadline, index: Int) -> Bool? {
        if attempt.holding { return true }
        let me = OwnerCheck.me
        if lock.tryAcquire(as: me) {
            attempt.holding = true
            return true
        }
        if !attempt.blocking {
            // A holder asleep waits for what this call would wait for; any other holds it briefly.
            if holderAsleep() { return nil }
            attempt.holding = lock.acquireContended(as: me, until: .after(.milliseconds(100)))
            return attempt.holding ? true : nil
        }
        attempt.holding = lock.acquireStep(as: me, until: sliceEnd, index: index, schedule: attempt.schedule)
        return attempt.holding ? true : false
    }

    /// Releases the lock `attempt` holds, if any.
    private func finish(_ attempt: Attempt, _ lock: OwnershipWord) {
        if attempt.holding {
            attempt.holding = false
            lock.release()
        }
    }

    /// One step of a put of `payload` (already encoded): `.done` when it was published, `.busy`
    /// when a non-blocking put found no room, nil to try again (after sleeping until `sliceEnd`).
    func putStep(_ payload: UnsafeRawBufferPointer, _ attempt: Attempt, until sliceEnd: Deadline, index: Int) -> Status? {
        guard let taken = take(producers, holderAsleep: {
            roomSleepers.pointee.load(ordering: .relaxed) > 0 || roomTarget.pointee.load(ordering: .relaxed) != 0
        }, attempt, until: sliceEnd, index: index) else { return .busy }
        guard taken else { return nil }
        let record = Self.recordSize(payload.count)
        var spun = index > 0 || !attempt.blocking
        while true {
            if isShutDown {
                finish(attempt, producers)
                return .shutDown
            }
            let (put, out, used, underBound, place) = room(for: record, waitless: !attempt.blocking && !attempt.waitsNext)
            if let place {
                write(payload, record: record, tail: put, used: used, at: place)
                finish(attempt, producers)
                wakeConsumer()
                return .done
            }
            if !attempt.blocking {
                finish(attempt, producers)
                return .busy
            }
            if underBound {
                waitForRoom(tail: put, used: used, record: record, until: sliceEnd)
                return nil
            }
            if !spun {
                spun = true
                _ = Futex.spin { head.pointee.load(ordering: .relaxed) != out || isShutDown }
                continue
            }
            roomSleepers.pointee.add(1, ordering: .sequentiallyConsistent)
            if head.pointee.load(ordering: .sequentiallyConsistent) == out && !isShutDown {
                Futex.wait(Futex.lowHalf(head), expected: UInt32(truncatingIfNeeded: out), until: sliceEnd)
            }
            roomSleepers.pointee.subtract(1, ordering: .relaxed)
            return nil
        }
    }

    /// A put of `payload` (already encoded) that neither waits nor skips forward: when the producer
    /// lock is free and there is room now, it publishes the record and returns true, as the first step
    /// of a put would; otherwise it returns false having published nothing, and the caller takes the
    /// steps (which also report a shutdown). Most puts end here, without preparing to wait.
    func putAtOnce(_ payload: UnsafeRawBufferPointer) -> Bool {
        guard producers.tryAcquire(as: OwnerCheck.me) else { return false }
        let record = Self.recordSize(payload.count)
        if !isShutDown, case let (put, _, used, _, place?) = room(for: record, waitless: false) {
            write(payload, record: record, tail: put, used: used, at: place)
            producers.release()
            wakeConsumer()
            return true
        }
        producers.release()
        return false
    }

    /// The tail, the head (rereading it when the one this process saw last may be what leaves no
    /// room), the bytes in use between them, whether the queue is under its bound, and where a record
    /// of `record` bytes goes (see ``placement``); the caller holds the producer lock.
    @inline(__always)
    private func room(for record: Int, waitless: Bool) -> (put: UInt64, out: UInt64, used: Int, underBound: Bool, place: Int?) {
        let maxSize = UInt64(memory.maxSize)
        let put = tail.pointee.load(ordering: .relaxed)
        var out = knownHead
        var used = (Self.position(put) &- Self.position(out)) & Int(Self.positionMask)
        var items = (Self.count(put) &- Self.count(out)) & Self.countMask
        // Past the window, a head seen long ago may be all that stops the jump back to the ring's
        // start (see `write`): without a fresh look, a steady stream would walk on into untouched
        // memory, paying a page fault (and the zeroing of a page) every 4 KiB.
        let offset = Self.position(put) % QueueMemory.capacity
        if used + record > QueueMemory.capacity || (maxSize != 0 && items >= maxSize)
            || (offset >= Self.window && used + record + Self.headerSize > offset) {
            out = head.pointee.load(ordering: .acquiring)
            knownHead = out
            used = (Self.position(put) &- Self.position(out)) & Int(Self.positionMask)
            items = (Self.count(put) &- Self.count(out)) & Self.countMask
        }
        let underBound = maxSize == 0 || items < maxSize
        let place = underBound ? placement(record, tail: put, used: used, waitless: waitless) : nil
        return (put, out, used, underBound, place)
    }

    /// Wakes a consumer asleep waiting for an item, if there is one; after a record was published.
    @inline(__always)
    private func wakeConsumer() {
        if itemSleepers.pointee.load(ordering: .sequentiallyConsistent) > 0 { Futex.wake(Futex.lowHalf(tail), count: 1) }
    }

    /// Where a record of `record` bytes goes after the tail `put` (`used` bytes after the head): the
    /// tail's offset, the end of the previous lap's data (a skip forward, see the type's comment), or
    /// nil when there is no room now. A put that may not wait skips forward at once.
    private func placement(_ record: Int, tail put: UInt64, used: Int, waitless: Bool) -> Int? {
        let offset = Self.position(put) % QueueMemory.capacity
        // The head is in this lap: the bytes between them are taken.
        if used <= offset {
            guard used + record <= QueueMemory.capacity else { return nil }
            // Past the window, a jump back needs room for this record and for the 8 bytes of a later
            // skip forward before the consumer's offset. A backlog that leaves room for the record only
            // waits for the consumer's next get (see `waitForRoom`) rather than walk on into fresh
            // memory, unless the consumer seems stopped or the put may not wait.
            if offset >= Self.window, used + record <= offset, used + record + Self.headerSize > offset, !roomWaitMissed, !waitless { return nil }
            return offset
        }
        // The head is a lap behind. A lap this process's producers started by jumping back has the
        // previous lap's data between the head's offset and `lapEnd`.
        let jumped = UInt64(Self.position(put) - offset) & Self.positionMask == lapStart.pointee.load(ordering: .relaxed)
        let end = jumped ? Int(lapEnd.pointee.load(ordering: .relaxed)) : QueueMemory.capacity
        if offset >= end { return offset + record <= QueueMemory.capacity ? offset : nil }
        // Up to the head's offset, keeping room for a skip record before it.
        if used + record + Self.headerSize <= QueueMemory.capacity { return offset }
        // A consumer that stopped would leave this producer waiting while memory is free beyond the
        // previous lap's data.
        if jumped, roomWaitMissed || waitless, used + Self.headerSize <= QueueMemory.capacity, end + record <= QueueMemory.capacity { return end }
        return nil
    }

    /// Sleeps until the consumers have moved the head far enough for a record of `record` bytes after
    /// the tail `put` (`used` bytes after the head, as ``placement`` found them) and ``roomSlack`` bytes
    /// more (see the type's comment), or `sliceEnd`, or for ``roomPatience`` at most; the caller holds
    /// the producer lock and then tries again.
    private func waitForRoom(tail put: UInt64, used: Int, record: Int, until sliceEnd: Deadline) {
        let offset = Self.position(put) % QueueMemory.capacity
        // A record of the slack's size or more frees enough at each get.
        let slack = roomWaitMissed || record >= Self.roomSlack ? 0 : Self.roomSlack
        // Past the window with the ring's bytes to spare, the head that makes room for a jump back (see
        // `placement`); otherwise the head that leaves the record, a skip record and the slack room.
        let jumpWait = used <= offset && used + record <= QueueMemory.capacity
        let wanted = jumpWait ? Self.position(put) - offset + record + Self.headerSize : Self.position(put) + record + Self.headerSize + slack - QueueMemory.capacity
        let target = UInt64(truncatingIfNeeded: wanted) & Self.positionMask
        let rung = roomBell.pointee.load(ordering: .sequentiallyConsistent)
        roomTarget.pointee.store(target | Self.targetSet, ordering: .sequentiallyConsistent)
        var out = head.pointee.load(ordering: .sequentiallyConsistent)
        let chosen = patienceOverride.pointee.load(ordering: .relaxed)
        let patience = Deadline.after(chosen > 0 ? .nanoseconds(Int64(chosen)) : Self.roomPatience)
        if !Self.reached(out, target) && !isShutDown {
            Futex.wait(Futex.address(roomBell), expected: rung, until: sliceEnd.earlier(patience))
            out = head.pointee.load(ordering: .acquiring)
        }
        roomTarget.pointee.store(0, ordering: .relaxed)
        knownHead = out
        // (A wait cut short by its caller's slice, or woken for shutdown or cancellation, says nothing.)
        if Self.reached(out, target) {
            roomWaitMissed = false
        } else if patience.hasPassed {
            roomWaitMissed = true
        }
    }

    /// Whether the head `out` is at or past the position `target` (at most half the positions ahead).
    @inline(__always)
    private static func reached(_ out: UInt64, _ target: UInt64) -> Bool {
        (UInt64(position(out)) &- target) & positionMask < 1 << (positionBits - 1)
    }

    /// Rings the room bell when a producer waits for a head position that `out` reached; the caller
    /// just stored `out` as the head.
    @inline(__always)
    private func ringRoomBell(after out: UInt64) {
        let wanted = roomTarget.pointee.load(ordering: .sequentiallyConsistent)
        guard wanted != 0, Self.reached(out, wanted & Self.positionMask) else { return }
        guard roomTarget.pointee.compareExchange(expected: wanted, desired: 0, ordering: .sequentiallyConsistent).exchanged else { return }
        ringRoomBell()
    }

    private func ringRoomBell() {
        roomBell.pointee.add(1, ordering: .sequentiallyConsistent)
        Futex.wake(Futex.address(roomBell))
    }

    /// Writes a record after the tail `put` and publishes it; the caller holds the producer lock and
    /// checked that it fits.
    private func write(_ payload: UnsafeRawBufferPointer, record: Int, tail put: UInt64, used: Int, at place: Int) {
        var position = Self.position(put)
        var offset = position % QueueMemory.capacity
        if place > offset {
            // Forward past the previous lap's data: a skip record covers the gap.
            writeSkip(at: offset, to: place)
            position += place - offset
            offset = place
        } else if offset >= Self.window, used + record + Self.headerSize <= offset {
            // Back to the start of the ring: a skip record covers the rest.
            writeSkip(at: offset, to: QueueMemory.capacity)
            let touched = Int(highWater.pointee.load(ordering: .relaxed))
            if touched > offset + Self.window { memory.release(ringBytes: (offset + Self.headerSize)..<touched) }
            highWater.pointee.store(UInt64(offset + Self.headerSize), ordering: .relaxed)
            position += QueueMemory.capacity - offset
            lapEnd.pointee.store(UInt64(offset + Self.headerSize), ordering: .relaxed)
            lapStart.pointee.store(UInt64(position) & Self.positionMask, ordering: .relaxed)
            offset = 0
        }
        memory.ring.storeBytes(of: UInt32(payload.count), toByteOffset: offset, as: UInt32.self)
        memory.ring.storeBytes(of: Kind.item.rawValue, toByteOffset: offset + 4, as: UInt32.self)
        copyIn(payload, at: offset + Self.headerSize)
        let end = offset + record
        // A record that reaches the ring's end starts a lap that no jump started.
        if end >= QueueMemory.capacity { lapStart.pointee.store(.max, ordering: .relaxed) }
        if UInt64(end) > highWater.pointee.load(ordering: .relaxed) {
            highWater.pointee.store(UInt64(min(end, QueueMemory.capacity)), ordering: .relaxed)
        }
        let next = (UInt64(position + record) & Self.positionMask) | ((Self.count(put) + 1) & Self.countMask) << Self.positionBits
        tail.pointee.store(next, ordering: .sequentiallyConsistent)
    }

    /// A skip record at `offset` that sends the reader on to offset `end` (the ring's size: the start).
    private func writeSkip(at offset: Int, to end: Int) {
        memory.ring.storeBytes(of: UInt32(end - offset - Self.headerSize), toByteOffset: offset, as: UInt32.self)
        memory.ring.storeBytes(of: Kind.skip.rawValue, toByteOffset: offset + 4, as: UInt32.self)
    }

    private func copyIn(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        let start = offset % QueueMemory.capacity
        let first = min(bytes.count, QueueMemory.capacity - start)
        (memory.ring + start).copyMemory(from: source, byteCount: first)
        if first < bytes.count { memory.ring.copyMemory(from: source + first, byteCount: bytes.count - first) }
    }

    // MARK: Getting

    /// One step of a get: `.done` after handing the first record's bytes to `consume` (in place, or
    /// copied when the record wraps around the ring's end) and moving past it, `.busy` when a
    /// non-blocking get found none, `.shutDown` when the queue is shut down and empty, nil to try again.
    func getStep(
        _ attempt: Attempt, until sliceEnd: Deadline, index: Int, consume: (UnsafeRawBufferPointer) -> Void
    ) -> Status? {
        do {
            try getStep(attempt, until: sliceEnd, index: index, read: consume)
            return .done
        } catch let end as StepEnd {
            switch end {
            case .busy: return .busy
            case .shutDown: return .shutDown
            case .again: return nil
            }
        } catch {
            return .done
        }
    }

    /// How a step of a get ended without an item.
    enum StepEnd: Error { case busy, shutDown, again }

    /// One step of a get that returns what `read` makes of the first record's bytes (in place, or
    /// copied when the record wraps around the ring's end) and moves past the record, even when
    /// `read` throws. Otherwise throws a ``StepEnd``: `busy` when a non-blocking get found none,
    /// `shutDown` when the queue is shut down and empty, `again` to try again.
    ///
    /// (Generic rather than returning an optional, so that a caller's unspecialized generic code
    /// builds no `Optional` of its element type per item.)
    func getStep<R>(
        _ attempt: Attempt, until sliceEnd: Deadline, index: Int, read: (UnsafeRawBufferPointer) throws -> R
    ) throws -> R {
        guard let taken = take(consumers, holderAsleep: { itemSleepers.pointee.load(ordering: .relaxed) > 0 },
                               attempt, until: sliceEnd, index: index) else { throw StepEnd.busy }
        guard taken else { throw StepEnd.again }
        var spun = index > 0 || !attempt.blocking
        while true {
            let (out, put) = positions()
            if Self.position(out) != Self.position(put) {
                if skip(out) { continue }
                defer {
                    finish(attempt, consumers)
                    wakeProducer()
                }
                return try self.read(out, read)
            }
            if isShutDown {
                finish(attempt, consumers)
                throw StepEnd.shutDown
            }
            if !attempt.blocking {
                finish(attempt, consumers)
                throw StepEnd.busy
            }
            if !spun {
                spun = true
                _ = Futex.spin { tail.pointee.load(ordering: .relaxed) != put || isShutDown }
                continue
            }
            itemSleepers.pointee.add(1, ordering: .sequentiallyConsistent)
            if tail.pointee.load(ordering: .sequentiallyConsistent) == put && !isShutDown {
                Futex.wait(Futex.lowHalf(tail), expected: UInt32(truncatingIfNeeded: put), until: sliceEnd)
            }
            itemSleepers.pointee.subtract(1, ordering: .relaxed)
            throw StepEnd.again
        }
    }

    /// A get that does not wait: when the consumer lock is free and an item is there, it returns what
    /// `read` makes of the first record's bytes and moves past the record (also when `read` throws), as
    /// the first step of a get would; otherwise it takes nothing and returns what `otherwise` returns
    /// (the caller's steps, which also wait, or report an empty or shut-down queue). Most gets end
    /// here, without preparing to wait.
    func getAtOnce<R>(read: (UnsafeRawBufferPointer) throws -> R, otherwise: () throws -> R) rethrows -> R {
        guard consumers.tryAcquire(as: OwnerCheck.me) else { return try otherwise() }
        while true {
            let (out, put) = positions()
            guard Self.position(out) != Self.position(put) else { break }
            if skip(out) { continue }
            defer {
                consumers.release()
                wakeProducer()
            }
            return try self.read(out, read)
        }
        consumers.release()
        return try otherwise()
    }

    /// The head and the tail (rereading the tail only when the one this process saw last shows no
    /// item after the head); the caller holds the consumer lock.
    @inline(__always)
    private func positions() -> (out: UInt64, put: UInt64) {
        let out = head.pointee.load(ordering: .relaxed)
        var put = knownTail
        let available = (Self.position(put) &- Self.position(out)) & Int(Self.positionMask)
        if available == 0 || available > QueueMemory.capacity {
            put = tail.pointee.load(ordering: .acquiring)
            knownTail = put
        }
        return (out, put)
    }

    /// Wakes the producer asleep waiting for a free slot, if there is one; after the head moved.
    @inline(__always)
    private func wakeProducer() {
        if roomSleepers.pointee.load(ordering: .sequentiallyConsistent) > 0 { Futex.wake(Futex.lowHalf(head)) }
    }

    /// Moves the head `out` past the record there if it is a skip record; whether it was.
    private func skip(_ out: UInt64) -> Bool {
        let position = Self.position(out)
        let offset = position % QueueMemory.capacity
        guard memory.ring.load(fromByteOffset: offset + 4, as: UInt32.self) == Kind.skip.rawValue else { return false }
        let length = Int(memory.ring.load(fromByteOffset: offset, as: UInt32.self))
        let next = (UInt64(position + Self.headerSize + length) & Self.positionMask) | (out & ~Self.positionMask)
        head.pointee.store(next, ordering: .sequentiallyConsistent)
        ringRoomBell(after: next)
        return true
    }

    /// Hands the item record at the head `out` to `read` and moves the head past it, also when `read` throws.
    private func read<R>(_ out: UInt64, _ read: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let position = Self.position(out)
        let offset = position % QueueMemory.capacity
        let length = Int(memory.ring.load(fromByteOffset: offset, as: UInt32.self))
        defer {
            let next = (UInt64(position + Self.recordSize(length)) & Self.positionMask)
                | ((Self.count(out) + 1) & Self.countMask) << Self.positionBits
            head.pointee.store(next, ordering: .sequentiallyConsistent)
            ringRoomBell(after: next)
        }
        let start = offset + Self.headerSize
        if start + length > QueueMemory.capacity {
            return try copyOut(at: start, count: length).withUnsafeBytes(read)
        }
        return try read(UnsafeRawBufferPointer(start: memory.ring + start, count: length))
    }

    private func copyOut(at offset: Int, count: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            let start = offset % QueueMemory.capacity
            let first = min(count, QueueMemory.capacity - start)
            if let target = buffer.baseAddress, count > 0 {
                UnsafeMutableRawPointer(target).copyMemory(from: memory.ring + start, byteCount: first)
                if first < count { UnsafeMutableRawPointer(target + first).copyMemory(from: memory.ring, byteCount: count - first) }
            }
            initialized = count
        }
    }

    /// Releases the lock an abandoned put or get (timed out, cancelled) still holds.
    func abandonPut(_ attempt: Attempt) { finish(attempt, producers) }
    func abandonGet(_ attempt: Attempt) { finish(attempt, consumers) }

    /// Wakes a put or get asleep in a step (for cancellation).
    func interruptPut() {
        Futex.wake(Futex.lowHalf(head))
        ringRoomBell()
        producers.interruptSleepers()
    }
    func interruptGet() {
        Futex.wake(Futex.lowHalf(tail))
        consumers.interruptSleepers()
    }

    // MARK: Shutting down

    /// Marks the queue shut down and wakes every waiter; with `immediate`, discards the items, counting
    /// each as a finished task.
    func shutDown(immediate: Bool) {
        state.pointee.bitwiseOr(Self.shutDownFlag, ordering: .sequentiallyConsistent)
        wakeEveryone()
        guard immediate else { return }
        let me = OwnerCheck.me
        producers.acquire(as: me, blocking: true, timeout: nil)
        consumers.acquire(as: me, blocking: true, timeout: nil)
        let put = tail.pointee.load(ordering: .acquiring)
        let out = head.pointee.load(ordering: .relaxed)
        let discarded = (Self.count(put) &- Self.count(out)) & Self.countMask
        head.pointee.store(put, ordering: .sequentiallyConsistent)
        ringRoomBell(after: put)
        consumers.release()
        producers.release()
        var current = done.pointee.load(ordering: .relaxed)
        while true {
            let unfinished = (Self.count(put) &- current) & Self.countMask
            let next = current &+ min(discarded, unfinished)
            let (exchanged, actual) = done.pointee.compareExchange(expected: current, desired: next, ordering: .sequentiallyConsistent)
            if exchanged { break }
            current = actual
        }
        wakeEveryone()
    }

    private func wakeEveryone() {
        Futex.wake(Futex.lowHalf(tail))
        Futex.wake(Futex.lowHalf(head))
        ringRoomBell()
        Futex.wake(Futex.lowHalf(done))
        producers.interruptSleepers()
        consumers.interruptSleepers()
    }

    // MARK: Tasks

    /// Items put and not yet marked done.
    var unfinished: UInt64 {
        let finished = done.pointee.load(ordering: .sequentiallyConsistent)
        return (Self.count(tail.pointee.load(ordering: .sequentiallyConsistent)) &- finished) & Self.countMask
    }

    /// Marks one item done; false when none is unfinished.
    func taskDone() -> Bool {
        var current = done.pointee.load(ordering: .relaxed)
        while true {
            let unfinished = (Self.count(tail.pointee.load(ordering: .acquiring)) &- current) & Self.countMask
            guard unfinished > 0 else { return false }
            let (exchanged, actual) = done.pointee.compareExchange(expected: current, desired: current &+ 1, ordering: .sequentiallyConsistent)
            if exchanged { break }
            current = actual
        }
        if joinSleepers.pointee.load(ordering: .sequentiallyConsistent) > 0 { Futex.wake(Futex.lowHalf(done)) }
        return true
    }

    /// One step of a join: true when no item is unfinished, nil after sleeping until `sliceEnd`.
    func joinStep(until sliceEnd: Deadline) -> Bool? {
        let observed = done.pointee.load(ordering: .sequentiallyConsistent)
        if unfinished == 0 { return true }
        joinSleepers.pointee.add(1, ordering: .sequentiallyConsistent)
        if unfinished != 0 {
            Futex.wait(Futex.lowHalf(done), expected: UInt32(truncatingIfNeeded: observed), until: sliceEnd)
        }
        joinSleepers.pointee.subtract(1, ordering: .relaxed)
        return unfinished == 0 ? true : nil
    }

    func interruptJoin() { Futex.wake(Futex.lowHalf(done)) }
}
