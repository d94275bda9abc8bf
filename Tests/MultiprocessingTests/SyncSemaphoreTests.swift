#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// Takes `units` units (each within 10 s), says so through `holding`, then blocks or ends without
/// giving them back.
struct SyncHoldUnits: ProcessTask {
    let semaphore: ProcessSemaphore
    let units: Int
    let holding: ProcessEvent
    let thenExit: Bool
    func run() throws {
        for _ in 0..<units { try syncCheck(semaphore.acquire(timeout: .seconds(10)), "acquire a unit") }
        holding.set()
        if thenExit { return }
        while true { pause() }
    }
}

/// Waits for a unit, then gives it back.
struct SyncWaitForUnit: ProcessTask {
    let semaphore: ProcessSemaphore
    func run() throws {
        try syncCheck(semaphore.acquire(timeout: .seconds(10)), "a unit arrives")
        try semaphore.release()
    }
}

@Suite("Sync: ProcessSemaphore and ProcessBoundedSemaphore")
struct SyncSemaphoreTests {
    @Test("ProcessSemaphore: counting, non-blocking and timed acquire (Python's test_semaphore and test_timeout)")
    func semaphoreBasics() throws {
        let semaphore = try ProcessSemaphore(2)
        #expect(semaphore.value == 2)
        #expect(semaphore.acquire())
        #expect(semaphore.value == 1)
        #expect(semaphore.acquire())
        #expect(!semaphore.acquire(blocking: false))
        #expect(!semaphore.acquire(blocking: false, timeout: .seconds(5)), "the timeout is ignored when not blocking")
        #expect(semaphore.value == 0)
        let (acquired, elapsed) = syncTimed { semaphore.acquire(timeout: .milliseconds(200)) }
        #expect(!acquired)
        syncWaitedAbout(elapsed, 0.2)
        for expected in 1...4 {
            try semaphore.release()
            #expect(semaphore.value == expected, "no upper bound")
        }
        #expect(semaphore.description == "ProcessSemaphore(value: 4)")
        #expect(semaphore.withLock { semaphore.value } == 3)
        #expect(semaphore.value == 4)
        let negative = #expect(throws: MultiprocessingError.self) { try ProcessSemaphore(-1) }
        #expect(negative?.code == .invalidArgument)
    }

    @Test("ProcessBoundedSemaphore: releasing above the initial value is an error")
    func boundedSemaphore() throws {
        let semaphore = try ProcessBoundedSemaphore(2)
        let error = #expect(throws: MultiprocessingError.self) { try semaphore.release() }
        #expect(error?.code == .invalidState)
        #expect(semaphore.acquire())
        try semaphore.release()
        #expect(throws: MultiprocessingError.self) { try semaphore.release() }
        #expect(semaphore.value == 2)
        #expect(semaphore.description == "ProcessBoundedSemaphore(value: 2, initial: 2)")
    }

    @Test("ProcessSemaphore: a unit released in one process wakes a waiter in another", arguments: StartMethod.allCases)
    func acrossProcesses(method: StartMethod) throws {
        let semaphore = try ProcessSemaphore(0)
        let child = try syncStart(SyncWaitForUnit(semaphore: semaphore), method)
        try semaphore.release()
        try syncExpectEnded(child)
        #expect(semaphore.value == 1)
    }

    @Test("ProcessSemaphore: units of a holder killed with -9, or that exited holding them, come back")
    func deadHolderUnitsReturn() throws {
        for (bounded, thenExit) in [(false, false), (true, true)] {
            let semaphore = bounded ? try ProcessBoundedSemaphore(3) : try ProcessSemaphore(3)
            let holding = try ProcessEvent()
            let holder = try syncStart(SyncHoldUnits(semaphore: semaphore, units: 2, holding: holding, thenExit: thenExit))
            #expect(holding.wait(timeout: .seconds(30)))
            #expect(semaphore.acquire(timeout: .seconds(1)))
            #expect(semaphore.value == 0)
            if thenExit {
                try syncExpectEnded(holder)
            } else {
                // A live holder's units are not taken.
                let (early, elapsed) = syncTimed { semaphore.acquire(timeout: .milliseconds(200)) }
                #expect(!early)
                syncWaitedAbout(elapsed, 0.2)
                try syncKill(holder)
            }
            #expect(semaphore.acquire(timeout: .seconds(10)), "a dead holder's unit came back")
            #expect(semaphore.acquire(timeout: .seconds(10)))
            #expect(!semaphore.acquire(timeout: .milliseconds(50)), "exactly its two units, no more")
            for _ in 0..<3 { try semaphore.release() }
            #expect(semaphore.value == 3)
        }
    }

    @Test("ProcessSemaphore: a signalling semaphore does not invent units when a consumer dies")
    func signallingSemaphoreDoesNotInventUnits() throws {
        let semaphore = try ProcessSemaphore(0)
        try semaphore.release()
        let holding = try ProcessEvent()
        let consumer = try syncStart(SyncHoldUnits(semaphore: semaphore, units: 1, holding: holding, thenExit: false))
        #expect(holding.wait(timeout: .seconds(30)))
        try syncKill(consumer)
        #expect(!semaphore.acquire(timeout: .milliseconds(300)))
        #expect(semaphore.value == 0)
    }

    @Test("ProcessSemaphore: async acquire and withLock", .ownThread)
    func semaphoreAsync() async throws {
        let semaphore = try ProcessSemaphore(1)
        #expect(try await semaphore.acquire())
        let (acquired, elapsed) = try await syncTimed { try await semaphore.acquire(timeout: .milliseconds(200)) }
        #expect(!acquired)
        syncWaitedAbout(elapsed, 0.2, async: true)
        async let waiter = semaphore.acquire(timeout: .seconds(10))
        try await Task.sleep(for: .milliseconds(20))
        try semaphore.release()
        #expect(try await waiter)
        try semaphore.release()
        let value = try await semaphore.withLock { () async -> Int in semaphore.value }
        #expect(value == 0)
        #expect(semaphore.value == 1)
    }
}
