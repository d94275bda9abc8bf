#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// Sleeps with `Task.sleep`, runs a small task group, then reports over `report`.
struct SleepThenSend: AsyncProcessTask {
    let report: Connection
    let milliseconds: Int
    func run() async throws {
        let began = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(milliseconds))
        let sum = await withTaskGroup(of: Int.self) { group in
            for value in 1...4 {
                group.addTask {
                    try? await Task.sleep(for: .milliseconds(5))
                    return value
                }
            }
            return await group.reduce(0, +)
        }
        let elapsed = ContinuousClock.now - began
        try await report.send(AsyncReport(slept: Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000), sum: sum, pid: getpid()))
    }
}

struct AsyncReport: Codable, Equatable {
    let slept: Int
    let sum: Int
    let pid: Int32
}

/// A Codable error, to be read back as itself in the parent.
struct ParseFailure: Error, Codable, Equatable {
    let line: Int
    let reason: String
}

/// An error that is not Codable: only its type name and description cross.
struct OpaqueFailure: Error, CustomStringConvertible {
    let detail: Int
    var description: String { "opaque failure \(detail)" }
}

/// Throws the chosen error, synchronously.
struct ThrowError: ProcessTask {
    let codable: Bool
    func run() throws {
        if codable { throw ParseFailure(line: 42, reason: "unexpected token") }
        throw OpaqueFailure(detail: 7)
    }
}

/// Awaits, then throws a Codable error.
struct ThrowErrorAsync: AsyncProcessTask {
    func run() async throws {
        try await Task.sleep(for: .milliseconds(1))
        throw ParseFailure(line: 7, reason: "async")
    }
}

@Suite("Async tasks and failures as values")
struct ChildFailureTests {
    @Test("an async task awaits Task.sleep and a task group, then sends over a Connection", arguments: [StartMethod.spawn, .forkserver])
    func asyncTask(method: StartMethod) throws {
        let (reader, writer) = try makePipe(duplex: false)
        let child = ChildProcess(SleepThenSend(report: writer, milliseconds: 50), context: ProcessContext(method))
        try child.start()
        let report = try reader.recv(AsyncReport.self, timeout: .seconds(30))
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 0)
        #expect(child.failure == nil)
        #expect(report.pid == child.pid)
        #expect(report.sum == 10)
        #expect(report.slept >= 50 && report.slept < 20_000, "slept \(report.slept) ms")
    }

    @Test("a thrown Codable error is read back as itself", arguments: StartMethod.allCases)
    func codableError(method: StartMethod) throws {
        let child = ChildProcess(ThrowError(codable: true), context: ProcessContext(method))
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 1)
        let failure = try #require(child.failure)
        #expect(failure.error(as: ParseFailure.self) == ParseFailure(line: 42, reason: "unexpected token"))
        #expect(failure.typeName == String(reflecting: ParseFailure.self))
        #expect(failure.message == "\(ParseFailure(line: 42, reason: "unexpected token"))")
        #expect(failure.signal == nil)
    }

    @Test("the fork start method refuses an async task with a clear error")
    func asyncUnderFork() throws {
        let (_, writer) = try makePipe(duplex: false)
        let child = ChildProcess(SleepThenSend(report: writer, milliseconds: 1), context: ProcessContext(.fork))
        let error = #expect(throws: MultiprocessingError.self) { try child.start() }
        #expect(error?.code == .unsupported)
        #expect(error?.message.contains("spawn or forkserver") == true)
        #expect(child.pid == nil)
    }

    @Test("an async task's thrown error is read back as itself", arguments: [StartMethod.spawn, .forkserver])
    func asyncError(method: StartMethod) throws {
        let child = ChildProcess(ThrowErrorAsync(), context: ProcessContext(method))
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 1)
        #expect(child.failure?.error(as: ParseFailure.self) == ParseFailure(line: 7, reason: "async"))
    }

    @Test("a non-Codable error is read back by type name and description", arguments: [StartMethod.spawn, .forkserver, .fork])
    func opaqueError(method: StartMethod) throws {
        let child = ChildProcess(ThrowError(codable: false), context: ProcessContext(method))
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 1)
        let failure = try #require(child.failure)
        #expect(failure.typeName == String(reflecting: OpaqueFailure.self))
        #expect(failure.message == "opaque failure 7")
        #expect(failure.error == nil)
        #expect(failure.error(as: ParseFailure.self) == nil)
        #expect(failure.description == "\(String(reflecting: OpaqueFailure.self)): opaque failure 7")
    }

    @Test("a signal death is reported by name; returning and exit(1) are no failure", arguments: StartMethod.allCases)
    func signalDeath(method: StartMethod) throws {
        let context = ProcessContext(method)
        let killed = ChildProcess(EndWith(way: .blocking), context: context)
        try killed.start()
        try killed.kill()
        #expect(try killed.join(timeout: .seconds(30)))
        #expect(killed.exitCode == -SIGKILL)
        let failure = try #require(killed.failure)
        #expect(failure.signal == SIGKILL)
        #expect(failure.signalName == "SIGKILL")
        #expect(failure.typeName == nil)
        #expect(failure.message.hasPrefix("killed by signal SIGKILL (9)"))

        let exited = ChildProcess(EndWith(way: .exitCode(1)), context: context)
        try exited.start()
        #expect(try exited.join(timeout: .seconds(30)))
        #expect(exited.exitCode == 1)
        #expect(exited.failure == nil)
        let returned = ChildProcess(EndWith(way: .returning), context: context)
        try returned.start()
        #expect(try returned.join(timeout: .seconds(30)))
        #expect(returned.failure == nil)
    }
}
