#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// The forkserver start method.
///
/// A server process, spawned on first use, runs a single-threaded loop before its `main` (so forking it
/// is safe) and forks a copy of itself for each request. The parent sends the child's bootstrap socket
/// and one end of a status socket (SCM_RIGHTS); the server answers with the pid, reaps the child when
/// it ends and writes its exit code to the status socket, which is the child's sentinel. A child that
/// exits normally writes its code there itself too, so the code survives even the server's death.
/// If the server has died, the next start spawns a new one. Before its first fork the server rehearses a
/// child's start, and after it shares its code's page tables with later children
/// (`mp_share_code_with_children`), so that a child neither rebuilds the runtime's caches nor faults in
/// the program's code again.
enum ForkServerLauncher {
    private struct Server: @unchecked Sendable {
        var control: Int32 = -1
        var process: PidfdHandle?
    }

    private static let server = ForkSafeMutex(Server())
    /// The running server's pid (0 for none), readable without waiting for a start in progress.
    private static let runningPid = Atomic<Int32>(0)

    /// How long a start waits for the server to answer before it counts the server as hung, kills it
    /// and starts a new one (milliseconds). A healthy server answers in well under a millisecond; the
    /// bound covers a server that was just spawned on a loaded machine.
    static let replyTimeoutMilliseconds = Atomic<Int>(5_000)

    /// How many servers one start tries before it gives up.
    static let attempts = 3

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

