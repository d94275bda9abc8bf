#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// Task types used by the tests. They live at file scope so that a spawned child can find them.

/// Adds 1 to `shared[0]` `times` times, each under the lock.
struct SyncCountUnderLock: ProcessTask {
    let lock: ProcessLock
    let shared: SyncShared
    let times: Int
    func run() throws {
        for _ in 0..<times { try syncWithLock(lock) { shared[0] += 1 } }
    }
}

/// Takes the lock (a ProcessLock or a ProcessRLock, twice for a ProcessRLock), marks `shared[0]` dirty as if halfway through
/// an update, says so through `holding`, then blocks or ends without releasing.
struct SyncHoldLock: ProcessTask {
    let lock: ProcessLock?
    let rlock: ProcessRLock?
    let shared: SyncShared
    let holding: ProcessEvent
    let thenExit: Bool
    func run() throws {
        try syncCheck(lock?.acquire(timeout: .seconds(10)) ?? true, "acquire ProcessLock")
        try syncCheck(rlock.map { $0.acquire(timeout: .seconds(10)) && $0.acquire() } ?? true, "acquire ProcessRLock")
        shared[0] = 1
        holding.set()
        if thenExit { return }
        while true { pause() }
    }
}

/// Acquires a lock whose holder died, checks that it is told so, repairs `shared`, and checks that
/// the next holder is not told again.
struct SyncRecoverLock: ProcessTask {
    let lock: ProcessLock
    let shared: SyncShared
    func run() throws {
        try syncCheck(lock.acquire(timeout: .seconds(10)), "acquire after the holder died")
        try syncCheck(lock.previousOwnerDied, "told that the previous owner died")
        try syncCheck(shared[0] == 1, "sees the dirty mark")
        shared[0] = 0
        shared[1] = 1
        try lock.release()
        try syncCheck(!lock.previousOwnerDied, "flag cleared by release")
        try lock.withLock { try syncCheck(!lock.previousOwnerDied, "next holder not told") }
    }
}

/// Releases a lock another process holds (allowed for a ProcessLock, as in Python).
struct SyncReleaseForeignLock: ProcessTask {
    let lock: ProcessLock
    func run() throws {
        try syncCheck(lock.owner == getppid(), "the parent holds the lock")
        try syncCheck(!lock.acquire(blocking: false), "non-blocking acquire fails")
        try lock.release()
    }
}

/// Checks from another process that it can neither take nor release a ProcessRLock the parent holds.
struct SyncProbeRLock: ProcessTask {
    let rlock: ProcessRLock
    func run() throws {
        try syncCheck(!rlock.acquire(timeout: .milliseconds(100)), "acquire fails while the parent holds it")
        do {
            try rlock.release()
            try syncCheck(false, "release by a non-owner must throw")
        } catch let error as MultiprocessingError where error.code == .invalidState {}
    }
}

/// Starts a grandchild that increments the counter under the lock, then does so itself.
struct SyncLockToGrandchild: ProcessTask {
    let lock: ProcessLock
    let shared: SyncShared
    let done: ProcessEvent
    func run() throws {
        let grandchild = ChildProcess(SyncCountUnderLock(lock: lock, shared: shared, times: 100))
        try grandchild.start()
        try SyncCountUnderLock(lock: lock, shared: shared, times: 100).run()
        try syncCheck(try grandchild.join(timeout: .seconds(30)) && grandchild.exitCode == 0, "grandchild succeeded")
        done.set()
    }
}

