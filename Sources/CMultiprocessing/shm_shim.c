#define _GNU_SOURCE
#include "shm_shim.h"
#include "sync_shim.h"
#include "process_shim.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* The table shared by an owner and its tracker: slots of SLOT_SIZE bytes, each a state word
   (0 free, 1 owned) followed by the segment's name with its leading slash, NUL-terminated. */
#define SLOT_SIZE 512
#define NAME_MAX_BYTES 300
#define FIRST_CAPACITY 64

/* ---- The tracker process ---- */

/* Sleeps until the owner's lifeline hangs up, then unlinks what the table still holds.
   Plain C: it runs before the Swift runtime is used. */
static void tracker_main(int lifeline, int table_fd, int owner) {
    struct pollfd entry = {.fd = lifeline, .events = POLLIN};
    for (;;) {
        int ready = poll(&entry, 1, -1);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) break;
        if (entry.revents & (POLLHUP | POLLERR | POLLNVAL)) break;
        char drain[64]; /* nobody writes, but never spin on stray bytes */
        if (read(lifeline, drain, sizeof drain) <= 0) break;
    }
    struct stat status;
    if (fstat(table_fd, &status) != 0 || status.st_size < SLOT_SIZE) return;
    size_t size = (size_t)status.st_size;
    unsigned char *table = mmap(NULL, size, PROT_READ, MAP_SHARED, table_fd, 0);
    if (table == MAP_FAILED) return;
    size_t unlinked = 0;
    for (size_t offset = 0; offset + SLOT_SIZE <= size; offset += SLOT_SIZE) {
        if (__atomic_load_n((uint64_t *)(table + offset), __ATOMIC_ACQUIRE) != 1) continue;
        const char *name = (const char *)table + offset + 8;
        if (memchr(name, 0, SLOT_SIZE - 8) == NULL || name[0] != '/') continue;
        if (shm_unlink(name) == 0) {
            if (unlinked++ == 0)
                fprintf(stderr, "multiprocessing: unlinked shared memory that process %d created and left behind:", owner);
            fprintf(stderr, " %s", name);
        }
    }
    if (unlinked > 0) fprintf(stderr, "\n");
}

/* Runs before the other constructors: a tracker never reaches the program's own code. */
__attribute__((constructor(101))) static void mp_shm_tracker_dispatch(void) {
    const char *value = getenv(MP_SHM_TRACKER_ENV);
    if (value == NULL) return;
    int owner = atoi(value);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_NAME, "mp-shm-tracker", 0, 0, 0);
    tracker_main(3, 4, owner);
    _exit(0);
}

/* ---- The owner's side ---- */

static pthread_mutex_t tracker_lock = PTHREAD_MUTEX_INITIALIZER;
static int lifeline_fd = -1;
static int table_fd = -1;
static unsigned char *table = NULL;
static int capacity = 0;      /* slots in the table */
static int next_unused = 0;   /* slots below this were used at least once */
static int *free_slots = NULL;/* slots freed again, a stack */
static int free_count = 0;
static pid_t tracker_pid = 0;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void before_fork(void) { pthread_mutex_lock(&tracker_lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&tracker_lock); }
/* A forked child is a new owner: it must not keep the parent's lifeline open (the tracker would not
   see the parent end) nor write into the parent's table; what it creates, its own tracker cleans. */
static void after_fork_child(void) {
    if (lifeline_fd >= 0) close(lifeline_fd);
    if (table_fd >= 0) close(table_fd);
    if (table != NULL) munmap(table, (size_t)capacity * SLOT_SIZE);
    free(free_slots);
    lifeline_fd = table_fd = -1;
    table = NULL;
    capacity = next_unused = free_count = 0;
    free_slots = NULL;
    tracker_pid = 0;
    pthread_mutex_init(&tracker_lock, NULL);
}
static void register_atfork(void) { pthread_atfork(before_fork, after_fork_parent, after_fork_child); }

