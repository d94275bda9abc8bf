#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// One page of memory shared by every process that holds a synchronization primitive.
///
/// An anonymous memfd (no name to leak) mapped `MAP_SHARED`. A forked child inherits the mapping; a
/// spawned or forkserver child receives the memfd through ``DescriptorTransfer`` and maps it again.
/// The first 64 bytes are a header that says which primitive owns the page, so a descriptor decoded
/// as the wrong kind is refused; the primitive's state follows at ``dataOffset``. All state lives
/// here (none in the Swift object), so every process sees the same primitive.
final class SharedRegion: @unchecked Sendable {
    /// Which primitive a region belongs to, with the name used in messages.
    enum Kind: UInt32, Sendable {
        case lock = 0x4D50_4C31, rlock = 0x4D50_5231, semaphore = 0x4D50_5331, condition = 0x4D50_4331
        case event = 0x4D50_4531, barrier = 0x4D50_4231
        /// Plain shared memory (the tests keep counters in it).
        case scratch = 0x4D50_5831

        var name: String {
            switch self {
            case .lock: "a ProcessLock"
            case .rlock: "a ProcessRLock"
            case .semaphore: "a ProcessSemaphore"
            case .condition: "a ProcessCondition"
            case .event: "a ProcessEvent"
            case .barrier: "a ProcessBarrier"
            case .scratch: "shared memory"
            }
        }
    }

    /// Where a primitive's own state starts.
    static let dataOffset = 64
    /// The size of every region.
    static let size = 4096

    /// The page.
    private let mapping: SharedMapping
    /// The start of the mapping.
    let base: UnsafeMutableRawPointer
    /// The primitive the region belongs to.
    let kind: Kind

    /// A new zero-filled region for `kind`.
    init(_ kind: Kind) throws {
        mapping = try SharedMapping(size: Self.size, magic: kind.rawValue, name: "multiprocessing-sync")
        base = mapping.base
        self.kind = kind
    }

    /// Maps a region received from another process, checking that it belongs to `kind`.
    private init(adopting fd: Int32, as kind: Kind) throws {
        mapping = try SharedMapping(adopting: fd, size: Self.size, magic: kind.rawValue, what: kind.name)
        base = mapping.base
        self.kind = kind
    }

    /// The 32-bit atomic at `offset` (a multiple of 4).
    func atomic32(_ offset: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + offset).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    /// The 64-bit atomic at `offset` (a multiple of 8).
    func atomic64(_ offset: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        (base + offset).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    // MARK: Crossing a process boundary

    private enum CodingKeys: String, CodingKey { case memory }

    /// Encodes the memfd through the encoder's ``DescriptorTransfer``.
    func encode(to encoder: any Encoder) throws {
        let transfer = try DescriptorTransfer.from(encoder.userInfo, for: kind.name)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(transfer.add(mapping.fd), forKey: .memory)
    }

    /// Takes the memfd from the decoder's ``DescriptorTransfer`` and maps it, checking its kind.
    convenience init(_ kind: Kind, from decoder: any Decoder) throws {
        let transfer = try DescriptorTransfer.from(decoder.userInfo, for: kind.name)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(adopting: transfer.take(container.decode(Int.self, forKey: .memory)), as: kind)
    }
}

// MARK: - Waiting

/// Futex waits and wakes on 32-bit words of shared memory, with a bounded spin first.
enum Futex {
    /// CPU pauses a waiter spends spinning before it sleeps in the kernel: about 20 us on this kind of
    /// VM (a pause takes about 22 ns), the cost of waking a process on the other vCPU, so spinning
    /// never costs more than twice the best choice. Measured with mp-bench: an Event round trip of
    /// 0.05-0.1 us between two vCPUs, against 3-14 us with a spin of 200 pauses.
    static let spinLimit = 1000
    /// The most pauses between two looks at the word while spinning. Backing off (1, 2, 4 ... pauses)
    /// keeps a spinning waiter from pulling the cache line away from the holder at every operation:
    /// measured with mp-bench, two processes incrementing a counter under one lock went from about
    /// 21 M to about 50 M operations per second (cap 1: 21 M, 8: 31 M, 64: 48 M, 256: 40-55 M).
    /// Past the cap the spinner yields its CPU instead, in case the process it waits for runs on the
    /// same CPU: measured, an Event round trip with both processes on one CPU went from 52 us (two
    /// full spins) to 5.5 us (CPython: 14 us).
    static let backoffCap = 64

