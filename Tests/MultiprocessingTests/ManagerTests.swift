#if canImport(Glibc)
import Glibc
#endif
import Distributed
import Testing
@testable import Multiprocessing

/// A user's own shared object: a counter.
distributed actor TestCounter: SharedObject {
    var total = 0
    var waiting = 0

    distributed func add(_ amount: Int) -> Int {
        total += amount
        return total
    }

    distributed func value() -> Int { total }

    /// Waits (without holding the actor) until `release` is set, then adds one: a call that stays
    /// pending for as long as the test wants.
    distributed func addAfterRelease(_ gate: SharedEvent) async throws -> Int {
        waiting += 1
        defer { waiting -= 1 }
        _ = try await gate.wait(timeout: .seconds(60))
        try Task.checkCancellation()  // a caller that left gets nothing done
        total += 1
        return total
    }

    /// Waits as ``addAfterRelease(_:)`` does, then returns `bytes` bytes: a large reply that the manager
    /// writes from the thread that resumed the call.
    distributed func largeAfterRelease(_ gate: SharedEvent, bytes: Int) async throws -> [UInt8] {
        waiting += 1
        defer { waiting -= 1 }
        _ = try await gate.wait(timeout: .seconds(60))
        return [UInt8](repeating: 7, count: bytes)
    }

    /// How many calls wait in ``addAfterRelease(_:)`` or ``largeAfterRelease(_:bytes:)``.
    distributed func waitingCalls() -> Int { waiting }

    distributed func take(_ value: NotEncodable) {}

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

/// Polls `condition` every 10 ms until it holds or `limit` passes; returns whether it held.
func eventually(within limit: Duration = .seconds(20), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return try await condition()
}

/// A child that calls a method that stays pending, then reports how the call ended and how a later call
/// ended (the error code, or "returned").
struct PendingCaller: AsyncProcessTask {
    let counter: TestCounter
    let gate: SharedEvent
    let report: Connection

    func run() async throws {
        do {
            _ = try await counter.addAfterRelease(gate)
            try await report.send("returned")
        } catch let error as MultiprocessingError {
            try await report.send(error.code.rawValue)
        }
        do {
            _ = try await counter.value()
            try await report.send("returned")
        } catch let error as MultiprocessingError {
            try await report.send(error.code.rawValue)
        }
    }
}

/// A child that takes the lock, then waits in a call until it is killed.
struct LockHoldingCaller: AsyncProcessTask {
    let counter: TestCounter
    let gate: SharedEvent
    let lock: SharedLock

    func run() async throws {
        guard try await lock.acquire(timeout: .seconds(10)) else { exit(3) }
        _ = try await counter.addAfterRelease(gate)
    }
}

/// A child that uses every kind of ready-made object it is given.
struct ReadyMadeUser: AsyncProcessTask {
    let scores: SharedDictionary<String, Int>
    let names: SharedList<String>
    let namespace: SharedNamespace
    let box: SharedBox<Int>
    let done: SharedEvent
    let mailboxes: SharedDictionary<String, SharedQueue<Int>>
    let lock: SharedLock

    func run() async throws {
        let pid = Int(getpid())
        try await scores.update(["child": pid, "shared": 2])
        try await names.append(contentsOf: ["b", "c"])
        try await namespace.setValue([1.5, 2.5], named: "weights")
        _ = try await box.add(10)
        // A queue reached through the dictionary that holds it.
        guard let inbox = try await mailboxes.value(forKey: "parent") else { exit(4) }
        try await inbox.put(pid)
        try await inbox.put(contentsOf: [1, 2, 3])
        // The parent holds the lock: a try without waiting fails, and a release from here works (not owner-bound).
        guard try await !lock.acquire(timeout: .zero) else { exit(5) }
        try await lock.release()
        try await done.set()
    }
}

/// A child that receives a manager's handle and a dictionary in it, and sets a value.
struct RemoteUser: AsyncProcessTask {
    let manager: SharedObjectManager
    let dictionary: SharedDictionary<String, String>

    func run() async throws {
        try await manager.ping()
        try await dictionary.setValue("\(getpid())", forKey: "pid")
        let more = try await manager.makeList([1, 2, 3])
        try await dictionary.setValue("\(try await more.count())", forKey: "count")
    }
}

/// A child that starts a manager of its own, sends its handle, and waits to be killed.
struct ManagerOwner: AsyncProcessTask {
    let report: Connection

    func run() async throws {
        let manager = try SharedObjectManager()
        try await report.send(manager)
        _ = try await report.recv(String.self)  // until the parent kills this process
    }
}

extension ManagerTests {
    @Test("ready-made objects: dictionary, list, namespace, queue, lock, event and box, used by a child, nested in a dictionary")
    func readyMadeObjects() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let scores = try await manager.makeDictionary(["parent": 1])
        let names = try await manager.makeList(["a"])
        let namespace = try await manager.makeNamespace()
        let box = try await manager.makeBox(5)
        let done = try await manager.makeEvent()
        let inbox = try await manager.makeQueue(of: Int.self, maxSize: 8)
        let mailboxes = try await manager.makeDictionary(["parent": inbox])
        let lock = try await manager.makeLock()
        #expect(try await lock.acquire(timeout: .zero))

        let child = ChildProcess(ReadyMadeUser(
            scores: scores, names: names, namespace: namespace, box: box, done: done, mailboxes: mailboxes, lock: lock))
        try child.start()
        #expect(try await done.wait(timeout: .seconds(30)))
        #expect(try await child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 0)

        let pid = Int(child.pid ?? -1)
        #expect(try await scores.snapshot() == ["parent": 1, "child": pid, "shared": 2])
        #expect(try await scores.updateAndSnapshot(["shared": 3]) == ["parent": 1, "child": pid, "shared": 3])
        #expect(try await scores.values(forKeys: ["parent", "nobody"]) == [1, nil])
        #expect(try await scores.removeValue(forKey: "parent") == 1)
        #expect(try await scores.count() == 2)
        #expect(try await names.snapshot() == ["a", "b", "c"])
        #expect(try await namespace.value(named: "weights", as: [Double].self) == [1.5, 2.5])
        #expect(try await namespace.value(named: "missing", as: Int.self) == nil)
        #expect(try await box.get() == 15)
        #expect(try await inbox.get(timeout: .seconds(5)) == pid)
        #expect(try await inbox.size() == 3)
        #expect(try await [inbox.get(), inbox.get(), inbox.get()] == [1, 2, 3])
        #expect(try await !lock.isLocked())
        try await manager.shutdown()
    }

    @Test("a dictionary's batch update (sent as arrays of keys and values) sets every entry and overwrites the ones present")
    func dictionaryBatchUpdate() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let squares = try await manager.makeDictionary([Int: Double].self)
        try await squares.setValue(-1, forKey: 7)
        try await squares.setValue(-1, forKey: 5_000)
        let batch = Dictionary(uniqueKeysWithValues: (0..<2_000).map { ($0, Double($0 * $0)) })
        try await squares.update(batch)
        var expected = batch
        expected[5_000] = -1
        #expect(try await squares.snapshot() == expected)
        let nested = try await manager.makeDictionary([String: [Int]].self)
        try await nested.update(["a": [1, 2], "b": []])
        try await nested.update(["b": [3]])
        #expect(try await nested.snapshot() == ["a": [1, 2], "b": [3]])
        try await manager.shutdown()
    }

    @Test("a queue's get waits for a put from another process; timeouts give empty and full")
    func queueWaits() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let queue = try await manager.makeQueue(of: String.self, maxSize: 1)
        let started = ContinuousClock.now
        await #expect(throws: MultiprocessingError.self) { try await queue.get(timeout: .milliseconds(200)) }
        #expect(ContinuousClock.now - started >= .milliseconds(100))
        try await queue.put("one")
        #expect(try await queue.isAtCapacity())
        do {
            try await queue.put("two", timeout: .zero)
            Issue.record("a put into a full queue succeeded")
        } catch let error as MultiprocessingError {
            #expect(error.code == .full)
        }
        // A waiting get is served by a put that comes later.
        let waiter = Task { try await queue.get(timeout: .seconds(10)) + "/" + queue.get(timeout: .seconds(10)) }
        try await queue.put("two", timeout: .seconds(10))
        #expect(try await waiter.value == "one/two")
        try await manager.shutdown()
    }

    @Test("errors: a Codable error comes back as itself, another by name; an argument or result that cannot be encoded fails that call only")
    func errorsComeBack() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let counter = try await manager.make(TestCounter.self)
        await #expect(throws: CounterFailure(message: "no")) { try await counter.fail("no") }
        do {
            try await counter.failUncodably()
            Issue.record("no error")
        } catch let error as MultiprocessingError {
            #expect(error.code == .remote)
            #expect(error.message.contains("PlainFailure"))
            #expect(error.message.contains("plain failure"))
        }
        do {
            try await counter.take(NotEncodable())
            Issue.record("no error")
        } catch let error as MultiprocessingError {
            #expect(error.code == .transport)
        }
        do {
            _ = try await counter.unencodableResult()
            Issue.record("no error")
        } catch let error as MultiprocessingError {
            #expect(error.code == .transport)
        }
        let list = try await manager.makeList([1])
        do {
            _ = try await list.element(at: 5)
            Issue.record("no error")
        } catch let error as MultiprocessingError {
            #expect(error.code == .invalidArgument)
        }
        let lock = try await manager.makeLock()
        do {
            try await lock.release()
            Issue.record("no error")
        } catch let error as MultiprocessingError {
            #expect(error.code == .invalidState)
        }
        // The connection and the manager are unharmed.
        #expect(try await counter.add(2) == 2)
        try await manager.shutdown()
    }

    @Test("SIGKILL of the manager while 4 processes are mid-call: every call fails with managerUnavailable within 5 s")
    func managerKilledMidCall() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let counter = try await manager.make(TestCounter.self)
        let gate = try await manager.makeEvent()
        var reports: [Connection] = []
        var children: [ChildProcess] = []
        for _ in 0..<4 {
            let (report, sender) = try makePipe(duplex: false)
            let child = ChildProcess(PendingCaller(counter: counter, gate: gate, report: sender))
            try child.start()
            sender.close()
            reports.append(report)
            children.append(child)
        }
        #expect(try await eventually { try await counter.waitingCalls() == 4 })
        let killed = ContinuousClock.now
        try manager.process?.kill()
        for report in reports {
            #expect(try await report.recv(String.self, timeout: .seconds(5)) == "managerUnavailable")
            #expect(try await report.recv(String.self, timeout: .seconds(5)) == "managerUnavailable")
        }
        let elapsed = ContinuousClock.now - killed
        // Milliseconds on a quiet machine; the bound leaves room for a whole suite loading two CPUs (one such
        // run took 3.x s), and still tells a failure from a hang.
        #expect(elapsed < .seconds(5), "the calls took \(elapsed) to fail")
        for child in children {
            #expect(try await child.join(timeout: .seconds(10)))
            #expect(child.exitCode == 0)
        }
        // Here too: the pending link is gone, and a new call cannot connect.
        await #expect(throws: MultiprocessingError.self) { try await counter.value() }
    }

    @Test("a caller SIGKILLed mid-call holds nothing: its lock is released, its call is dropped, the others go on")
    func callerKilledMidCall() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let counter = try await manager.make(TestCounter.self)
        let gate = try await manager.makeEvent()
        let lock = try await manager.makeLock()
        let doomed = ChildProcess(LockHoldingCaller(counter: counter, gate: gate, lock: lock))
        try doomed.start()
        let others = ChildProcess(CountingChild(counter: counter, tasks: 4, rounds: 25))
        #expect(try await eventually { try await counter.waitingCalls() == 1 })
        #expect(try await lock.isLocked())
        try others.start()
        try doomed.kill()
        #expect(try await doomed.join(timeout: .seconds(10)))
        // The lock comes free when the manager notices the caller left, and says why.
        #expect(try await lock.acquire(timeout: .seconds(5)))
        #expect(try await lock.previousHolderLeft())
        #expect(try await eventually { try await counter.waitingCalls() == 0 })
        #expect(try await others.join(timeout: .seconds(30)))
        #expect(others.exitCode == 0)
        try await gate.set()
        #expect(try await counter.value() == 100)  // the dead caller's call added nothing
        try await manager.shutdown()
    }

    @Test("a wrong authkey is a typed error at connect; an address where nothing listens is managerUnavailable")
    func wrongAuthkey() async throws {
        let manager = try SharedObjectManager(address: .tcp(host: "127.0.0.1", port: 0), authkey: Array("right".utf8))
        defer { try? manager.process?.kill() }
        let box = try await manager.makeBox("x")
        do {
            // Even with a connection to this manager open already.
            _ = try await SharedObjectManager.connect(to: manager.address, authkey: Array("wrong".utf8))
            Issue.record("connected with a wrong key")
        } catch let error as MultiprocessingError {
            #expect(error.code == .authenticationFailed)
        }
        #expect(try await box.get() == "x")  // the wrong key changed nothing
        let remote = try await SharedObjectManager.connect(to: manager.address, authkey: Array("right".utf8))
        #expect(try await remote.makeBox(1).get() == 1)
        try await remote.shutdown()
        #expect(try await manager.process?.join(timeout: .seconds(10)) == true)
        #expect(manager.process?.exitCode == 0)
        do {
            _ = try await SharedObjectManager.connect(to: manager.address, authkey: Array("right".utf8))
            Issue.record("connected to a manager that shut down")
        } catch let error as MultiprocessingError {
            #expect(error.code == .managerUnavailable)
        }
    }

    @Test("a remote manager on 127.0.0.1 is used by a child of another start method that received its handle")
    func remoteManagerOtherStartMethod() async throws {
        let manager = try SharedObjectManager(address: .tcp(host: "127.0.0.1", port: 0), authkey: Array("key".utf8), context: ProcessContext(.spawn))
        defer { try? manager.process?.kill() }
        let dictionary = try await manager.makeDictionary([String: String].self)
        let child = ChildProcess(RemoteUser(manager: manager, dictionary: dictionary), context: ProcessContext(.forkserver))
        child.authkey = Array("another".utf8)  // the handle carries the manager's key
        try child.start()
        #expect(try await child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 0)
        #expect(try await dictionary.snapshot() == ["pid": "\(child.pid ?? -1)", "count": "3"])
        try await manager.shutdown()
    }

    @Test("a manager started by a child ends when that child is killed")
    func managerEndsWithOwner() async throws {
        let (report, sender) = try makePipe()
        let owner = ChildProcess(ManagerOwner(report: sender))
        try owner.start()
        sender.close()
        let manager = try await report.recv(SharedObjectManager.self, timeout: .seconds(30))
        try await manager.ping()
        try owner.kill()
        #expect(try await owner.join(timeout: .seconds(10)))
        let gone = try await eventually(within: .seconds(5)) {
            do {
                try await manager.ping()
                return false
            } catch let error as MultiprocessingError {
                return error.code == .managerUnavailable
            }
        }
        #expect(gone)
    }
}

extension ManagerTests {
    @Test("start awaits the manager; an address in use is the typed error the manager met")
    func startAwaitedAndAddressInUse() async throws {
        let first = try await SharedObjectManager.start(address: .tcp(host: "127.0.0.1", port: 0))
        defer { try? first.process?.kill() }
        let box = try await first.makeBox(1)
        #expect(try await box.add(2) == 3)
        do {
            let second = try await SharedObjectManager.start(address: first.address)
            try? second.process?.kill()
            Issue.record("a second manager listened on \(first.address)")
        } catch let error as MultiprocessingError {
            #expect(error.code == .system)
            #expect(error.errno == EADDRINUSE)
        }
        try await first.shutdown()
        #expect(first.process?.exitCode == 0)
    }
}
