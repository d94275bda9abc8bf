#define _GNU_SOURCE
#include "sync_shim.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

uint64_t mp_sync_identity_cache = 0;
static __thread uint32_t thread_id_cache = 0;

static void forget_identity(void) {
    mp_sync_identity_cache = 0;
    thread_id_cache = 0; /* the forking thread is the child's only thread, with a new id */
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(NULL, NULL, forget_identity); }

/* Reads /proc/<pid>/stat: state letter and start time. Returns 0 when the file cannot be read. */
static int read_stat(pid_t pid, char *state, unsigned long long *start) {
    char path[48], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n;
    do { n = read(fd, buf, sizeof buf - 1); } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    /* The command name may contain spaces and parentheses: fields resume after the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ') return 0;
    *state = p[2];
    p += 2; /* field 3, the state */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL) return 0;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 1;
}

uint64_t mp_sync_identity_slow(void) {
    pthread_once(&atfork_once, register_atfork);
    pid_t pid = getpid();
    char state;
    unsigned long long start = 0;
    uint64_t token = read_stat(pid, &state, &start) ? (uint32_t)start : 0;
    uint64_t identity = (uint64_t)(uint32_t)pid | (token << 32);
    __atomic_store_n(&mp_sync_identity_cache, identity, __ATOMIC_RELAXED);
    return identity;
}

uint32_t mp_sync_thread_id(void) {
    if (thread_id_cache == 0) {
        pthread_once(&atfork_once, register_atfork);
        thread_id_cache = (uint32_t)syscall(SYS_gettid);
    }
    return thread_id_cache;
}

int mp_sync_process_alive(uint64_t identity) {
    pid_t pid = (pid_t)(uint32_t)identity;
    uint32_t token = (uint32_t)(identity >> 32);
    if (kill(pid, 0) != 0 && errno == ESRCH) return 0;
    char state;
    unsigned long long start;
    if (!read_stat(pid, &state, &start)) {
        /* No /proc: trust kill(). Under /proc, a vanished entry means the process is gone. */
        return access("/proc/self/stat", F_OK) == 0 ? 0 : 1;
    }
    if (state == 'Z' || state == 'X' || state == 'x') return 0;
    if (token != 0 && (uint32_t)start != token) return 0;
    return 1;
}

/* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline (plain FUTEX_WAIT a relative one). */
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif

/* The kernel's struct futex_waitv, declared here because older headers lack it. */
struct mp_futex_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

enum { MP_FUTEX2_SIZE_U32 = 0x02 };

static __thread uint32_t *interrupt_word = NULL;
static __thread uint32_t interrupt_expected = 0;
static volatile int waitv_missing = 0;

void mp_futex_interrupt_on(uint32_t *word, uint32_t expected) {
    interrupt_word = word;
    interrupt_expected = expected;
}

int mp_futex_interrupted(void) {
    return interrupt_word != NULL && __atomic_load_n(interrupt_word, __ATOMIC_SEQ_CST) != interrupt_expected;
}

int mp_futex_wait(uint32_t *word, uint32_t expected, const struct timespec *deadline) {
    if (interrupt_word != NULL && !waitv_missing) {
        /* Both words as shared futexes, so that mp_futex_wake's key matches for either. */
        struct mp_futex_waitv waiters[2] = {
            { expected, (uint64_t)(uintptr_t)word, MP_FUTEX2_SIZE_U32, 0 },
            { interrupt_expected, (uint64_t)(uintptr_t)interrupt_word, MP_FUTEX2_SIZE_U32, 0 },
        };
        long rc = syscall(SYS_futex_waitv, waiters, 2, 0, deadline, CLOCK_MONOTONIC);
        if (rc >= 0) return 0;
        if (errno != ENOSYS) return errno;
        waitv_missing = 1;
    }
    long rc = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, deadline, NULL, FUTEX_BITSET_MATCH_ANY);
    return rc == 0 ? 0 : errno;
}

void mp_futex_wake(uint32_t *word, int count) { syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0); }

int mp_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }
