#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// Task types used by the tests. They live at file scope so that a spawned child can find them.

/// Reports the child's view of itself over `report`, then returns.
struct ReportIdentity: ProcessTask {
    let report: Connection
    func run() throws {
        let me = currentProcess()
        let parent = parentProcess()
        try report.send(IdentityReport(
            name: me.name, pid: getpid(), authkey: me.authkey, daemon: me.daemon,
            parentPid: parent?.pid ?? -1, parentName: parent?.name ?? ""))
    }
}

struct IdentityReport: Codable, Equatable {
    let name: String
    let pid: Int32
    let authkey: [UInt8]
    let daemon: Bool
    let parentPid: Int32
    let parentName: String
}

/// Ends the child in a chosen way.
struct EndWith: ProcessTask {
    enum Way: Codable { case returning, exitCode(Int32), throwing, crashing, blocking }
    let way: Way
    func run() throws {
        switch way {
        case .returning: return
        case .exitCode(let code): exit(code)
        case .throwing: throw MultiprocessingError(.invalidArgument, "thrown on purpose")
        case .crashing: fatalError("crashing on purpose")
        case .blocking: while true { pause() }
        }
    }
}

/// Starts and joins `cycles` children with `method` in this process, and reports its descriptor count
/// before and after, and how many of those children were left unreaped.
struct LeakProbe: ProcessTask {
    let methodName: String
    let cycles: Int
    let report: Connection
    init(method: StartMethod, cycles: Int, report: Connection) {
        methodName = method.rawValue
        self.cycles = cycles
        self.report = report
    }
    func run() throws {
        guard let method = StartMethod(rawValue: methodName) else { exit(4) }
        // Warm up lazily created resources (the fork server, caches) before counting.
        let warm = ChildProcess(Nap(milliseconds: 0), context: ProcessContext(method))
        try warm.start()
        try warm.join(timeout: .seconds(30))
        let before = openDescriptorCount()
        var pids: [Int32] = []
        for _ in 0..<cycles {
            let child = ChildProcess(Nap(milliseconds: 0), context: ProcessContext(method))
            try child.start()
            guard try child.join(timeout: .seconds(30)), child.exitCode == 0 else { exit(3) }
            pids.append(child.pid ?? 0)
        }
        let after = openDescriptorCount()
        // Pids are reused machine-wide: a reused pid may be some other process's zombie for a moment, so
        // the check is the original one, all clear at some point within 5 s.
        let reaped = eventually(within: 5) { !pids.contains { ProcessTests.isZombie($0) } }
        try report.send([before, after, reaped ? 0 : pids.filter { ProcessTests.isZombie($0) }.count])
    }
}

/// Sleeps, then returns.
struct Nap: ProcessTask {
    let milliseconds: Int
    func run() throws { usleep(UInt32(milliseconds * 1000)) }
}

/// Starts a child of its own running `inner`, reports the child's pid, then runs `then`.
struct StartChild: ProcessTask {
    let inner: ReportIdentity?
    let innerDaemon: Bool
    let report: Connection
    let then: EndWith.Way
    func run() throws {
        let child = inner.map { ChildProcess($0, daemon: innerDaemon) }
            ?? ChildProcess(EndWith(way: .blocking), daemon: innerDaemon)
        try child.start()
        try report.send(child.pid ?? -1)
        if inner != nil { try child.join(timeout: .seconds(30)) }
        try EndWith(way: then).run()
    }
}

/// Tries to start a child and reports the error it got (daemons may not have children).
struct TryToStartChild: ProcessTask {
    let report: Connection
    func run() throws {
        do {
            try ChildProcess(Nap(milliseconds: 1)).start()
            try report.send("started")
        } catch let error as MultiprocessingError {
            try report.send(error.message)
        }
    }
}

/// Waits for its parent to die, then says so.
struct OutliveParent: ProcessTask {
    let report: Connection
    func run() throws {
        try report.send(parentProcess()?.isAlive ?? false)
        let ended = try parentProcess()?.join(timeout: .seconds(30)) ?? false
        try report.send(ended)
    }
}

/// Reports the size and byte sum of the payload it carries.
struct ReportPayload: ProcessTask {
    let payload: [UInt8]
    let report: Connection
    func run() throws {
        try report.send([payload.count, payload.reduce(0) { $0 &+ Int($1) }])
    }
}

/// Starts a daemon that blocks and a non-daemon that naps then reports, and returns at once:
/// the exit rules must terminate the first and wait for the second.
struct ExitWithChildren: ProcessTask {
    let report: Connection
    func run() throws {
        let daemon = ChildProcess(EndWith(way: .blocking), daemon: true)
        try daemon.start()
        let worker = ChildProcess(NapThenReport(report: report), daemon: false)
        try worker.start()
        try report.send(daemon.pid ?? -1)
    }
}

struct NapThenReport: ProcessTask {
    let report: Connection
    func run() throws {
        usleep(300_000)
        try report.send(-2 as Int32)
    }
}

func isGone(_ pid: Int32) -> Bool {
    if Glibc.kill(pid, 0) != 0 { return errno == ESRCH }
    // A zombie whose new parent does not reap it counts as gone too.
    let fd = open("/proc/\(pid)/stat", O_RDONLY)
    guard fd >= 0 else { return true }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 256)
    let count = read(fd, &buffer, 256)
    let text = String(decoding: buffer.prefix(max(0, count)), as: UTF8.self)
    return text.contains(") Z ")
}

/// Polls `condition` every 10 ms for at most `seconds`.
private func eventually(within seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Deadline.after(.milliseconds(Int(seconds * 1000)))
    while !deadline.hasPassed {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

private func openDescriptorCount() -> Int {
    guard let directory = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(directory) }
    var count = 0
    while readdir(directory) != nil { count += 1 }
    return count
}

@Suite("Child processes")
struct ProcessTests {
    @Test("lifecycle and identity", arguments: StartMethod.allCases)
    func lifecycle(method: StartMethod) throws {
        let (reader, writer) = try makePipe(duplex: false)
        let child = ChildProcess(ReportIdentity(report: writer), name: "SomeProcess", daemon: true, context: ProcessContext(method))
        #expect(!child.isAlive)
        #expect(child.exitCode == nil)
        #expect(child.pid == nil)
        #expect(!activeChildren().contains { $0 === child })
        #expect(child.authkey == currentProcess().authkey)
        try child.start()
        #expect(child.pid != nil)
        #expect(activeChildren().contains { $0 === child } || child.exitCode != nil)
        let report = try reader.recv(IdentityReport.self, timeout: .seconds(30))
        #expect(report.name == "SomeProcess")
        #expect(report.pid == child.pid)
        #expect(report.authkey == currentProcess().authkey)
        #expect(report.daemon)
        #expect(report.parentPid == getpid())
        #expect(report.parentName == currentProcess().name)
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 0)
        #expect(!child.isAlive)
        #expect(!activeChildren().contains { $0 === child })
        #expect(try child.join(timeout: .seconds(1)), "a second join is a no-op")
    }

    @Test("exit codes: return 0, exit(n) n, throw 1", arguments: StartMethod.allCases)
    func exitCodes(method: StartMethod) throws {
        let cases: [(EndWith.Way, Int32)] = [(.returning, 0), (.exitCode(8), 8), (.exitCode(0), 0), (.throwing, 1)]
        for (way, expected) in cases {
            let child = ChildProcess(EndWith(way: way), context: ProcessContext(method))
            try child.start()
            #expect(try child.join(timeout: .seconds(30)))
            #expect(child.exitCode == expected, "\(way)")
        }
    }

    @Test("terminate gives -SIGTERM, kill gives -SIGKILL", arguments: StartMethod.allCases)
    func terminateAndKill(method: StartMethod) throws {
        for (signal, stop) in [(SIGTERM, ChildProcess.terminate), (SIGKILL, ChildProcess.kill)] {
            let child = ChildProcess(EndWith(way: .blocking), context: ProcessContext(method))
            try child.start()
            #expect(try !child.join(timeout: .milliseconds(50)))
            #expect(child.isAlive)
            try stop(child)()
            #expect(try child.join(timeout: .seconds(10)))
            #expect(child.exitCode == -signal)
            #expect(!child.isAlive)
            try stop(child)()  // stopping an ended child is harmless
        }
    }

    @Test("children terminated (SIGTERM) or killed (SIGKILL) right after start all end with that signal",
          arguments: StartMethod.allCases, [SIGTERM, SIGKILL])
    func stopRightAfterStart(method: StartMethod, signal: Int32) throws {
        // A forkserver child may still be a spare that has not read its bootstrap: its server reports it.
        let children = (0..<30).map { _ in ChildProcess(EndWith(way: .blocking), context: ProcessContext(method)) }
        for child in children {
            try child.start()
            if signal == SIGKILL { try child.kill() } else { try child.terminate() }
        }
        for child in children {
            #expect(try child.join(timeout: .seconds(30)))
            #expect(child.exitCode == -signal)
        }
    }

    @Test("a task carrying 4 MiB reaches its child whole: the part of the bootstrap its socket could not take before the start follows it", arguments: StartMethod.allCases)
    func largeTask(method: StartMethod) throws {
        let payload = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 12) }
        let (reader, writer) = try makePipe(duplex: false)
        let child = ChildProcess(ReportPayload(payload: payload, report: writer), context: ProcessContext(method))
        try child.start()
        #expect(try reader.recv([Int].self, timeout: .seconds(60)) == [payload.count, payload.reduce(0) { $0 &+ Int($1) }])
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 0)
    }

    @Test("a crashing task is reported as a signal, quickly", arguments: [StartMethod.spawn, .forkserver])
    func crash(method: StartMethod) throws {
        let child = ChildProcess(EndWith(way: .crashing), context: ProcessContext(method))
        let start = Deadline.monotonicNow()
        try child.start()
        #expect(try child.join(timeout: .seconds(20)))
        let seconds = Double(Deadline.monotonicNow() - start) / 1e9
        let code = child.exitCode ?? 0
        #expect(code == -SIGILL || code == -SIGTRAP, "exit code \(code)")
        #expect(seconds < 2, "took \(seconds) s")
    }

    @Test("join timeouts: positive waits, zero and negative return at once")
    func joinTimeouts() throws {
        let child = ChildProcess(EndWith(way: .blocking))
        try child.start()
        defer { try? child.kill(); _ = try? child.join(timeout: .seconds(10)) }
        var start = Deadline.monotonicNow()
        #expect(try !child.join(timeout: .milliseconds(200)))
        var elapsed = Double(Deadline.monotonicNow() - start) / 1e9
        #expect(elapsed >= 0.1 && elapsed < 5)
        start = Deadline.monotonicNow()
        #expect(try !child.join(timeout: .zero))
        #expect(try !child.join(timeout: .milliseconds(-5)))
        elapsed = Double(Deadline.monotonicNow() - start) / 1e9
        #expect(elapsed < 0.5)
        try child.terminate()
        #expect(try child.join(timeout: .seconds(10)))
        #expect(child.exitCode == -SIGTERM)
    }

    @Test("async join waits without blocking the caller's thread", .ownThread)
    func asyncJoin() async throws {
        let child = ChildProcess(EndWith(way: .blocking))
        try child.start()
        #expect(try await !child.join(timeout: .milliseconds(100)))
        try child.terminate()
        #expect(try await child.join(timeout: .seconds(10)))
        #expect(child.exitCode == -SIGTERM)
    }

    @Test("state errors: start twice, join before start, close while running, use after close")
    func stateErrors() throws {
        let child = ChildProcess(Nap(milliseconds: 300))
        #expect(throws: MultiprocessingError.self) { try child.join(timeout: .seconds(1)) }
        #expect(throws: MultiprocessingError.self) { try child.terminate() }
        #expect(throws: MultiprocessingError.self) { _ = try child.sentinel }
        try child.start()
        let again = #expect(throws: MultiprocessingError.self) { try child.start() }
        #expect(again?.message == "cannot start a process twice")
        #expect(throws: MultiprocessingError.self) { try child.setDaemon(true) }
        #expect(throws: MultiprocessingError.self) { try child.close() }
        #expect(try child.join(timeout: .seconds(30)))
        try child.close()
        try child.close()
        #expect(!child.isAlive)
        let closed = #expect(throws: MultiprocessingError.self) { try child.join() }
        #expect(closed?.code == .closed)
        #expect(throws: MultiprocessingError.self) { try child.terminate() }
        #expect(throws: MultiprocessingError.self) { try child.start() }
    }

    @Test("each call before start says which call it was")
    func callsBeforeStart() throws {
        let child = ChildProcess(Nap(milliseconds: 1))
        let calls: [(String, () throws -> Void)] = [
            ("join", { try child.join(timeout: .seconds(1)) }),
            ("terminate", { try child.terminate() }),
            ("kill", { try child.kill() }),
            ("interrupt", { try child.interrupt() }),
            ("get the sentinel of", { _ = try child.sentinel }),
        ]
        for (name, call) in calls {
            let error = #expect(throws: MultiprocessingError.self) { try call() }
            #expect(error?.code == .invalidState)
            #expect(error?.message == "can only \(name) a started process")
        }
    }

    @Test("closures run under fork only; other start methods refuse them clearly")
    func closures() throws {
        let (reader, writer) = try makePipe(duplex: false)
        let captured = "captured \(getpid())"
        let forked = ChildProcess(context: ProcessContext(.fork)) { try writer.send(captured) }
        try forked.start()
        #expect(try reader.recv(String.self, timeout: .seconds(30)) == captured)
        #expect(try forked.join(timeout: .seconds(30)))
        #expect(forked.exitCode == 0)
        for method in [StartMethod.spawn, .forkserver] {
            let refused = ChildProcess(context: ProcessContext(method)) {}
            let error = #expect(throws: MultiprocessingError.self) { try refused.start() }
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.contains("ProcessContext(.fork)") == true)
        }
    }

    @Test("a task type a child cannot find is refused at start")
    func unreachableTaskType() throws {
        struct LocalTask: ProcessTask { func run() throws {} }
        let error = #expect(throws: MultiprocessingError.self) { try ChildProcess(LocalTask()).start() }
        #expect(error?.message.contains("file scope") == true)
    }

    @Test("daemon flag: inherited default, fixed after start, daemons cannot have children")
    func daemons() throws {
        #expect(!ChildProcess(Nap(milliseconds: 1)).daemon)
        #expect(ChildProcess(Nap(milliseconds: 1), daemon: true).daemon)
        let (reader, writer) = try makePipe(duplex: false)
        let daemon = ChildProcess(TryToStartChild(report: writer), daemon: true)
        try daemon.start()
        #expect(try reader.recv(String.self, timeout: .seconds(30)) == "daemonic processes are not allowed to have children")
        #expect(try daemon.join(timeout: .seconds(30)))
        #expect(daemon.exitCode == 0)
    }

    @Test("a depth-2 tree: grandchildren are named Process-N:M and see their parent", arguments: StartMethod.allCases)
    func grandchildren(method: StartMethod) throws {
        // The grandchild's report and its parent's need not arrive in order: each has a pipe of its own.
        let (reader, writer) = try makePipe(duplex: false)
        let (identities, identityWriter) = try makePipe(duplex: false)
        let child = ChildProcess(
            StartChild(inner: ReportIdentity(report: identityWriter), innerDaemon: false, report: writer, then: .returning),
            context: ProcessContext(method))
        try child.start()
        let grandchildPid = try reader.recv(Int32.self, timeout: .seconds(30))
        let report = try identities.recv(IdentityReport.self, timeout: .seconds(30))
        #expect(report.pid == grandchildPid)
        #expect(report.parentPid == child.pid)
        #expect(report.parentName == child.name)
        #expect(report.name.hasPrefix(child.name + ":"), "\(report.name) under \(child.name)")
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 0)
    }

    @Test("a SIGKILLed parent takes its daemon children with it within 2 s", arguments: StartMethod.allCases)
    func daemonDiesWithParent(method: StartMethod) throws {
        let (reader, writer) = try makePipe(duplex: false)
        let parent = ChildProcess(StartChild(inner: nil, innerDaemon: true, report: writer, then: .blocking), context: ProcessContext(method))
        try parent.start()
        let daemonPid = try reader.recv(Int32.self, timeout: .seconds(30))
        #expect(!isGone(daemonPid))
        try parent.kill()
        #expect(try parent.join(timeout: .seconds(10)))
        #expect(eventually(within: 2) { isGone(daemonPid) }, "daemon \(daemonPid) outlived its SIGKILLed parent")
    }

    @Test("a child sees its parent die")
    func parentDeath() throws {
        let (reader, writer) = try makePipe(duplex: false)
        let (childReader, childWriter) = try makePipe(duplex: false)
        let parent = ChildProcess(StartChildOutliving(report: writer, childReport: childWriter))
        try parent.start()
        #expect(try reader.recv(Int32.self, timeout: .seconds(30)) > 0)
        #expect(try childReader.recv(Bool.self, timeout: .seconds(30)), "parent alive at first")
        try parent.terminate()
        #expect(try childReader.recv(Bool.self, timeout: .seconds(30)), "parent's death observed")
        #expect(try parent.join(timeout: .seconds(10)))
    }

    @Test("normal exit terminates daemon children and waits for the others")
    func exitRules() throws {
        let (reader, writer) = try makePipe(duplex: false)
        let parent = ChildProcess(ExitWithChildren(report: writer))
        try parent.start()
        let daemonPid = try reader.recv(Int32.self, timeout: .seconds(30))
        #expect(try parent.join(timeout: .seconds(30)))
        #expect(parent.exitCode == 0)
        // The non-daemon child reported before its parent could finish exiting.
        #expect(try reader.poll(timeout: .zero))
        #expect(try reader.recv(Int32.self, timeout: .seconds(1)) == -2)
        #expect(eventually(within: 2) { isGone(daemonPid) })
    }

    @Test("terminateTree stops the child and everything it started")
    func terminateTree() throws {
        let (reader, writer) = try makePipe(duplex: false)
        let parent = ChildProcess(StartChild(inner: nil, innerDaemon: false, report: writer, then: .blocking))
        try parent.start()
        let grandchild = try reader.recv(Int32.self, timeout: .seconds(30))
        try parent.terminateTree()
        #expect(try parent.join(timeout: .seconds(10)))
        #expect(parent.exitCode == -SIGTERM)
        #expect(eventually(within: 2) { isGone(grandchild) })
    }

    @Test("the fork server comes back after it is killed; a child it was running keeps its exit code")
    func forkServerRestart() throws {
        // Run in a spawned child, which has a fork server of its own, so killing it disturbs no other test.
        let (reader, writer) = try makePipe(duplex: false)
        let probe = ChildProcess(ForkServerRestartProbe(report: writer))
        try probe.start()
        #expect(try reader.recv([Int32].self, timeout: .seconds(60)) == [0, 7, 5])
        #expect(try probe.join(timeout: .seconds(30)))
        #expect(probe.exitCode == 0)
    }

    @Test("many start/join cycles leave no zombie and no descriptor behind", arguments: [(StartMethod.forkserver, 1000), (.spawn, 100), (.fork, 200)])
    func noLeaks(method: StartMethod, cycles: Int) throws {
        // Counted in a process of its own: other tests open and close descriptors in this one meanwhile.
        let (report, theirs) = try makePipe()
        let probe = ChildProcess(LeakProbe(method: method, cycles: cycles, report: theirs))
        try probe.start()
        theirs.close()
        let figures = try report.recv([Int].self, timeout: .seconds(240))
        #expect(try probe.join(timeout: .seconds(30)))
        #expect(figures[1] <= figures[0], "descriptors before \(figures[0]), after \(figures[1])")
        #expect(figures[2] == 0, "\(figures[2]) unreaped children remain")
        #expect(probe.exitCode == 0)
    }

    static func isZombie(_ pid: Int32) -> Bool { isGone(pid) && Glibc.kill(pid, 0) == 0 }

    @Test("process-wide facts")
    func processFacts() throws {
        #expect(cpuCount() >= 1)
        #expect(currentProcess().pid == getpid())
        #expect(currentProcess().authkey.count == 32)
        #expect(parentProcess() == nil)
        #expect(allStartMethods() == [.spawn, .forkserver, .fork])
    }
}

