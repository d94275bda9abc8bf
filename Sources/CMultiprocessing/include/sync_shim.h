#ifndef MP_SYNC_SHIM_H
#define MP_SYNC_SHIM_H
#include <stdint.h>
#include <time.h>

/// This process's identity for lock ownership: pid in the low 32 bits, the low 32 bits of its start
/// time (clock ticks since boot, from /proc) in the high 32 bits, so a reused pid is not mistaken for
/// a dead owner. Cached; a forked child computes its own.
extern uint64_t mp_sync_identity_cache;
uint64_t mp_sync_identity_slow(void);
static inline uint64_t mp_sync_identity(void) {
    uint64_t cached = __atomic_load_n(&mp_sync_identity_cache, __ATOMIC_RELAXED);
    return cached != 0 ? cached : mp_sync_identity_slow();
}

/// The calling thread's kernel id, cached per thread.
uint32_t mp_sync_thread_id(void);

/// 1 while the process `identity` names is running (not ended, not a zombie, pid not reused), else 0.
int mp_sync_process_alive(uint64_t identity);

/// Futex wait on a process-shared word: sleeps while *word == expected, until woken or until the
/// absolute CLOCK_MONOTONIC `deadline` (NULL: none). Returns 0 when woken, or an errno value: EAGAIN
/// (the word differed), ETIMEDOUT, EINTR.
int mp_futex_wait(uint32_t *word, uint32_t expected, const struct timespec *deadline);
/// Makes the calling thread's later mp_futex_wait calls also end as soon as *word stops being
/// `expected` (woken through mp_futex_wake on `word`): how the wait pool interrupts a wait it
/// cancels. Uses futex_waitv (Linux 5.16 and later); without it, waits are not interruptible this
/// way. A NULL `word` turns it off.
void mp_futex_interrupt_on(uint32_t *word, uint32_t expected);
/// Whether the word given to mp_futex_interrupt_on has changed (1) or not, or none is set (0).
int mp_futex_interrupted(void);
/// Futex wake: wakes at most `count` waiters on a process-shared `word`.
void mp_futex_wake(uint32_t *word, int count);

/// memfd_create(name, MFD_CLOEXEC); -1 with errno on failure.
int mp_memfd_create(const char *name);

/// A pause instruction for spin loops.
static inline void mp_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
