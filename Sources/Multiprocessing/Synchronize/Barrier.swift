#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A meeting point for a fixed number of processes: Python's `multiprocessing.Barrier`.
///
/// Each of the ``parties`` calls ``wait()-7pqyf``; all of them return once the last one arrives, and the
/// barrier is ready for the next round. Each gets a different index in `0..<parties`, in order of
/// arrival (exactly one gets 0). Before anyone is released, the last to arrive runs the optional
/// action, a ``ProcessTask`` value whose `run()` does the work in whichever process arrives last;
/// it travels with the barrier, so its type must be declared at file scope.
///
/// The barrier breaks when a wait times out, when the action throws, or on ``abort()``: every waiter
/// and every later ``wait()-7pqyf`` throws ``MultiprocessingError/Code/brokenBarrier`` until ``reset()``.
/// A party that dies inside ``wait()-7pqyf`` (after it arrived) still counts as arrived, as in Python: the
/// round passes when the other parties arrive, and the dead party's index is not given to anyone
/// else. A party that dies before it arrives is not replaced: the others wait until their timeout
/// (forever without one), so give ``wait(timeout:)-8hj8j`` a timeout when parties may die.
public final class ProcessBarrier: @unchecked Sendable, Codable, CustomStringConvertible {
    private let region: SharedRegion
    private let action: (any ProcessTask)?
    private let guardWord: OwnershipWord
    /// The round; waiters sleep on it until it changes.
    private var generation: UnsafeMutablePointer<Atomic<UInt32>> { region.atomic32(SharedRegion.dataOffset + 8) }
    private var arrived: UnsafeMutablePointer<Atomic<UInt32>> { region.atomic32(SharedRegion.dataOffset + 12) }
    private var broken: UnsafeMutablePointer<Atomic<UInt32>> { region.atomic32(SharedRegion.dataOffset + 16) }
    private var partyCount: UnsafeMutablePointer<Atomic<UInt32>> { region.atomic32(SharedRegion.dataOffset + 20) }
    /// Bit `round % 64` is set when that round ended broken.
    private var brokenRounds: UnsafeMutablePointer<Atomic<UInt64>> { region.atomic64(SharedRegion.dataOffset + 24) }
    /// The default timeout in nanoseconds plus one; 0 for none.
    private var defaultTimeout: UnsafeMutablePointer<Atomic<UInt64>> { region.atomic64(SharedRegion.dataOffset + 32) }

    /// A barrier for `parties` processes or threads.
    ///
    /// - Parameters:
    ///   - parties: how many must call ``wait()-7pqyf`` before all are released (at least 1).
    ///   - action: work the last party to arrive runs before the others are released.
    ///   - timeout: the timeout of ``wait()-7pqyf``; nil waits as long as it takes.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` when `parties` is less than 1.
    public init(parties: Int, action: (any ProcessTask)? = nil, timeout: Duration? = nil) throws {
        guard (1...Int(UInt32.max / 2)).contains(parties) else {
            throw MultiprocessingError(.invalidArgument, "a barrier needs at least 1 party, not \(parties)")
        }
        region = try SharedRegion(.barrier)
        self.action = action
        guardWord = OwnershipWord(word: region.atomic64(SharedRegion.dataOffset))
        partyCount.pointee.store(UInt32(parties), ordering: .relaxed)
        if let timeout {
            defaultTimeout.pointee.store((Deadline.after(timeout).remainingNanoseconds ?? 0) + 1, ordering: .relaxed)
        }
    }

    /// How many must call ``wait()-7pqyf`` to pass the barrier.
    public var parties: Int { Int(partyCount.pointee.load(ordering: .relaxed)) }

    /// How many are waiting now (Python's `n_waiting`); 0 while broken.
    public var waitingCount: Int {
        broken.pointee.load(ordering: .relaxed) != 0 ? 0 : Int(arrived.pointee.load(ordering: .relaxed))
    }

    /// Whether the barrier is broken (Python's `broken`).
    public var isBroken: Bool { broken.pointee.load(ordering: .relaxed) != 0 }

    /// `ProcessBarrier(parties: 5, waiting: 2)` or `ProcessBarrier(parties: 5, broken)`.
    public var description: String {
        "ProcessBarrier(parties: \(parties), \(isBroken ? "broken" : "waiting: \(waitingCount)"))"
    }

