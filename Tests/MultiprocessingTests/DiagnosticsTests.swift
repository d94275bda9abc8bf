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
        let captured = CapturedMessages()
        let previous = Multiprocessing.diagnostics
        Multiprocessing.diagnostics = Logger(label: "test") { _ in CapturingLogHandler(captured: captured) }
        defer { Multiprocessing.diagnostics = previous }
        let context = ProcessContext(.forkserver)
        let warm = ChildProcess(Nap(milliseconds: 0), context: context)
        try warm.start()
        #expect(try warm.join(timeout: .seconds(30)))
        let server = try #require(ForkServerLauncher.serverPid)
        let pidfd = mp_pidfd_open(server)
        #expect(pidfd >= 0)
        kill(server, SIGKILL)
        _ = try Syscall.pollReadable([pidfd], until: .after(.seconds(10)))
        Syscall.close(pidfd)
        let child = ChildProcess(Nap(milliseconds: 0), context: context)
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 0)
        #expect(captured.messages.withLock { $0.contains { $0.contains("fork server \(server) failed") } })

        #expect(throws: MultiprocessingError.self) {
            try ChildProcess(Nap(milliseconds: 0), name: "NoDirectory", settings: ChildSettings(workingDirectory: "/no/such/dir")).start()
        }
        #expect(captured.messages.withLock { $0.contains { $0.contains("process NoDirectory could not start") } })
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
