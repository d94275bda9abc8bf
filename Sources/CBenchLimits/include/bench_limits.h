#ifndef MP_BENCH_LIMITS_H
#define MP_BENCH_LIMITS_H
/// The machine's limits for mp-bench --limits: the same jobs as its workloads, written directly in C.

/// Milliseconds per fork + _exit + waitpid of a child that does nothing.
double mpl_fork_exit_wait_ms(int count);
/// Milliseconds per posix_spawn + waitpid of /bin/true.
double mpl_spawn_true_ms(int count);
/// Megabytes (10^6 bytes) per second of 1 MiB writes one way over a socketpair to a child that reads them.
double mpl_socketpair_mb_per_s(int count);
/// Microseconds per round trip of a 16-byte message over a socketpair with a child that echoes it.
double mpl_socketpair_roundtrip_us(int count);
/// Lock + unlock pairs per second of an uncontended process-shared pthread mutex in shared memory.
double mpl_pshared_mutex_ops_per_s(int count);
#endif