    /// Waits for the other parties, at most the barrier's default timeout. Returns this party's index.
    /// - Throws: ``MultiprocessingError/Code/brokenBarrier`` when the barrier is or becomes broken
    ///   (this wait timing out breaks it); the action's error, in the party that ran it.
    @discardableResult
    public func wait() throws -> Int { try wait(until: defaultDeadline()) }

    /// Waits for the other parties, at most `timeout` (nil: as long as it takes). See ``wait()-7pqyf``.
    @discardableResult
    public func wait(timeout: Duration?) throws -> Int { try wait(until: .after(timeout)) }

    /// Like ``wait()``, without blocking a thread: the wait runs on a small shared set of threads
    /// however many tasks wait. The last party to arrive runs the action on its own task.
    ///
    /// **Cancellation.** Cancelling the task while it waits for the others breaks the barrier, as a
    /// timeout would: this call throws `CancellationError`, the other waiters and later ``wait()``
    /// calls throw ``MultiprocessingError/Code/brokenBarrier`` until ``reset()``. Cancelled before
    /// it arrived (while another process holds the barrier's state for an instant), it throws
    /// `CancellationError` and leaves the barrier as it was. When the round passed (or broke) before
    /// the cancellation was seen, the call ends as it would have without it.
    /// - Throws: ``MultiprocessingError/Code/brokenBarrier`` when the barrier is or becomes broken;
    ///   the action's error, in the party that ran it; `CancellationError` when the task is cancelled;
    ///   ``MultiprocessingError/Code/system`` when no thread could be started to wait on.
    @discardableResult
    public func wait() async throws -> Int { try await wait(until: defaultDeadline()) }

    /// Like ``wait(timeout:)``, without blocking a thread. Cancellation acts as for ``wait()-7pqyf``.
    /// - Throws: ``MultiprocessingError/Code/brokenBarrier`` when the barrier is or becomes broken;
    ///   the action's error, in the party that ran it; `CancellationError` when the task is cancelled;
    ///   ``MultiprocessingError/Code/system`` when no thread could be started to wait on.
    @discardableResult
    public func wait(timeout: Duration?) async throws -> Int { try await wait(until: .after(timeout)) }

    /// Breaks the barrier: every waiter, and every later ``wait()-7pqyf`` until ``reset()``, throws
    /// ``MultiprocessingError/Code/brokenBarrier``.
    public func abort() {
        lockState()
        defer { guardWord.release() }
        breakRound(generation.pointee.load(ordering: .relaxed))
    }

    /// Returns the barrier to its empty, unbroken state. Parties waiting now throw
    /// ``MultiprocessingError/Code/brokenBarrier``.
    public func reset() {
        lockState()
        defer { guardWord.release() }
        if arrived.pointee.load(ordering: .relaxed) > 0 { breakRound(generation.pointee.load(ordering: .relaxed)) }
        broken.pointee.store(0, ordering: .relaxed)
    }

    // MARK: Internals

    private func wait(until deadline: Deadline) throws -> Int {
        lockState()
        let round = try arrive()
        if round.passed { return round.index }
        var index = 0
        while !roundStep(round.round, until: deadline, index: index), !deadline.hasPassed { index += 1 }
        if generation.pointee.load(ordering: .acquiring) == round.round {
            lockState()
            if generation.pointee.load(ordering: .relaxed) == round.round { breakRound(round.round) }
            guardWord.release()
        }
        return try leave(round)
    }

    private func wait(until deadline: Deadline) async throws -> Int {
        let me = OwnerCheck.me
        _ = try await guardWord.acquireAsync(as: me, until: .never)
        let round = try arrive()
        if round.passed { return round.index }
        var cancellation: (any Error)?
        do {
            _ = try await WaitPool.shared.wait(
                until: deadline, interrupt: { Futex.wake(Futex.address(self.generation)) }
            ) { sliceEnd, index in
                self.roundStep(round.round, until: sliceEnd, index: index) ? true : nil
            }
        } catch {
            cancellation = error
        }
        if generation.pointee.load(ordering: .acquiring) == round.round {
            _ = try? await guardWord.acquireAsync(as: me, until: .never, cancellable: false)
            let stillWaiting = generation.pointee.load(ordering: .relaxed) == round.round
            if stillWaiting { breakRound(round.round) }
            guardWord.release()
            if stillWaiting, let cancellation { throw cancellation }
        }
        return try leave(round)
    }

