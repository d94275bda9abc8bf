#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import Multiprocessing

// Attacks on the fork server. Each runs in a spawned child, which has a fork server of its own, so
// killing or stopping that server disturbs no other test.

@Suite("Fork server under attack")
struct ForkServerAttackTests {
    @Test("a fork server killed again and again during 1,000 starts: each start fails cleanly or runs its task once, in the process its handle names")
    func killedDuringStarts() throws {
        // The probe's starts stop at its time budget (60 s); under a whole suite on a cold machine a start
        // and its join can take tens of seconds more (each server it replaces is spawned anew).
        let result = try runProbe(KillProbeResult.self, within: .seconds(300)) { ForkServerKillProbe(report: $0, starts: 1000) }
        #expect(result.kills > 0, "the server was never killed: \(result)")
        #expect(result.started > 0, "no start succeeded: \(result)")
        #expect(result.started + result.failed >= 100, "too few starts within the time budget: \(result)")
        #expect(result.untypedFailures == 0, "\(result)")
        #expect(result.wrongProcess == 0, "a task ran in a process its handle does not name: \(result)")
        #expect(result.hung == 0, "\(result)")
        #expect(result.badExit == 0, "\(result)")
        #expect(result.strayTasks == 0, "a task ran without a tracked child: \(result)")
        #expect(result.leftBehind == 0, "\(result)")
    }

    @Test("spares killed before they are used: each start takes the next live spare, and its task runs in the process its handle names")
    func killedSpares() throws {
        let result = try runProbe(SpareKillResult.self, within: .seconds(120)) { SpareKillProbe(report: $0) }
        #expect(result.killed >= 2 * ForkServerLauncher.sparesAhead, "\(result)")
        #expect(result.exitCodes == [0, 0, 0, 0, 0, 0], "\(result)")
        #expect(result.ranIn == result.pids, "\(result)")
        #expect(result.sameServer, "a killed spare made the server look dead: \(result)")
    }

    @Test("a fork server that cannot fork (a pids cgroup at its limit) fails the start with the fork's errno once its spares are used, and serves again when it can")
    func serverCannotFork() throws {
        let result = try runProbe(ForkFailureResult.self, within: .seconds(120)) { ForkFailureProbe(report: $0) }
        guard result.limited else {
            print("skipped: no writable pids cgroup to limit the fork server with (\(result.skipReason))")
            return
        }
        #expect(result.startedBeforeFailure <= ForkServerLauncher.sparesAhead, "\(result)")
        #expect(result.failureErrno == EAGAIN, "\(result)")
        #expect(result.failureMessage.contains("could not fork"), "\(result)")
        #expect(result.startedAfterLimitRaised, "\(result)")
        #expect(result.sameServer, "\(result)")
    }

    @Test("the killer counts the pids created since it last looked, also across the wrap-around of pids")
    func newPidsAcrossWrap() {
        #expect(ServerKiller.newPids(after: 100, upTo: 100) == nil)
        #expect(ServerKiller.newPids(after: 100, upTo: 103) == 101...103)
        #expect(ServerKiller.newPids(after: 100, upTo: 200) == 184...200)
        // After the wrap: the newest pid is below the one seen before.
        #expect(ServerKiller.newPids(after: 32_760, upTo: 5) == 1...5)
        #expect(ServerKiller.newPids(after: 32_760, upTo: 400) == 384...400)
        #expect(ServerKiller.newPids(after: 32_760, upTo: 0) == nil)
    }

    @Test("a SIGSTOPped fork server is replaced: the spares it left waiting serve starts, and the start after them succeeds within the reply bound")
    func stoppedServer() throws {
        let result = try runProbe(StopProbeResult.self, within: .seconds(60)) { ForkServerStopProbe(report: $0) }
        #expect(result.exitCodes.count >= 2 && result.exitCodes.allSatisfy { $0 == 0 }, "\(result)")
        #expect(result.ranIn == result.pids)
        #expect(result.stoppedServerGone)
        #expect(result.newServer)
        // The reply bound is 0.5 s in the probe: the start that found no answer took about that, not
        // forever; the others took far less.
        #expect(result.milliseconds.max()! >= 400 && result.milliseconds.max()! < 20_000, "\(result)")
    }
}

/// Starts the probe `make` builds around a report connection (in a spawned child, which has a fork server
/// of its own), and returns what it reports within `timeout`, once it has ended with code 0.
private func runProbe<Report: Decodable, Probe: ProcessTask>(
    _: Report.Type, within timeout: Duration, _ make: (Connection) -> Probe, sourceLocation: SourceLocation = #_sourceLocation
) throws -> Report {
    let (reader, writer) = try makePipe(duplex: false)
    let probe = ChildProcess(make(writer))
    try probe.start()
    // Only the probe holds the writing end now: if it crashes, the receive ends at once.
    writer.close()
    let received = Result { try reader.recv(Report.self, timeout: timeout) }
    #expect(try probe.join(timeout: .seconds(30)), sourceLocation: sourceLocation)
    #expect(probe.exitCode == 0, "the probe ended with \(String(describing: probe.exitCode)): \(String(describing: probe.failure))",
            sourceLocation: sourceLocation)
    return try received.get()
}

