#ifndef MP_SHM_SHIM_H
#define MP_SHM_SHIM_H
#include <stddef.h>

/// Environment variable naming the socket descriptor of a shared-memory tracker process.
#define MP_SHM_TRACKER_ENV "MULTIPROCESSING_SHM_TRACKER_FD"

/// Tells this process's shared-memory tracker that this process owns (`op` '+') or no longer owns
/// (`op` '-') the segment `name` (with its leading slash, at most 255 bytes after it). The first '+'
/// starts the tracker: a process of its own (a new session, so a signal to this process group does
/// not reach it) that holds the other end of a socket and, when this process ends however it ends,
/// unlinks every segment still registered. Returns 0 or an errno value.
int mp_shm_track(char op, const char *name);

/// The tracker's pid, or 0 when this process has not started one.
int mp_shm_tracker_pid(void);

/// shm_open(name, flags | O_CLOEXEC, mode); -1 with errno on failure.
int mp_shm_open(const char *name, int flags, unsigned int mode);
/// shm_unlink(name); -1 with errno on failure.
int mp_shm_unlink(const char *name);

#endif
