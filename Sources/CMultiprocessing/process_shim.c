#define _GNU_SOURCE
#include "process_shim.h"
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
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