/// Sends the pid of the process it runs in.
struct ReportPid: ProcessTask {
    let report: Connection
    func run() throws { try report.send(getpid()) }
}

struct KillProbeResult: Codable, CustomStringConvertible {
    var started = 0, failed = 0, untypedFailures = 0, wrongProcess = 0, hung = 0, badExit = 0
    var strayTasks = 0, leftBehind = 0, kills = 0
    var description: String {
        "started \(started) failed \(failed) untyped \(untypedFailures) wrongProcess \(wrongProcess) hung \(hung) "
            + "badExit \(badExit) stray \(strayTasks) leftBehind \(leftBehind) kills \(kills)"
    }
}

/// Kills fork servers on a thread of its own while the probe starts children. Half of the servers die
/// at a random moment 0-20 ms into their life; the other half the moment they fork their 1st to 8th
/// child (seen as a new pid whose parent is the server), which aims at the window between a fork and
/// its reply.
enum ServerKiller {
    static let running = Atomic<Bool>(false)
    static let kills = Atomic<Int>(0)

    static func start() -> pthread_t {
        running.store(true, ordering: .relaxed)
        var thread = pthread_t()
        pthread_create(&thread, nil, { _ in
            ServerKiller.loop()
            return nil
        }, nil)
        return thread
    }

    static func stop(_ thread: pthread_t) {
        running.store(false, ordering: .relaxed)
        pthread_join(thread, nil)
    }

    private static func loop() {
        var generator = SystemRandomNumberGenerator()
        let lastPidFile = open("/proc/sys/kernel/ns_last_pid", O_RDONLY | O_CLOEXEC)
        defer { close(lastPidFile) }
        var target: Int32 = 0
        var killAt: UInt64 = .max
        var forksLeft = 0
        var seenPid = lastPid(lastPidFile)
        while running.load(ordering: .relaxed) {
            let pid = ForkServerLauncher.serverPid ?? 0
            if pid != target {
                target = pid
                if Bool.random(using: &generator) {
                    forksLeft = Int.random(in: 1...8, using: &generator)
                    killAt = .max
                } else {
                    forksLeft = 0
                    killAt = Deadline.monotonicNow() + UInt64.random(in: 0..<20_000_000, using: &generator)
                }
            }
            var hit = target > 0 && Deadline.monotonicNow() >= killAt
            let newest = lastPid(lastPidFile)
            if forksLeft > 0, target > 0, let created = newPids(after: seenPid, upTo: newest) {
                forksLeft -= created.count { parentPid(of: $0) == target }
                hit = forksLeft <= 0
            }
            seenPid = newest
            if hit {
                if kill(target, SIGKILL) == 0 { kills.add(1, ordering: .relaxed) }
                killAt = .max
                forksLeft = 0
            }
            if forksLeft > 0 { sched_yield() } else { usleep(200) }
        }
    }

    /// The pids handed out since `seen` when the newest is `newest`, at most the last 16 of them (nil
    /// for none). Pids wrap around at the kernel's `pid_max` (32768 by default), which a whole test suite
    /// reaches within minutes: after a wrap the newest is below the one seen before.
    static func newPids(after seen: Int32, upTo newest: Int32) -> ClosedRange<Int32>? {
        guard newest > 0, newest != seen else { return nil }
        let lowest = newest > seen ? max(seen + 1, newest - 16) : max(1, newest - 16)
        return lowest...newest
    }

    private static func lastPid(_ fd: Int32) -> Int32 {
        var buffer = [UInt8](repeating: 0, count: 16)
        let count = pread(fd, &buffer, 16, 0)
        return Int32(String(decoding: buffer.prefix(max(0, count)).filter { $0 >= 48 && $0 <= 57 }, as: UTF8.self)) ?? 0
    }

}

/// The parent of `pid` (0 when it cannot be read).
private func parentPid(of pid: Int32) -> Int32 { Int32(statField(of: pid, 4)) }

/// The name of `pid`'s main thread, as ps shows it ("" when it cannot be read).
private func processName(_ pid: Int32) -> String {
    let fd = open("/proc/\(pid)/comm", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 32)
    let count = read(fd, &buffer, 32)
    return String(decoding: buffer.prefix(max(0, count)), as: UTF8.self).trimmingSuffix("\n")
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String { hasSuffix(suffix) ? String(dropLast(suffix.count)) : self }
}

