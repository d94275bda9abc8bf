#if canImport(Glibc)
import Glibc
#endif
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

@Suite("Diagnostics through swift-log")
struct DiagnosticsTests {
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
