#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// Waits on the condition (after saying so through `ready`, holding the lock), then counts itself in
/// `shared[0]` when notified and gives `done` a unit.
struct SyncConditionWaiter: ProcessTask {
    let condition: ProcessCondition
    let shared: SyncShared
    let ready: ProcessSemaphore
    let done: ProcessSemaphore
    func run() throws {
        try condition.withLock {
            try ready.release()
            try syncCheck(condition.wait(timeout: .seconds(30)), "notified")
            shared[0] += 1
        }
        try done.release()
    }
}

/// Produces 1...count into a 4-slot buffer in `shared` (count at 0, next write at 1, slots from 8).
struct SyncProducer: ProcessTask {
    let condition: ProcessCondition
    let shared: SyncShared
    let count: Int
    func run() throws {
        for item in 1...count {
            try condition.withLock {
                try syncCheck(condition.wait(until: { shared[0] < 4 }, timeout: .seconds(30)), "room in the buffer")
                shared[8 + shared[1] % 4] = item
                shared[1] += 1
                shared[0] += 1
                try condition.notifyAll()
            }
        }
    }
}

/// Takes the condition's lock, sets `shared[0]` to 1 and notifies.
struct SyncNotifier: ProcessTask {
    let condition: ProcessCondition
    let shared: SyncShared
    func run() throws {
        try syncCheck(condition.acquire(timeout: .seconds(10)), "acquire the condition's lock")
        shared[0] = 1
        try condition.notify()
        try condition.release()
    }
}

@Suite("Sync: ProcessCondition")
struct SyncConditionTests {
    @Test("ProcessCondition: waiting and notifying need the lock; timeouts return false")
    func conditionBasics() throws {
        for condition in [try ProcessCondition(), try ProcessCondition(lock: ProcessLock())] {
            let waitError = #expect(throws: MultiprocessingError.self) { try condition.wait(timeout: .zero) }
            #expect(waitError?.code == .invalidState)
            #expect(throws: MultiprocessingError.self) { try condition.notify() }
            #expect(throws: MultiprocessingError.self) { try condition.notifyAll() }
            try condition.withLock {
                #expect(try !condition.wait(timeout: .zero))
                let (notified, elapsed) = try syncTimed { try condition.wait(timeout: .milliseconds(100)) }
                #expect(!notified)
                syncWaitedAbout(elapsed, 0.1)
                let (satisfied, predicateElapsed) = try syncTimed {
                    try condition.wait(until: { false }, timeout: .milliseconds(100))
                }
                #expect(!satisfied)
                syncWaitedAbout(predicateElapsed, 0.1)
                #expect(try condition.wait(until: { true }, timeout: .zero))
                try condition.notify(3)  // nobody waits: no permit is left behind
                try condition.notifyAll()
                #expect(try !condition.wait(timeout: .milliseconds(50)))
            }
        }
    }

    @Test("ProcessCondition: notify(n) wakes exactly n waiting processes, oldest first; notifyAll the rest")
    func notifyCounts() throws {
        let condition = try ProcessCondition()
        let shared = try SyncShared()
        let ready = try ProcessSemaphore(0), done = try ProcessSemaphore(0)
        let children = try (0..<3).map { _ in
            try syncStart(SyncConditionWaiter(condition: condition, shared: shared, ready: ready, done: done), .forkserver)
        }
        for _ in 0..<3 { #expect(ready.acquire(timeout: .seconds(30))) }
        try syncWithLock(condition) { try condition.notify(2) }
        for _ in 0..<2 { #expect(done.acquire(timeout: .seconds(10))) }
        #expect(!done.acquire(timeout: .milliseconds(200)), "the third is still waiting")
        #expect(try syncWithLock(condition) { shared[0] } == 2)
        try syncWithLock(condition) { try condition.notifyAll() }
        #expect(done.acquire(timeout: .seconds(10)))
        for child in children { try syncExpectEnded(child) }
        #expect(shared[0] == 3)
    }

    @Test("ProcessCondition: producer and consumer in two processes through a bounded buffer", arguments: StartMethod.allCases)
    func producerConsumer(method: StartMethod) throws {
        let condition = try ProcessCondition()
        let shared = try SyncShared()
        let count = 300
        let producer = try syncStart(SyncProducer(condition: condition, shared: shared, count: count), method)
        var received: [Int] = []
        for _ in 1...count {
            try syncWithLock(condition) {
                #expect(try condition.wait(until: { shared[0] > 0 }, timeout: .seconds(30)))
                received.append(shared[8 + (shared[1] - shared[0]) % 4])
                shared[0] -= 1
                try condition.notifyAll()
            }
        }
        try syncExpectEnded(producer)
        #expect(received == Array(1...count))
    }

    @Test("ProcessCondition: waiting releases a ProcessRLock held twice, and takes it back at the same level")
    func waitReleasesRLockCompletely() throws {
        let rlock = try ProcessRLock()
        let condition = try ProcessCondition(lock: rlock)
        let shared = try SyncShared()
        rlock.acquire()
        rlock.acquire()
        let notifier = try syncStart(SyncNotifier(condition: condition, shared: shared))
        #expect(try condition.wait(until: { shared[0] == 1 }, timeout: .seconds(30)))
        #expect(rlock.recursionLevel == 2)
        try rlock.release()
        try rlock.release()
        #expect(rlock.owner == nil)
        try syncExpectEnded(notifier)
    }

    @Test("ProcessCondition: a waiter takes the lock over from a process killed while holding it")
    func killedLockHolder() throws {
        let lock = try ProcessLock()
        let condition = try ProcessCondition(lock: lock)
        let shared = try SyncShared()
        let holding = try ProcessEvent()
        lock.acquire()
        let holder = try syncStart(SyncHoldLock(lock: lock, rlock: nil, shared: shared, holding: holding, thenExit: false))
        // The wait releases the lock, the child takes it and is killed holding it; when the wait ends
        // it takes the lock back from the dead child.
        let waiter = SyncThread { try condition.wait(timeout: .seconds(1)) }
        #expect(holding.wait(timeout: .seconds(30)))
        try syncKill(holder)
        #expect(try !waiter.join())
        #expect(lock.owner == getpid())
        #expect(condition.previousOwnerDied)
        try condition.release()
        #expect(condition.acquire(timeout: .seconds(5)))
        #expect(!condition.previousOwnerDied)
        try condition.release()
    }

    @Test("ProcessCondition: async wait over a ProcessLock; a ProcessRLock condition refuses async forms", .ownThread)
    func conditionAsync() async throws {
        let condition = try ProcessCondition(lock: ProcessLock())
        let shared = try SyncShared()
        #expect(try await condition.acquire())
        let notifier = try syncStart(SyncNotifier(condition: condition, shared: shared))
        #expect(try await condition.wait(until: { shared[0] == 1 }, timeout: .seconds(30)))
        let (notified, elapsed) = try await syncTimed { try await condition.wait(timeout: .milliseconds(100)) }
        #expect(!notified)
        syncWaitedAbout(elapsed, 0.1, async: true)
        try condition.release()
        try syncExpectEnded(notifier)
        let value = try await condition.withLock { () async -> Int in 5 }
        #expect(value == 5)
        let reentrant = try ProcessCondition()
        let error = await #expect(throws: MultiprocessingError.self) { try await reentrant.wait(timeout: .zero) }
        #expect(error?.code == .unsupported)
    }
}
