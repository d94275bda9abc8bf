#ifndef MP_EVENT_SHIM_H
#define MP_EVENT_SHIM_H
#include <stdint.h>

/// Readiness kinds for mp_epoll_ctl and mp_epoll_wait, independent of the system's constants.
#define MP_EVENT_READABLE 1u
#define MP_EVENT_WRITABLE 2u
#define MP_EVENT_HANGUP 4u

/// A close-on-exec epoll instance, or -1 with errno.
int mp_epoll_create(void);

/// Watches `fd` once (EPOLLONESHOT) for `events` (MP_EVENT_*), tagging reports with `fd`: `rearm` 0 adds
/// it, 1 re-arms an existing registration. Returns 0, or -1 with errno.
int mp_epoll_watch(int epfd, int fd, uint32_t events, int rearm);

/// Stops watching `fd`. Returns 0, or -1 with errno.
int mp_epoll_forget(int epfd, int fd);

/// Waits up to `timeout_ms` (-1: no limit) and fills `fds` and `events` (MP_EVENT_*) with at most `max`
/// reports. Returns their number, or -1 with errno.
int mp_epoll_wait(int epfd, int *fds, uint32_t *events, int max, int timeout_ms);

/// A close-on-exec, non-blocking eventfd, or -1 with errno.
int mp_eventfd(void);
#endif