/// Starts a non-daemon child that watches this process (and reports on `childReport`), reports its pid
/// on `report`, then blocks. Two connections: the two processes' messages need not arrive in order.
struct StartChildOutliving: ProcessTask {
    let report: Connection
    let childReport: Connection
    func run() throws {
        let child = ChildProcess(OutliveParent(report: childReport))
        try child.start()
        try report.send(child.pid ?? -1)
        while true { pause() }
    }
}

@Suite("Child processes with wait() and descriptors")
struct ProcessWaitTests {
    @Test("wait() over children and connections returns what is ready")
    func waitMixed() throws {
        let quick = ChildProcess(Nap(milliseconds: 0))
        let slow = ChildProcess(EndWith(way: .blocking))
        let (reader, writer) = try makePipe(duplex: false)
        try quick.start()
        try slow.start()
        defer { try? slow.kill(); _ = try? slow.join(timeout: .seconds(10)) }
        let ready = try wait([quick, slow], timeout: .seconds(30))
        #expect(ready.count == 1 && ready[0] === quick)
        #expect(try wait([slow], timeout: .milliseconds(100)).isEmpty)
        try writer.send(1)
        let mixed = try wait([slow, reader] as [any Waitable], timeout: .seconds(10))
        #expect(mixed.count == 1 && (mixed[0] as? Connection) === reader)
        try slow.kill()
        #expect(try wait([slow], timeout: .seconds(10)).count == 1)
    }

