#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// How long a wait for another process's answer spins before it sleeps: one rule for a socket's receive
/// (``Connection``) and a manager channel's (``ManagerReceiver``).
///
/// Waking a process on another CPU costs about 20 us on this kind of VM, so when both ends spin a
/// ping-pong takes about 4 us instead of 10 to 40. Spinning only pays when the peer runs on another CPU
/// meanwhile; on a busy machine it steals time, so each spin in vain (empty-handed, or one during which
/// the thread lost its CPU, a sign that the peer shares it) doubles the number of waits that sleep at
/// once (up to ``skippedAtMost``), and a spin that catches the answer in time resets it. Measured on a
/// socket: 40 us spins gained nothing more when idle and cost more when busy; with one CPU hogged, the
/// rule costs about 15% over never spinning, and when idle a ping-pong is 3.5 us instead of 40. On a
/// manager channel with one of 2 CPUs kept busy (`mp-bench --swift-only --filter manager`): without
/// the rule 29,000-30,000 actor calls/s, with it 74,000-76,000 (the socket alone: 45,000-46,000).
struct SpinBudget {
    /// The usual spin.
    static let usualNanoseconds: UInt64 = 20_000
    /// The longest spin: a peer that answers later than two thirds of this is waited for by sleeping.
    static let longestNanoseconds: UInt64 = 100_000
    /// The most waits that sleep at once after spins in vain.
    static let skippedAtMost = 64
    /// A pause between two looks at the clock longer than this means the spinning thread was preempted.
    static let preemptedGap: UInt64 = 5_000
    /// Whether spinning can pay at all: not on a single CPU.
    static let available = sysconf(Int32(_SC_NPROCESSORS_ONLN)) > 1

    /// How long the next spin lasts: the usual spin, or longer for a peer measured to answer a little
    /// later than that (see ``window(afterTurnaround:)``).
    private(set) var window = SpinBudget.usualNanoseconds
    /// Waits left that sleep at once, and how many the next spin in vain makes that.
    private var skips = 0
    private var penalty = 0

    /// Whether the next wait spins; one that may not (after spins in vain) is counted.
    @inline(__always)
    mutating func takeSpin() -> Bool {
        if skips == 0 { return true }
        skips -= 1
        return false
    }

    /// Records how a spin ended: `inTime` when it caught the answer without losing its CPU.
    @inline(__always)
    mutating func spinEnded(inTime: Bool) {
        if inTime {
            penalty = 0
        } else {
            penalty = min(max(1, penalty * 2), Self.skippedAtMost)
            skips = penalty
        }
    }

    /// Records that the peer's answer came `turnaround` nanoseconds after the message it answers.
    mutating func answered(after turnaround: UInt64) { window = Self.window(afterTurnaround: turnaround) }

    /// The spin for the next wait, given how long after a send the peer's answer arrived. A peer that
    /// answers within the usual spin keeps it; one that takes a little longer (a Python program, which
    /// wakes up and unpickles before it answers) gets half again its time, so that the answer is caught
    /// without a wake-up of its own; one slower than that gets the usual spin.
    static func window(afterTurnaround turnaround: UInt64) -> UInt64 {
        guard turnaround > usualNanoseconds, turnaround <= longestNanoseconds / 3 * 2 else { return usualNanoseconds }
        return turnaround + turnaround / 2
    }

    /// How a spin ended: `ready` held, held after the spinning thread lost its CPU for a while (a
    /// sign that the other side shares it, and that the spin only delayed it), or never held.
    enum SpinOutcome { case ready, readyAfterPreemption, gaveUp }

    /// Spins until `ready()` or `window` nanoseconds (or `deadline`) pass, without system calls but
    /// the clock's (read through the vDSO): for a wait on memory another process writes (a manager
    /// channel's ring). A socket's receive spins on its own reads instead (see ``Connection``).
    static func spin(for window: UInt64, until deadline: Deadline, _ ready: () -> Bool) -> SpinOutcome {
        guard available else { return ready() ? .ready : .gaveUp }
        var last = Deadline.monotonicNow()
        let end = min(last &+ window, deadline.nanoseconds ?? .max)
        var preempted = false
        while true {
            for _ in 0..<8 {
                if ready() { return preempted ? .readyAfterPreemption : .ready }
                mp_cpu_relax()
            }
            let now = Deadline.monotonicNow()
            preempted = preempted || now &- last > preemptedGap
            last = now
            if now >= end { return ready() ? (preempted ? .readyAfterPreemption : .ready) : .gaveUp }
        }
    }
}
