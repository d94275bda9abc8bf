#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import Multiprocessing

/// In a process of its own (so that only its own threads are counted): `count` tasks await `event`
/// and `count` tasks await `lock` (held by the parent). Once all of them wait, it stores the most
/// threads it counted in `shared[0]` and the pool's thread count in `shared[1]`, sets `counted`,
/// and checks that every wait ends well once the parent sets the event and releases the lock.
struct SyncManyAsyncWaits: ProcessTask {
    let event: ProcessEvent
    let lock: ProcessLock
    let shared: SyncShared
    let counted: ProcessEvent
    let count: Int
    func run() throws {
        let finished = try ProcessSemaphore(0)
        let outcome = SyncShared.Box()
        Task.detached {
            do {
                let served = try await withThrowingTaskGroup(of: Bool.self) { group in
                    for _ in 0..<count {
                        group.addTask { try await event.wait(timeout: .seconds(60)) }
                        group.addTask {
                            guard try await lock.acquire(timeout: .seconds(60)) else { return false }
                            try lock.release()
                            return true
                        }
                    }
                    return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
                }
                outcome.value = served
            } catch {
                outcome.value = -1
            }
            try? finished.release()
        }
        try syncCheck(syncEventually { WaitPool.shared.load.waits == 2 * count }, "all \(2 * count) awaits wait")
        var most = 0
        for _ in 0..<20 {
            most = max(most, try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count)
            usleep(1000)
        }
        shared[0] = most
        shared[1] = WaitPool.shared.load.threads
        counted.set()
        try syncCheck(finished.acquire(timeout: .seconds(60)), "every await ended")
        try syncCheck(outcome.value == 2 * count, "every await succeeded: \(outcome.value)")
    }
}

extension SyncShared {
    /// An integer shared between the threads of one process.
    final class Box: @unchecked Sendable { var value = 0 }
}

@Suite("Sync: async waits on a bounded pool, and cancellation", .ownThread)
struct SyncAsyncTests {
    @Test("2,000 concurrent awaits on an event and a lock are served by a few threads")
    func manyAwaitsFewThreads() throws {
        let event = try ProcessEvent(), lock = try ProcessLock(), shared = try SyncShared()
        let counted = try ProcessEvent()
        #expect(lock.acquire(timeout: .seconds(1)))
        let child = try syncStart(SyncManyAsyncWaits(event: event, lock: lock, shared: shared, counted: counted, count: 1000))
        #expect(counted.wait(timeout: .seconds(60)), "the child counted its threads")
        event.set()
        try lock.release()
        try syncExpectEnded(child)
        #expect(shared[1] <= WaitPool.threadLimit)
        #expect(shared[0] <= 24, "\(shared[0]) threads for 2,000 awaits")
        if getenv("MULTIPROCESSING_TEST_TIMINGS") != nil {
            print("threads while 2,000 awaits waited: \(shared[0]), of them pool threads: \(shared[1])")
        }
    }

