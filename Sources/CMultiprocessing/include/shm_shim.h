#ifndef MP_SHM_SHIM_H
#define MP_SHM_SHIM_H
#include <stddef.h>

/// Environment variable telling a process it is a shared-memory tracker: "<owner pid>"; its
/// descriptor 3 is the read end of the owner's lifeline pipe and descriptor 4 the owner's table.
#define MP_SHM_TRACKER_ENV "MULTIPROCESSING_SHM_TRACKER"

/// Records that this process owns the segment `name` (with its leading slash, at most 256 bytes):
/// if the process ends without calling mp_shm_untrack, its tracker unlinks the segment.
///
/// The record is a write into a table in memory shared with the tracker (no message, no system call
/// once the tracker runs). The first record starts the tracker: a process of its own, in a new
/// session so a signal to this process group does not reach it, that sleeps until the write end of a
/// pipe only this process holds is closed (this process ended, however it ended), then unlinks every
/// segment still in the table. Returns the record's slot (>= 0) or a negative errno value.
int mp_shm_track(const char *name);

/// Forgets the record in `slot` (returned by mp_shm_track) if it still names `name`.
void mp_shm_untrack(int slot, const char *name);

/// Forgets the first record naming `name`, if there is one.
void mp_shm_untrack_name(const char *name);

/// The tracker's pid, or 0 when this process has not started one.
int mp_shm_tracker_pid(void);

/// shm_open(name, flags | O_CLOEXEC, mode); -1 with errno on failure.
int mp_shm_open(const char *name, int flags, unsigned int mode);
/// shm_unlink(name); -1 with errno on failure.
int mp_shm_unlink(const char *name);

#endif