    @Test("spawned and forkserver children inherit no stray descriptor; forked children do", arguments: StartMethod.allCases)
    func noStrayDescriptors(method: StartMethod) throws {
        let stray = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)  // deliberately not close-on-exec
        let high = fcntl(stray, F_DUPFD, 60)
        close(stray)
        defer { close(high) }
        let (reader, writer) = try makePipe(duplex: false)
        let child = ChildProcess(ProbeDescriptor(fd: high, report: writer), context: ProcessContext(method))
        try child.start()
        let open = try reader.recv(Bool.self, timeout: .seconds(30))
        #expect(open == (method == .fork))
        #expect(try child.join(timeout: .seconds(30)))
    }
}

/// Reports whether a descriptor number is open in the child.
struct ProbeDescriptor: ProcessTask {
    let fd: Int32
    let report: Connection
    func run() throws { try report.send(fcntl(fd, F_GETFD) >= 0) }
}

/// Starts a forkserver child, kills the fork server while a second child runs, lets that child
/// finish, then starts a third: reports the three exit codes.
struct ForkServerRestartProbe: ProcessTask {
    let report: Connection
    func run() throws {
        let context = ProcessContext(.forkserver)
        let first = ChildProcess(Nap(milliseconds: 0), context: context)
        try first.start()
        try first.join(timeout: .seconds(30))
        let (release, wait) = try makePipe(duplex: false)
        let running = ChildProcess(ExitAfterMessage(gate: release, code: 7), context: context)
        try running.start()
        guard let server = ForkServerLauncher.serverPid else { exit(3) }
        Glibc.kill(server, SIGKILL)
        while Glibc.kill(server, 0) == 0 && !isGone(server) { usleep(1000) }
        try wait.send(true)
        try running.join(timeout: .seconds(30))
        let third = ChildProcess(EndWith(way: .exitCode(5)), context: context)
        try third.start()
        try third.join(timeout: .seconds(30))
        try report.send([first.exitCode ?? -1, running.exitCode ?? -1, third.exitCode ?? -1])
    }
}

