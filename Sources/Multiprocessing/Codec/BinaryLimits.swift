import CMultiprocessing

// The limits that keep a decode from taking the process down: the stack left on the decoding thread
// and the memory that the decoded values may take. (The nesting limit is `BinaryFormat.maxDepth`.)

extension BinaryDecoder {
    /// How much memory the values made by one call of the decoder's `decode(_:from:)` may take,
    /// in proportion to the size of its input.
    ///
    /// A few bytes of input can stand for a large value: one byte holds a `nil` that decodes into an
    /// optional struct of hundreds of bytes, so a 3 MiB message of nils decoded as an array of such
    /// optionals would fill gigabytes. The decoder counts what it makes (each value the size of its type,
    /// `MemoryLayout.stride`, and each array the size of all its elements from the moment its first element
    /// is read) and refuses, with ``MultiprocessingError/Code/transport``, a message that would take more
    /// than ``limit(forInputBytes:)`` bytes, before it takes them. The count is an estimate: a value nested
    /// in another is counted again on its own, and memory that decoding code allocates by itself is not
    /// counted.
    ///
    /// The default allows 32 bytes per input byte and at least 64 MiB, which ordinary data stays well
    /// below: a message would have to consist mostly of nils or empty containers decoded into large
    /// types to reach it. Raise it on a decoder with ``BinaryDecoder/memoryBudget``, or on a connection
    /// with ``Connection/decodingBudget``.
    public struct MemoryBudget: Sendable, Hashable, CustomStringConvertible {
        /// Bytes the decoded values may take per byte of input.
        public var bytesPerInputByte: Int
        /// Bytes the decoded values may take whatever the size of the input.
        public var minimumBytes: Int

        /// Creates a budget of `bytesPerInputByte` bytes per input byte and at least `minimumBytes`.
        /// Negative numbers count as zero.
        public init(bytesPerInputByte: Int = 32, minimumBytes: Int = 64 << 20) {
            self.bytesPerInputByte = bytesPerInputByte
            self.minimumBytes = minimumBytes
        }

        /// The default budget: 32 bytes per input byte, at least 64 MiB.
        public static let `default` = MemoryBudget()

        /// A budget that never refuses: for input from a trusted peer only.
        public static let unlimited = MemoryBudget(bytesPerInputByte: .max, minimumBytes: .max)

        /// The bytes the values decoded from `count` input bytes may take (saturating at `Int.max`).
        public func limit(forInputBytes count: Int) -> Int {
            let (product, overflow) = max(bytesPerInputByte, 0).multipliedReportingOverflow(by: max(count, 0))
            return overflow ? .max : max(product, max(minimumBytes, 0))
        }

        /// The budget in words, e.g. "32 bytes per input byte, at least 64 MiB".
        public var description: String {
            if self == .unlimited { return "unlimited" }
            return "\(bytesPerInputByte) bytes per input byte, at least \(BinaryStackGuard.bytes(minimumBytes))"
        }
    }
}

/// Guards the stack of the thread that owns a coding state: nested `init(from:)` and `encode(to:)` calls
/// stop, with an error, while a reserve of the stack is still left.
///
/// The nesting limit (`BinaryFormat.maxDepth`) alone assumes a large stack: a level takes about a
/// kilobyte in a release build and several in a debug build, so a thread of 256 or 512 KiB (a size
/// that programs choose for worker threads) would overflow first. The bounds come from the thread
/// itself, once per coding state: states are kept per thread (see ``BinaryReusableState``).
struct BinaryStackGuard {
    /// The lowest address of the stack, and the address below which a nested call is refused;
    /// both 0 when the bounds are unknown.
    let low: UInt
    let floor: UInt

    /// Stack kept in reserve for one more level of decoding (the type's own `init(from:)`, the
    /// standard library's and this package's frames between two checks) and for reporting the error.
    /// Threads too small for it keep a quarter of their stack instead.
    static let reserve: UInt = 64 << 10

    /// Whether the bounds were measured (``unmeasured`` is not).
    private(set) var measured = true

    /// Nesting depths up to this are not checked, so that a thread measures its stack (for a main
    /// thread, glibc reads /proc/self/maps) only when a call nests deeper than most values do: a fresh
    /// child decodes its bootstrap, a few levels deep, without it. The frames of these levels fit in
    /// the reserve many times over.
    static let uncheckedDepth = 8

    /// A guard whose bounds are not measured yet; a coding state measures its thread's stack the first
    /// time a call nests deeper than ``uncheckedDepth``.
    static var unmeasured: BinaryStackGuard { BinaryStackGuard(low: 0, floor: 0, measured: false) }

    private init(low: UInt, floor: UInt, measured: Bool) {
        self.low = low
        self.floor = floor
        self.measured = measured
    }

    /// Whether a call at nesting `depth` runs too close to the end of the stack; measures the stack
    /// the first time a call is deep enough to be checked.
    @inline(__always)
    mutating func exhausted(atDepth depth: Int) -> Bool {
        guard depth > BinaryStackGuard.uncheckedDepth else { return false }
        if !measured { self = BinaryStackGuard() }
        return exhausted
    }

    /// The guard of the calling thread's stack.
    init() {
        var low: UInt = 0
        var high: UInt = 0
        guard mp_thread_stack_bounds(&low, &high) == 0, high > low else {
            self.low = 0
            floor = 0
            return
        }
        self.low = low
        floor = low + min(BinaryStackGuard.reserve, (high - low) / 4)
    }

    /// Whether the caller runs too close to the end of this stack to go one level deeper. A caller
    /// on another stack (outside these bounds) is never refused.
    @inline(__always)
    var exhausted: Bool {
        let here = mp_stack_address()
        return here < floor && here >= low
    }

    /// Words for how much of the stack is left at the caller.
    var left: String {
        BinaryStackGuard.bytes(Int(clamping: mp_stack_address() &- low))
    }

    /// A byte count in words, rounded down: "48 KiB", "64 MiB", or "100 bytes".
    static func bytes(_ count: Int) -> String {
        if count >= 1 << 20 { return "\(count >> 20) MiB" }
        if count >= 1 << 10 { return "\(count >> 10) KiB" }
        return "\(count) bytes"
    }
}
