#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// A producer out of ring bytes while under its bound: back at the ring's start, one lap ahead of the
// consumer (see QueueRing's "Waiting for room in bytes").

/// The size of the values that bring a queue to the lapped state quickly.
let lapValueSize = 64 << 10

/// Puts values with seeds `first..<first + count`, each with a long timeout, and reports what ended it.
struct QueueLappedProducer: ProcessTask {
    let queue: ProcessQueue<[UInt8]>
    let report: ProcessSimpleQueue<String>
    let first: Int
    let count: Int
    func run() throws {
        try report.put("started")
        do {
            for seed in first..<(first + count) { try queue.put(queuePattern(seed, count: lapValueSize), timeout: .seconds(30)) }
            try report.put("done")
        } catch let error as MultiprocessingError {
            try report.put("\(error.code)")
        }
    }
}

/// Brings `queue` to the state where its producer is back at the ring's start and has no room left
/// before the consumer's offset; returns the number of values in it (seeds 20 and up).
func lapQueue(_ queue: ProcessQueue<[UInt8]>) throws -> Int {
    // Past the 4 MiB window with the consumer 20 values in: the next put goes back to the start.
    for seed in 0..<80 { try queue.put(queuePattern(seed, count: lapValueSize)) }
    for seed in 0..<20 {
        let value = try queue.get(timeout: .seconds(10))
        #expect(value.first == UInt8(truncatingIfNeeded: seed) && queueIntact(value, count: lapValueSize))
    }
    // Back at the start, 19 values fit before the consumer's offset (20 values in, less the 8 bytes a
    // lapped producer keeps free); each goes in at once.
    for seed in 80..<99 { try queue.put(queuePattern(seed, count: lapValueSize), timeout: .seconds(10)) }
    return 99 - 20
}

/// Gets `count` values and checks they carry the seeds from `first` on, in order and intact.
func drainLapped(_ queue: ProcessQueue<[UInt8]>, from first: Int, count: Int) throws {
    for seed in first..<(first + count) {
        let value = try queue.get(timeout: .seconds(30))
        #expect(value.first == UInt8(truncatingIfNeeded: seed) && queueIntact(value, count: lapValueSize), "value \(seed)")
    }
    #expect(queue.isEmpty)
}

@Suite("Queue room in bytes", .ownThread, .serialized)
struct QueueRoomTests {
    @Test("a lapped producer puts as soon as its value fits when the consumer stops, without waiting for more room")
    func stoppedConsumer() throws {
        let queue = try ProcessQueue<[UInt8]>()
        let held = try lapQueue(queue)
        // One get frees one value's room, less than the slack the producer would like to wait for.
        _ = try queue.get(timeout: .seconds(10))
        let (_, seconds) = try syncTimed { try queue.put(queuePattern(1000, count: lapValueSize), timeout: .seconds(10)) }
        #expect(seconds < 2, "the put took \(seconds) s")
        // Later ones too, each as soon as one more get made room for it.
        for seed in 1001..<1004 {
            _ = try queue.get(timeout: .seconds(10))
            let (_, seconds) = try syncTimed { try queue.put(queuePattern(seed, count: lapValueSize), timeout: .seconds(10)) }
            #expect(seconds < 2, "the put took \(seconds) s")
        }
        #expect(queue.count == held)
    }

    @Test("a put that may not wait never finds an unbounded queue full: a lapped producer skips forward, and every value arrives in order")
    func noWaitSkipsForward() throws {
        let queue = try ProcessQueue<[UInt8]>()
        let held = try lapQueue(queue)
        for seed in 1000..<1100 { try queue.putNoWait(queuePattern(seed, count: lapValueSize)) }
        #expect(queue.count == held + 100)
        for seed in 20..<(20 + held) {
            let value = try queue.get(timeout: .seconds(10))
            #expect(value.first == UInt8(truncatingIfNeeded: seed) && queueIntact(value, count: lapValueSize), "value \(seed)")
        }
        try drainLapped(queue, from: 1000, count: 100)
    }

    @Test("a lapped producer in another process is woken by the consumer's gets; every value arrives in order and intact")
    func wokenByConsumer() throws {
        let queue = try ProcessQueue<[UInt8]>()
        let report = try ProcessSimpleQueue<String>()
        let held = try lapQueue(queue)
        let child = try syncStart(QueueLappedProducer(queue: queue, report: report, first: 2000, count: 300))
        #expect(try report.get() == "started")
        // What the parent put first (seeds 20 ..< 20 + held, the last ones after the jump back), then the child's.
        for seed in 20..<(20 + held) {
            let value = try queue.get(timeout: .seconds(30))
            #expect(value.first == UInt8(truncatingIfNeeded: seed) && queueIntact(value, count: lapValueSize), "value \(seed)")
        }
        try drainLapped(queue, from: 2000, count: 300)
        #expect(try report.get() == "done")
        try syncExpectEnded(child)
    }

    @Test("a producer waiting for room in bytes ends at shutdown, and one killed there leaves the queue usable")
    func shutdownAndKill() throws {
        // Killed while waiting: the next producer takes over, puts, and nothing is torn.
        let queue = try ProcessQueue<[UInt8]>()
        // Producers wait for room in bytes as long as the test needs (not the usual 5 ms, after which
        // they take the consumer for stopped and skip forward).
        queue.ring.setRoomPatience(.seconds(60))
        let report = try ProcessSimpleQueue<String>()
        let held = try lapQueue(queue)
        let victim = try syncStart(QueueLappedProducer(queue: queue, report: report, first: 3000, count: 1), .forkserver)
        #expect(try report.get() == "started")
        usleep(50_000)
        try syncKill(victim)
        for _ in 0..<8 { _ = try queue.get(timeout: .seconds(10)) }
        try queue.put(queuePattern(4000, count: lapValueSize), timeout: .seconds(10))
        #expect(queue.count == held - 8 + 1)
        // Shut down while a producer waits: its put ends with shutDown.
        let full = try ProcessQueue<[UInt8]>()
        full.ring.setRoomPatience(.seconds(60))
        _ = try lapQueue(full)
        let waiter = try syncStart(QueueLappedProducer(queue: full, report: report, first: 5000, count: 1), .forkserver)
        #expect(try report.get() == "started")
        usleep(50_000)
        let (ended, seconds) = try syncTimed { () throws -> String in
            full.shutdown()
            return try report.get()
        }
        #expect(ended == "shutDown")
        #expect(seconds < 10)
        try syncExpectEnded(waiter)
    }

    @Test("an async put waiting for room in bytes ends promptly when cancelled, having put nothing")
    func cancelledAsyncPut() async throws {
        let queue = try ProcessQueue<[UInt8]>()
        queue.ring.setRoomPatience(.seconds(60))
        let held = try lapQueue(queue)
        let putter = Task { try await queue.put(queuePattern(6000, count: lapValueSize)) }
        try await Task.sleep(for: .milliseconds(50))
        putter.cancel()
        let (result, seconds) = await syncTimed { await putter.result }
        #expect(seconds < 10)
        #expect(throws: CancellationError.self) { try result.get() }
        #expect(queue.count == held)
    }
}
