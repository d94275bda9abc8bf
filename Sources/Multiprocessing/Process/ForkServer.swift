#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// The forkserver start method.
///
/// A server process, spawned on first use, runs a single-threaded loop before its `main` (so forking it
/// is safe). It forks children before starts ask for them: *spares*, each waiting on its own bootstrap
/// socket. For each spare the server makes the bootstrap socket pair and a status socket pair, and sends
/// the parent a *notice*: the spare's pid, with its pidfd, the parent's end of its bootstrap pair and the
/// reading end of its status pair (SCM_RIGHTS). A start writes the child's bootstrap into the oldest
/// spare's pair: that spare reads it at once and becomes the child, tells the server it was taken, and
/// the server forks another while the child runs. So a start costs the parent no fork, no socket pair
/// and no wait for the child.
///
/// The server reaps every process it forked and writes its exit code to its status socket, which is the
/// child's sentinel. A child that exits normally writes its code there itself too, so the code survives
/// even the server's death. A start that finds the server dead spawns a new one; a spare of a dead
/// server serves a start that reached it before it saw the death, and ends otherwise. Before
/// its first fork the server rehearses a child's start, and after it shares its code's page tables with
/// later children (`mp_share_code_with_children`), so that a child neither rebuilds the runtime's caches
/// nor faults in the program's code again; the parent names each task type to the server once, and the
/// server resolves it, so later children find the lookup done.
enum ForkServerLauncher {
    private struct Server: @unchecked Sendable {
        var control: Int32 = -1
        var process: PidfdHandle?
        /// The task types named to this server.
        var namedTypes: Set<String> = []
        /// Whether the server's last fork failed: it forks again only when asked.
        var forkFailed = false
    }

    private static let server = ForkSafeMutex(Server())
    /// The running server's pid (0 for none), readable without waiting for a start in progress.
    private static let runningPid = Atomic<Int32>(0)

    /// How long a start waits for the server to announce a spare before it counts the server as hung,
    /// kills it and starts a new one (milliseconds). A healthy server has a spare waiting before it is
    /// needed; the bound covers a server that was just spawned on a loaded machine.
    static let replyTimeoutMilliseconds = Atomic<Int>(5_000)

    /// How many servers one start tries before it gives up.
    static let attempts = 3

    /// How many spares the server keeps waiting. Two, so that a start seldom waits for a fork: one spare
    /// is still there while the server forks the one after the previous start.
    static let sparesAhead = 2

    /// In a forked child: the parent's server is the parent's; this process starts its own when needed.
    static func forgetInheritedServer() {
        server.resetAfterFork { server in
            Syscall.close(server.control)
            server = Server()
        }
        runningPid.store(0, ordering: .relaxed)
    }

    /// The running server's pid, if one runs.
    static var serverPid: Int32? {
        let pid = runningPid.load(ordering: .relaxed)
        return pid > 0 ? pid : nil
    }

    /// Writes the request's bootstrap to a spare, which becomes the child; puts the spare's end of the
    /// bootstrap pair in the request and returns the child's handle and the part of the bootstrap still
    /// to write. A spare that ended before it was used refuses the write (its end is closed), and the
    /// next is tried; a spare only runs what was written to it, so the task runs only in the process
    /// whose pid the returned handle names.
    /// - Throws: ``MultiprocessingError`` (code ``MultiprocessingError/Code/system``) when no server
    ///   answered in ``attempts`` tries (each died or hung) or the server's fork failed, or the OS refused
    ///   a spawn.
    private static func launch(_ request: inout LaunchRequest, typeName: String) throws -> (ForkServerSpare, UnsentMessage) {
        let message = try request.bootstrapMessage()
        return try server.withLock { server in
            var failures: [String] = []
            for _ in 0..<attempts {
                do {
                    if server.control < 0 { server = try startServer() }
                    try name(typeName, to: &server)
                    while true {
                        let spare = try nextSpare(of: &server)
                        do {
                            let rest = try request.startBootstrap(message, on: spare.bootstrap)
                            request.parentEnd = spare.bootstrap
                            return (spare, rest)
                        } catch let error as MultiprocessingError
                            where error.code == .system && (error.errno == EPIPE || error.errno == ECONNRESET)
                        {
                            // The spare ended before it was used: the next one.
                            spare.releaseUnused()
                        } catch {
                            spare.releaseUnused()
                            throw error
                        }
                    }
                } catch let failure as CouldNotFork {
                    // The server answered: its fork failed. Another server would fare no better.
                    throw MultiprocessingError(.system, "the fork server could not fork", errno: failure.errno)
                } catch {
                    failures.append("\(error)")
                    diagnostics.warning(
                        "fork server \(server.process.map { "\($0.pid)" } ?? "(not started)") failed while starting a child (\(error)); replacing it")
                    stop(&server)
                }
            }
            throw MultiprocessingError(
                .system,
                "the fork server died or stopped answering \(attempts) times while starting a child: "
                    + failures.joined(separator: "; "))
        }
    }

