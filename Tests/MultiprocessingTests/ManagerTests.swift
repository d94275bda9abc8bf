#if canImport(Glibc)
import Glibc
#endif
import Distributed
import Testing
@testable import Multiprocessing

/// A user's own shared object: a counter.
distributed actor TestCounter: SharedObject {
    var total = 0

    distributed func add(_ amount: Int) -> Int {
        total += amount
        return total
    }

    distributed func value() -> Int { total }

    /// Waits (without holding the actor) until `release` is set, then adds one: a call that stays
    /// pending for as long as the test wants.
    distributed func addAfterRelease(_ gate: SharedEvent) async throws -> Int {
        _ = try await gate.wait(timeout: .seconds(60))
        total += 1
        return total
    }

    distributed func fail(_ message: String) throws -> Int {
        throw CounterFailure(message: message)
    }

    distributed func failUncodably() throws {
        throw PlainFailure()
    }

    distributed func unencodableResult() -> NotEncodable { NotEncodable() }

    distributed func pid() -> Int32 { getpid() }
}

struct CounterFailure: Error, Codable, Equatable {
    let message: String
}

struct PlainFailure: Error, CustomStringConvertible {
    var description: String { "plain failure" }
}

/// A value whose encoding always fails.
struct NotEncodable: Codable {
    init() {}
    init(from decoder: any Decoder) throws { throw MultiprocessingError(.transport, "never decodes") }
    func encode(to encoder: any Encoder) throws { throw MultiprocessingError(.transport, "never encodes") }
}

/// A child that calls `counter.add(1)` `rounds` times from each of `tasks` concurrent tasks.
struct CountingChild: AsyncProcessTask {
    let counter: TestCounter
    let tasks: Int
    let rounds: Int

    func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    for _ in 0..<rounds { _ = try await counter.add(1) }
                }
            }
            try await group.waitForAll()
        }
    }
}

@Suite("Managers", .timeLimit(.minutes(2)))
struct ManagerTests {
    @Test("a counter actor hosted by a manager process counts 100 concurrent callers in 4 processes exactly")
    func counterAcrossProcesses() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let counter = try await manager.make(TestCounter.self)
        #expect(try await counter.pid() == manager.process?.pid)
        let children = (0..<4).map { _ in ChildProcess(CountingChild(counter: counter, tasks: 25, rounds: 10)) }
        for child in children { try child.start() }
        for child in children {
            #expect(try await child.join(timeout: .seconds(60)))
            #expect(child.exitCode == 0)
        }
        #expect(try await counter.value() == 1000)
        try await manager.shutdown()
        #expect(manager.process?.exitCode == 0)
    }
}
