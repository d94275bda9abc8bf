#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// Task types for per-child settings, at file scope so that a spawned child can find them.

/// Writes `count` bytes of a known pattern to standard output (or standard error), then returns.
struct WritePattern: ProcessTask {
    let count: Int
    let toError: Bool
    func run() throws {
        let bytes = patternBytes(count)
        try bytes.withUnsafeBytes { try Syscall.writeAll(toError ? 2 : 1, $0) }
    }
}

/// A pattern that a lost, repeated or reordered 64 KiB pipe chunk would break (its period is prime).
func patternBytes(_ count: Int) -> [UInt8] {
    let block = (0..<65521).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 / 251) }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(count + block.count)
    while bytes.count < count { bytes.append(contentsOf: block) }
    bytes.removeLast(bytes.count - count)
    return bytes
}

/// Reports what the child sees of its settings.
struct ReportSettings: ProcessTask {
    let report: Connection
    func run() throws {
        var buffer = [CChar](repeating: 0, count: 4096)
        let directory = getcwd(&buffer, buffer.count).map { String(cString: $0) } ?? "?"
        var files = rlimit()
        var core = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files)
        getrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &core)
        var byte: UInt8 = 0
        let readFromInput = read(0, &byte, 1)
        try report.send(SettingsReport(
            set: getenv("MP_SETTINGS_SET").map { String(cString: $0) },
            removed: getenv("MP_SETTINGS_REMOVED").map { String(cString: $0) },
            directory: directory, openFiles: Int(files.rlim_cur), coreDump: Int(core.rlim_cur),
            inputRead: readFromInput))
    }
}

struct SettingsReport: Codable, Equatable {
    let set: String?
    let removed: String?
    let directory: String
    let openFiles: Int
    let coreDump: Int
    let inputRead: Int
}

/// Spins until its CPU time runs out.
struct BurnCPU: ProcessTask {
    func run() throws {
        // An endless loop whose result may be printed, so an optimizer can neither drop nor end it.
        var x: UInt64 = 1
        while true {
            for _ in 0..<1_000_000 { x = x &* 6364136223846793005 &+ 1442695040888963407 }
            if x == 0 { print("x reached 0") }
        }
    }
}

/// Allocates and touches `bytes` bytes.
struct AllocateMuch: ProcessTask {
    let bytes: Int
    func run() throws {
        let array = [UInt8](repeating: 1, count: bytes)
        print(array[bytes / 2])
    }
}

/// Dies of SIGSEGV, as reading an unset global of main.swift does in a spawned child.
struct TouchNull: ProcessTask {
    func run() throws {
        let pointer = UnsafeMutablePointer<Int>(bitPattern: 16)!
        pointer.pointee = 1
    }
}

/// Prints a line, then sends "clean" over `second`: with descriptors 0-2 closed in its parent, the
/// connections must not land there, or the print corrupts one.
struct PrintBesideConnections: ProcessTask {
    let first: Connection
    let second: Connection
    func run() throws {
        print("this line belongs on standard output, never in a connection")
        fflush(nil)
        try second.send("clean")
        withExtendedLifetime(first) {}
    }
}

/// Closes its own descriptors 0, 1 and 2, starts `PrintBesideConnections` under `method` and reports
/// what arrived.
struct CloseStandardDescriptorsThenStart: ProcessTask {
    let method: StartMethod.RawValue
    let report: Connection
    func run() throws {
        close(0); close(1); close(2)
        let (firstReader, firstWriter) = try makePipe()
        let (secondReader, secondWriter) = try makePipe()
        let child = ChildProcess(
            PrintBesideConnections(first: firstWriter, second: secondWriter),
            context: ProcessContext(StartMethod(rawValue: method)!))
        try child.start()
        let outcome: String
        do { outcome = try secondReader.recv(String.self, timeout: .seconds(20)) } catch { outcome = "error: \(error)" }
        _ = try child.join(timeout: .seconds(20))
        withExtendedLifetime(firstReader) {}
        try report.send(outcome)
    }
}