/* Creates the table and starts the tracker; called with tracker_lock held. Returns 0 or an errno. */
static int start_tracker(void) {
    int memory = mp_memfd_create("multiprocessing-shm-table");
    if (memory < 0) return errno;
    if (ftruncate(memory, (off_t)FIRST_CAPACITY * SLOT_SIZE) != 0) { int e = errno; close(memory); return e; }
    unsigned char *mapped = mmap(NULL, (size_t)FIRST_CAPACITY * SLOT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memory, 0);
    if (mapped == MAP_FAILED) { int e = errno; close(memory); return e; }
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
        int e = errno;
        munmap(mapped, (size_t)FIRST_CAPACITY * SLOT_SIZE);
        close(memory);
        return e;
    }

    size_t count = 0;
    while (environ != NULL && environ[count] != NULL) count++;
    char **envp = malloc((count + 2) * sizeof *envp);
    size_t used = 0;
    if (envp != NULL) {
        for (size_t i = 0; i < count; i++) {
            if (strncmp(environ[i], MP_SHM_TRACKER_ENV "=", sizeof MP_SHM_TRACKER_ENV) != 0) envp[used++] = environ[i];
        }
    }
    char setting[64];
    snprintf(setting, sizeof setting, "%s=%d", MP_SHM_TRACKER_ENV, (int)getpid());
    char *argv[] = {"mp-shm-tracker", NULL};

    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    int rc = envp == NULL ? ENOMEM : 0;
    if (rc == 0) {
        envp[used++] = setting;
        envp[used] = NULL;
        rc = posix_spawn_file_actions_init(&actions);
    }
    if (rc == 0) rc = posix_spawnattr_init(&attr);
    if (rc == 0) rc = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    if (rc == 0) rc = posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    /* Sources above 9, so that moving them to 3 and 4 never overwrites one with the other. */
    int high_pipe = fcntl(pipe_fds[0], F_DUPFD_CLOEXEC, 10);
    int high_memory = fcntl(memory, F_DUPFD_CLOEXEC, 10);
    if (rc == 0 && (high_pipe < 0 || high_memory < 0)) rc = errno;
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, high_pipe, 3);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, high_memory, 4);
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions, 5);
    if (rc == 0) rc = mp_spawnattr_reset_signals(&attr, POSIX_SPAWN_SETSID);
    pid_t pid = 0;
    if (rc == 0) rc = posix_spawn(&pid, "/proc/self/exe", &actions, &attr, argv, envp);
    if (envp != NULL) {
        posix_spawn_file_actions_destroy(&actions);
        posix_spawnattr_destroy(&attr);
    }
    free(envp);
    if (high_pipe >= 0) close(high_pipe);
    if (high_memory >= 0) close(high_memory);
    close(pipe_fds[0]);
    if (rc != 0) {
        close(pipe_fds[1]);
        munmap(mapped, (size_t)FIRST_CAPACITY * SLOT_SIZE);
        close(memory);
        return rc;
    }
    lifeline_fd = pipe_fds[1];
    table_fd = memory;
    table = mapped;
    capacity = FIRST_CAPACITY;
    tracker_pid = pid;
    return 0;
}

/* A free slot, growing the table when full; called with tracker_lock held. Returns -errno on failure. */
static int take_slot(void) {
    if (free_count > 0) return free_slots[--free_count];
    if (next_unused < capacity) return next_unused++;
    int grown = capacity * 2;
    int *stack = realloc(free_slots, (size_t)grown * sizeof *stack);
    if (stack == NULL) return -ENOMEM;
    free_slots = stack;
    if (ftruncate(table_fd, (off_t)grown * SLOT_SIZE) != 0) return -errno;
    void *moved = mremap(table, (size_t)capacity * SLOT_SIZE, (size_t)grown * SLOT_SIZE, MREMAP_MAYMOVE);
    if (moved == MAP_FAILED) return -errno;
    table = moved;
    capacity = grown;
    return next_unused++;
}

int mp_shm_track(const char *name) {
    size_t length = strlen(name);
    if (length == 0 || length > NAME_MAX_BYTES) return -EINVAL;
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&tracker_lock);
    int rc = table == NULL ? start_tracker() : 0;
    if (rc == 0 && free_slots == NULL) {
        free_slots = malloc((size_t)capacity * sizeof *free_slots);
        if (free_slots == NULL) rc = ENOMEM;
    }
    int slot = rc == 0 ? take_slot() : -rc;
    if (slot >= 0) {
        unsigned char *entry = table + (size_t)slot * SLOT_SIZE;
        memcpy(entry + 8, name, length + 1);
        __atomic_store_n((uint64_t *)entry, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&tracker_lock);
    return slot;
}

/* Frees `slot`; called with tracker_lock held. */
static void release_slot(int slot) {
    __atomic_store_n((uint64_t *)(table + (size_t)slot * SLOT_SIZE), 0, __ATOMIC_RELEASE);
    free_slots[free_count++] = slot;
}

void mp_shm_untrack(int slot, const char *name) {
    pthread_mutex_lock(&tracker_lock);
    if (table != NULL && slot >= 0 && slot < next_unused) {
        unsigned char *entry = table + (size_t)slot * SLOT_SIZE;
        if (__atomic_load_n((uint64_t *)entry, __ATOMIC_RELAXED) == 1 && strcmp((char *)entry + 8, name) == 0) release_slot(slot);
    }
    pthread_mutex_unlock(&tracker_lock);
}

void mp_shm_untrack_name(const char *name) {
    pthread_mutex_lock(&tracker_lock);
    for (int slot = 0; table != NULL && slot < next_unused; slot++) {
        unsigned char *entry = table + (size_t)slot * SLOT_SIZE;
        if (__atomic_load_n((uint64_t *)entry, __ATOMIC_RELAXED) == 1 && strcmp((char *)entry + 8, name) == 0) {
            release_slot(slot);
            break;
        }
    }
    pthread_mutex_unlock(&tracker_lock);
}

int mp_shm_tracker_pid(void) {
    pthread_mutex_lock(&tracker_lock);
    int pid = (int)tracker_pid;
    pthread_mutex_unlock(&tracker_lock);
    return pid;
}

int mp_shm_open(const char *name, int flags, unsigned int mode) { return shm_open(name, flags | O_CLOEXEC, (mode_t)mode); }

int mp_shm_unlink(const char *name) { return shm_unlink(name); }