    /// Starts a child through the server. `typeName` names the child's task type: the server resolves
    /// it once before forking, so every later child of that type starts with the lookup done.
    ///
    /// `bootstrap` is the socket pair whose `child` end the new child reads its bootstrap from. Once a
    /// request is sent, the server may have forked a child holding that end even if it died before it
    /// answered; so every retry uses a fresh pair, and closing the old one ends such a stray child (it
    /// reads end-of-file instead of a task). The task therefore runs only in the process whose pid the
    /// returned handle names.
    /// - Throws: ``MultiprocessingError`` (code ``MultiprocessingError/Code/system``) when no server
    ///   answered in ``attempts`` tries (each died or hung), or the OS refused a socket or a spawn.
    static func launch(bootstrap: inout (parent: Int32, child: Int32), typeName: String) throws -> any ChildHandle {
        try server.withLock { server in
            var failures: [String] = []
            for attempt in 0..<attempts {
                do {
                    if attempt > 0 {
                        Syscall.close(bootstrap.parent)
                        Syscall.close(bootstrap.child)
                        bootstrap = (-1, -1)
                        bootstrap = try Syscall.socketPair()
                    }
                    if server.control < 0 { server = try startServer() }
                    return try request(over: server.control, bootstrapEnd: bootstrap.child, typeName: typeName)
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

    /// Closes the control socket (the server exits on EOF), kills the server (a stopped one too) and
    /// reaps it.
    private static func stop(_ server: inout Server) {
        Syscall.close(server.control)
        server.control = -1
        if let process = server.process {
            try? process.send(signal: SIGKILL)
            _ = try? Syscall.pollReadable([process.sentinel], until: .after(.seconds(5)))
            _ = try? process.exitCode()
        }
        server.process = nil
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

    private static func request(over control: Int32, bootstrapEnd: Int32, typeName: String) throws -> any ChildHandle {
        let (statusRead, statusWrite) = try Syscall.socketPair()
        let status = [statusRead, statusWrite]
        defer { Syscall.close(status[1]) }
        do {
            var request = Array(typeName.utf8.prefix(requestLimit - 1))
            request.append(0)
            let descriptors = [bootstrapEnd, status[1]]
            let sent = request.withUnsafeMutableBytes { raw in
                var vector = iovec(iov_base: raw.baseAddress, iov_len: raw.count)
                return descriptors.withUnsafeBufferPointer { mp_sendmsg_fds(control, &vector, 1, $0.baseAddress, 2) }
            }
            if sent != request.count { throw MultiprocessingError.system("fork server request") }
            let timeout = Duration.milliseconds(replyTimeoutMilliseconds.load(ordering: .relaxed))
            guard try !Syscall.pollReadable([control], until: .after(timeout)).isEmpty else {
                throw MultiprocessingError(.timedOut, "the fork server did not answer within \(timeout)")
            }
            var pid: Int32 = 0
            try readExactly(control, into: &pid)
            guard pid > 0 else { throw MultiprocessingError(.system, "fork server could not fork", errno: -pid) }
            return try ForkServerHandle(pid: pid, status: status[0])
        } catch {
            Syscall.close(status[0])
            throw error
        }
    }
}

/// The longest request the server reads: a task type's mangled name and a NUL.
private let requestLimit = 4096

/// Reads exactly one `T` from `fd`, or throws at end of file.
func readExactly<T>(_ fd: Int32, into value: inout T) throws {
    try withUnsafeMutableBytes(of: &value) { raw in
        var offset = 0
        while offset < raw.count {
            let got = try Syscall.retrying("read") { read(fd, raw.baseAddress! + offset, raw.count - offset) }
            if got == 0 { throw MultiprocessingError(.endOfFile, "peer closed before sending \(raw.count) bytes") }
            offset += got
        }
    }
}

/// A forkserver child: not our child, so its exit code arrives through the status socket.
final class ForkServerHandle: ChildHandle, @unchecked Sendable {
    let pid: Int32
    private var status: Int32
    private var pidfd: Int32
    private var code: Int32?
    private var serverLost = false

    init(pid: Int32, status: Int32) throws {
        self.pid = pid
        self.status = status
        pidfd = mp_pidfd_open(pid)
        if pidfd >= 0 { try? Syscall.setCloseOnExec(pidfd) }
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
    rehearseChildStart()
    // Children inherit the server's page tables for its code, once it is shared (after the rehearsal,
    // which touched the code children run). Sharing takes a few milliseconds, so the server does it after
    // answering its first request, while that child runs, instead of delaying the first start.
    var codeShared = false
    let loop = ForkServerLoop(control: control)
    while true {
        guard let request = loop.next() else { continue }
        let pid = mp_fork(loop.descriptors.baseAddress, Int32(loop.descriptorCount))
        if pid == 0 {
            mp_report_exit_code(request.status)
            multiprocessingChildMain(request.bootstrap)
        }
        loop.started(pid: pid, errno: errno, request)
        if !codeShared {
            _ = mp_share_code_with_children()
            codeShared = true
        }
    }
}

/// The state of the fork server's loop, in storage allocated once.
///
/// The server's pages are shared with each child it forks, so every page the server writes while that
/// child lives is copied first (a page fault of a few microseconds, on the way to the next start). The
/// loop therefore allocates nothing per request and writes only these buffers and its stack.
private final class ForkServerLoop {
    let control: Int32
    /// The server's descriptors, which a forked child closes: the control socket, then each child not
    /// reaped yet as its pidfd and its status socket.
    private(set) var descriptors: UnsafeMutableBufferPointer<Int32>
    private var childCount = 0
    /// How many descriptors a child closes.
    var descriptorCount: Int { 1 + 2 * childCount }
    /// poll's entries: the control socket, then each child's pidfd.
    private var entries: UnsafeMutablePointer<pollfd>
    private let request = UnsafeMutableRawBufferPointer.allocate(byteCount: requestLimit, alignment: 8)
    private let received = UnsafeMutablePointer<Int32>.allocate(capacity: 2)
    /// The task types resolved so far (their names' bytes): a later child of one inherits the lookups.
    private var resolved: [[UInt8]] = []

    init(control: Int32) {
        self.control = control
        descriptors = .allocate(capacity: 1 + 2 * 64)
        entries = .allocate(capacity: 1 + 64)
        descriptors[0] = control
    }

    private func pidfd(_ child: Int) -> Int32 { descriptors[1 + 2 * child] }
    private func status(_ child: Int) -> Int32 { descriptors[2 + 2 * child] }

    /// Waits for children to end (reporting their codes) and for the next request; returns the
    /// request's descriptors (the child's bootstrap socket, its status socket). Exits when the parent is gone.
    func next() -> (bootstrap: Int32, status: Int32)? {
        entries[0] = pollfd(fd: control, events: Int16(POLLIN), revents: 0)
        for child in 0..<childCount { entries[child + 1] = pollfd(fd: pidfd(child), events: Int16(POLLIN), revents: 0) }
        let ready = poll(entries, nfds_t(childCount + 1), -1)
        if ready < 0 {
            if errno == EINTR { return nil }
            _exit(1)
        }
        reapEnded()
        guard entries[0].revents != 0 else { return nil }
        var count: Int32 = 0
        let got = mp_recvmsg_fds(control, request.baseAddress, request.count, received, 2, &count)
        if got < 0 && errno == EINTR { return nil }
        // The parent is gone: leave running children alone (daemons end themselves) and exit.
        guard got > 0, count == 2 else { _exit(0) }
        resolveTaskType(length: got)
        return (received[0], received[1])
    }

    /// Reports and forgets the children whose pidfds poll found readable (ended).
    private func reapEnded() {
        var kept = 0
        for child in 0..<childCount {
            var code: Int32 = 255
            // The entries were filled in the children's order; a child kept moves down in place.
            if entries[child + 1].revents != 0, mp_pidfd_wait(pidfd(child), 1, &code) == 1 {
                withUnsafeBytes(of: &code) { _ = send(status(child), $0.baseAddress, 4, Int32(MSG_NOSIGNAL)) }
                Syscall.close(pidfd(child))
                Syscall.close(status(child))
            } else {
                (descriptors[1 + 2 * kept], descriptors[2 + 2 * kept]) = (pidfd(child), status(child))
                kept += 1
            }
        }
        childCount = kept
    }

    /// Resolves the request's task type and checks its conformance, once per type, so that every child
    /// forked later inherits the runtime's caches instead of scanning every conformance of the program.
    private func resolveTaskType(length: Int) {
        let bytes = UnsafeRawBufferPointer(rebasing: request[..<length])
        let name = bytes.prefix { $0 != 0 }
        if resolved.contains(where: { $0.elementsEqual(name) }) { return }
        let typeName = String(decoding: name, as: UTF8.self)
        checkedTaskKind.store(taskKind(of: TaskEnvelope.resolveType(named: typeName)), ordering: .relaxed)
        resolved.append(Array(name))
    }

    /// After a fork: answers the parent with the pid (or the fork's errno) and keeps the new child.
    func started(pid: Int32, errno error: Int32, _ request: (bootstrap: Int32, status: Int32)) {
        Syscall.close(request.bootstrap)
        var reply: Int32 = pid > 0 ? pid : -error
        withUnsafeBytes(of: &reply) { _ = send(control, $0.baseAddress, 4, Int32(MSG_NOSIGNAL)) }
        let pidfd = pid > 0 ? mp_pidfd_open(pid) : -1
        guard pidfd >= 0 else {
            Syscall.close(request.status)
            return
        }
        if descriptorCount + 2 > descriptors.count { grow() }
        (descriptors[descriptorCount], descriptors[descriptorCount + 1]) = (pidfd, request.status)
        childCount += 1
    }

    /// Doubles the room for children (allocating, which the loop otherwise does not).
    private func grow() {
        let children = 2 * childCount
        let larger = UnsafeMutableBufferPointer<Int32>.allocate(capacity: 1 + 2 * children)
        _ = larger.initialize(from: descriptors[..<descriptorCount])
        descriptors.deallocate()
        descriptors = larger
        entries.deallocate()
        entries = .allocate(capacity: 1 + children)
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
    /// Asks the server to fork a child for the request, then sends the child its bootstrap with its task.
    static func launch(_ request: inout LaunchRequest) throws -> any ChildHandle {
        let (task, typeName) = try request.taskForFreshProgram(.forkserver)
        request.bootstrap.work = task
        var pair = (parent: request.parentEnd, child: request.childEnd)
        defer { (request.parentEnd, request.childEnd) = pair }
        let handle = try launch(bootstrap: &pair, typeName: typeName)
        (request.parentEnd, request.childEnd) = pair
        try request.sendBootstrap(to: handle)
        return handle
    }
}
