#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A meeting point for a fixed number of processes: Python's `multiprocessing.Barrier`.
///
/// Each of the ``parties`` calls ``wait()``; all of them return once the last one arrives, and the
/// barrier is ready for the next round. Each gets a different index in `0..<parties`, in order of
/// arrival (exactly one gets 0). Before anyone is released, the last to arrive runs the optional
/// action, a ``ProcessTask`` value whose `run()` does the work in whichever process arrives last;
/// it travels with the barrier, so its type must be declared at file scope.
///
/// The barrier breaks when a wait times out, when the action throws, or on ``abort()``: every waiter
/// and every later ``wait()`` throws ``MultiprocessingError/Code/brokenBarrier`` until ``reset()``.
/// A party that dies while waiting is not replaced: the others wait until their timeout.
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
    ///   - parties: how many must call ``wait()`` before all are released (at least 1).
    ///   - action: work the last party to arrive runs before the others are released.
    ///   - timeout: the timeout of ``wait()``; nil waits as long as it takes.
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

    /// How many must call ``wait()`` to pass the barrier.
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

    /// Waits for the other parties, at most `timeout` (nil: as long as it takes). See ``wait()``.
    @discardableResult
    public func wait(timeout: Duration?) throws -> Int { try wait(until: .after(timeout)) }

    /// Like ``wait()``, without blocking a Swift concurrency thread.
    @discardableResult
    public func wait() async throws -> Int {
        let deadline = defaultDeadline()
        return try await withBlockingThread { try self.wait(until: deadline) }
    }

    /// Like ``wait(timeout:)``, without blocking a Swift concurrency thread.
    @discardableResult
    public func wait(timeout: Duration?) async throws -> Int {
        let deadline = Deadline.after(timeout)
        return try await withBlockingThread { try self.wait(until: deadline) }
    }

    /// Breaks the barrier: every waiter, and every later ``wait()`` until ``reset()``, throws
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
        guard broken.pointee.load(ordering: .relaxed) == 0 else {
            guardWord.release()
            throw Self.brokenError
        }
        let round = generation.pointee.load(ordering: .relaxed)
        let index = Int(arrived.pointee.add(1, ordering: .relaxed).oldValue)
        if index + 1 == parties {
            do {
                try action?.run()
            } catch {
                breakRound(round)
                guardWord.release()
                throw error
            }
            advance(from: round, broken: false)
            guardWord.release()
            return index
        }
        guardWord.release()
        let word = generation
        if !Futex.spin(until: { word.pointee.load(ordering: .acquiring) != round }) {
            while word.pointee.load(ordering: .acquiring) == round,
                  Futex.wait(Futex.address(word), expected: round, until: deadline) {}
        }
        if word.pointee.load(ordering: .acquiring) == round {
            lockState()
            if word.pointee.load(ordering: .relaxed) == round { breakRound(round) }
            guardWord.release()
        }
        if brokenRounds.pointee.load(ordering: .acquiring) & (1 << (UInt64(round) % 64)) != 0 { throw Self.brokenError }
        return index
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

    /// Encodes the barrier and its action for a child's task or a ``Connection/send(_:)`` message.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try region.encode(to: container.superEncoder(forKey: .state))
        try container.encodeIfPresent(action.map(TaskEnvelope.init), forKey: .action)
    }

    /// Decodes a barrier sent by another process: the same barrier, shared.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        region = try SharedRegion(.barrier, from: container.superDecoder(forKey: .state))
        action = try container.decodeIfPresent(TaskEnvelope.self, forKey: .action)?.task
        guardWord = OwnershipWord(word: region.atomic64(SharedRegion.dataOffset))
    }
}
