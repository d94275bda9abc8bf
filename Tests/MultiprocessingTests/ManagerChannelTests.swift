#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Distributed
import Synchronization
import Testing
@testable import Multiprocessing

/// Posted, in a manager's process, to end a ``ChannelTestStaller`` stall.
nonisolated(unsafe) private let stallRelease: UnsafeMutablePointer<sem_t> = {
    let semaphore = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    sem_init(semaphore, 0, 0)
    return semaphore
}()

/// A shared object whose method holds the thread that runs it: in a manager, the thread reading the
/// caller's connection, which then reads nothing more from that caller until the stall ends.
distributed actor ChannelTestStaller: SharedObject {
    /// Holds the thread until ``ChannelTestReleaser/release()`` or `milliseconds` pass; returns
    /// whether it was released.
    distributed func stall(milliseconds: Int) -> Bool {
        var limit = timespec()
        clock_gettime(CLOCK_REALTIME, &limit)
        let nanoseconds = limit.tv_nsec + milliseconds % 1000 * 1_000_000
        limit.tv_sec += milliseconds / 1000 + nanoseconds / 1_000_000_000
        limit.tv_nsec = nanoseconds % 1_000_000_000
        while sem_timedwait(stallRelease, &limit) != 0 {
            if errno != EINTR { return false }
        }
        return true
    }
}

/// Ends a ``ChannelTestStaller`` stall in the same manager.
distributed actor ChannelTestReleaser: SharedObject {
    distributed func release() { sem_post(stallRelease) }
}

/// A child that stalls the manager's reading of its connection, then starts a request several times
/// larger than the channel's ring, which waits for room while the child's other tasks go on: it reports
/// "full" from a task on its one thread once the ring is full, and "done" once the request went through
/// after the test released the stall. A test may kill it after "full", with its request partly in the ring.
struct LargeRequestAwaiter: AsyncProcessTask {
    let staller: ChannelTestStaller
    let dictionary: SharedDictionary<Int, String>
    let report: Connection

    func run() async throws {
        _ = try await staller.stall(milliseconds: 0)
        let link = try ManagerActorSystem.shared.link(to: staller.id.manager)
        guard link.usesChannel else { return try await report.send("no channel") }
        // Sent before the large request, so the manager is stalled before it reads any of it.
        let stalled = Task.immediate { try await staller.stall(milliseconds: 60_000) }
        while link.pendingCalls == 0 { await Task.yield() }
        var entries: [Int: String] = [:]
        for key in 0..<1000 { entries[key] = String(repeating: "v", count: 4000) }
        let update = Task { [entries] in try await dictionary.update(entries) }
        // This runs on the child's one thread: it could not while a writer held that thread.
        let deadline = ContinuousClock.now + .seconds(20)
        while link.unreadRequestBytes < ManagerChannel.ringSize && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(1))
        }
        try await report.send(link.unreadRequestBytes < ManagerChannel.ringSize ? "never full" : "full")
        try await update.value
        _ = try await stalled.value
        try await report.send(try await dictionary.count() == 1000 ? "done" : "lost entries")
    }
}

/// A child that makes its link to the manager, then forks: it and its fork child each add 1 to
/// `counter` `rounds` times at the same time, and it reports what each saw.
struct ForkingCaller: AsyncProcessTask {
    let counter: TestCounter
    let rounds: Int
    let report: Connection

    func run() async throws {
        _ = try await counter.add(0)
        let (results, resultWriter) = try makePipe(duplex: false)
        let pid = mp_fork(nil, 0)
        if pid == 0 {
            // The fork child: a link inherited and used would hang it; the alarm ends it then.
            alarm(30)
            results.close()
            let seen = (try? await addAll()) ?? []
            try? sendNow(seen, on: resultWriter)
            _exit(seen.count == rounds ? 0 : 1)
        }
        resultWriter.close()
        guard pid > 0 else { throw MultiprocessingError.system("fork") }
        let mine = try await addAll()
        let theirs = (try? receiveNow([Int].self, from: results, timeout: .seconds(40))) ?? []
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
        try await report.send([mine, theirs])
    }

    private func addAll() async throws -> [Int] {
        var seen: [Int] = []
        for _ in 0..<rounds { seen.append(try await counter.add(1)) }
        return seen
    }
}

