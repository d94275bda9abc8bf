#define _GNU_SOURCE
#include "socket_shim.h"
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

ssize_t mp_sendmsg_fds(int sock, const struct iovec *iov, int iovcnt, const int *fds, int nfds) {
    return mp_sendmsg_fds_flags(sock, iov, iovcnt, fds, nfds, 0);
}

ssize_t mp_sendmsg_fds_flags(int sock, const struct iovec *iov, int iovcnt, const int *fds, int nfds, int nonblocking) {
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)iovcnt;
    union {
        char buf[CMSG_SPACE(sizeof(int) * MP_MAX_FDS_PER_MESSAGE)];
        struct cmsghdr align;
    } control;
    if (nfds > 0) {
        if (nfds > MP_MAX_FDS_PER_MESSAGE) nfds = MP_MAX_FDS_PER_MESSAGE;
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0));
}

ssize_t mp_recvmsg_fds_flags(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int nonblocking) {
    struct msghdr msg;
    struct iovec iov = { buf, len };
    union {
        char buf[CMSG_SPACE(sizeof(int) * MP_MAX_FDS_PER_MESSAGE)];
        struct cmsghdr align;
    } control;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    *nfds = 0;
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | (nonblocking ? MSG_DONTWAIT : 0));
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *received = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            if (*nfds < maxfds) fds[(*nfds)++] = received[i];
            else close(received[i]);
        }
    }
    return n;
}

ssize_t mp_recvmsg_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds) {
    return mp_recvmsg_fds_flags(sock, buf, len, fds, maxfds, nfds, 0);
}

long mp_socket_free_send_room(int sock) {
    int unsent = 0, size = 0;
    socklen_t length = sizeof size;
    if (ioctl(sock, SIOCOUTQ, &unsent) != 0 || getsockopt(sock, SOL_SOCKET, SO_SNDBUF, &size, &length) != 0) return -1;
    return (long)size - (long)unsent;
}

