#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// Sets `event` after `delayMilliseconds` (the delay is the scenario, not synchronization).
struct SyncSetEventLater: ProcessTask {
    let event: ProcessEvent
    let delayMilliseconds: Int
    func run() throws {
        usleep(UInt32(delayMilliseconds * 1000))
        event.set()
    }
}

/// Waits for `event`, clears it, and says so through `cleared`.
struct SyncClearEvent: ProcessTask {
    let event: ProcessEvent
    let cleared: ProcessEvent
    func run() throws {
        try syncCheck(event.wait(timeout: .seconds(30)), "the event was set")
        event.clear()
        cleared.set()
    }
}

/// Says it is about to wait, then waits for `event`.
struct SyncWaitForEvent: ProcessTask {
    let event: ProcessEvent
    let ready: ProcessSemaphore
    func run() throws {
        try ready.release()
        try syncCheck(event.wait(timeout: .seconds(30)), "the event was set")
    }
}

/// Several primitives in one message.
struct SyncPrimitives: Codable {
    let event: ProcessEvent
    let lock: ProcessLock
    let condition: ProcessCondition
    let semaphore: ProcessSemaphore
}

@Suite("Sync: ProcessEvent")
struct SyncEventTests {
    @Test("ProcessEvent: set, clear, isSet and timed waits (Python's test_event)", arguments: StartMethod.allCases)
    func eventBasics(method: StartMethod) throws {
        let event = try ProcessEvent()
        #expect(!event.isSet)
        #expect(event.description == "ProcessEvent(clear)")
        #expect(!event.wait(timeout: .zero))
        let (early, elapsed) = syncTimed { event.wait(timeout: .milliseconds(100)) }
        #expect(!early)
        syncWaitedAbout(elapsed, 0.1)
        event.set()
        #expect(event.isSet)
        #expect(event.description == "ProcessEvent(set)")
        let (immediate, quick) = syncTimed { event.wait() && event.wait(timeout: .milliseconds(100)) }
        #expect(immediate)
        #expect(quick < 0.05)
        event.clear()
        #expect(!event.isSet)
        let setter = try syncStart(SyncSetEventLater(event: event, delayMilliseconds: 100), method)
        #expect(event.wait(timeout: .seconds(30)), "set by the child")
        try syncExpectEnded(setter)
    }

    @Test("ProcessEvent: a child's clear is seen by the parent; set wakes every waiting process")
    func eventAcrossProcesses() throws {
        let event = try ProcessEvent(), cleared = try ProcessEvent()
        let clearer = try syncStart(SyncClearEvent(event: event, cleared: cleared))
        event.set()
        #expect(cleared.wait(timeout: .seconds(30)))
        #expect(!event.isSet)
        try syncExpectEnded(clearer)
        let gate = try ProcessEvent(), ready = try ProcessSemaphore(0)
        let waiters = try (0..<3).map { _ in try syncStart(SyncWaitForEvent(event: gate, ready: ready), .forkserver) }
        for _ in 0..<3 { #expect(ready.acquire(timeout: .seconds(30))) }
        gate.set()
        for waiter in waiters { try syncExpectEnded(waiter) }
    }

    @Test("Primitives sent through a Connection arrive as the same primitives")
    func sentThroughConnection() throws {
        let (reader, writer) = try makePipe(duplex: false)
        let event = try ProcessEvent(), lock = try ProcessLock()
        try writer.send(SyncPrimitives(event: event, lock: lock, condition: try ProcessCondition(), semaphore: try ProcessBoundedSemaphore(2)))
        let received = try reader.recv(SyncPrimitives.self, timeout: .seconds(10))
        received.event.set()
        #expect(event.isSet)
        #expect(received.lock.acquire(blocking: false))
        #expect(lock.owner == getpid())
        try lock.release()
        #expect(throws: MultiprocessingError.self) { try received.semaphore.release() }
        #expect(try received.condition.withLock { try !received.condition.wait(timeout: .zero) })
    }

    @Test("ProcessEvent: async wait", .ownThread)
    func eventAsync() async throws {
        let event = try ProcessEvent()
        let (early, elapsed) = try await syncTimed { try await event.wait(timeout: .milliseconds(100)) }
        #expect(!early)
        syncWaitedAbout(elapsed, 0.1, async: true)
        let setter = try syncStart(SyncSetEventLater(event: event, delayMilliseconds: 50))
        #expect(try await event.wait(timeout: .seconds(30)))
        try syncExpectEnded(setter)
    }
}
