#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

@Suite("Fork server: what children inherit")
struct ForkServerMemoryTests {
    @Test("a forkserver child inherits the server's mapped code: it reaches its task with few page faults")
    func childInheritsMappedCode() throws {
        let (reader, writer) = try makePipe(duplex: false)
        let context = ProcessContext(.forkserver)
        var faults: [Int] = []
        for _ in 0..<3 {
            let child = ChildProcess(ReportPageFaults(report: writer), context: context)
            try child.start()
            faults.append(try reader.recv(Int.self, timeout: .seconds(30)))
            #expect(try child.join(timeout: .seconds(30)))
            #expect(child.exitCode == 0)
        }
        // Measured in this test binary: 73 with the server's code shared, 222 without (each page of code a
        // child touched faulted again).
        #expect(faults.min()! < 140, "page faults before the task: \(faults)")
    }

    @Test("the fork server keeps more children at once than its first room (64), and reports each one's exit code")
    func manyChildrenAtOnce() throws {
        let go = try ProcessEvent()
        let context = ProcessContext(.forkserver)
        let children = try (0..<70).map { index in
            let child = ChildProcess(ExitOnEvent(go: go, code: Int32(index % 100)), context: context)
            try child.start()
            return child
        }
        go.set()
        for (index, child) in children.enumerated() {
            #expect(try child.join(timeout: .seconds(30)))
            #expect(child.exitCode == Int32(index % 100))
        }
    }

    @Test("the fork server writes few pages per start: each page it writes while a child lives is copied first")
    func serverWritesFewPages() throws {
        let (reader, writer) = try makePipe(duplex: false)
        // In a spawned probe, whose fork server no other test uses.
        let probe = ChildProcess(ServerFaultProbe(report: writer, starts: 40))
        try probe.start()
        let perStart = try reader.recv(Double.self, timeout: .seconds(60))
        #expect(try probe.join(timeout: .seconds(30)))
        #expect(probe.exitCode == 0)
        // Measured in the debug test build: 12 per start, and 22 when the loop allocated its arrays and
        // request buffer anew for each start (in a release build: about 6, and 15).
        #expect(perStart < 17, "server page faults per start: \(perStart)")
    }
}

/// Waits for `go`, then exits with `code`.
struct ExitOnEvent: ProcessTask {
    let go: ProcessEvent
    let code: Int32
    func run() throws {
        guard go.wait(timeout: .seconds(60)) else { exit(99) }
        exit(code)
    }
}

/// Starts `starts` forkserver children one after another and sends the server's minor page faults per start.
struct ServerFaultProbe: ProcessTask {
    let report: Connection
    let starts: Int
    func run() throws {
        let context = ProcessContext(.forkserver)
        func startAndJoin() throws {
            let child = ChildProcess(NoTask(), context: context)
            try child.start()
            guard try child.join(timeout: .seconds(30)), child.exitCode == 0 else { exit(2) }
        }
        for _ in 0..<5 { try startAndJoin() }
        guard let server = ForkServerLauncher.serverPid else { exit(3) }
        let before = minorFaults(of: server)
        for _ in 0..<starts { try startAndJoin() }
        let after = minorFaults(of: server)
        try report.send(Double(after - before) / Double(starts))
    }

    private func minorFaults(of pid: Int32) -> Int { statField(of: pid, 10) }
}

/// A task that does nothing.
struct NoTask: ProcessTask {
    func run() throws {}
}

/// Sends the minor page faults this process has taken so far (since its fork).
struct ReportPageFaults: ProcessTask {
    let report: Connection
    func run() throws {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        try report.send(usage.ru_minflt)
    }
}