    /// Closes the control socket (the server exits on EOF; the notices not read go with it, so their
    /// spares read end of file and end), kills the server (a stopped one too) and reaps it.
    private static func stop(_ server: inout Server) {
        Syscall.close(server.control)
        if let process = server.process {
            try? process.send(signal: SIGKILL)
            _ = try? Syscall.pollReadable([process.sentinel], until: .after(.seconds(5)))
            _ = try? process.exitCode()
        }
        server = Server()
        runningPid.store(0, ordering: .relaxed)
    }

    private static func startServer() throws -> Server {
        let (mine, theirs) = try Syscall.socketPair()
        defer { Syscall.close(theirs) }
        do {
            let pid = try SpawnLauncher.spawnSelf(keeping: theirs, variable: MP_FORKSERVER_ENV)
            let process = try PidfdHandle(pid: pid)
            runningPid.store(pid, ordering: .relaxed)
            return Server(control: mine, process: process)
        } catch {
            Syscall.close(mine)
            throw error
        }
    }

    /// Names a task type to the server the first time a start uses it: the server resolves it, and the
    /// spares it forks after inherit the lookup.
    private static func name(_ typeName: String, to server: inout Server) throws {
        guard !server.namedTypes.contains(typeName) else { return }
        var message = withUnsafeBytes(of: Int32(typeName.utf8.count)) { Array($0) }
        message += typeName.utf8
        guard message.count <= messageLimit else { return }
        try message.withUnsafeBytes { try Syscall.writeAll(server.control, $0) }
        server.namedTypes.insert(typeName)
    }

    /// The oldest spare announced and not used: the next notice, read when a start needs it (the others
    /// wait in the socket, so this process holds no descriptor of a spare it has not used). Waits for one
    /// if none came yet; when the server's fork failed, asks it once to try again.
    /// - Throws: ``MultiprocessingError/Code/timedOut`` when the server announced nothing within
    ///   ``replyTimeoutMilliseconds`` (it hung), ``MultiprocessingError/Code/endOfFile`` when it died, and
    ///   ``CouldNotFork`` when it could not fork.
    private static func nextSpare(of server: inout Server) throws -> ForkServerSpare {
        let timeout = Duration.milliseconds(replyTimeoutMilliseconds.load(ordering: .relaxed))
        let deadline = Deadline.after(timeout)
        var asked = false
        // A server that died is replaced at the next start, as in Python, though its spares could still
        // serve it: its children's exit codes would have no one to report them.
        if let process = server.process, try !Syscall.pollReadable([process.sentinel], until: .now).isEmpty {
            throw MultiprocessingError(.endOfFile, "the fork server died")
        }
        func ask() throws {
            var poke: Int32 = 0
            try withUnsafeBytes(of: &poke) { try Syscall.writeAll(server.control, $0) }
            asked = true
        }
        while true {
            switch try readNotice(server.control) {
            case .spare(let spare):
                server.forkFailed = false
                return spare
            case .forkFailed(let error):
                server.forkFailed = true
                if asked { throw CouldNotFork(errno: error) }
                try ask()
            case nil:
                // A server whose last fork failed waits to be asked before it forks again.
                if server.forkFailed && !asked {
                    try ask()
                    continue
                }
                let sentinels = [server.control] + (server.process.map { [$0.sentinel] } ?? [])
                let ready = try Syscall.pollReadable(sentinels, until: deadline)
                if ready.isEmpty { throw MultiprocessingError(.timedOut, "the fork server did not answer within \(timeout)") }
                if ready == [1] { throw MultiprocessingError(.endOfFile, "the fork server died") }
            }
        }
    }

