#define _GNU_SOURCE
#include "process_shim.h"
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Implemented in Swift (ChildEntry.swift, ForkServer.swift). */
extern void multiprocessing_child_main(int fd);
extern void multiprocessing_forkserver_main(int fd);

typedef void (*mp_init_function)(int, char **, char **);
/* The program's constructor table, bounded by symbols the linker defines (weak: absent in odd links). */
extern mp_init_function __init_array_start[] __attribute__((weak, visibility("hidden")));
extern mp_init_function __init_array_end[] __attribute__((weak, visibility("hidden")));

static void mp_dispatch_before_main(int argc, char **argv, char **envp);

/* Runs the program's constructors that come after ours in its table. A child never returns from our
   constructor, so without this the ones linked after us never run there: with a statically linked Swift
   runtime, libdispatch's is among them, and Swift concurrency would never start a thread in the child. */
static void run_later_constructors(int argc, char **argv, char **envp) {
    if (__init_array_start == NULL || __init_array_end == NULL) return;
    size_t count = (size_t)(__init_array_end - __init_array_start);
    size_t index = 0;
    while (index < count && __init_array_start[index] != mp_dispatch_before_main) index++;
    for (index++; index < count; index++) {
        mp_init_function function = __init_array_start[index];
        if (function != NULL && function != (mp_init_function)-1) function(argc, argv, envp);
    }
}

/* Runs before main: a spawned child or a fork server never reaches the program's own code. */
__attribute__((constructor)) static void mp_dispatch_before_main(int argc, char **argv, char **envp) {
    const char *child = getenv(MP_CHILD_ENV);
    if (child != NULL) {
        int fd = atoi(child);
        unsetenv(MP_CHILD_ENV);
        run_later_constructors(argc, argv, envp);
        multiprocessing_child_main(fd);
        _exit(1); /* not reached: the child entry always exits */
    }
    const char *server = getenv(MP_FORKSERVER_ENV);
    if (server != NULL) {
        int fd = atoi(server);
        unsetenv(MP_FORKSERVER_ENV);
        run_later_constructors(argc, argv, envp);
        multiprocessing_forkserver_main(fd);
        _exit(0);
    }
}

int mp_spawnattr_reset_signals(posix_spawnattr_t *attr, short extra_flags) {
    sigset_t all, none;
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    sigemptyset(&none);
    int rc = posix_spawnattr_setsigdefault(attr, &all);
    if (rc == 0) rc = posix_spawnattr_setsigmask(attr, &none);
    if (rc == 0) rc = posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | extra_flags);
    return rc;
}

int mp_spawn(const char *path, char *const argv[], char *const envp[], int keep_fd, pid_t *pid) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc != 0) return rc;
    rc = posix_spawnattr_init(&attr);
    if (rc != 0) { posix_spawn_file_actions_destroy(&actions); return rc; }
    /* dup2 onto the same number clears close-on-exec (POSIX, glibc >= 2.29). */
    if (keep_fd == 3) rc = posix_spawn_file_actions_adddup2(&actions, 3, 3);
    else rc = posix_spawn_file_actions_adddup2(&actions, keep_fd, 3);
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions, 4);
    if (rc == 0) rc = mp_spawnattr_reset_signals(&attr, 0);
    if (rc == 0) rc = posix_spawn(pid, path, &actions, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    return rc;
}