/// A child whose tasks make large calls all at once: requests and replies several times larger than the
/// channel's ring, more of them than the threads that run its tasks (in a child, one). It reports a
/// failure unless the snapshot after them holds all `expected` entries.
struct ConcurrentLargeCaller: AsyncProcessTask {
    let dictionary: SharedDictionary<Int, String>
    let expected: Int
    let report: Connection

    func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for round in 0..<4 {
                group.addTask {
                    var entries: [Int: String] = [:]
                    for key in 0..<250 { entries[round * 1000 + key] = String(repeating: "u", count: 4000) }
                    try await dictionary.update(entries)
                }
                group.addTask { _ = try await dictionary.snapshot() }
            }
            try await group.waitForAll()
        }
        let count = try await dictionary.snapshot().count
        try await report.send(count == expected ? [] : ["the snapshot holds \(count) entries, not \(expected)"])
    }
}

/// Starts the task `make` builds around a report connection in a child, and returns the failures it
/// reports (empty when all went as expected).
private func runInChild(_ make: (Connection) -> some AsyncProcessTask) async throws -> [String] {
    let (report, sender) = try makePipe(duplex: false)
    let child = ChildProcess(make(sender))
    try child.start()
    defer { try? child.kill() }
    sender.close()
    let failures: [String]
    do { failures = try await report.recv([String].self, timeout: .seconds(90)) } catch {
        failures = ["no report from the child: \(error)"]
    }
    #expect(try await child.join(timeout: .seconds(20)))
    #expect(child.exitCode == 0)
    return failures
}

/// Large values both ways beside 200 small calls; reports what went wrong.
struct LargeValuesCaller: AsyncProcessTask {
    let dictionary: SharedDictionary<Int, String>
    let counter: TestCounter
    let report: Connection

    func run() async throws {
        var failures: [String] = []
        let entries = Dictionary(uniqueKeysWithValues: (0..<3000).map { key in
            (key, String(repeating: Character(Unicode.Scalar(UInt8(65 + key % 26))), count: 2000) + "\(key)")
        })
        if try !ManagerActorSystem.shared.link(to: dictionary.id.manager).usesChannel { failures.append("no channel") }
        let large = try await withThrowingTaskGroup(of: [String].self) { group in
            group.addTask {
                for _ in 0..<200 { _ = try await counter.add(1) }
                return []
            }
            group.addTask {
                var wrong: [String] = []
                try await dictionary.update(entries)
                if try await dictionary.snapshot() != entries { wrong.append("the snapshot differs from the update") }
                let one = String(repeating: "x", count: 5 << 20)
                try await dictionary.setValue(one, forKey: -1)
                if try await dictionary.value(forKey: -1) != one { wrong.append("the 5 MiB string came back changed") }
                return wrong
            }
            return try await group.reduce([], +)
        }
        try await report.send(failures + large)
    }
}

/// A client that attaches a channel to a server of this process, sends more pings than the replies'
/// ring holds and reads nothing; the server's reply writer then waits for room. Reports whether the
/// server's shutdown still ends.
struct ShutdownWithFullRing: AsyncProcessTask {
    let report: Connection

    func run() async throws {
        var failures: [String] = []
        let server = try ManagerServer()
        let serving = Task { try await server.run() }
        // The client runs on another thread: this child's tasks, the server's accepting one among them,
        // run on its main thread.
        let address = server.address
        let (receiver, sender, attached) = try await withBlockingThread {
            let connection = try Connection(connectingTo: address, authkey: currentProcess().authkey, timeout: .seconds(60))
            let receiver = ManagerReceiver(connection)
            let sender = ManagerSender(try Connection(adopting: try Syscall.duplicate(try connection.fileno), readable: false, writable: true))
            let channel = try ManagerLink.attachChannel(reader: receiver, writer: sender, timeout: .seconds(60))
            // More replies than the ring holds: the server's reply writer waits for room, holding its lock.
            let replyRoom = ManagerChannel.ringSize / 13  // a ping's reply takes 13 bytes
            if channel != nil {
                for id in 1...(replyRoom + 1000) { try sender.send(ManagerRequest(id: UInt64(id), kind: .ping).write) }
            }
            return (receiver, sender, channel)
        }
        guard let channel = attached else { return try await report.send(["no channel"]) }
        let replies = channel.ring(writtenBy: .server)
        if await !eventually(within: .seconds(60), { replies.unreadBytes > ManagerChannel.ringSize - 13 }) {
            failures.append("the replies' ring never filled")
        }
        let stopped = Mutex(false)
        let stopping = Task {
            try await withBlockingThread {
                server.shutdown()
                stopped.withLock { $0 = true }
            }
        }
        if await eventually(within: .seconds(30), { stopped.withLock { $0 } }) {
            try await stopping.value
            try await serving.value
        } else {
            failures.append("shutdown waited for the reply")
        }
        withExtendedLifetime((receiver, sender)) {}
        try await report.send(failures)
    }
}