/// Starts `starts` forkserver children while their servers are killed again and again; each child
/// reports its own pid, which must be the pid its handle names.
struct ForkServerKillProbe: ProcessTask {
    let report: Connection
    let starts: Int
    func run() throws {
        // Orphans of killed servers become this process's children, so none can escape the count.
        try ProcessTree.adoptOrphans()
        let context = ProcessContext(.forkserver)
        let (reader, writer) = try makePipe(duplex: false)
        var result = KillProbeResult()
        let killer = ServerKiller.start()
        // On a quiet machine the 1,000 starts take about 10 s; a machine loaded by other work makes every
        // server respawn slow, so the run stops at a time budget rather than time out the test.
        let budget = Deadline.after(.seconds(60))
        for _ in 0..<starts where !budget.hasPassed {
            let child = ChildProcess(ReportPid(report: writer), context: context)
            do {
                try child.start()
            } catch is MultiprocessingError {
                result.failed += 1
                continue
            } catch {
                result.failed += 1
                result.untypedFailures += 1
                continue
            }
            result.started += 1
            if let pid = try? reader.recv(Int32.self, timeout: .seconds(10)) {
                if pid != child.pid { result.wrongProcess += 1 }
            } else {
                result.hung += 1
            }
            if try !child.join(timeout: .seconds(10)) {
                result.hung += 1
                try child.kill()
                _ = try child.join(timeout: .seconds(10))
            } else if child.exitCode != 0 {
                result.badExit += 1
            }
            // One misplaced or hung task is enough to fail: stop before the waits add up.
            if result.wrongProcess + result.hung > 0 { break }
        }
        ServerKiller.stop(killer)
        result.kills = ServerKiller.kills.load(ordering: .relaxed)
        // No task ran anywhere else: nothing more arrives.
        while try reader.poll(timeout: .milliseconds(500)) {
            _ = try reader.recvBytes()
            result.strayTasks += 1
        }
        // Everything but the current server ends soon (a stray child of a killed server reads
        // end-of-file instead of a task and exits).
        let server = ForkServerLauncher.serverPid
        let deadline = Deadline.after(.seconds(10))
        var remaining: [Int32] = []
        repeat {
            while waitpid(-1, nil, WNOHANG) > 0 {}
            // The current server and the spare it keeps waiting for the next start stay.
            remaining = ProcessTree.descendants(of: getpid()).filter {
                $0 != server && !isGone($0) && !(parentPid(of: $0) == server && processName($0) == "mp-spare")
            }
            if remaining.isEmpty { break }
            usleep(10_000)
        } while !deadline.hasPassed
        result.leftBehind = remaining.count
        try report.send(result)
    }
}

struct StopProbeResult: Codable, CustomStringConvertible {
    var exitCodes: [Int32] = []
    var pids: [Int32] = []
    var ranIn: [Int32] = []
    var stoppedServerGone = false
    var newServer = false
    var milliseconds: [Int] = []
    var description: String {
        "exit \(exitCodes) pids \(pids) ran in \(ranIn) stopped server gone \(stoppedServerGone) new \(newServer) \(milliseconds) ms"
    }
}

/// Starts a forkserver child, stops the server with SIGSTOP, and starts more until the server is
/// replaced: the spares the server forked before it was stopped may serve a start each, and the start
/// after them must give up on the stopped server after the reply bound and succeed through a new one.
struct ForkServerStopProbe: ProcessTask {
    let report: Connection
    func run() throws {
        ForkServerLauncher.replyTimeoutMilliseconds.store(500, ordering: .relaxed)
        let context = ProcessContext(.forkserver)
        let (reader, writer) = try makePipe(duplex: false)
        var result = StopProbeResult()
        func startOne() throws {
            let began = Deadline.monotonicNow()
            let child = ChildProcess(ReportPid(report: writer), context: context)
            try child.start()
            result.milliseconds.append(Int((Deadline.monotonicNow() - began) / 1_000_000))
            result.ranIn.append(try reader.recv(Int32.self, timeout: .seconds(30)))
            try child.join(timeout: .seconds(30))
            result.exitCodes.append(child.exitCode ?? -1)
            result.pids.append(child.pid ?? -1)
        }
        try startOne()
        result.milliseconds = []
        guard let stopped = ForkServerLauncher.serverPid else { exit(3) }
        kill(stopped, SIGSTOP)
        for _ in 0...ForkServerLauncher.sparesAhead where ForkServerLauncher.serverPid == stopped { try startOne() }
        result.stoppedServerGone = isGone(stopped)
        result.newServer = ForkServerLauncher.serverPid.map { $0 != stopped } ?? false
        try report.send(result)
    }
}

