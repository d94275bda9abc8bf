#ifndef MP_CHILD_SHIM_H
#define MP_CHILD_SHIM_H

/// Sets the message a child writes to standard error when signal `sig` (1-64) ends it; NULL for none.
/// The text is copied. Installs the handler for `sig` (on an alternate stack, reset on first use).
int mp_crash_report_set(int sig, const char *message);
/// Installs the handler for the crash signals (SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE), which
/// writes "<who> was killed by <SIGNAL> <when>." where who is "Process <process> (pid N, task <task>)"
/// ("A child process" without a process name; no task part without a task), when says whether the
/// task was running, followed by `hint` (NULL for none) for SIGSEGV and SIGBUS. The texts are copied; a
/// message set for a signal with mp_crash_report_set takes precedence. 0, or -1 with errno.
int mp_crash_report_install(const char *process, const char *task, int running, const char *hint);
/// Sets the message written instead when the failing call left errno at ENOMEM (an allocation
/// refused under a memory limit), and the descriptor that then receives one byte ('m'); -1 for none.
void mp_crash_report_memory(const char *message, int report_fd);
/// Sets a resource limit (soft and hard); a negative value leaves that part unchanged. 0 or -1 with errno.
int mp_set_resource_limit(int resource, long soft, long hard);

/// Resource numbers, for Swift (glibc's enum type does not import as a plain int).
enum {
    MP_RLIMIT_CPU = 0,
    MP_RLIMIT_DATA = 2,
    MP_RLIMIT_CORE = 4,
    MP_RLIMIT_NOFILE = 7,
    MP_RLIMIT_AS = 9,
};

#endif
