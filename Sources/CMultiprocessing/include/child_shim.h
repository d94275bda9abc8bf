#ifndef MP_CHILD_SHIM_H
#define MP_CHILD_SHIM_H

/// Sets the message a child writes to standard error when signal `sig` (1-64) ends it; NULL for none.
/// The text is copied. Installs the handler for `sig` (on an alternate stack, reset on first use).
int mp_crash_report_set(int sig, const char *message);
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