    /// The server's fork failed with `errno`, also when asked again.
    private struct CouldNotFork: Error {
        let errno: Int32
    }

    /// What the server says on the control socket.
    private enum Notice {
        /// A spare waits.
        case spare(ForkServerSpare)
        /// Forking a spare failed with this errno; the server forks again when asked.
        case forkFailed(Int32)
    }

    /// The next notice if one is there, without waiting.
    /// - Throws: ``MultiprocessingError/Code/endOfFile`` once the server's end is closed.
    private static func readNotice(_ control: Int32) throws -> Notice? {
        var value: Int32 = 0
        var descriptors: [Int32] = [-1, -1, -1]
        var count: Int32 = 0
        let got = withUnsafeMutableBytes(of: &value) { raw in
            mp_recvmsg_fds_flags(control, raw.baseAddress, 4, &descriptors, 3, &count, 1)
        }
        if got < 0 {
            let error = errno
            if error == EAGAIN || error == EWOULDBLOCK || error == EINTR { return nil }
            throw MultiprocessingError.system("fork server notice", errno: error)
        }
        if got == 0 { throw MultiprocessingError(.endOfFile, "the fork server closed its control socket") }
        guard got == 4, value > 0 ? count == 3 : count == 0 else {
            for fd in descriptors.prefix(Int(count)) { Syscall.close(fd) }
            throw MultiprocessingError(.protocolViolation, "a malformed notice from the fork server")
        }
        if value <= 0 { return .forkFailed(-value) }
        return .spare(ForkServerSpare(pid: value, pidfd: descriptors[0], bootstrap: descriptors[1], status: descriptors[2]))
    }
}

/// The longest message on the control socket: a task type's mangled name and its length.
private let messageLimit = 4096

/// A spare the server announced: the child's handle and the parent's end of its bootstrap pair.
final class ForkServerSpare: ChildHandle, @unchecked Sendable {
    let pid: Int32
    /// The parent's end of the spare's bootstrap pair; the started child's owner takes it over.
    let bootstrap: Int32
    private var status: Int32
    private var pidfd: Int32
    private var code: Int32?
    private var serverLost = false

    init(pid: Int32, pidfd: Int32, bootstrap: Int32, status: Int32) {
        self.pid = pid
        self.pidfd = pidfd
        self.bootstrap = bootstrap
        self.status = status
    }

    /// Gives up a spare that ended before it was used: closes everything, the bootstrap end too.
    func releaseUnused() {
        Syscall.close(bootstrap)
        release()
    }

    /// The status socket (its data is only peeked, so it stays readable once the code has arrived);
    /// if the server died before the child reported, the child's pidfd.
    var sentinel: Int32 { serverLost ? pidfd : status }

    func exitCode() throws -> Int32? {
        if let code { return code }
        if serverLost {
            // The server died before reporting: once the child has ended, report 255 as Python does.
            if try pidfd < 0 || !Syscall.pollReadable([pidfd], until: .now).isEmpty { code = 255 }
            return code
        }
        guard try !Syscall.pollReadable([status], until: .now).isEmpty else { return nil }
        var value: Int32 = 0
        let got = withUnsafeMutableBytes(of: &value) { recv(status, $0.baseAddress, 4, Int32(MSG_PEEK | MSG_WAITALL)) }
        if got == 4 {
            code = value
        } else if got == 0 {
            serverLost = true
            return try exitCode()
        }
        return code
    }