    @Test("More tasks than pool threads pass a barrier together, round after round")
    func barrierWithMorePartiesThanThreads() async throws {
        let parties = WaitPool.threadLimit * 2
        let barrier = try ProcessBarrier(parties: parties)
        let indexes = try await withThrowingTaskGroup(of: [Int].self) { group in
            for _ in 0..<parties {
                group.addTask { try await (0..<3).asyncMap { _ in try await barrier.wait(timeout: .seconds(30)) } }
            }
            return try await group.reduce(into: [[Int]]()) { $0.append($1) }
        }
        for round in 0..<3 { #expect(Set(indexes.map { $0[round] }) == Set(0..<parties)) }
    }

    @Test("Cancelling an awaited lock acquire ends it at once; the lock is not taken and stays usable")
    func cancelLockAcquire() async throws {
        let lock = try ProcessLock(), shared = try SyncShared(), holding = try ProcessEvent()
        let holder = try syncStart(SyncHoldLock(lock: lock, rlock: nil, shared: shared, holding: holding, thenExit: false))
        #expect(try await holding.wait(timeout: .seconds(30)))
        _ = await syncCancelMidWait(waiting: {
            lock.ownership.word.pointee.load(ordering: .relaxed) & OwnershipWord.sleepers != 0
        }) { try await lock.acquire(timeout: .seconds(30)) }
        #expect(lock.owner == holder.pid, "still the holder's")
        try syncKill(holder)
        #expect(try await lock.acquire(timeout: .seconds(10)))
        #expect(lock.previousOwnerDied)
        try lock.release()
        #expect(lock.owner == nil)
    }

    @Test("Cancelling an awaited semaphore acquire takes no unit and leaves no hold behind")
    func cancelSemaphoreAcquire() async throws {
        let semaphore = try ProcessSemaphore(1), holding = try ProcessEvent()
        let holder = try syncStart(SyncHoldUnits(semaphore: semaphore, units: 1, holding: holding, thenExit: false))
        #expect(try await holding.wait(timeout: .seconds(30)))
        _ = await syncCancelMidWait(waiting: { semaphore.sleepers.pointee.load(ordering: .relaxed) > 0 }) {
            try await semaphore.acquire(timeout: .seconds(30))
        }
        #expect(semaphore.value == 0)
        try syncKill(holder)
        // Recovery counts what living processes hold: a hold left by the cancelled wait would keep
        // the dead holder's unit from coming back.
        #expect(try await semaphore.acquire(timeout: .seconds(10)), "the dead holder's unit came back")
        #expect(!semaphore.acquire(blocking: false))
        try semaphore.release()
        #expect(semaphore.value == 1)
    }

    @Test("Cancelling an awaited event wait ends it at once; the event still works")
    func cancelEventWait() async throws {
        let event = try ProcessEvent()
        _ = await syncCancelMidWait(waiting: {
            event.word.pointee.load(ordering: .relaxed) & ProcessEvent.sleeping != 0
        }) { try await event.wait(timeout: .seconds(30)) }
        #expect(!event.isSet)
        let setter = try syncStart(SyncSetEventLater(event: event, delayMilliseconds: 0))
        #expect(try await event.wait(timeout: .seconds(10)))
        try syncExpectEnded(setter)
    }

    @Test("Cancelling an awaited condition wait takes the lock back, frees its slot, and the condition still works")
    func cancelConditionWait() async throws {
        let condition = try ProcessCondition(lock: ProcessLock()), shared = try SyncShared()
        _ = await syncCancelMidWait(waiting: { condition.takenSlots == 1 }) {
            try await condition.withLock { try await condition.wait(timeout: .seconds(30)) }
        }
        #expect(condition.takenSlots == 0)
        #expect(condition.acquire(blocking: false), "withLock released the lock the cancelled wait took back")
        try condition.release()
        let ready = try ProcessSemaphore(0), done = try ProcessSemaphore(0)
        let waiter = try syncStart(SyncConditionWaiter(condition: condition, shared: shared, ready: ready, done: done))
        #expect(try await ready.acquire(timeout: .seconds(30)))
        try await condition.withLock { try condition.notify() }
        #expect(try await done.acquire(timeout: .seconds(10)))
        try syncExpectEnded(waiter)
        #expect(shared[0] == 1)
    }

    @Test("Cancelling an awaited barrier wait breaks the barrier like a timeout; after reset it works")
    func cancelBarrierWait() async throws {
        let barrier = try ProcessBarrier(parties: 2)
        _ = await syncCancelMidWait(waiting: { barrier.waitingCount == 1 }) { try await barrier.wait(timeout: .seconds(30)) }
        #expect(barrier.isBroken)
        let late = try syncStart(SyncBarrierWait(barrier: barrier))
        try syncExpectEnded(late, code: 1)
        barrier.reset()
        let party = try syncStart(SyncBarrierWait(barrier: barrier))
        _ = try await barrier.wait(timeout: .seconds(10))
        try syncExpectEnded(party)
    }
}

extension Sequence {
    /// The results of `transform` on each element, one after another.
    fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}

/// Answers every ping with a pong, awaiting each ping.
struct SyncAsyncPong: ProcessTask {
    let ping: ProcessEvent
    let pong: ProcessEvent
    let rounds: Int
    func run() throws {
        let finished = try ProcessSemaphore(0)
        let outcome = SyncShared.Box()
        Task.detached {
            do {
                for _ in 0..<rounds {
                    guard try await ping.wait(timeout: .seconds(30)) else { outcome.value = -1; break }
                    ping.clear()
                    pong.set()
                    outcome.value += 1
                }
            } catch { outcome.value = -2 }
            try? finished.release()
        }
        try syncCheck(finished.acquire(timeout: .seconds(60)), "the pong task ended")
        try syncCheck(outcome.value == rounds, "answered \(outcome.value) of \(rounds) pings")
    }
}

extension SyncAsyncTests {
    @Test("Awaited events ping-pong between two processes")
    func asyncPingPong() async throws {
        let ping = try ProcessEvent(), pong = try ProcessEvent()
        let child = try syncStart(SyncAsyncPong(ping: ping, pong: pong, rounds: 2000))
        for round in 0..<2000 {
            ping.set()
            guard try await pong.wait(timeout: .seconds(10)) else {
                Issue.record("no pong in round \(round)")
                break
            }
            pong.clear()
        }
        try syncExpectEnded(child)
    }
}
