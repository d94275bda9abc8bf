#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Logging
import Synchronization
import Testing
@testable import Multiprocessing

/// Takes a lock and ends without releasing it.
struct DiagnosticsAbandonLock: ProcessTask {
    let lock: ProcessLock
    func run() throws { _ = lock.acquire() }
}

/// Kills its own process's fork server, then checks that the next forkserver child starts on a new
/// server and that both that and a child that cannot start are logged.
struct ForkServerRestartLogProbe: ProcessTask {
    struct Failed: Error, CustomStringConvertible {
        let description: String
    }

    func run() throws {
        func check(_ condition: Bool, _ what: String) throws { if !condition { throw Failed(description: what) } }
        let captured = CapturedMessages()
        Multiprocessing.diagnostics = Logger(label: "test") { _ in CapturingLogHandler(captured: captured) }
        let context = ProcessContext(.forkserver)
        let warm = ChildProcess(Nap(milliseconds: 0), context: context)
        try warm.start()
        try check(try warm.join(timeout: .seconds(30)), "the first forkserver child did not end")
        guard let server = ForkServerLauncher.serverPid else { throw Failed(description: "no fork server") }
        let pidfd = mp_pidfd_open(server)
        try check(pidfd >= 0, "no pidfd for the fork server")
        kill(server, SIGKILL)
        _ = try Syscall.pollReadable([pidfd], until: .after(.seconds(10)))
        Syscall.close(pidfd)
        let child = ChildProcess(Nap(milliseconds: 0), context: context)
        try child.start()
        try check(try child.join(timeout: .seconds(30)), "the forkserver child after the kill did not end")
        try check(child.exitCode == 0, "the forkserver child after the kill ended with \(String(describing: child.exitCode))")
        try check(captured.messages.withLock { $0.contains { $0.contains("fork server \(server) failed") } }, "the server's death was not logged")
        do {
            try ChildProcess(Nap(milliseconds: 0), name: "NoDirectory", settings: ChildSettings(workingDirectory: "/no/such/dir")).start()
            throw Failed(description: "a child with a missing working directory started")
        } catch is MultiprocessingError {}
        try check(captured.messages.withLock { $0.contains { $0.contains("process NoDirectory could not start") } }, "the failed start was not logged")
    }
}

/// A log handler that keeps the messages it is given.
struct CapturingLogHandler: LogHandler {
    let captured: CapturedMessages
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        captured.messages.withLock { $0.append("\(event.message)") }
    }
}

final class CapturedMessages: Sendable {
    let messages = Mutex<[String]>([])
}

@Suite("Diagnostics through swift-log", .serialized)
struct DiagnosticsTests {
    @Test("a fork server that died is replaced and the replacement is logged; a child that cannot start is logged")
    func forkServerRestartIsLogged() throws {
        // In a child of its own: killing this process's fork server would fail the forkserver children
        // of tests running meanwhile (they would end with 255, as when a server dies in Python).
        let probe = ChildProcess(ForkServerRestartLogProbe())
        try probe.start()
        let ended = try probe.join(timeout: .seconds(60))
        if !ended { try? probe.kill(); _ = try? probe.join(timeout: .seconds(10)) }
        #expect(ended)
        #expect(probe.exitCode == 0, "\(probe.failure.map { "\($0)" } ?? "no failure reported")")
    }

    @Test("a lock taken over from a dead holder is reported to the program's logger, and nothing is logged by default")
    func takeoverIsLogged() throws {
        let captured = CapturedMessages()
        let previous = Multiprocessing.diagnostics
        Multiprocessing.diagnostics = Logger(label: "test") { _ in CapturingLogHandler(captured: captured) }
        defer { Multiprocessing.diagnostics = previous }
        let lock = try ProcessLock()
        let child = ChildProcess(DiagnosticsAbandonLock(lock: lock))
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        #expect(lock.acquire(timeout: .seconds(10)))
        #expect(lock.previousOwnerDied)
        try lock.release()
        #expect(captured.messages.withLock { $0.contains { $0.contains("took over a lock") } })
        #expect(previous.handler is SwiftLogNoOpLogHandler, "by default nothing is logged")
    }
}

/// Takes a lock, reports, and holds it until told to go.
struct DiagnosticsHoldLock: ProcessTask {
    let lock: ProcessLock
    let rlock: ProcessRLock
    let report: Connection
    func run() throws {
        _ = lock.acquire()
        _ = rlock.acquire()
        try report.send(true)
        _ = try report.recv(Bool.self, timeout: .seconds(30))
        try rlock.release()
        try lock.release()
    }
}

@Suite("locked() on Lock and RLock")
struct LockedTests {
    @Test("locked() says whether anyone holds the lock, in this process or another")
    func lockedAcrossProcesses() throws {
        let lock = try ProcessLock()
        let rlock = try ProcessRLock()
        #expect(!lock.locked() && !rlock.locked())
        _ = lock.acquire()
        _ = rlock.acquire()
        _ = rlock.acquire()
        #expect(lock.locked() && rlock.locked())
        try lock.release()
        try rlock.release()
        #expect(!lock.locked() && rlock.locked(), "an RLock held once more is still locked")
        try rlock.release()
        #expect(!rlock.locked())
        let (mine, theirs) = try makePipe()
        let child = ChildProcess(DiagnosticsHoldLock(lock: lock, rlock: rlock, report: theirs))
        try child.start()
        #expect(try mine.recv(Bool.self, timeout: .seconds(30)))
        #expect(lock.locked() && rlock.locked(), "held by the child")
        try mine.send(true)
        #expect(try child.join(timeout: .seconds(30)))
        #expect(!lock.locked() && !rlock.locked())
    }
}