    func send(signal: Int32) throws {
        guard code == nil else { return }
        try signalProcess(pidfd: pidfd, pid: pid, signal)
    }

    func release() {
        Syscall.close(status)
        Syscall.close(pidfd)
        status = -1
        pidfd = -1
    }

    deinit { release() }
}

/// The fork server's loop, called before `main` by the C shim's constructor in the server process.
/// Single-threaded by design: it uses no Dispatch and no Swift concurrency, so its forks are safe.
@_cdecl("multiprocessing_forkserver_main")
func multiprocessingForkServerMain(_ control: Int32) {
    mp_set_thread_name("mp-forkserver")
    Syscall.openNullOnClosedStandardDescriptors()
    _ = try? Syscall.setCloseOnExec(control)
    mp_keep_heap_slack()
    _ = mp_yield_to_children()
    rehearseChildStart()
    guard let loop = ForkServerLoop(control: control) else { _exit(1) }
    // Children inherit the server's page tables for its code, once it is shared (after the rehearsal,
    // which touched the code children run). Sharing takes a few milliseconds, so the server does it
    // after forking the first spare, which serves the first start meanwhile.
    loop.forkSpares(upTo: 1)
    _ = mp_share_code_with_children()
    while true { loop.serve() }
}

/// The state of the fork server's loop, in storage allocated once.
///
/// The server's pages are shared with each child it forks, so every page the server writes while that
/// child lives is copied first (a page fault of a few microseconds, on the way to the next start). The
/// loop therefore allocates nothing per start and writes only these buffers and its stack.
private final class ForkServerLoop {
    let control: Int32
    /// The spares' link, a packet socket pair: a spare that is taken sends its pid on `toServer`, which
    /// every spare holds; a spare sees the server's end hang up when the server dies.
    private let fromSpares: Int32
    private let toServer: Int32
    /// The pids of the spares that wait.
    private var waiting: [Int32] = []
    /// Whether the last fork failed: the server then forks again only when the parent asks (a poke on
    /// the control socket), so that a start sees the failure of a fork made for it.
    private var forkFailed = false
    /// The descriptors a new spare closes: the control socket, the link's server end, then each process
    /// the server forked and has not reaped yet as its pidfd and its status socket's writing end.
    private var descriptors: UnsafeMutableBufferPointer<Int32>
    /// Each forked process's pid, in the order of `descriptors`.
    private var pids: UnsafeMutableBufferPointer<Int32>
    private var childCount = 0
    private var descriptorCount: Int { 2 + 2 * childCount }
    /// How many children had an entry in the last poll.
    private var polledChildren = 0
    /// poll's entries: the control socket, the link, then each child's pidfd.
    private var entries: UnsafeMutablePointer<pollfd>
    private let message = UnsafeMutableRawBufferPointer.allocate(byteCount: messageLimit, alignment: 8)
    /// The task types resolved so far (their names' bytes): a later child of one inherits the lookups.
    private var resolved: [[UInt8]] = []

    init?(control: Int32) {
        guard let (fromSpares, toServer) = try? Syscall.socketPair(SOCK_SEQPACKET) else { return nil }
        self.control = control
        self.fromSpares = fromSpares
        self.toServer = toServer
        waiting.reserveCapacity(ForkServerLauncher.sparesAhead)
        descriptors = .allocate(capacity: 2 + 2 * 64 + 2)
        pids = .allocate(capacity: 64)
        entries = .allocate(capacity: 2 + 64)
        descriptors[0] = control
        descriptors[1] = fromSpares
    }

    private func pidfd(_ child: Int) -> Int32 { descriptors[2 + 2 * child] }
    private func status(_ child: Int) -> Int32 { descriptors[3 + 2 * child] }

