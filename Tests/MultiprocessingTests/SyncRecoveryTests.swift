#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// Recovery from processes that die inside a primitive, with several others waiting.

/// Counts itself in `shared[0]`, waits for a unit (at most 10 s), counts the unit in `shared[1]`
/// and gives it back.
struct SyncTakeAndGiveBack: ProcessTask {
    let semaphore: ProcessSemaphore
    let shared: SyncShared
    func run() throws {
        shared.add(1, at: 0)
        try syncCheck(semaphore.acquire(timeout: .seconds(10)), "a unit within 10 s")
        shared.add(1, at: 1)
        try semaphore.release()
    }
}

/// Counts itself in `shared[0]` holding the condition's lock, then waits (at most 30 s) until killed.
struct SyncWaitUntilKilled: ProcessTask {
    let condition: ProcessCondition
    let shared: SyncShared
    func run() throws {
        try condition.withLock {
            shared.add(1, at: 0)
            _ = try condition.wait(timeout: .seconds(30))
        }
    }
}

@Suite("Sync: recovery with several waiters")
struct SyncRecoveryTests {
    @Test("ProcessSemaphore: a killed holder's unit reaches every waiting process, however many wait",
          arguments: [1, 2, 5])
    func semaphoreRecoveryWithWaitingProcesses(waiters: Int) throws {
        let semaphore = try ProcessSemaphore(1)
        let shared = try SyncShared()
        let holding = try ProcessEvent()
        let holder = try syncStart(SyncHoldUnits(semaphore: semaphore, units: 1, holding: holding, thenExit: false))
        #expect(holding.wait(timeout: .seconds(30)))
        let children = try (0..<waiters).map { _ in
            try syncStart(SyncTakeAndGiveBack(semaphore: semaphore, shared: shared), .forkserver)
        }
        #expect(syncEventually { shared[0] == waiters }, "every waiter started")
        #expect(syncEventually { semaphore.sleepers.pointee.load(ordering: .relaxed) > 0 }, "a waiter sleeps")
        let (_, elapsed) = try syncTimed {
            try syncKill(holder)
            for child in children { try syncExpectEnded(child) }
        }
        #expect(shared[1] == waiters)
        #expect(elapsed < 5, "all \(waiters) waiters served in \(elapsed) s (each waits at most 10 s)")
        #expect(semaphore.value == 1, "the unit came back exactly once")
    }

    @Test("ProcessSemaphore: a killed holder's unit reaches every waiting thread, however many wait",
          arguments: [1, 2, 5])
    func semaphoreRecoveryWithWaitingThreads(waiters: Int) throws {
        let semaphore = try ProcessSemaphore(1)
        let holding = try ProcessEvent()
        let holder = try syncStart(SyncHoldUnits(semaphore: semaphore, units: 1, holding: holding, thenExit: false))
        #expect(holding.wait(timeout: .seconds(30)))
        let threads = (0..<waiters).map { _ in
            SyncThread { () -> Bool in
                guard semaphore.acquire(timeout: .seconds(10)) else { return false }
                try semaphore.release()
                return true
            }
        }
        #expect(syncEventually { semaphore.sleepers.pointee.load(ordering: .relaxed) > 0 }, "a waiter sleeps")
        let start = Deadline.monotonicNow()
        try syncKill(holder)
        for thread in threads { #expect(try thread.join(), "the waiting thread got a unit") }
        let elapsed = Double(Deadline.monotonicNow() - start) / 1e9
        #expect(elapsed < 5, "all \(waiters) waiters served in \(elapsed) s (each waits at most 10 s)")
        #expect(semaphore.value == 1, "the unit came back exactly once")
    }

    @Test("ProcessCondition: 300 waiters killed inside wait and notified leave no slot behind; notify skips dead waiters")
    func killedConditionWaitersLeaveNoSlots() throws {
        let condition = try ProcessCondition(lock: ProcessLock())
        let shared = try SyncShared()
        for batch in 0..<6 {
            let children = try (0..<50).map { _ in
                try syncStart(SyncWaitUntilKilled(condition: condition, shared: shared), .forkserver)
            }
            #expect(syncEventually { shared[0] == (batch + 1) * 50 }, "batch \(batch) waiting")
            // Holding the lock, every counted child is inside wait: kill them all, then notify.
            try syncWithLock(condition) {
                for child in children { try syncKill(child) }
                try condition.notify(50)
            }
        }
        // Dead waiters, not notified, in front of a live one: notify(1) reaches the live one.
        let dead = try (0..<3).map { _ in
            try syncStart(SyncWaitUntilKilled(condition: condition, shared: shared), .forkserver)
        }
        #expect(syncEventually { shared[0] == 303 })
        for child in dead { try syncKill(child) }
        let ready = try ProcessSemaphore(0), done = try ProcessSemaphore(0)
        let live = try syncStart(SyncConditionWaiter(condition: condition, shared: shared, ready: ready, done: done))
        #expect(ready.acquire(timeout: .seconds(30)))
        try syncWithLock(condition) {
            shared[0] = 0
            try condition.notify(1)
        }
        #expect(done.acquire(timeout: .seconds(10)), "the live waiter was notified, not a dead one")
        try syncExpectEnded(live)
        #expect(shared[0] == 1)
        let notified = try syncWithLock(condition) { try condition.wait(timeout: .milliseconds(20)) }
        #expect(!notified, "waiting still works: it times out instead of throwing")
    }

    @Test("ProcessBarrier: a party killed while waiting still counts as arrived; the others pass")
    func deadPartyStillCounts() throws {
        let barrier = try ProcessBarrier(parties: 3)
        let party = try syncStart(SyncBarrierWait(barrier: barrier))
        #expect(syncEventually { barrier.waitingCount == 1 }, "the child waits")
        try syncKill(party)
        let other = SyncThread { try barrier.wait(timeout: .seconds(10)) }
        let mine = try barrier.wait(timeout: .seconds(10))
        let theirs = try other.join()
        #expect(Set([mine, theirs]) == [1, 2], "the dead party kept index 0")
        #expect(!barrier.isBroken)
    }
}
