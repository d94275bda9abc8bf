#ifndef MP_SOCKET_SHIM_H
#define MP_SOCKET_SHIM_H
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

/// sendmsg() of an iovec with up to 250 descriptors attached as SCM_RIGHTS, MSG_NOSIGNAL set.
/// Returns bytes sent or -1 with errno.
ssize_t mp_sendmsg_fds(int sock, const struct iovec *iov, int iovcnt, const int *fds, int nfds);
/// mp_sendmsg_fds(), with MSG_DONTWAIT when `nonblocking` is set.
ssize_t mp_sendmsg_fds_flags(int sock, const struct iovec *iov, int iovcnt, const int *fds, int nfds, int nonblocking);

/// recvmsg() into buf; descriptors that arrive are stored in fds (at most maxfds, the rest are closed)
/// with MSG_CMSG_CLOEXEC, and their number in *nfds. With `nonblocking`, MSG_DONTWAIT is set.
/// Returns bytes read (0 at EOF) or -1 with errno.
ssize_t mp_recvmsg_fds_flags(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int nonblocking);

/// mp_recvmsg_fds_flags() without MSG_DONTWAIT.
ssize_t mp_recvmsg_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds);

/// writev() to a descriptor that may be a pipe, with SIGPIPE blocked for the call and any SIGPIPE it
/// raised discarded, so a closed reader gives EPIPE instead of killing the process.
ssize_t mp_writev_nosigpipe(int fd, const struct iovec *iov, int iovcnt);
/// The room left in a socket's send buffer: SO_SNDBUF less what waits in it (SIOCOUTQ, which counts the
/// kernel's overhead per buffer too). -1 with errno when either cannot be read.
long mp_socket_free_send_room(int sock);

/// The largest number of descriptors one message may carry.
#define MP_MAX_FDS_PER_MESSAGE 250

/// A listening Unix stream socket bound to `path` (`length` bytes; a leading NUL byte names Linux's
/// abstract namespace), close-on-exec. Returns the descriptor or -1 with errno.
int mp_unix_listen(const char *path, size_t length, int backlog);

/// A Unix stream socket connected to `path` (as for mp_unix_listen), close-on-exec, waiting at most
/// `timeout_ms` milliseconds (-1: no limit). Returns the descriptor or -1 with errno (ETIMEDOUT).
int mp_unix_connect(const char *path, size_t length, int timeout_ms);

/// A listening TCP socket on `host`:`port` (port 0 picks a free one) with SO_REUSEADDR, close-on-exec.
/// Returns the descriptor, or -1 with errno, or -2 with a getaddrinfo() code in *gai_error.
int mp_tcp_listen(const char *host, int port, int backlog, int *gai_error);

/// A TCP socket connected to `host`:`port` with TCP_NODELAY, close-on-exec, waiting at most
/// `timeout_ms` milliseconds per address (-1: no limit). Returns as mp_tcp_listen.
int mp_tcp_connect(const char *host, int port, int timeout_ms, int *gai_error);

/// Whether `host` (a numeric IPv4 or IPv6 address) is an address of this machine, as seen from the
/// calling thread's network namespace: 1 or 0.
int mp_is_local_host(const char *host);

/// accept4() with SOCK_CLOEXEC (and TCP_NODELAY for TCP peers). Writes the peer's numeric host into
/// `host` (empty for Unix peers) and its port into *port. Returns the descriptor or -1 with errno.
int mp_accept(int sock, char *host, size_t host_length, int *port);

/// The local port of a bound socket, or -1 with errno.
int mp_local_port(int sock);

/// Turns on TCP keepalive on a connected socket: the first probe after `idle_seconds` without traffic,
/// then every `interval_seconds`, the connection failing after `probes` unanswered ones; and data left
/// unacknowledged for `user_timeout_ms` fails it too (TCP_USER_TIMEOUT). 0, or -1 with errno.
int mp_tcp_keepalive(int fd, int idle_seconds, int interval_seconds, int probes, int user_timeout_ms);

/// Moves the calling thread into the network namespace at `path` (for example /var/run/netns/NAME):
/// sockets it creates afterwards live there. 0, or -1 with errno.
int mp_enter_network_namespace(const char *path);

#endif