ssize_t mp_writev_nosigpipe(int fd, const struct iovec *iov, int iovcnt) {
    sigset_t pipe_only, old;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
    ssize_t n = writev(fd, iov, iovcnt);
    int saved = errno;
    if (n < 0 && saved == EPIPE && !sigismember(&old, SIGPIPE)) {
        // Discard the SIGPIPE this write raised (unless it was already blocked by the caller).
        struct timespec zero = { 0, 0 };
        while (sigtimedwait(&pipe_only, NULL, &zero) < 0 && errno == EINTR) {}
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return n;
}

static int unix_address(const char *path, size_t length, struct sockaddr_un *address, socklen_t *address_length) {
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    if (length == 0 || length >= sizeof address->sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(address->sun_path, path, length);
    *address_length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + length + (path[0] == 0 ? 0 : 1));
    return 0;
}

/// Milliseconds on the monotonic clock.
static long long monotonic_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/// connect() that survives signals and honours a timeout: a nonblocking connect, then poll for the result.
static int connect_within(int sock, const struct sockaddr *address, socklen_t length, int timeout_ms) {
    int blocking_flags = fcntl(sock, F_GETFL);
    if (blocking_flags < 0 || fcntl(sock, F_SETFL, blocking_flags | O_NONBLOCK) < 0) return -1;
    int result = connect(sock, address, length);
    if (result < 0 && (errno == EINPROGRESS || errno == EINTR || errno == EAGAIN)) {
        long long deadline = timeout_ms < 0 ? -1 : monotonic_ms() + timeout_ms;
        for (;;) {
            int wait_ms = -1;
            if (deadline >= 0) {
                long long left = deadline - monotonic_ms();
                wait_ms = left > 0 ? (int)left : 0;
            }
            struct pollfd entry = { sock, POLLOUT, 0 };
            int ready = poll(&entry, 1, wait_ms);
            if (ready < 0 && errno == EINTR) continue;
            if (ready < 0) return -1;
            if (ready == 0) {
                if (deadline >= 0 && monotonic_ms() < deadline) continue;
                errno = ETIMEDOUT;
                return -1;
            }
            int error = 0;
            socklen_t error_length = sizeof error;
            if (getsockopt(sock, SOL_SOCKET, SO_ERROR, &error, &error_length) < 0) return -1;
            if (error == EAGAIN || error == EINPROGRESS) continue;
            if (error != 0) {
                errno = error;
                return -1;
            }
            result = 0;
            break;
        }
    }
    if (result < 0) return -1;
    return fcntl(sock, F_SETFL, blocking_flags) < 0 ? -1 : 0;
}

static void close_keeping_errno(int fd) {
    int saved = errno;
    close(fd);
    errno = saved;
}

/// A stream socket for `address`, either bound and listening or connected (within `timeout_ms`), close-on-exec.
/// TCP listeners get SO_REUSEADDR and TCP connections TCP_NODELAY. Returns the descriptor or -1 with errno.
static int open_socket(const struct sockaddr *address, socklen_t length, int listening, int backlog, int timeout_ms) {
    int sock = socket(address->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    int on = 1;
    int inet = address->sa_family != AF_UNIX;
    int ok;
    if (listening) {
        if (inet) setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
        ok = bind(sock, address, length) == 0 && listen(sock, backlog) == 0;
    } else {
        ok = connect_within(sock, address, length, timeout_ms) == 0;
        if (ok && inet) setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }
    if (!ok) {
        close_keeping_errno(sock);
        return -1;
    }
    return sock;
}

static int unix_open(const char *path, size_t length, int listening, int backlog, int timeout_ms) {
    struct sockaddr_un address;
    socklen_t address_length;
    if (unix_address(path, length, &address, &address_length) < 0) return -1;
    return open_socket((struct sockaddr *)&address, address_length, listening, backlog, timeout_ms);
}

int mp_unix_listen(const char *path, size_t length, int backlog) {
    return unix_open(path, length, 1, backlog, -1);
}

int mp_unix_connect(const char *path, size_t length, int timeout_ms) {
    return unix_open(path, length, 0, 0, timeout_ms);
}

/// Tries each address `host`:`port` resolves to until one opens (see open_socket).
static int tcp_open(const char *host, int port, int listening, int backlog, int timeout_ms, int *gai_error) {
    struct addrinfo hints, *list = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (listening ? AI_PASSIVE : 0);
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    *gai_error = getaddrinfo(host[0] ? host : NULL, service, &hints, &list);
    if (*gai_error != 0) return -2;
    int sock = -1;
    errno = EADDRNOTAVAIL;
    for (struct addrinfo *entry = list; entry != NULL && sock < 0; entry = entry->ai_next) {
        sock = open_socket(entry->ai_addr, entry->ai_addrlen, listening, backlog, timeout_ms);
    }
    freeaddrinfo(list);
    return sock;
}

int mp_tcp_listen(const char *host, int port, int backlog, int *gai_error) {
    return tcp_open(host, port, 1, backlog, -1, gai_error);
}

int mp_tcp_connect(const char *host, int port, int timeout_ms, int *gai_error) {
    return tcp_open(host, port, 0, 0, timeout_ms, gai_error);
}

int mp_is_local_host(const char *host) {
    struct addrinfo hints, *found = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_flags = AI_NUMERICHOST;
    hints.ai_socktype = SOCK_DGRAM;
    if (getaddrinfo(host, NULL, &hints, &found) != 0 || found == NULL) return 0;
    int local = 0;
    for (struct addrinfo *address = found; address != NULL && !local; address = address->ai_next) {
        int sock = socket(address->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (sock < 0) continue;
        local = bind(sock, address->ai_addr, address->ai_addrlen) == 0;
        close(sock);
    }
    freeaddrinfo(found);
    return local;
}

int mp_accept(int sock, char *host, size_t host_length, int *port) {
    struct sockaddr_storage peer;
    socklen_t peer_length = sizeof peer;
    int fd;
    do {
        fd = accept4(sock, (struct sockaddr *)&peer, &peer_length, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return -1;
    if (host_length > 0) host[0] = 0;
    *port = 0;
    if (peer.ss_family == AF_INET || peer.ss_family == AF_INET6) {
        int on = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
        char service[16];
        if (getnameinfo((struct sockaddr *)&peer, peer_length, host, (socklen_t)host_length, service, sizeof service,
                        NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
            sscanf(service, "%d", port);
        }
    }
    return fd;
}

int mp_local_port(int sock) {
    struct sockaddr_storage local;
    socklen_t length = sizeof local;
    if (getsockname(sock, (struct sockaddr *)&local, &length) < 0) return -1;
    if (local.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&local)->sin_port);
    if (local.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&local)->sin6_port);
    errno = EAFNOSUPPORT;
    return -1;
}

int mp_tcp_keepalive(int fd, int idle_seconds, int interval_seconds, int probes, int user_timeout_ms) {
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) < 0) return -1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_seconds, sizeof idle_seconds) < 0) return -1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_seconds, sizeof interval_seconds) < 0) return -1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes) < 0) return -1;
    unsigned int timeout = (unsigned int)user_timeout_ms;
    return setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout, sizeof timeout);
}

int mp_enter_network_namespace(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int result = setns(fd, CLONE_NEWNET);
    int saved = errno;
    close(fd);
    errno = saved;
    return result;
}
