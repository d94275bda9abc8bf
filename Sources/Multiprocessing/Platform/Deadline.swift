#if canImport(Glibc)
import Glibc
#endif

/// A point on the monotonic clock by which a blocking call must return, or no limit at all.
struct Deadline: Sendable {
    /// Nanoseconds on CLOCK_MONOTONIC, or nil for "wait forever".
    let nanoseconds: UInt64?

    /// No limit.
    static let never = Deadline(nanoseconds: nil)

    /// Now: a zero timeout.
    static var now: Deadline { Deadline(nanoseconds: monotonicNow()) }

    /// The deadline `timeout` from now; nil waits forever, and a negative timeout counts as zero.
    static func after(_ timeout: Duration?) -> Deadline {
        guard let timeout else { return .never }
        let nanos = nanoseconds(in: timeout)
        return nanos == 0 ? .now : Deadline(nanoseconds: monotonicNow() &+ nanos)
    }

    /// Whole nanoseconds in `duration`: 0 for a negative one, at most 2^32 seconds' worth.
    static func nanoseconds(in duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        if seconds < 0 || (seconds == 0 && attoseconds <= 0) { return 0 }
        return UInt64(min(seconds, 1 << 32)) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
    }

    /// Whether the deadline is in the past.
    var hasPassed: Bool {
        guard let nanoseconds else { return false }
        return Deadline.monotonicNow() >= nanoseconds
    }

    /// The earlier of this deadline and `other`.
    func earlier(_ other: Deadline) -> Deadline {
        guard let mine = nanoseconds else { return other }
        guard let theirs = other.nanoseconds else { return self }
        return mine <= theirs ? self : other
    }

    /// Nanoseconds left (0 when passed), or nil for no limit.
    var remainingNanoseconds: UInt64? {
        guard let nanoseconds else { return nil }
        let now = Deadline.monotonicNow()
        return nanoseconds > now ? nanoseconds - now : 0
    }

    /// The timeout argument for poll(2): -1 for none, else milliseconds rounded up.
    var pollMilliseconds: Int32 {
        guard let left = remainingNanoseconds else { return -1 }
        return Int32(min((left + 999_999) / 1_000_000, UInt64(Int32.max)))
    }

    /// An absolute CLOCK_MONOTONIC timespec, for the futex and pthread calls that take one.
    var timespec: timespec? {
        guard let nanoseconds else { return nil }
        return Glibc.timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    }

    /// The monotonic clock in nanoseconds.
    static func monotonicNow() -> UInt64 {
        var now = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