/// Waits for a message on `gate`, then exits with `code`.
struct ExitAfterMessage: ProcessTask {
    let gate: Connection
    let code: Int32
    func run() throws {
        _ = try gate.recv(Bool.self, timeout: .seconds(30))
        exit(code)
    }
}

nonisolated(unsafe) private var signalsHandled = 0

@Suite("Signals to the parent")
struct ProcessSignalTests {
    @Test("a handled signal delivered to the joining thread does not cut join() short")
    func signalDuringJoin() throws {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in signalsHandled += 1 }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0  // no SA_RESTART: poll() really sees EINTR
        var previous = sigaction()
        sigaction(SIGUSR1, &action, &previous)
        defer { sigaction(SIGUSR1, &previous, nil) }
        // Test threads may block signals (Dispatch workers do): let SIGUSR1 reach this one.
        var unblock = sigset_t()
        var previousMask = sigset_t()
        sigemptyset(&unblock)
        sigaddset(&unblock, SIGUSR1)
        pthread_sigmask(SIG_UNBLOCK, &unblock, &previousMask)
        defer { pthread_sigmask(SIG_SETMASK, &previousMask, nil) }

        let child = ChildProcess(Nap(milliseconds: 600))
        try child.start()
        let joiner = pthread_self()
        let kicker = SyncThread { () -> Int32 in
            usleep(150_000)
            return pthread_kill(joiner, SIGUSR1)
        }
        let start = Deadline.monotonicNow()
        #expect(try child.join(timeout: .seconds(30)))
        let elapsed = Double(Deadline.monotonicNow() - start) / 1e9
        #expect(try kicker.join() == 0)
        #expect(signalsHandled >= 1)
        #expect(child.exitCode == 0)
        #expect(elapsed >= 0.4, "join returned after \(elapsed) s, before the child ended")
    }
}
