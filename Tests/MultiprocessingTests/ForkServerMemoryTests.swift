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
