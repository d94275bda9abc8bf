#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A flag shared by processes that others can wait for: Python's `multiprocessing.Event`.
///
/// ``set()`` raises the flag and wakes every waiter; ``clear()`` lowers it; ``wait(timeout:)-3x7vc`` returns
/// at once while it is raised and otherwise waits until it is (or the timeout passes). A waiter spins
/// (and yields) for about 20 us before it sleeps, so a quick ping-pong between two processes never
/// pays for a kernel wake-up. No owner: nothing to recover when a process dies.
public final class ProcessEvent: @unchecked Sendable, Codable, CustomStringConvertible {
    private let region: SharedRegion
    /// Bit 0: set. Bit 1: someone may be asleep. Bits 2...: how many times the flag was raised, so a
    /// waiter notices a `set()` even when a `clear()` follows at once.
    let word: UnsafeMutablePointer<Atomic<UInt32>>
    static let raised: UInt32 = 1, sleeping: UInt32 = 2, round: UInt32 = 4

    /// A new event, not set.
    /// - Throws: ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public convenience init() throws { try self.init(region: SharedRegion(.event)) }

    private init(region: SharedRegion) {
        self.region = region
        word = region.atomic32(SharedRegion.dataOffset)
    }

    /// Whether the flag is raised (Python's `is_set()`).
    public var isSet: Bool { word.pointee.load(ordering: .acquiring) & Self.raised != 0 }

    /// Raises the flag and wakes every waiter.
    public func set() {
        var current = word.pointee.load(ordering: .relaxed)
        while current & Self.raised == 0 {
            let desired = (current & ~(Self.raised | Self.sleeping) &+ Self.round) | Self.raised
            let (exchanged, actual) = word.pointee.compareExchange(
                expected: current, desired: desired, ordering: .acquiringAndReleasing)
            if exchanged {
                if current & Self.sleeping != 0 { Futex.wake(Futex.address(word)) }
                return
            }
            current = actual
        }
    }

    /// Lowers the flag.
    public func clear() {
        word.pointee.bitwiseAnd(~Self.raised, ordering: .acquiringAndReleasing)
    }

    /// Waits until the flag is raised, at most `timeout` (nil: as long as it takes; zero: only checks).
    /// Returns `true` when the flag is raised, or was raised while waiting even if cleared again
    /// since (as Python's `threading.Event`); `false` on a timeout.
    @discardableResult
    public func wait(timeout: Duration? = nil) -> Bool {
        isSet || wait(until: .after(timeout))
    }

    /// Like ``wait(timeout:)``, without blocking a thread: the wait runs on a small shared set of
    /// threads however many tasks wait.
    ///
    /// **Cancellation.** Cancelling the task ends the wait promptly with `CancellationError`; the
    /// event is not changed. When the flag was seen raised before the cancellation, the call returns
    /// `true` as usual.
    /// - Throws: `CancellationError` when the task is cancelled while waiting;
    ///   ``MultiprocessingError/Code/system`` when no thread could be started to wait on.
    @discardableResult
    public func wait(timeout: Duration? = nil) async throws -> Bool {
        if isSet { return true }
        let start = word.pointee.load(ordering: .acquiring)
        let happened = try await WaitPool.shared.wait(
            until: .after(timeout), interrupt: { Futex.wake(Futex.address(self.word)) }
        ) { sliceEnd, index in
            self.waitStep(since: start, until: sliceEnd, index: index) ? true : nil
        }
        return happened ?? false
    }

    private func wait(until deadline: Deadline) -> Bool {
        let start = word.pointee.load(ordering: .acquiring)
        var index = 0
        while !waitStep(since: start, until: deadline, index: index) {
            if deadline.hasPassed { return false }
            index += 1
        }
        return true
    }

    /// One step of a wait that began when the word was `start` (the `index`th, counting from 0):
    /// spins on the first, then sleeps once until woken or `sliceEnd`. Returns whether the flag was
    /// raised since `start`.
    private func waitStep(since start: UInt32, until sliceEnd: Deadline, index: Int) -> Bool {
        let happened = { (value: UInt32) in value & Self.raised != 0 || value >> 2 != start >> 2 }
        if index == 0, Futex.spin(until: { happened(word.pointee.load(ordering: .acquiring)) }) { return true }
        while true {
            var current = word.pointee.load(ordering: .acquiring)
            if happened(current) { return true }
            if sliceEnd.hasPassed { return false }
            if current & Self.sleeping == 0 {
                let flagged = current | Self.sleeping
                guard word.pointee.compareExchange(expected: current, desired: flagged, ordering: .relaxed).exchanged
                else { continue }
                current = flagged
            }
            Futex.wait(Futex.address(word), expected: current, until: sliceEnd)
            return happened(word.pointee.load(ordering: .acquiring))
        }
    }

    /// `ProcessEvent(set)` or `ProcessEvent(clear)`.
    public var description: String { isSet ? "ProcessEvent(set)" : "ProcessEvent(clear)" }

    /// Encodes the event for a child's task or a ``Connection/send(_:)-70itn`` message.
    public func encode(to encoder: any Encoder) throws { try region.encode(to: encoder) }

    /// Decodes an event sent by another process: the same event, shared.
    public convenience init(from decoder: any Decoder) throws {
        try self.init(region: SharedRegion(.event, from: decoder))
    }
}
