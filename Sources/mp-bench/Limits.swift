import CBenchLimits

// mp-bench --limits: the machine's limit for a workload, the same job written directly in C, printed as
// `LIMIT <workload> c=<n> swift=<n> unit=<u> ratio=<swift/c>` beside its BENCH line. For times the ratio says
// how many times the limit Swift takes (1 is the limit); for throughputs, which fraction of it Swift reaches.

/// The C reference of each workload that has one: one measurement (main.swift alternates it with the
/// Swift workload and keeps each side's best).
let limits: [String: @Sendable () -> Double] = [
    "start-join-fork": { mpl_fork_exit_wait_ms(500) },
    "start-join-forkserver": { mpl_fork_exit_wait_ms(500) },
    "start-join-spawn": { mpl_spawn_true_ms(200) },
    "async-join-spawn": { mpl_spawn_true_ms(200) },
    "pipe-roundtrip": { mpl_socketpair_roundtrip_us(50_000) },
    "async-pipe-roundtrip": { mpl_socketpair_roundtrip_us(50_000) },
    "pipe-bytes-1mib": { mpl_socketpair_mb_per_s(2_000) },
    "lock-uncontended": { mpl_pshared_mutex_ops_per_s(10_000_000) },
]