@Suite("Sync: ProcessLock and ProcessRLock")
struct SyncLockTests {
    @Test("ProcessLock: acquire, non-blocking and timed acquire, release errors, withLock, owner")
    func lockBasics() throws {
        let lock = try ProcessLock()
        #expect(lock.owner == nil)
        #expect(lock.description == "ProcessLock(unlocked)")
        #expect(lock.acquire())
        #expect(lock.owner == getpid())
        #expect(!lock.previousOwnerDied)
        #expect(!lock.acquire(blocking: false))
        #expect(!lock.acquire(blocking: false, timeout: .seconds(5)), "the timeout is ignored when not blocking")
        let (acquired, elapsed) = syncTimed { lock.acquire(timeout: .milliseconds(200)) }
        #expect(!acquired)
        syncWaitedAbout(elapsed, 0.2)
        #expect(!lock.acquire(timeout: .zero))
        try lock.release()
        let error = #expect(throws: MultiprocessingError.self) { try lock.release() }
        #expect(error?.code == .invalidState)
        #expect(lock.withLock { lock.owner } == getpid())
        #expect(lock.owner == nil)
        #expect(throws: MultiprocessingError.self) {
            try lock.withLock { throw MultiprocessingError(.invalidArgument, "from the body") }
        }
        #expect(lock.acquire(blocking: false), "withLock released after the body threw")
        try lock.release()
    }

    @Test("ProcessLock: two processes increment a shared counter to exactly the expected total", arguments: StartMethod.allCases)
    func lockedCounter(method: StartMethod) throws {
        let lock = try ProcessLock()
        let shared = try SyncShared()
        let children = try (0..<2).map { _ in try syncStart(SyncCountUnderLock(lock: lock, shared: shared, times: 20_000), method) }
        try SyncCountUnderLock(lock: lock, shared: shared, times: 20_000).run()
        for child in children { try syncExpectEnded(child) }
        #expect(shared[0] == 60_000)
        #expect(lock.owner == nil)
    }

    @Test("ProcessLock: handed to a child and on to a grandchild")
    func lockToGrandchild() throws {
        let lock = try ProcessLock()
        let shared = try SyncShared()
        let done = try ProcessEvent()
        let child = try syncStart(SyncLockToGrandchild(lock: lock, shared: shared, done: done))
        #expect(done.wait(timeout: .seconds(30)))
        try syncExpectEnded(child)
        #expect(shared[0] == 200)
    }

    @Test("ProcessLock: any process may release a held lock, as in Python")
    func lockReleasedByAnotherProcess() throws {
        let lock = try ProcessLock()
        lock.acquire()
        try syncExpectEnded(try syncStart(SyncReleaseForeignLock(lock: lock)))
        #expect(lock.owner == nil)
        #expect(lock.acquire(blocking: false))
        try lock.release()
    }

    @Test("ProcessLock: kill -9 of the holder mid-critical-section; another process recovers cleanly",
          arguments: StartMethod.allCases)
    func killedHolderRecoveredByAnotherProcess(method: StartMethod) throws {
        let lock = try ProcessLock()
        let shared = try SyncShared()
        let holding = try ProcessEvent()
        let holder = try syncStart(SyncHoldLock(lock: lock, rlock: nil, shared: shared, holding: holding, thenExit: false), method)
        #expect(holding.wait(timeout: .seconds(30)))
        #expect(lock.owner == holder.pid)
        // A live holder is never taken over: the timed acquire fails after its timeout.
        let (acquired, elapsed) = syncTimed { lock.acquire(timeout: .milliseconds(300)) }
        #expect(!acquired)
        syncWaitedAbout(elapsed, 0.3)
        try syncKill(holder)
        try syncExpectEnded(try syncStart(SyncRecoverLock(lock: lock, shared: shared), method))
        #expect(shared[0] == 0 && shared[1] == 1, "the recovering process repaired the state")
        #expect(lock.acquire(timeout: .seconds(5)))
        #expect(!lock.previousOwnerDied)
        try lock.release()
    }

    @Test("ProcessLock: the parent takes over from a killed holder quickly, and from one that exited holding it")
    func killedOrExitedHolderRecoveredByParent() throws {
        for thenExit in [false, true] {
            let lock = try ProcessLock()
            let shared = try SyncShared()
            let holding = try ProcessEvent()
            let holder = try syncStart(SyncHoldLock(lock: lock, rlock: nil, shared: shared, holding: holding, thenExit: thenExit))
            #expect(holding.wait(timeout: .seconds(30)))
            if thenExit { try syncExpectEnded(holder) } else { try syncKill(holder) }
            let (acquired, elapsed) = syncTimed { lock.acquire(timeout: .seconds(10)) }
            #expect(acquired)
            #expect(elapsed < 2, "took over after \(elapsed) s")
            #expect(lock.previousOwnerDied)
            #expect(lock.owner == getpid())
            try lock.release()
            #expect(!lock.previousOwnerDied)
        }
    }

    @Test("ProcessLock: async acquire and withLock", .ownThread)
    func lockAsync() async throws {
        let lock = try ProcessLock()
        #expect(try await lock.acquire())
        #expect(try await !lock.acquire(blocking: false))
        let (acquired, elapsed) = try await syncTimed { try await lock.acquire(timeout: .milliseconds(200)) }
        #expect(!acquired)
        syncWaitedAbout(elapsed, 0.2, async: true)
        async let waiter = lock.acquire(timeout: .seconds(10))
        try await Task.sleep(for: .milliseconds(20))
        try lock.release()
        #expect(try await waiter, "a waiting async acquire gets the lock on release")
        try lock.release()
        let value = try await lock.withLock { () async throws -> Int in
            try await Task.sleep(for: .milliseconds(1))
            return 7
        }
        #expect(value == 7)
        #expect(lock.owner == nil)
    }

    @Test("ProcessRLock: recursion, owner thread only, errors")
    func rlockBasics() throws {
        let rlock = try ProcessRLock()
        #expect(rlock.description == "ProcessRLock(unlocked)")
        #expect(rlock.acquire())
        #expect(rlock.acquire(blocking: false))
        #expect(rlock.acquire(timeout: .zero))
        #expect(rlock.recursionLevel == 3)
        #expect(rlock.description == "ProcessRLock(owner: \(getpid()), level: 3)")
        // Another thread of this process can neither take nor release it.
        let (otherAcquired, otherReleaseError) = try SyncThread {
            let acquired = rlock.acquire(timeout: .milliseconds(50))
            let error = (try? rlock.release()) == nil
            return (acquired, error)
        }.join()
        #expect(!otherAcquired)
        #expect(otherReleaseError)
        try rlock.release()
        try rlock.release()
        #expect(rlock.owner == getpid())
        try rlock.release()
        #expect(rlock.owner == nil)
        let error = #expect(throws: MultiprocessingError.self) { try rlock.release() }
        #expect(error?.code == .invalidState)
        #expect(rlock.withLock { rlock.withLock { rlock.recursionLevel } } == 2)
        #expect(rlock.recursionLevel == 0)
    }

    @Test("ProcessRLock: another process can neither take nor release it", arguments: [StartMethod.spawn, .fork])
    func rlockAcrossProcesses(method: StartMethod) throws {
        let rlock = try ProcessRLock()
        rlock.acquire()
        try syncExpectEnded(try syncStart(SyncProbeRLock(rlock: rlock), method))
        try rlock.release()
        #expect(rlock.owner == nil)
    }

    @Test("ProcessRLock: kill -9 of a holder that held it twice; the next acquirer gets level 1 and the signal")
    func rlockKilledHolder() throws {
        let rlock = try ProcessRLock()
        let shared = try SyncShared()
        let holding = try ProcessEvent()
        let holder = try syncStart(SyncHoldLock(lock: nil, rlock: rlock, shared: shared, holding: holding, thenExit: false))
        #expect(holding.wait(timeout: .seconds(30)))
        #expect(rlock.owner == holder.pid)
        #expect(!rlock.acquire(timeout: .milliseconds(100)))
        try syncKill(holder)
        #expect(rlock.acquire(timeout: .seconds(10)))
        #expect(rlock.previousOwnerDied)
        #expect(rlock.recursionLevel == 1)
        #expect(rlock.acquire())
        try rlock.release()
        #expect(rlock.previousOwnerDied, "still told until released completely")
        try rlock.release()
        #expect(rlock.owner == nil)
        #expect(rlock.acquire(blocking: false))
        #expect(!rlock.previousOwnerDied)
        try rlock.release()
    }
}
