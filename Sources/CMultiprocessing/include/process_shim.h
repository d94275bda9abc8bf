#ifndef MP_PROCESS_SHIM_H
#define MP_PROCESS_SHIM_H
#include <spawn.h>
#include <sys/types.h>

/// Environment variable naming the bootstrap descriptor of a spawned child.
#define MP_CHILD_ENV "MULTIPROCESSING_CHILD_FD"
/// Environment variable naming the control descriptor of a fork server.
#define MP_FORKSERVER_ENV "MULTIPROCESSING_FORKSERVER_FD"

/// Resets every signal to its default action and clears the signal mask in a spawned program, with
/// `extra_flags` (e.g. POSIX_SPAWN_SETSID) besides.
int mp_spawnattr_reset_signals(posix_spawnattr_t *attr, short extra_flags);

/// posix_spawn `path` with `argv` and `envp`; `keep_fd` is moved to descriptor 3 in the child and every
/// other descriptor above 2 is closed; signal dispositions and the signal mask are reset to defaults.
/// Returns 0 and the pid, or an errno value.
int mp_spawn(const char *path, char *const argv[], char *const envp[], int keep_fd, pid_t *pid);

/// fork(); in the child, closes the `count` descriptors in `close_fds` before returning 0.
pid_t mp_fork(const int *close_fds, int count);

/// pidfd_open(2).
int mp_pidfd_open(pid_t pid);
/// pidfd_send_signal(2).
int mp_pidfd_send_signal(int pidfd, int sig);
/// waitid(P_PIDFD) with WEXITED and, when `nohang`, WNOHANG. Returns 1 and the exit code
/// (negative signal number when killed) once ended, 0 while running, -1 with errno on error.
int mp_pidfd_wait(int pidfd, int nohang, int *exit_code);
/// getrandom(2): fills buf with len random bytes; returns the count or -1 with errno.
long mp_getrandom(void *buf, unsigned long len);
/// Registers an on_exit handler that writes this process's exit code (4 bytes) to `fd`; processes
/// forked from this one later do not write.
void mp_report_exit_code(int fd);
/// pipe2(fds, O_CLOEXEC).
int mp_pipe_cloexec(int fds[2]);
/// prctl(PR_SET_NAME) best effort, for ps output.
void mp_set_thread_name(const char *name);
/// prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants of this process become its children
/// (so a supervisor, or a test, sees every process its children left behind). 0, or -1 with errno.
int mp_set_child_subreaper(void);
/// For a fork server, once: lets the children it forks inherit this process's page-table entries for its
/// code and constants, which Linux's fork otherwise leaves out of a child's page tables (so a child faults
/// again on every page of them it touches). Moves the 2 MiB-aligned middle of the code containing this
/// function into anonymous transparent huge pages (fork copies one entry per 2 MiB; nothing changes where
/// the kernel offers no huge pages), and gives every other read-only private file mapping an anonymous
/// page, which makes fork copy the entries of the pages this process has touched. Returns how many
/// mappings got an anonymous page, or -1 with errno.
int mp_share_code_with_children(void);
/// For a fork server: glibc's heap grows by 1 MiB more than it needs and returns freed memory at its top
/// to the system only beyond 2 MiB, here and in children forked later, so that a child's allocations and
/// frees at start find room in the heap it inherited instead of moving the break (brk) each time.
/// Untouched room costs neither the server nor fork anything.
void mp_keep_heap_slack(void);
/// For a fork server: SCHED_BATCH, which does not preempt a running task when it wakes, reset to the
/// normal policy in the processes it forks. 0, or -1 with errno.
int mp_yield_to_children(void);

#endif
