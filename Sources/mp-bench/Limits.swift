import CBenchLimits

// mp-bench --limits: the machine's limit for a workload, the same job written directly in C, printed as
// `LIMIT <workload> c=<n> swift=<n> unit=<u> ratio=<swift/c>` beside its BENCH line. For times the ratio says
// how many times the limit Swift takes (1 is the limit); for throughputs, which fraction of it Swift reaches.

/// The C reference of each workload that has one, measured best of three.
let limits: [String: @Sendable () -> Double] = [
    "start-join-fork": { best(lower: true) { mpl_fork_exit_wait_ms(500) } },
    "start-join-forkserver": { best(lower: true) { mpl_fork_exit_wait_ms(500) } },
    "start-join-spawn": { best(lower: true) { mpl_spawn_true_ms(200) } },
    "async-join-spawn": { best(lower: true) { mpl_spawn_true_ms(200) } },
    "pipe-roundtrip": { best(lower: true) { mpl_socketpair_roundtrip_us(50_000) } },
    "async-pipe-roundtrip": { best(lower: true) { mpl_socketpair_roundtrip_us(50_000) } },
    "pipe-bytes-1mib": { best(lower: false) { mpl_socketpair_mb_per_s(2_000) } },
    "lock-uncontended": { best(lower: false) { mpl_pshared_mutex_ops_per_s(10_000_000) } },
]

private func best(lower: Bool, _ measure: () -> Double) -> Double {
    let runs = (0..<3).map { _ in measure() }
    return lower ? runs.min()! : runs.max()!
}