@Suite("Per-child settings, statuses and traps")
struct ChildSettingsTests {
    @Test("10 MiB of standard output and 1 MiB of standard error are captured whole", arguments: StartMethod.allCases)
    func captureLarge(method: StartMethod) throws {
        let size = 10 << 20
        let out = ChildProcess(
            WritePattern(count: size, toError: false),
            settings: ChildSettings(standardOutput: .capture, standardError: .capture), context: ProcessContext(method))
        try out.start()
        #expect(try out.join(timeout: .seconds(60)))
        #expect(out.terminationStatus == .exited(0))
        let bytes = try out.capturedOutput(timeout: .seconds(30))
        #expect(bytes.count == size)
        #expect(bytes == patternBytes(size))
        #expect(try out.capturedErrorOutput(timeout: .seconds(30)).isEmpty)

        let err = ChildProcess(
            WritePattern(count: 1 << 20, toError: true), settings: ChildSettings(standardError: .capture),
            context: ProcessContext(method))
        try err.start()
        #expect(try err.join(timeout: .seconds(60)))
        #expect(try err.capturedErrorOutput(timeout: .seconds(30)) == patternBytes(1 << 20))
        #expect(throws: MultiprocessingError.self) { try err.capturedOutput(timeout: .seconds(1)) }
    }