    /// One round: waits for the parent's messages, a spare's packet or a child's end, handles what came,
    /// and forks spares until ``ForkServerLauncher/sparesAhead`` wait. Exits when the parent is gone.
    func serve() {
        entries[0] = pollfd(fd: control, events: Int16(POLLIN), revents: 0)
        entries[1] = pollfd(fd: fromSpares, events: Int16(POLLIN), revents: 0)
        for child in 0..<childCount { entries[child + 2] = pollfd(fd: pidfd(child), events: Int16(POLLIN), revents: 0) }
        polledChildren = childCount
        let ready = poll(entries, nfds_t(childCount + 2), -1)
        if ready < 0 {
            if errno == EINTR { return }
            _exit(1)
        }
        if entries[0].revents != 0 { readParent() }
        if entries[1].revents != 0 { takePackets() }
        reapEnded()
        if !forkFailed { forkSpares(upTo: ForkServerLauncher.sparesAhead) }
    }

    /// Forks spares until `count` wait, each announced to the parent with a notice: its pid, with its
    /// pidfd, the parent's end of its bootstrap pair and the reading end of its status pair. A fork that
    /// fails is announced with its errno.
    func forkSpares(upTo count: Int) {
        while waiting.count < count && !forkFailed { forkSpare() }
    }

    private func forkSpare() {
        guard let (bootstrapParent, bootstrapChild) = try? Syscall.socketPair() else { return noticeFailure(errno) }
        guard let (statusRead, statusWrite) = try? Syscall.socketPair() else {
            let error = errno
            Syscall.close(bootstrapParent)
            Syscall.close(bootstrapChild)
            return noticeFailure(error)
        }
        if descriptorCount + 4 > descriptors.count { grow() }
        // The new spare closes the parent's ends too.
        (descriptors[descriptorCount], descriptors[descriptorCount + 1]) = (bootstrapParent, statusRead)
        let pid = mp_fork(descriptors.baseAddress, Int32(descriptorCount + 2))
        if pid == 0 { waitAsSpare(bootstrap: bootstrapChild, status: statusWrite) }
        let error = errno
        Syscall.close(bootstrapChild)
        let pidfd = pid > 0 ? mp_pidfd_open(pid) : -1
        guard pidfd >= 0 else {
            if pid > 0 {
                // Without its pidfd the server could not report its end: end it now.
                kill(pid, SIGKILL)
                var ignored: Int32 = 0
                _ = waitpid(pid, &ignored, 0)
            }
            for fd in [bootstrapParent, statusRead, statusWrite] { Syscall.close(fd) }
            return noticeFailure(pid > 0 ? ESRCH : error)
        }
        (descriptors[descriptorCount], descriptors[descriptorCount + 1]) = (pidfd, statusWrite)
        pids[childCount] = pid
        childCount += 1
        waiting.append(pid)
        var notice = pid
        var passed = (pidfd, bootstrapParent, statusRead)
        withUnsafeMutableBytes(of: &notice) { raw in
            var vector = iovec(iov_base: raw.baseAddress, iov_len: 4)
            withUnsafeMutablePointer(to: &passed) {
                $0.withMemoryRebound(to: Int32.self, capacity: 3) { _ = mp_sendmsg_fds(control, &vector, 1, $0, 3) }
            }
        }
        Syscall.close(bootstrapParent)
        Syscall.close(statusRead)
    }

    /// Tells the parent a fork failed with `error`; the server forks again when the parent asks.
    private func noticeFailure(_ error: Int32) {
        forkFailed = true
        var notice = -max(error, 1)
        withUnsafeBytes(of: &notice) { _ = send(control, $0.baseAddress, 4, Int32(MSG_NOSIGNAL)) }
    }

    /// Reads the parent's messages: a length and a task type's name to resolve, or a zero length, a poke
    /// (the parent asks for another fork after a failed one). Exits when the parent is gone.
    private func readParent() {
        var length: Int32 = 0
        while true {
            let got = withUnsafeMutableBytes(of: &length) { recv(control, $0.baseAddress, 4, Int32(MSG_DONTWAIT)) }
            if got < 0 && errno == EINTR { continue }
            if got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
            // The parent is gone (or its socket broke): leave running children alone (daemons end
            // themselves) and exit. Waiting spares see the server's end and end too.
            guard got == 4, length >= 0, Int(length) <= message.count else { _exit(0) }
            if length == 0 {
                forkFailed = false
                continue
            }
            var offset = 0
            while offset < Int(length) {
                let part = recv(control, message.baseAddress! + offset, Int(length) - offset, 0)
                if part < 0 && errno == EINTR { continue }
                guard part > 0 else { _exit(0) }
                offset += part
            }
            resolveTaskType(UnsafeRawBufferPointer(rebasing: message[..<offset]))
        }
    }

