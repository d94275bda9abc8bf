#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// Thin wrappers over the system calls the package uses: EINTR is retried here and nowhere else,
/// and failures become ``MultiprocessingError`` with the errno.
enum Syscall {
    /// Runs `body` until it stops failing with EINTR; returns its result, or throws on another error.
    @discardableResult
    static func retrying<T: BinaryInteger>(_ what: @autoclosure () -> String, _ body: () -> T) throws -> T {
        while true {
            let result = body()
            if result >= 0 { return result }
            let error = errno
            if error == EINTR { continue }
            throw MultiprocessingError.system(what(), errno: error)
        }
    }

    /// Closes `fd`, ignoring errors (after close the descriptor is gone whatever close returns).
    static func close(_ fd: Int32) {
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    /// A connected pair of Unix sockets of `type` (a stream unless said), both close-on-exec.
    static func socketPair(_ type: __socket_type = SOCK_STREAM) throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        try retrying("socketpair") {
            socketpair(AF_UNIX, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
        }
        return (fds[0], fds[1])
    }

    /// Marks `fd` close-on-exec (or clears the mark).
    static func setCloseOnExec(_ fd: Int32, _ on: Bool = true) throws {
        let flags = try retrying("fcntl(F_GETFD)") { fcntl(fd, F_GETFD) }
        let wanted = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC
        try retrying("fcntl(F_SETFD)") { fcntl(fd, F_SETFD, wanted) }
    }

    /// Duplicates `fd` as a new close-on-exec descriptor.
    static func duplicate(_ fd: Int32) throws -> Int32 {
        try retrying("dup") { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
    }

    /// Makes a dead TCP peer or a dropped network show as an error on `fd` within seconds: keepalive
    /// probes after `idle` seconds of silence, and unacknowledged data failing after `userTimeout`.
    static func setKeepAlive(_ fd: Int32, idle: Int32, interval: Int32, probes: Int32, userTimeout: Duration) throws {
        let milliseconds = Int32(clamping: userTimeout.components.seconds * 1000 + userTimeout.components.attoseconds / 1_000_000_000_000_000)
        try retrying("setsockopt(SO_KEEPALIVE)") { mp_tcp_keepalive(fd, idle, interval, probes, milliseconds) }
    }

    /// Moves the calling thread into the network namespace at `path` (`/var/run/netns/NAME`): the
    /// sockets it creates afterwards live there.
    static func enterNetworkNamespace(_ path: String) throws {
        try retrying("setns(\(path))") { mp_enter_network_namespace(path) }
    }

    /// Waits until one of `fds` is readable (or hung up), or `deadline` passes.
    /// Returns the indexes of the ready descriptors (empty on timeout). Signals do not cut the wait short.
    static func pollReadable(_ fds: [Int32], until deadline: Deadline) throws -> [Int] {
        var entries = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        while true {
            let count = poll(&entries, nfds_t(entries.count), deadline.pollMilliseconds)
            if count < 0 {
                if errno == EINTR { continue }
                throw MultiprocessingError.system("poll", errno: errno)
            }
            if count == 0 {
                if deadline.hasPassed { return [] }
                continue
            }
            var ready: [Int] = []
            for (index, entry) in entries.enumerated() where entry.revents != 0 {
                if entry.revents & Int16(POLLNVAL) != 0 {
                    throw MultiprocessingError(.invalidArgument, "descriptor \(entry.fd) is not open", errno: EBADF)
                }
                ready.append(index)
            }
            return ready
        }
    }

    /// Writes all of `buffer`, retrying short writes and EINTR. Uses MSG_NOSIGNAL on sockets, so a
    /// closed peer is an error (EPIPE), never a SIGPIPE death.
    static func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < buffer.count {
            let pointer = buffer.baseAddress! + offset
            var written = send(fd, pointer, buffer.count - offset, Int32(MSG_NOSIGNAL))
            if written < 0 && errno == ENOTSOCK { written = write(fd, pointer, buffer.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                throw MultiprocessingError.system("write", errno: errno)
            }
            offset += written
        }
    }

    /// poll(2) over `entries` until one has events or `deadline` passes, retrying EINTR with the time
    /// left. Returns the number of entries with events.
    @discardableResult
    static func pollEntries(_ entries: inout [pollfd], until deadline: Deadline) throws -> Int {
        while true {
            let count = Glibc.poll(&entries, nfds_t(entries.count), deadline.pollMilliseconds)
            if count >= 0 { return Int(count) }
            if errno == EINTR { continue }
            throw MultiprocessingError.system("poll", errno: errno)
        }
    }

    /// Writes what fits of `buffer` to the socket `fd` without blocking (MSG_NOSIGNAL): the count
    /// written, 0 when the socket has no room.
    static func sendWithoutBlocking(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) throws -> Int {
        while true {
            let written = send(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            if written >= 0 { return written }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return 0 }
            throw MultiprocessingError.system("send", errno: errno)
        }
    }

    /// Reads at most `buffer.count` bytes from `fd`: the count read (0 at end of file).
    static func readSome(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try retrying("read") { read(fd, buffer.baseAddress, buffer.count) }
    }

    /// Duplicates `fd` as a new close-on-exec descriptor numbered `atLeast` or more.
    static func duplicate(_ fd: Int32, atLeast lowest: Int32) throws -> Int32 {
        try retrying("dup") { fcntl(fd, F_DUPFD_CLOEXEC, lowest) }
    }

    /// Makes `target` a copy of `fd` (not close-on-exec), closing what `target` was.
    static func duplicate(_ fd: Int32, onto target: Int32) throws {
        try retrying("dup2(\(fd), \(target))") { dup2(fd, target) }
    }

    /// Opens `path`; a missing file is ``MultiprocessingError/Code/notFound``.
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws -> Int32 {
        do {
            return try retrying("open(\(path))") { Glibc.open(path, flags, mode) }
        } catch let error as MultiprocessingError where error.errno == ENOENT {
            throw MultiprocessingError(.notFound, "open(\(path))", errno: ENOENT)
        }
    }

    /// A pipe, both ends close-on-exec: (read end, write end).
    static func pipe() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        try retrying("pipe") { mp_pipe_cloexec(&fds) }
        return (fds[0], fds[1])
    }

    /// Sets a resource limit of the calling process (a `MP_RLIMIT_*` number); a hard limit above the
    /// present one is lowered to it, since only a privileged process may raise it.
    static func setResourceLimit(_ resource: Int32, soft: Int, hard: Int) throws {
        try retrying("setrlimit(\(resource), \(soft))") { mp_set_resource_limit(resource, soft, hard) }
    }

    /// Opens /dev/null on each of descriptors 0, 1 and 2 that is closed, so that no descriptor the
    /// process opens later lands there (where print() or a read of standard input would reach it).
    static func openNullOnClosedStandardDescriptors() {
        for fd: Int32 in 0...2 where fcntl(fd, F_GETFD) < 0 && errno == EBADF {
            let null = Glibc.open("/dev/null", O_RDWR)
            if null >= 0 && null != fd {
                _ = dup2(null, fd)
                _ = Glibc.close(null)
            }
        }
    }
}