struct SpareKillResult: Codable, CustomStringConvertible {
    var killed = 0
    var exitCodes: [Int32] = []
    var pids: [Int32] = []
    var ranIn: [Int32] = []
    var sameServer = false
    var description: String { "killed \(killed) exit \(exitCodes) pids \(pids) ran in \(ranIn) same server \(sameServer)" }
}

/// Starts a forkserver child, then twice kills every spare the server keeps waiting and starts three
/// children: each start must skip the dead spares (their notices are still queued) and run in a live one.
struct SpareKillProbe: ProcessTask {
    let report: Connection
    func run() throws {
        let context = ProcessContext(.forkserver)
        let (reader, writer) = try makePipe(duplex: false)
        var result = SpareKillResult()
        func startOne() throws {
            let child = ChildProcess(ReportPid(report: writer), context: context)
            try child.start()
            result.ranIn.append(try reader.recv(Int32.self, timeout: .seconds(30)))
            try child.join(timeout: .seconds(30))
            result.exitCodes.append(child.exitCode ?? -1)
            result.pids.append(child.pid ?? -1)
        }
        try startOne()
        result.ranIn = []
        result.exitCodes = []
        result.pids = []
        guard let server = ForkServerLauncher.serverPid else { exit(3) }
        for _ in 0..<2 {
            // The server forks its spares soon after a start; wait until they all wait, then kill them.
            var spares: [Int32] = []
            let deadline = Deadline.after(.seconds(10))
            repeat {
                spares = ProcessTree.descendants(of: server).filter { parentPid(of: $0) == server && processName($0) == "mp-spare" }
                if spares.count >= ForkServerLauncher.sparesAhead { break }
                usleep(1_000)
            } while !deadline.hasPassed
            for spare in spares where kill(spare, SIGKILL) == 0 { result.killed += 1 }
            // Only a spare that has ended refuses its bootstrap; one still dying would take it and be
            // reported killed, as a child killed right after its start is.
            let dying = Deadline.after(.seconds(10))
            while !spares.allSatisfy(isGone) && !dying.hasPassed { usleep(1_000) }
            for _ in 0..<3 { try startOne() }
        }
        result.sameServer = ForkServerLauncher.serverPid == server
        try report.send(result)
    }
}

struct ForkFailureResult: Codable, CustomStringConvertible {
    var limited = false
    var skipReason = ""
    var startedBeforeFailure = 0
    var failureErrno: Int32 = 0
    var failureMessage = ""
    var startedAfterLimitRaised = false
    var sameServer = false
    var description: String {
        "limited \(limited) started before failure \(startedBeforeFailure) errno \(failureErrno) (\(failureMessage)) "
            + "started after \(startedAfterLimitRaised) same server \(sameServer)"
    }
}

/// Moves its fork server into a pids cgroup whose limit is reached, so that the server's forks fail with
/// EAGAIN; starts children until one fails, then moves the server back out and starts one more.
struct ForkFailureProbe: ProcessTask {
    let report: Connection
    func run() throws {
        var result = ForkFailureResult()
        defer { try? report.send(result) }
        let context = ProcessContext(.forkserver)
        func startOne() throws {
            let child = ChildProcess(Nap(milliseconds: 0), context: context)
            try child.start()
            guard try child.join(timeout: .seconds(30)), child.exitCode == 0 else { throw MultiprocessingError(.system, "child failed") }
        }
        try startOne()
        guard let server = ForkServerLauncher.serverPid else { exit(3) }
        let group = "/sys/fs/cgroup/pids/multiprocessing-test-\(getpid())"
        guard mkdir(group, 0o755) == 0 else {
            result.skipReason = "mkdir: errno \(errno)"
            return
        }
        defer { rmdir(group) }
        func write(_ text: String, to file: String) -> Bool {
            let fd = open(file, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            return text.withCString { Glibc.write(fd, $0, strlen($0)) } == text.utf8.count
        }
        // The server goes back to the root group before the group is removed (a group with a process in
        // it cannot be); children it forked while limited would have stayed, but it could fork none.
        defer { _ = write("\(server)", to: "/sys/fs/cgroup/pids/cgroup.procs") }
        guard write("1", to: group + "/pids.max"), write("\(server)", to: group + "/cgroup.procs") else {
            result.skipReason = "cgroup not writable: errno \(errno)"
            return
        }
        result.limited = true
        for _ in 0..<(ForkServerLauncher.sparesAhead + 3) {
            do {
                try startOne()
                result.startedBeforeFailure += 1
            } catch let error as MultiprocessingError {
                result.failureErrno = error.errno ?? 0
                result.failureMessage = error.message
                break
            }
        }
        _ = write("\(server)", to: "/sys/fs/cgroup/pids/cgroup.procs")
        result.startedAfterLimitRaised = (try? startOne()) != nil
        result.sameServer = ForkServerLauncher.serverPid == server
    }
}