    @Test("environment, working directory, open files, core dumps and standard input apply in the child", arguments: StartMethod.allCases)
    func settingsApply(method: StartMethod) throws {
        setenv("MP_SETTINGS_REMOVED", "present in the parent", 1)
        defer { unsetenv("MP_SETTINGS_REMOVED") }
        let (reader, writer) = try makePipe(duplex: false)
        var settings = ChildSettings(limits: ResourceLimits(openFiles: 64, coreDumpBytes: 0), workingDirectory: "/tmp")
        settings.environment = ["MP_SETTINGS_SET": "set for the child"]
        settings.removedEnvironment = ["MP_SETTINGS_REMOVED"]
        settings.standardInput = .null
        let child = ChildProcess(ReportSettings(report: writer), settings: settings, context: ProcessContext(method))
        try child.start()
        let report = try reader.recv(SettingsReport.self, timeout: .seconds(30))
        #expect(try child.join(timeout: .seconds(30)))
        #expect(report == SettingsReport(
            set: "set for the child", removed: nil, directory: "/tmp", openFiles: 64, coreDump: 0, inputRead: 0))
        #expect(getenv("MP_SETTINGS_SET") == nil, "the parent's environment is untouched")
        #expect(child.exitCode == 0)
    }

    @Test("standard output to a file, standard error to /dev/null", arguments: StartMethod.allCases)
    func outputToFile(method: StartMethod) throws {
        let path = "/tmp/mp-settings-\(getpid())-\(method).out"
        defer { unlink(path) }
        let child = ChildProcess(
            WritePattern(count: 100_000, toError: false),
            settings: ChildSettings(standardOutput: .file(path), standardError: .null), context: ProcessContext(method))
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var contents = [UInt8](repeating: 0, count: 200_000)
        let count = read(fd, &contents, contents.count)
        #expect(Array(contents.prefix(max(count, 0))) == patternBytes(100_000))
    }

    @Test("a child over its CPU limit ends with SIGXCPU and says so", arguments: StartMethod.allCases)
    func cpuLimit(method: StartMethod) throws {
        let child = ChildProcess(
            BurnCPU(), settings: ChildSettings(limits: ResourceLimits(cpuSeconds: 1), standardError: .capture),
            context: ProcessContext(method))
        try child.start()
        #expect(try child.join(timeout: .seconds(60)))
        #expect(child.terminationStatus == .signaled(.cpuTimeLimitExceeded))
        #expect(child.exitCode == -SIGXCPU)
        #expect(child.exceededLimit == .cpuTime)
        let message = String(decoding: try child.capturedErrorOutput(timeout: .seconds(10)), as: UTF8.self)
        #expect(message.contains("CPU-time limit of 1 s"), "\(message)")
    }

    @Test("a child over its memory limit is reported as such, with a message", arguments: StartMethod.allCases)
    func memoryLimit(method: StartMethod) throws {
        let child = ChildProcess(
            AllocateMuch(bytes: 4 << 30),
            settings: ChildSettings(limits: ResourceLimits(addressSpaceBytes: 2 << 30), standardError: .capture),
            context: ProcessContext(method))
        try child.start()
        #expect(try child.join(timeout: .seconds(60)))
        let message = String(decoding: try child.capturedErrorOutput(timeout: .seconds(10)), as: UTF8.self)
        #expect(child.exceededLimit == .memory, "status \(String(describing: child.terminationStatus)): \(message)")
        if case .signaled = child.terminationStatus {} else { Issue.record("expected a signal, got \(String(describing: child.terminationStatus))") }
        #expect(message.contains("ran out of memory under its limit (address space 2147483648 bytes)"), "\(message)")
        #expect(message.contains("task AllocateMuch"), "\(message)")
    }

    @Test("a child killed by a signal says which process, task and signal, with the main.swift hint", arguments: StartMethod.allCases)
    func crashMessage(method: StartMethod) throws {
        let child = ChildProcess(
            TouchNull(), name: "Toucher", settings: ChildSettings(standardError: .capture), context: ProcessContext(method))
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.terminationStatus == .signaled(.segmentationViolation))
        #expect(child.exceededLimit == nil)
        let message = String(decoding: try child.capturedErrorOutput(timeout: .seconds(10)), as: UTF8.self)
        #expect(message.contains("Process Toucher (pid \(child.pid ?? 0), task TouchNull) was killed by SIGSEGV"), "\(message)")
        #expect(message.contains("while running its task"), "\(message)")
        #expect(message.contains("main.swift") == (method != .fork), "\(message)")
    }

    @Test("descriptors a child receives never land on 0-2 when its parent closed them", arguments: [StartMethod.spawn, .forkserver])
    func closedStandardDescriptors(method: StartMethod) throws {
        let (reader, writer) = try makePipe(duplex: false)
        let middle = ChildProcess(CloseStandardDescriptorsThenStart(method: method.rawValue, report: writer), context: ProcessContext(.spawn))
        try middle.start()
        #expect(try reader.recv(String.self, timeout: .seconds(40)) == "clean")
        #expect(try middle.join(timeout: .seconds(30)))
        #expect(middle.exitCode == 0)
    }

    @Test("bad settings are refused at start with typed errors")
    func badSettings() throws {
        func code(_ settings: ChildSettings) -> MultiprocessingError.Code? {
            do {
                try ChildProcess(Nap(milliseconds: 1), settings: settings).start()
                return nil
            } catch let error as MultiprocessingError { return error.code } catch { return nil }
        }
        #expect(code(ChildSettings(workingDirectory: "/no/such/directory")) == .notFound)
        #expect(code(ChildSettings(standardInput: .file("/no/such/file"))) == .notFound)
        #expect(code(ChildSettings(limits: ResourceLimits(cpuSeconds: 0))) == .invalidArgument)
        #expect(code(ChildSettings(limits: ResourceLimits(addressSpaceBytes: -1))) == .invalidArgument)
        #expect(code(ChildSettings(environment: ["A=B": "c"])) == .invalidArgument)
        #expect(code(ChildSettings(removedEnvironment: [""])) == .invalidArgument)
        let child = ChildProcess(Nap(milliseconds: 1))
        #expect(throws: MultiprocessingError.self) { try child.capturedOutput(timeout: .seconds(1)) }
        try child.start()
        #expect(throws: MultiprocessingError.self) { try child.setSettings(ChildSettings()) }
        #expect(try child.join(timeout: .seconds(30)))
    }

    @Test("children key a dictionary, Python's workers[p] with wait(); isDaemon and isClosed")
    func dictionaryKeys() throws {
        var workers: [ChildProcess: Int] = [:]
        for index in 0..<3 {
            let child = ChildProcess(EndWith(way: .exitCode(Int32(10 + index))), daemon: index == 1)
            try child.start()
            workers[child] = index
        }
        var seen: [Int: TerminationStatus] = [:]
        let deadline = Deadline.after(.seconds(30))
        while seen.count < 3 && !deadline.hasPassed {
            for ready in try wait(Array(workers.keys), timeout: .seconds(30)) {
                seen[workers[ready]!] = ready.terminationStatus
            }
        }
        #expect(seen == [0: .exited(10), 1: .exited(11), 2: .exited(12)])
        #expect(workers.keys.filter(\.isDaemon).map { workers[$0] } == [1])
        for child in workers.keys {
            #expect(!child.isClosed)
            try child.close()
            #expect(child.isClosed)
        }
    }

    @Test("termination status, signal and process identifier types")
    func statusTypes() throws {
        let child = ChildProcess(EndWith(way: .blocking))
        try child.start()
        #expect(child.processIdentifier?.rawValue == child.pid)
        try child.kill()
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.terminationStatus == .signaled(.kill))
        #expect(child.terminationStatus?.pythonExitCode == child.exitCode)
        #expect(Signal.kill.name == "SIGKILL")
        #expect(Signal.segmentationViolation.description.hasPrefix("SIGSEGV ("))
        #expect(TerminationStatus(pythonExitCode: 3) == .exited(3))
        #expect(TerminationStatus(pythonExitCode: -15) == .signaled(.terminate))
        #expect(ProcessIdentifier.current.rawValue == getpid())
    }
}