    /// In a spare: waits until its bootstrap arrives, tells the server it was taken, and becomes the
    /// child. Ends when the parent gave it up (end of file). When the server is gone, it shuts its
    /// socket's reading side, so that no bootstrap can arrive any more, runs one that arrived before,
    /// and ends otherwise.
    private func waitAsSpare(bootstrap: Int32, status: Int32) -> Never {
        mp_set_thread_name("mp-spare")
        mp_report_exit_code(status)
        // The loop's own storage: a new array here would instantiate its type's metadata in every spare.
        entries[0] = pollfd(fd: bootstrap, events: Int16(POLLIN), revents: 0)
        entries[1] = pollfd(fd: toServer, events: 0, revents: 0)
        while poll(entries, 2, -1) < 0 {
            if errno != EINTR { _exit(1) }
        }
        if entries[0].revents == 0 { shutdown(bootstrap, Int32(SHUT_RD)) }
        var first: UInt8 = 0
        guard recv(bootstrap, &first, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 1 else { _exit(0) }
        var pid = getpid()
        withUnsafeBytes(of: &pid) { _ = send(toServer, $0.baseAddress, 4, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        Syscall.close(toServer)
        mp_set_thread_name("mp-child")
        // The server holds none of the state a forked child forgets (it starts no children, runs no event
        // loop, and holds no lock when it forks), so the child starts as a fresh program does, without
        // writing to the pages that state lives on.
        multiprocessingChildMain(bootstrap, fresh: true)
        _exit(0)
    }

    /// Reads every packet the spares sent: each names a spare that was taken.
    private func takePackets() {
        var pid: Int32 = 0
        while true {
            let got = withUnsafeMutableBytes(of: &pid) { recv(fromSpares, $0.baseAddress, 4, Int32(MSG_DONTWAIT)) }
            if got < 0 && errno == EINTR { continue }
            guard got == 4 else { return }
            waiting.removeAll { $0 == pid }
        }
    }

    /// Reports and forgets the processes whose pidfds poll found readable (ended), spares included.
    private func reapEnded() {
        var kept = 0
        for child in 0..<childCount {
            var code: Int32 = 255
            // The entries were filled in the children's order; a child kept moves down in place.
            if child < polledChildren, entries[child + 2].revents != 0, mp_pidfd_wait(pidfd(child), 1, &code) == 1 {
                withUnsafeBytes(of: &code) { _ = send(status(child), $0.baseAddress, 4, Int32(MSG_NOSIGNAL)) }
                Syscall.close(pidfd(child))
                Syscall.close(status(child))
                // A spare that ended before it was taken: another takes its place.
                let pid = pids[child]
                waiting.removeAll { $0 == pid }
            } else {
                (descriptors[2 + 2 * kept], descriptors[3 + 2 * kept], pids[kept]) = (pidfd(child), status(child), pids[child])
                kept += 1
            }
        }
        childCount = kept
    }

    /// Resolves a task type and checks its conformance, once per type, so that every child forked later
    /// inherits the runtime's caches instead of scanning every conformance of the program.
    private func resolveTaskType(_ name: UnsafeRawBufferPointer) {
        if name.isEmpty || resolved.contains(where: { $0.elementsEqual(name) }) { return }
        let typeName = String(decoding: name, as: UTF8.self)
        checkedTaskKind.store(taskKind(of: TaskEnvelope.resolveType(named: typeName)), ordering: .relaxed)
        resolved.append(Array(name))
    }

    /// Doubles the room for children (allocating, which the loop otherwise does not). The entries of the
    /// last poll are kept.
    private func grow() {
        let children = 2 * max(childCount, 1)
        let larger = UnsafeMutableBufferPointer<Int32>.allocate(capacity: 2 + 2 * children + 2)
        _ = larger.initialize(from: descriptors[..<descriptorCount])
        descriptors.deallocate()
        descriptors = larger
        let largerPids = UnsafeMutableBufferPointer<Int32>.allocate(capacity: children)
        _ = largerPids.initialize(from: pids[..<childCount])
        pids.deallocate()
        pids = largerPids
        let more = UnsafeMutablePointer<pollfd>.allocate(capacity: 2 + children)
        more.update(from: entries, count: 2 + polledChildren)
        entries.deallocate()
        entries = more
    }
}

/// A task that is never run: the server's rehearsal of a child's start sends and decodes one.
struct ForkServerWarmUp: ProcessTask {
    let names: [String]
    let number: Int
    func run() throws {}
}

/// 1 for a ``ProcessTask`` type, 2 for an ``AsyncProcessTask`` type, 0 otherwise: the casts a child makes.
private func taskKind(of type: (any Any.Type)?) -> Int {
    if type is any ProcessTask.Type { return 1 }
    return type is any AsyncProcessTask.Type ? 2 : 0
}

/// The last ``taskKind(of:)`` the server computed. Nothing reads it: storing it keeps the compiler from
/// dropping the casts, whose point is the runtime's conformance cache that the children inherit.
private let checkedTaskKind = Atomic<Int>(0)

/// Runs, once in the server, what every child runs before its task: receiving and decoding a bootstrap
/// (every field present, so the optional ones' paths run too) over a connection, the task's casts, crash
/// messages, settings, and forgetting the parent's state. Children then inherit the initialised globals
/// and the runtime's metadata and conformance caches instead of building them each (measured with
/// `perf record` on the server and its children: the children's type-metadata instantiation, about a
/// sixth of their time, went away).
private func rehearseChildStart() {
    let settings = ChildSettingsWire(
        limits: ResourceLimits(cpuSeconds: 1, addressSpaceBytes: 1 << 30), environment: [.init(name: "A", value: "b")],
        workingDirectory: "/", standardInput: nil, standardOutput: nil, standardError: nil, memoryReport: nil)
    let sample = ChildBootstrap(
        work: TaskEnvelope(ForkServerWarmUp(names: ["a"], number: 1)), name: "a", identity: [1], authkey: [1],
        daemon: false, parentPid: 1, parentName: "a", startMethod: "spawn", settings: settings, taskName: "a")
    if let (sender, receiver) = try? Syscall.socketPair(),
        let sending = try? Connection(adopting: sender), let receiving = try? Connection(adopting: receiver)
    {
        receiving.decodingBudget = .unlimited
        try? sending.send(sample)
        if let received = try? receiving.recv(ChildBootstrap.self, timeout: .seconds(5)) {
            let task = received.work?.task
            checkedTaskKind.store(task is any ProcessTask ? 1 : (task is any AsyncProcessTask ? 2 : 0), ordering: .relaxed)
        }
    }
    // The server keeps the default actions for crash signals; only the messages' paths are rehearsed.
    CrashReport.install(process: "a", task: "a", running: true, hint: true, limits: nil, memoryReport: -1)
    for signal in CrashReport.crashSignals { _ = Glibc.signal(signal, SIG_DFL) }
    try? ChildSettingsWire.none.apply()
    ProcessState.shared.withLock { _ in }
    forgetParentState()
    defaultStartMethod.resetAfterFork { $0 = nil }
}

extension ForkServerLauncher: Launcher {
    /// Writes the child's bootstrap, with its task, to a spare of the server, which becomes the child.
    static func launch(_ request: inout LaunchRequest) throws -> any ChildHandle {
        let (task, typeName) = try request.taskForFreshProgram(.forkserver)
        request.bootstrap.work = task
        let (handle, rest) = try launch(&request, typeName: typeName)
        try request.finishBootstrap(rest, for: handle)
        return handle
    }
}