pid_t mp_fork(const int *close_fds, int count) {
    pid_t pid = fork();
    if (pid == 0) {
        /* The forking thread may be a Dispatch worker, which blocks most signals: a child must start
           with none blocked, or terminate() would not reach it. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int i = 0; i < count; i++) close(close_fds[i]);
    }
    return pid;
}

int mp_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int mp_pidfd_send_signal(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0); }

int mp_pidfd_wait(int pidfd, int nohang, int *exit_code) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int flags = WEXITED | (nohang ? WNOHANG : 0);
    if (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, flags) != 0) return -1;
    if (info.si_pid == 0) return 0;
    *exit_code = info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
    return 1;
}

void mp_set_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

int mp_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }


long mp_getrandom(void *buf, unsigned long len) { return (long)getrandom(buf, len, 0); }

static int mp_exit_report_fd = -1;
static pid_t mp_exit_report_pid = 0;

static void mp_write_exit_code(int status, void *unused) {
    (void)unused;
    if (mp_exit_report_fd < 0 || getpid() != mp_exit_report_pid) return;
    int code = status & 0xff;
    ssize_t ignored = send(mp_exit_report_fd, &code, sizeof code, MSG_NOSIGNAL);
    (void)ignored;
}

void mp_report_exit_code(int fd) {
    mp_exit_report_fd = fd;
    mp_exit_report_pid = getpid();
    on_exit(mp_write_exit_code, NULL);
}

int mp_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

/* Reads /proc/self/maps into `text` (NUL-terminated); 0, or -1 with errno. */
static int mp_read_maps(char *text, size_t size) {
    int maps = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (maps < 0) return -1;
    size_t length = 0;
    for (;;) {
        ssize_t got = read(maps, text + length, size - 1 - length);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        length += (size_t)got;
        if (length == size - 1) break;
    }
    close(maps);
    text[length] = 0;
    return 0;
}

/* Parses one line of /proc/self/maps: start, end, permissions and inode. */
static int mp_parse_mapping(const char *line, unsigned long *start, unsigned long *end, char perms[5], unsigned long *inode) {
    char *cursor;
    *start = strtoul(line, &cursor, 16);
    if (*cursor != '-') return 0;
    *end = strtoul(cursor + 1, &cursor, 16);
    if (*cursor != ' ') return 0;
    memcpy(perms, cursor + 1, 4);
    perms[4] = 0;
    cursor += 6;
    strtoul(cursor, &cursor, 16);                    /* offset */
    while (*cursor == ' ') cursor++;
    while (*cursor != ' ' && *cursor != 0) cursor++; /* device */
    *inode = strtoul(cursor, &cursor, 10);
    return 1;
}

#define MP_HUGE_PAGE (2UL << 20)

/* Replaces the 2 MiB-aligned interior of the code mapping [start, end) with an anonymous copy in
   transparent huge pages. 1 when done, 0 when not (too small, or no huge pages to be had). */
static int mp_code_to_huge_pages(unsigned long start, unsigned long end) {
    unsigned long first = (start + MP_HUGE_PAGE - 1) & ~(MP_HUGE_PAGE - 1);
    unsigned long last = end & ~(MP_HUGE_PAGE - 1);
    if (last <= first) return 0;
    size_t length = last - first;
    char *area = mmap(NULL, length + MP_HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) return 0;
    char *copy = (char *)(((unsigned long)area + MP_HUGE_PAGE - 1) & ~(MP_HUGE_PAGE - 1));
    if (copy > area) munmap(area, (size_t)(copy - area));
    if (copy + length < area + length + MP_HUGE_PAGE) munmap(copy + length, (size_t)(area + length + MP_HUGE_PAGE - (copy + length)));
    /* MADV_COLLAPSE (Linux 6.1) fails unless every page ends up in a huge page: then nothing changes. */
    if (madvise(copy, length, MADV_HUGEPAGE) != 0) { munmap(copy, length); return 0; }
    memcpy(copy, (const void *)first, length);
    if (madvise(copy, length, 25 /* MADV_COLLAPSE */) != 0 || mprotect(copy, length, PROT_READ | PROT_EXEC) != 0) {
        munmap(copy, length);
        return 0;
    }
    /* One system call swaps the pages in under the running code, which is the same in both. */
    if (mremap(copy, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)first) == MAP_FAILED) {
        munmap(copy, length);
        return 0;
    }
    return 1;
}

/* Gives the read-only private file mapping at `start` an anonymous part by writing its first byte back
   unchanged through /proc/self/mem (as a debugger writes a breakpoint): fork copies the page-table entries
   of such mappings. 1 when done. */
static int mp_give_anonymous_part(int memory, unsigned long start) {
    unsigned char byte;
    return pread(memory, &byte, 1, (off_t)start) == 1 && pwrite(memory, &byte, 1, (off_t)start) == 1;
}

int mp_share_code_with_children(void) {
    static char text[64 * 1024];
    if (mp_read_maps(text, sizeof text) != 0) return -1;
    unsigned long own = (unsigned long)&mp_share_code_with_children;
    for (char *line = text; *line != 0;) {
        char *next = strchr(line, '\n');
        if (next != NULL) *next = 0;
        unsigned long start, end, inode;
        char perms[5];
        if (mp_parse_mapping(line, &start, &end, perms, &inode) && start <= own && own < end && perms[2] == 'x') {
            mp_code_to_huge_pages(start, end);
            break;
        }
        if (next == NULL) break;
        line = next + 1;
    }
    if (mp_read_maps(text, sizeof text) != 0) return -1;
    int memory = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
    if (memory < 0) return -1;
    int changed = 0;
    for (char *line = text; *line != 0;) {
        char *next = strchr(line, '\n');
        if (next != NULL) *next = 0;
        unsigned long start, end, inode;
        char perms[5];
        if (mp_parse_mapping(line, &start, &end, perms, &inode) && inode != 0 && perms[0] == 'r' && perms[1] == '-'
            && perms[3] == 'p')
            changed += mp_give_anonymous_part(memory, start);
        if (next == NULL) break;
        line = next + 1;
    }
    close(memory);
    return changed;
}

int mp_yield_to_children(void) {
    struct sched_param none = { 0 };
    return sched_setscheduler(0, SCHED_BATCH | SCHED_RESET_ON_FORK, &none);
}

void mp_keep_heap_slack(void) {
    mallopt(M_TOP_PAD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 2 << 20);
}