    /// The address of the low half of a 64-bit word, which is what a futex on it compares.
    static func lowHalf(_ word: UnsafeMutablePointer<Atomic<UInt64>>) -> UnsafeMutablePointer<UInt32> {
        #if _endian(big)
        return (UnsafeMutableRawPointer(word) + 4).assumingMemoryBound(to: UInt32.self)
        #else
        return UnsafeMutableRawPointer(word).assumingMemoryBound(to: UInt32.self)
        #endif
    }

    /// The plain address of a 32-bit atomic.
    static func address(_ word: UnsafeMutablePointer<Atomic<UInt32>>) -> UnsafeMutablePointer<UInt32> {
        UnsafeMutableRawPointer(word).assumingMemoryBound(to: UInt32.self)
    }

    /// Sleeps while `*word == expected`, until woken or `deadline`. Returns false only on a timeout.
    @discardableResult
    static func wait(_ word: UnsafeMutablePointer<UInt32>, expected: UInt32, until deadline: Deadline) -> Bool {
        guard var limit = deadline.timespec else { return mp_futex_wait(word, expected, nil) != ETIMEDOUT }
        return mp_futex_wait(word, expected, &limit) != ETIMEDOUT
    }

    /// Wakes up to `count` sleepers on `word`.
    static func wake(_ word: UnsafeMutablePointer<UInt32>, count: Int32 = .max) {
        mp_futex_wake(word, count)
    }

    /// Spins, with backoff, until `done()` or the spin budget runs out; returns whether `done()` became
    /// true. A wait pool step stops spinning as soon as its wait is interrupted (cancelled).
    @inline(__always)
    static func spin(until done: () -> Bool) -> Bool {
        var spent = 0
        var pause = 1
        while spent < spinLimit {
            if done() { return true }
            if pause >= backoffCap && mp_futex_interrupted() != 0 { break }
            if pause < backoffCap {
                for _ in 0..<pause { mp_cpu_relax() }
            } else {
                sched_yield()
            }
            spent += pause
            pause = min(pause * 2, backoffCap)
        }
        return done()
    }

}

/// The liveness checks that let a waiter take over from a process that died.
enum OwnerCheck {
    /// The first pause between liveness checks of a lock's owner; it doubles up to ``longestSlice``.
    static let firstSlice = Duration.milliseconds(2)
    /// The longest pause between liveness checks.
    static let longestSlice = Duration.milliseconds(100)

    /// The next slice after `slice`.
    static func next(after slice: Duration) -> Duration { min(slice * 2, longestSlice) }

    /// This process's identity (pid and start time).
    @inline(__always) static var me: UInt64 { mp_sync_identity() }

    /// Whether the process `identity` names is still running.
    static func isAlive(_ identity: UInt64) -> Bool { mp_sync_process_alive(identity) != 0 }

    /// When one wait next looks at the liveness of the processes it waits for: as soon as it first
    /// sleeps (so that even a wait with a zero timeout looks), then ``firstSlice`` later, then at
    /// doubling intervals up to ``longestSlice``. A wait's steps run one after another, so one wait
    /// uses it from one thread at a time.
    final class Schedule: @unchecked Sendable {
        private var slice = OwnerCheck.firstSlice
        /// The time of the next look.
        private(set) var next = Deadline.now

        /// Whether a look is due now; when it is, the next one is scheduled.
        func isDue() -> Bool {
            guard next.hasPassed else { return false }
            next = .after(slice)
            slice = OwnerCheck.next(after: slice)
            return true
        }
    }
}