/// Sends `value` without the event loop: a forked child has none.
private func sendNow<T: Encodable>(_ value: T, on connection: Connection) throws { try connection.send(value) }

/// Receives a value on the calling thread, blocking it.
private func receiveNow<T: Decodable>(_ type: T.Type, from connection: Connection, timeout: Duration) throws -> T {
    try connection.recv(type, timeout: timeout)
}

@Suite("Manager channel", .ownThread, .timeLimit(.minutes(2)))
struct ManagerChannelTests {
    @Test("a manager on a Unix socket address is reached through shared memory; one on TCP over the socket alone")
    func channelOnUnixOnly() async throws {
        let local = try SharedObjectManager()
        defer { try? local.process?.kill() }
        let remote = try SharedObjectManager(address: .tcp(host: "127.0.0.1", port: 0))
        defer { try? remote.process?.kill() }
        let near = try await local.make(TestCounter.self)
        let far = try await remote.make(TestCounter.self)
        #expect(try await near.add(2) == 2)
        #expect(try await far.add(3) == 3)
        #expect(try ManagerActorSystem.shared.link(to: near.id.manager).usesChannel)
        #expect(try !ManagerActorSystem.shared.link(to: far.id.manager).usesChannel)
        try await local.shutdown()
        try await remote.shutdown()
    }