/// Leaves a process behind that holds its standard output open for a second, then returns.
struct LeaveWriterBehind: ProcessTask {
    func run() throws {
        print("before")
        fflush(nil)
        _ = system("sleep 1 &")
    }
}

@Suite("Captured output held open by a descendant")
struct CapturedOutputTimeoutTests {
    @Test("a captured stream still held open times out with the timeout and pid as fields, then completes")
    func heldOpen() throws {
        let child = ChildProcess(LeaveWriterBehind(), settings: ChildSettings(standardOutput: .capture))
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        let error = #expect(throws: MultiprocessingError.self) { try child.capturedOutput(timeout: .milliseconds(100)) }
        #expect(error?.code == .timedOut)
        #expect(error?.timeout == .milliseconds(100))
        #expect(error?.pid == child.processIdentifier)
        #expect(try child.capturedOutput(timeout: .seconds(30)) == Array("before\n".utf8))
    }
}

@Suite("Captured output awaited", .ownThread)
struct CapturedOutputAsyncTests {
    @Test("captured output awaited on the event loop: whole, timed out while held open, cancellable")
    func awaited() async throws {
        let child = ChildProcess(LeaveWriterBehind(), settings: ChildSettings(standardOutput: .capture))
        try child.start()
        #expect(try await child.join(timeout: .seconds(30)))
        do {
            _ = try await child.capturedOutput(timeout: .milliseconds(100))
            Issue.record("the output of a stream still held open should not be complete")
        } catch let error as MultiprocessingError {
            #expect(error.code == .timedOut)
        }
        expectCancelled(try await cancelMidWait { _ = try await child.capturedOutput() }, "capturedOutput")
        #expect(try await child.capturedOutput(timeout: .seconds(30)) == Array("before\n".utf8))
        do {
            _ = try await child.capturedErrorOutput(timeout: .seconds(1))
            Issue.record("standard error was not captured")
        } catch let error as MultiprocessingError {
            #expect(error.code == .invalidState)
        }
    }
}