    /// A party's place in a round: its index, and whether it was the last and passed already.
    private struct Place { let round: UInt32, index: Int, passed: Bool }

    /// Arrives at the barrier (holding the state lock, which it releases). When this party is the
    /// last, runs the action and ends the round.
    private func arrive() throws -> Place {
        guard broken.pointee.load(ordering: .relaxed) == 0 else {
            guardWord.release()
            throw Self.brokenError
        }
        let round = generation.pointee.load(ordering: .relaxed)
        let index = Int(arrived.pointee.add(1, ordering: .relaxed).oldValue)
        guard index + 1 == parties else {
            guardWord.release()
            return Place(round: round, index: index, passed: false)
        }
        do {
            try action?.run()
        } catch {
            breakRound(round)
            guardWord.release()
            throw error
        }
        advance(from: round, broken: false)
        guardWord.release()
        return Place(round: round, index: index, passed: true)
    }

    /// One step of a wait for `round` to end (the `index`th, counting from 0): spins on the first,
    /// then sleeps once until woken or `sliceEnd`. Returns whether the round ended.
    private func roundStep(_ round: UInt32, until sliceEnd: Deadline, index: Int) -> Bool {
        let word = generation
        if index == 0, Futex.spin(until: { word.pointee.load(ordering: .acquiring) != round }) { return true }
        if word.pointee.load(ordering: .acquiring) == round {
            Futex.wait(Futex.address(word), expected: round, until: sliceEnd)
        }
        return word.pointee.load(ordering: .acquiring) != round
    }

    /// This party's index once its round ended.
    /// - Throws: ``MultiprocessingError/Code/brokenBarrier`` when the round ended broken.
    private func leave(_ place: Place) throws -> Int {
        if brokenRounds.pointee.load(ordering: .acquiring) & (1 << (UInt64(place.round) % 64)) != 0 {
            throw Self.brokenError
        }
        return place.index
    }

    private static var brokenError: MultiprocessingError {
        MultiprocessingError(.brokenBarrier, "the barrier is broken")
    }

    private func lockState() { guardWord.acquire(as: OwnerCheck.me, blocking: true, timeout: nil) }

    private func defaultDeadline() -> Deadline {
        let stored = defaultTimeout.pointee.load(ordering: .relaxed)
        return stored == 0 ? .never : .after(.nanoseconds(Int64(stored - 1)))
    }

    /// Marks `round` broken, breaks the barrier and releases its waiters (holding the state lock).
    private func breakRound(_ round: UInt32) {
        broken.pointee.store(1, ordering: .relaxed)
        advance(from: round, broken: true)
    }

    /// Ends `round`, recording how, and wakes its waiters (holding the state lock).
    private func advance(from round: UInt32, broken: Bool) {
        let bit: UInt64 = 1 << (UInt64(round) % 64), nextBit: UInt64 = 1 << (UInt64(round &+ 1) % 64)
        var bits = brokenRounds.pointee.load(ordering: .relaxed) & ~nextBit
        bits = broken ? bits | bit : bits & ~bit
        brokenRounds.pointee.store(bits, ordering: .relaxed)
        arrived.pointee.store(0, ordering: .relaxed)
        generation.pointee.store(round &+ 1, ordering: .releasing)
        Futex.wake(Futex.address(generation))
    }

    // MARK: Crossing a process boundary

    private enum CodingKeys: String, CodingKey { case state, action }

    /// Encodes the barrier and its action for a child's task or a ``Connection/send(_:)-70itn`` message.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try region.encode(to: container.superEncoder(forKey: .state))
        try container.encodeIfPresent(action.map { TaskEnvelope($0) }, forKey: .action)
    }

    /// Decodes a barrier sent by another process: the same barrier, shared.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        region = try SharedRegion(.barrier, from: container.superDecoder(forKey: .state))
        action = try container.decodeIfPresent(TaskEnvelope.self, forKey: .action)?.task as? any ProcessTask
        guardWord = OwnershipWord(word: region.atomic64(SharedRegion.dataOffset))
    }
}
