#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// A barrier action: counts the passes in `shared[0]`.
struct SyncCountPass: ProcessTask {
    let shared: SyncShared
    func run() throws { shared.add(1, at: 0) }
}

/// A barrier action that fails.
struct SyncFailingAction: ProcessTask {
    func run() throws { throw MultiprocessingError(.invalidArgument, "the action failed") }
}

/// Passes the barrier `passes` times as party `party`, recording each index at `shared[1 + pass * 8 + party]`
/// and checking that the action of the pass ran before anyone was released.
struct SyncBarrierParty: ProcessTask {
    let barrier: ProcessBarrier
    let shared: SyncShared
    let party: Int
    let passes: Int
    func run() throws {
        for pass in 0..<passes {
            let index = try barrier.wait(timeout: .seconds(30))
            shared[1 + pass * 8 + party] = index
            try syncCheck(shared.add(0, at: 0) >= pass + 1, "the action ran before the release")
        }
    }
}

/// Waits once at the barrier.
struct SyncBarrierWait: ProcessTask {
    let barrier: ProcessBarrier
    func run() throws { _ = try barrier.wait(timeout: .seconds(30)) }
}

/// Polls `condition` (every millisecond, at most 30 s) for states that only a poll can observe.
private func until(_ condition: () -> Bool) -> Bool {
    let deadline = Deadline.after(.seconds(30))
    while !condition() {
        if deadline.hasPassed { return false }
        usleep(1000)
    }
    return true
}

/// Expects its wait to be broken, then (after `resumed`) passes the repaired barrier once.
struct SyncBrokenThenPass: ProcessTask {
    let barrier: ProcessBarrier
    let resumed: ProcessEvent
    func run() throws {
        do {
            _ = try barrier.wait(timeout: .seconds(30))
            try syncCheck(false, "the wait must be broken")
        } catch let error as MultiprocessingError where error.code == .brokenBarrier {}
        try syncCheck(resumed.wait(timeout: .seconds(30)), "resumed")
        _ = try barrier.wait(timeout: .seconds(30))
    }
}

@Suite("Sync: ProcessBarrier")
struct SyncBarrierTests {
    @Test("ProcessBarrier: 5 parties across processes, 10 passes, each index once per pass, action once per pass",
          arguments: StartMethod.allCases)
    func fivePartyBarrier(method: StartMethod) throws {
        let shared = try SyncShared()
        let barrier = try ProcessBarrier(parties: 5, action: SyncCountPass(shared: shared), timeout: .seconds(30))
        #expect(barrier.parties == 5)
        let passes = 10
        let children = try (1..<5).map { try syncStart(SyncBarrierParty(barrier: barrier, shared: shared, party: $0, passes: passes), method) }
        try SyncBarrierParty(barrier: barrier, shared: shared, party: 0, passes: passes).run()
        for child in children { try syncExpectEnded(child) }
        #expect(shared[0] == passes, "the action ran once per pass")
        for pass in 0..<passes {
            let indexes = (0..<5).map { shared[1 + pass * 8 + $0] }
            #expect(indexes.sorted() == [0, 1, 2, 3, 4], "pass \(pass): \(indexes)")
        }
        #expect(!barrier.isBroken)
        #expect(barrier.waitingCount == 0)
    }

    @Test("ProcessBarrier: one party passes at once, every time")
    func singleParty() throws {
        let barrier = try ProcessBarrier(parties: 1)
        for _ in 0..<5 { #expect(try barrier.wait() == 0) }
        #expect(throws: MultiprocessingError.self) { try ProcessBarrier(parties: 0) }
    }

    @Test("ProcessBarrier: abort breaks waiting processes and later waits until reset; then it works again")
    func abortAndReset() throws {
        let barrier = try ProcessBarrier(parties: 3)
        let resumed = try ProcessEvent()
        let children = try (0..<2).map { _ in try syncStart(SyncBrokenThenPass(barrier: barrier, resumed: resumed)) }
        #expect(until { barrier.waitingCount == 2 })
        barrier.abort()
        #expect(barrier.isBroken)
        #expect(barrier.waitingCount == 0)
        let error = #expect(throws: MultiprocessingError.self) { try barrier.wait(timeout: .seconds(1)) }
        #expect(error?.code == .brokenBarrier)
        barrier.reset()
        #expect(!barrier.isBroken)
        resumed.set()
        _ = try barrier.wait(timeout: .seconds(30))
        for child in children { try syncExpectEnded(child) }
    }

    @Test("ProcessBarrier: reset breaks the parties waiting now")
    func resetBreaksWaiters() throws {
        let barrier = try ProcessBarrier(parties: 2)
        let resumed = try ProcessEvent()
        let child = try syncStart(SyncBrokenThenPass(barrier: barrier, resumed: resumed))
        #expect(until { barrier.waitingCount == 1 })
        barrier.reset()
        resumed.set()
        _ = try barrier.wait(timeout: .seconds(30))
        try syncExpectEnded(child)
    }

    @Test("ProcessBarrier: a timed-out wait breaks the barrier for every party; the default timeout applies")
    func timeouts() throws {
        let barrier = try ProcessBarrier(parties: 3)
        let resumed = try ProcessEvent()
        let child = try syncStart(SyncBrokenThenPass(barrier: barrier, resumed: resumed))
        #expect(until { barrier.waitingCount == 1 })
        let (threw, elapsed) = syncTimed { (try? barrier.wait(timeout: .milliseconds(200))) == nil }
        #expect(threw)
        syncWaitedAbout(elapsed, 0.2)
        #expect(barrier.isBroken)
        barrier.reset()
        let third = try syncStart(SyncBarrierWait(barrier: barrier))
        resumed.set()
        _ = try barrier.wait(timeout: .seconds(30))
        try syncExpectEnded(child)
        try syncExpectEnded(third)

        let withDefault = try ProcessBarrier(parties: 2, timeout: .milliseconds(200))
        let (error, defaultElapsed) = syncTimed { #expect(throws: MultiprocessingError.self) { try withDefault.wait() } }
        #expect(error?.code == .brokenBarrier)
        syncWaitedAbout(defaultElapsed, 0.2)
    }

    @Test("ProcessBarrier: an action that throws breaks the barrier; its party gets the error")
    func failingAction() throws {
        let barrier = try ProcessBarrier(parties: 1, action: SyncFailingAction())
        let error = #expect(throws: MultiprocessingError.self) { try barrier.wait() }
        #expect(error?.code == .invalidArgument)
        #expect(barrier.isBroken)
        let broken = #expect(throws: MultiprocessingError.self) { try barrier.wait() }
        #expect(broken?.code == .brokenBarrier)
    }

    @Test("ProcessBarrier: async wait", .ownThread)
    func barrierAsync() async throws {
        let shared = try SyncShared()
        let barrier = try ProcessBarrier(parties: 2, action: SyncCountPass(shared: shared))
        let child = try syncStart(SyncBarrierParty(barrier: barrier, shared: shared, party: 1, passes: 1))
        let index = try await barrier.wait(timeout: .seconds(30))
        #expect((0..<2).contains(index))
        try syncExpectEnded(child)
        #expect(shared[0] == 1)
        let (threw, elapsed) = await syncTimed { () async -> Bool in
            (try? await barrier.wait(timeout: .milliseconds(100))) == nil
        }
        #expect(threw)
        syncWaitedAbout(elapsed, 0.1, async: true)
    }
}