    @Test("values many times larger than the ring go both ways exactly, one at a time and beside small calls")
    func valuesLargerThanTheRing() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let dictionary = try await manager.makeDictionary([Int: String].self)
        let counter = try await manager.make(TestCounter.self)
        // The calls run in a child: they hold the thread that makes them while they stream through the
        // ring, which in this process would hold up the other tests' tasks.
        let failures = try await runInChild { LargeValuesCaller(dictionary: dictionary, counter: counter, report: $0) }
        #expect(failures == [])
        #expect(try await counter.value() == 200)
        try await manager.shutdown()
    }

    @Test("large requests and replies from many tasks at once, more than the threads running them: all complete")
    func concurrentLargeCalls() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let dictionary = try await manager.makeDictionary([Int: String].self)
        var entries: [Int: String] = [:]
        for key in 0..<1000 { entries[-1 - key] = String(repeating: "s", count: 3000) }
        try await dictionary.update(entries)
        #expect(try await runInChild { ConcurrentLargeCaller(dictionary: dictionary, expected: 2000, report: $0) } == [])
        try await manager.shutdown()
    }

    @Test("a caller SIGKILLed while its large request is partly in the ring: the manager drops it and serves the others on")
    func callerKilledMidRequest() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let staller = try await manager.make(ChannelTestStaller.self)
        let releaser = try await manager.make(ChannelTestReleaser.self)
        let counter = try await manager.make(TestCounter.self)
        let dictionary = try await manager.makeDictionary([Int: String].self)
        let (report, sender) = try makePipe(duplex: false)
        let writer = ChildProcess(LargeRequestAwaiter(staller: staller, dictionary: dictionary, report: sender))
        try writer.start()
        defer { try? writer.kill() }
        sender.close()
        #expect(try await report.recv(String.self, timeout: .seconds(60)) == "full")
        try writer.kill()
        #expect(try await writer.join(timeout: .seconds(20)))
        // The manager reads the rest only now: a request cut in the middle, then the end of the stream.
        let others = ChildProcess(CountingChild(counter: counter, tasks: 4, rounds: 25))
        try others.start()
        try await releaser.release()
        #expect(try await others.join(timeout: .seconds(60)))
        #expect(others.exitCode == 0)
        #expect(try await counter.value() == 100)
        #expect(try await dictionary.snapshot().isEmpty)  // the cut request did nothing
        #expect(try await staller.stall(milliseconds: 0) == false)  // its object is free again
        try await manager.shutdown()
        #expect(manager.process?.exitCode == 0)
    }

    @Test("an awaited call whose large request waits for room in the ring holds no thread: the caller's other tasks go on")
    func largeRequestHoldsNoThread() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let staller = try await manager.make(ChannelTestStaller.self)
        let releaser = try await manager.make(ChannelTestReleaser.self)
        let dictionary = try await manager.makeDictionary([Int: String].self)
        let (report, sender) = try makePipe(duplex: false)
        let child = ChildProcess(LargeRequestAwaiter(staller: staller, dictionary: dictionary, report: sender))
        try child.start()
        defer { try? child.kill() }
        sender.close()
        #expect(try await report.recv(String.self, timeout: .seconds(60)) == "full")
        try await releaser.release()
        #expect(try await report.recv(String.self, timeout: .seconds(60)) == "done")
        #expect(try await child.join(timeout: .seconds(20)))
        #expect(child.exitCode == 0)
        try await manager.shutdown()
    }

    @Test("a client stopped while a large reply to it waits for room holds none of the manager's threads: other clients' calls go on")
    func stalledClientHoldsNoManagerThread() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let counter = try await manager.make(TestCounter.self)
        let gate = try await manager.makeEvent()
        let (report, sender) = try makePipe(duplex: false)
        let stalled = ChildProcess(LargeReplyReader(counter: counter, gate: gate, bytes: 4 << 20, report: sender))
        try stalled.start()
        defer { try? stalled.kill() }
        sender.close()
        #expect(try await eventually { try await counter.waitingCalls() == 1 })
        Glibc.kill(stalled.pid ?? 0, SIGSTOP)
        // The call resumes on a thread of the manager, whose 4 MiB reply fills the stopped client's ring.
        try await gate.set()
        let added = try await withThrowingTaskGroup(of: Int?.self) { group in
            group.addTask { try await counter.add(1) }
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                return nil
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
        #expect(added == 1, "another client's call did not run while a reply waited for the stopped client")
        Glibc.kill(stalled.pid ?? 0, SIGCONT)
        #expect(try await report.recv(Int.self, timeout: .seconds(60)) == 4 << 20)
        #expect(try await stalled.join(timeout: .seconds(20)))
        #expect(stalled.exitCode == 0)
        try await manager.shutdown()
    }

    @Test("a process forked from one that holds a link makes its own: both call one object at once, with exact results")
    func forkChildMakesItsOwnLink() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let counter = try await manager.make(TestCounter.self)
        let (report, sender) = try makePipe(duplex: false)
        let rounds = 500
        let child = ChildProcess(ForkingCaller(counter: counter, rounds: rounds, report: sender))
        try child.start()
        defer { try? child.kill() }
        sender.close()
        let seen = try await report.recv([[Int]].self, timeout: .seconds(60))
        #expect(try await child.join(timeout: .seconds(10)))
        #expect(child.exitCode == 0)
        #expect(seen.count == 2 && seen.allSatisfy { $0.count == rounds })
        for values in seen { #expect(zip(values, values.dropFirst()).allSatisfy { $0 < $1 }) }
        #expect(seen.joined().sorted() == Array(1...(2 * rounds)))
        #expect(try await counter.value() == 2 * rounds)
        try await manager.shutdown()
    }

    @Test("a server shuts down while a reply waits for room in the channel of a client that reads nothing")
    func shutdownWhileAReplyWaitsForRoom() async throws {
        // In a child, whose server and client are its own: its threads wait for the ring by design.
        #expect(try await runInChild { ShutdownWithFullRing(report: $0) } == [])
    }
}

/// A child that waits in a call returning `bytes` bytes, then reports how many it got.
struct LargeReplyReader: AsyncProcessTask {
    let counter: TestCounter
    let gate: SharedEvent
    let bytes: Int
    let report: Connection

    func run() async throws {
        try await report.send(try await counter.largeAfterRelease(gate, bytes: bytes).count)
    }
}
