#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// A task that ends its process with SIGABRT.
struct AbortNow: ProcessTask {
    func run() throws { abort() }
}

/// What a child reads first: its bootstrap, coded as a list (see ``ChildBootstrap``).
@Suite("Child start")
struct ChildStartTests {
    private func sample(settings: ChildSettingsWire) -> ChildBootstrap {
        ChildBootstrap(
            work: TaskEnvelope(ForkServerWarmUp(names: ["x", "y"], number: 7)), name: "Worker-3", identity: [1, 3],
            authkey: [9, 8, 7], daemon: true, parentPid: 42, parentName: "MainProcess", startMethod: "forkserver",
            settings: settings, taskName: "ForkServerWarmUp")
    }

    @Test("a bootstrap with settings and a descriptor arrives whole over a connection")
    func roundTrip() throws {
        let (a, b) = try Syscall.socketPair()
        let sending = try Connection(adopting: a)
        let receiving = try Connection(adopting: b)
        let null = try Syscall.open("/dev/null", O_WRONLY | O_CLOEXEC, mode: 0)
        defer { Syscall.close(null) }
        let settings = ChildSettingsWire(
            limits: ResourceLimits(cpuSeconds: 5, openFiles: 64),
            environment: [.init(name: "MODE", value: "batch"), .init(name: "GONE", value: nil)],
            workingDirectory: "/tmp", standardInput: nil, standardOutput: PassedDescriptor(null), standardError: nil,
            memoryReport: nil)
        try sending.send(sample(settings: settings))
        let got = try receiving.recv(ChildBootstrap.self, timeout: .seconds(10))
        defer { if let fd = got.settings.standardOutput?.fd { Syscall.close(fd) } }
        #expect(got.name == "Worker-3" && got.identity == [1, 3] && got.authkey == [9, 8, 7] && got.daemon)
        #expect(got.parentPid == 42 && got.parentName == "MainProcess" && got.startMethod == "forkserver")
        #expect(got.taskName == "ForkServerWarmUp")
        #expect(got.settings.limits == ResourceLimits(cpuSeconds: 5, openFiles: 64))
        #expect(got.settings.environment.map(\.name) == ["MODE", "GONE"])
        #expect(got.settings.environment.map(\.value) == ["batch", nil])
        #expect(got.settings.workingDirectory == "/tmp")
        #expect(got.settings.standardInput == nil && got.settings.standardError == nil && got.settings.memoryReport == nil)
        // The descriptor arrived as a new one of this process, open on the same file.
        let fd = try #require(got.settings.standardOutput?.fd)
        #expect(fd != null && fcntl(fd, F_GETFD) >= 0)
        let task = try #require(got.work?.task as? ForkServerWarmUp)
        #expect(task.names == ["x", "y"] && task.number == 7)
        guard case .sync = try #require(got.work).runnable else {
            Issue.record("a decoded ProcessTask must run as one")
            return
        }
    }

    @Test("empty settings and absent optional fields arrive as such")
    func emptyParts() throws {
        var bootstrap = sample(settings: .none)
        bootstrap.work = nil
        bootstrap.startMethod = nil
        bootstrap.taskName = nil
        let bytes = try BinaryEncoder().encode(bootstrap)
        let got = try BinaryDecoder().decode(ChildBootstrap.self, from: bytes)
        #expect(got.settings.isEmpty && got.work == nil && got.startMethod == nil && got.taskName == nil)
        #expect(got.name == "Worker-3" && got.identity == [1, 3])
    }

    @Test("a cut or altered bootstrap is a typed error, never a crash")
    func badInput() throws {
        var settings = ChildSettingsWire.none
        settings.environment = [.init(name: "A", value: "b")]
        settings.workingDirectory = "/"
        let bytes = try BinaryEncoder().encode(sample(settings: settings))
        for length in 0..<bytes.count {
            #expect(throws: MultiprocessingError.self, "cut at \(length)") {
                try BinaryDecoder().decode(ChildBootstrap.self, from: Array(bytes[..<length]))
            }
        }
        // Every single-byte change either decodes or throws a typed error.
        for index in bytes.indices {
            var altered = bytes
            altered[index] ^= 0xFF
            do { _ = try BinaryDecoder().decode(ChildBootstrap.self, from: altered) } catch is MultiprocessingError {} catch {
                Issue.record("byte \(index): \(type(of: error)) \(error)")
            }
        }
    }

    @Test("a task type the child does not have is a typed error")
    func unknownTask() throws {
        var bytes = try BinaryEncoder().encode(TaskEnvelope(ForkServerWarmUp(names: [], number: 1)))
        let name = Array(try TaskEnvelope.typeName(of: ForkServerWarmUp.self).utf8)
        let at = try #require(bytes.indices.first { bytes[$0...].starts(with: name) })
        bytes[at + name.count - 2] = UInt8(ascii: "Q")
        #expect(throws: MultiprocessingError.self) { try BinaryDecoder().decode(TaskEnvelope.self, from: bytes) }
    }

    @Test("a child ended by SIGABRT names itself, its task and the signal, without the main.swift hint", arguments: [StartMethod.spawn, .forkserver])
    func abortMessage(method: StartMethod) throws {
        let child = ChildProcess(AbortNow(), name: "Aborter", settings: ChildSettings(standardError: .capture), context: ProcessContext(method))
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.terminationStatus == .signaled(.abort))
        let message = String(decoding: try child.capturedErrorOutput(timeout: .seconds(10)), as: UTF8.self)
        #expect(message.contains("Process Aborter (pid \(child.pid ?? 0), task AbortNow) was killed by SIGABRT while running its task.\n"), "\(message)")
        #expect(!message.contains("main.swift"), "\(message)")
    }

    @Test("a child ended by SIGSEGV writes the whole message and the hint on their own lines", arguments: [StartMethod.spawn, .forkserver])
    func segvMessage(method: StartMethod) throws {
        let child = ChildProcess(TouchNull(), name: "Toucher", settings: ChildSettings(standardError: .capture), context: ProcessContext(method))
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        let message = String(decoding: try child.capturedErrorOutput(timeout: .seconds(10)), as: UTF8.self)
        let expected = "Process Toucher (pid \(child.pid ?? 0), task TouchNull) was killed by SIGSEGV while running its task.\n"
            + sharedConfigurationHint + "\n"
        #expect(message.contains(expected), "\(message)")
    }
}
