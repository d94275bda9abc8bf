#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// Queues across real processes: ProcessQueue, ProcessSimpleQueue, ProcessJoinableQueue.

/// A small item: which producer put it, and its sequence number there.
struct QueueItem: Codable, Sendable, Equatable {
    var producer: Int
    var sequence: Int
}

/// Bytes whose content says which value they are (every byte is the seed, every 4 KiB the offset
/// follows), so a torn or mixed value is detected.
func queuePattern(_ seed: Int, count: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: seed), count: count)
    bytes.withUnsafeMutableBytes { raw in
        for offset in stride(from: 1, to: count - 8, by: 4096) {
            raw.storeBytes(of: offset, toByteOffset: offset, as: Int.self)
        }
    }
    return bytes
}

/// Whether `value` is exactly `queuePattern(seed, count:)` for its first byte's seed (compared with memcmp:
/// fast in debug builds).
func queueIntact(_ value: [UInt8], count: Int) -> Bool {
    guard value.count == count, let seed = value.first else { return false }
    let expected = queuePattern(Int(seed), count: count)
    return value.withUnsafeBytes { a in expected.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, count) == 0 } }
}

/// Puts `count` integers `producer << 32 | sequence` after `go`.
struct QueueIntProducer: ProcessTask {
    let queue: ProcessQueue<Int>
    let producer: Int
    let count: Int
    func run() throws {
        for sequence in 0..<count { try queue.put(producer << 32 | sequence, timeout: .seconds(120)) }
    }
}

/// Gets integers until -1, checking FIFO per producer, and sends back a bitmap of what it got.
struct QueueIntConsumer: ProcessTask {
    let queue: ProcessQueue<Int>
    let results: ProcessSimpleQueue<[UInt8]>
    let perProducer: Int
    func run() throws {
        var seen = [UInt8](repeating: 0, count: (2 * perProducer + 7) / 8)
        var last = [-1, -1]
        while true {
            let item = try queue.get(timeout: .seconds(120))
            if item < 0 { break }
            let producer = item >> 32, sequence = item & 0xFFFF_FFFF
            try syncCheck(sequence > last[producer], "FIFO per producer: \(sequence) after \(last[producer])")
            last[producer] = sequence
            let bit = producer * perProducer + sequence
            try syncCheck(seen[bit / 8] & (1 << (bit % 8)) == 0, "item \(item) twice")
            seen[bit / 8] |= 1 << (bit % 8)
        }
        try results.put(seen)
    }
}

/// Puts `count` items as `producer`, then optionally grandchild-starts another producer, and exits.
struct QueueProducer: ProcessTask {
    let queue: ProcessQueue<QueueItem>
    let producer: Int
    let count: Int
    var grandchild = false

    func run() throws {
        for sequence in 0..<count { try queue.put(QueueItem(producer: producer, sequence: sequence), timeout: .seconds(60)) }
        if grandchild {
            let child = ChildProcess(QueueProducer(queue: queue, producer: producer + 1, count: count), context: ProcessContext(.spawn))
            try child.start()
            try syncCheck(try child.join(timeout: .seconds(30)) && child.exitCode == 0, "grandchild ended well")
        }
    }
}

/// Puts `count` byte arrays of `size` bytes.
struct QueueBytesProducer: ProcessTask {
    let queue: ProcessQueue<[UInt8]>
    let count: Int
    let size: Int
    func run() throws {
        for index in 0..<count { try queue.put([UInt8](repeating: UInt8(truncatingIfNeeded: index), count: size), timeout: .seconds(60)) }
    }
}

/// Puts large patterned values forever (until killed).
struct QueueBigProducer: ProcessTask {
    let queue: ProcessQueue<[UInt8]>
    let started: ProcessEvent
    func run() throws {
        var seed = 0
        while true {
            try queue.put(queuePattern(seed, count: 1 << 20), timeout: .seconds(60))
            started.set()
            seed += 1
        }
    }
}

/// Gets patterned values one by one, counting completed gets in shared memory, until killed.
struct QueueSlowConsumer: ProcessTask {
    let queue: ProcessQueue<[UInt8]>
    let shared: SyncShared
    func run() throws {
        while true {
            let value = try queue.get(timeout: .seconds(60))
            try syncCheck(queueIntact(value, count: 256 << 10), "an intact value")
            shared.add(1, at: 0)
        }
    }
}

/// Gets one item and sends it back over another queue.
struct QueueEcho: ProcessTask {
    let input: ProcessQueue<String>
    let output: ProcessQueue<String>
    func run() throws { try output.put("echo " + input.get(timeout: .seconds(30))) }
}

/// Puts one large value and exits.
struct QueueHugePut: ProcessTask {
    let queue: ProcessQueue<[UInt8]>
    let size: Int
    func run() throws { try queue.put(queuePattern(7, count: size)) }
}

/// Waits in a get and reports what ended it.
struct QueueShutdownWaiter: ProcessTask {
    let queue: ProcessQueue<Int>
    let report: ProcessSimpleQueue<String>
    func run() throws {
        do {
            _ = try queue.get(timeout: .seconds(30))
            try report.put("got an item")
        } catch let error as MultiprocessingError {
            try report.put(error.code.rawValue)
        }
    }
}

/// Gets every item from a joinable queue, marking each done, until it gets -1.
struct QueueTaskWorker: ProcessTask {
    let queue: ProcessJoinableQueue<Int>
    let total: SyncShared
    func run() throws {
        while true {
            let item = try queue.get(timeout: .seconds(30))
            if item >= 0 { total.add(item, at: 0) }
            try queue.taskDone()
            if item < 0 { return }
        }
    }
}

/// A value that cannot travel through a queue: it holds a lock's descriptor.
struct QueueHoldsLock: Codable, Sendable {
    let lock: ProcessLock
}

@Suite("Queues", .ownThread, .serialized)
struct QueueTests {
    @Test("put/get in order; no-wait forms; full and empty after their timeouts; qsize, isEmpty, isFull")
    func basics() throws {
        let queue = try ProcessQueue<Int>(maxSize: 3)
        #expect(queue.isEmpty && !queue.isFull && queue.count == 0 && queue.maxSize == 3)
        try queue.put(1)
        try queue.put(2, blocking: false)
        try queue.putNoWait(3)
        #expect(queue.count == 3 && queue.isFull)
        #expect(throws: MultiprocessingError(.full, "the queue is full")) { try queue.putNoWait(4) }
        let (_, waited) = syncTimed { #expect(throws: MultiprocessingError.self) { try queue.put(4, timeout: .milliseconds(100)) } }
        #expect(waited >= 0.09 && waited < 10)
        // A non-blocking put ignores its timeout.
        let (_, instant) = syncTimed { #expect(throws: MultiprocessingError.self) { try queue.put(4, blocking: false, timeout: .seconds(10)) } }
        #expect(instant < 5)
        #expect(try queue.get() == 1)
        #expect(try queue.getNoWait() == 2)
        #expect(try queue.get(blocking: false) == 3)
        #expect(queue.isEmpty)
        #expect(throws: MultiprocessingError(.empty, "the queue is empty")) { try queue.getNoWait() }
        let (_, waitedGet) = syncTimed { #expect(throws: MultiprocessingError(.empty, "the queue is empty")) { try queue.get(timeout: .milliseconds(100)) } }
        #expect(waitedGet >= 0.09 && waitedGet < 10)
        #expect(throws: MultiprocessingError.self) { try ProcessQueue<Int>(maxSize: 1 << 30) }
        // Unbounded: never full.
        let unbounded = try ProcessQueue<String>(maxSize: -1)
        for index in 0..<10_000 { try unbounded.putNoWait("item \(index)") }
        #expect(unbounded.count == 10_000 && !unbounded.isFull)
        for index in 0..<10_000 { #expect(try unbounded.getNoWait() == "item \(index)") }
    }

    @Test("a value that cannot be encoded fails its put, takes no room, and the queue stays usable")
    func unencodable() throws {
        let queue = try ProcessQueue<QueueHoldsLock>(maxSize: 1)
        let error = #expect(throws: MultiprocessingError.self) { try queue.put(QueueHoldsLock(lock: ProcessLock())) }
        #expect(error?.code == .transport)
        #expect(queue.count == 0)
        let strings = try ProcessQueue<[String]>(maxSize: 1)
        try strings.put(["a"])
        #expect(try strings.get(timeout: .seconds(5)) == ["a"])
        // An item that does not decode as the receiver's type is reported and removed.
        let ints = try ProcessQueue<Int>()
        let (a, b) = try makePipe()
        try a.send(ints)
        let asStrings = try b.recv(ProcessQueue<String>.self, timeout: .seconds(5))
        try ints.put(5)
        try ints.put(6)
        let undecodable = #expect(throws: MultiprocessingError.self) { try asStrings.get(timeout: .seconds(5)) }
        #expect(undecodable?.code == .transport)
        #expect(try ints.get(timeout: .seconds(5)) == 6)
        #expect(ints.isEmpty)
    }

    @Test("close: later puts and gets in this process throw closed")
    func close() throws {
        let queue = try ProcessQueue<Int>()
        try queue.put(1)
        queue.close()
        #expect(throws: MultiprocessingError(.closed, "put on a closed queue")) { try queue.put(2) }
        #expect(throws: MultiprocessingError(.closed, "get on a closed queue")) { try queue.get() }
        let simple = try ProcessSimpleQueue<Int>()
        simple.close()
        #expect(throws: MultiprocessingError.self) { try simple.put(1) }
    }

    @Test("a child's items all arrive in order after it exited, when it is joined before anything is read", arguments: StartMethod.allCases)
    func joinBeforeDrain(method: StartMethod) throws {
        let queue = try ProcessQueue<QueueItem>()
        let count = 50_000
        let child = try syncStart(QueueProducer(queue: queue, producer: 0, count: count), method)
        try syncExpectEnded(child)
        #expect(queue.count == count)
        for sequence in 0..<count {
            let item = try queue.getNoWait()
            if item != QueueItem(producer: 0, sequence: sequence) { Issue.record("item \(sequence) is \(item)"); return }
        }
        #expect(queue.isEmpty)
    }

    @Test("a consumer that read a few items and then joins the producer does not deadlock: an unbounded put does not wait for a stopped consumer", arguments: [1, 3])
    func joinAfterReadingSome(read: Int) throws {
        let queue = try ProcessQueue<[UInt8]>()
        // 16 MiB in 1 KiB items: the producer goes around the ring's 4 MiB window several times.
        let count = 16_384
        let child = try syncStart(QueueBytesProducer(queue: queue, count: count, size: 1024), .fork)
        for _ in 0..<read { _ = try queue.get(timeout: .seconds(30)) }
        #expect(try child.join(timeout: .seconds(30)), "the producer waited for the consumer to read more")
        if child.exitCode == nil { try child.kill(); _ = try child.join(timeout: .seconds(10)) }
        #expect(queue.count == count - read)
        // The rest arrives in order and whole, across the skip forward.
        var intact = 0
        while let item = try? queue.getNoWait() {
            if item.count == 1024, item.allSatisfy({ $0 == UInt8(truncatingIfNeeded: intact + read) }) { intact += 1 } else { break }
        }
        #expect(intact == count - read)
    }

    @Test("handed to a child and on to a grandchild; sent over a Connection")
    func transfer() throws {
        let queue = try ProcessQueue<QueueItem>(maxSize: 10)
        let child = try syncStart(QueueProducer(queue: queue, producer: 0, count: 50, grandchild: true), .forkserver)
        var got: [QueueItem] = []
        for _ in 0..<100 { got.append(try queue.get(timeout: .seconds(30))) }
        try syncExpectEnded(child)
        #expect(got.filter { $0.producer == 0 }.map(\.sequence) == Array(0..<50))
        #expect(got.filter { $0.producer == 1 }.map(\.sequence) == Array(0..<50))
        // Over a Connection: the received queue is the same queue.
        let input = try ProcessQueue<String>()
        let output = try ProcessQueue<String>()
        let (a, b) = try makePipe()
        try a.send([input, output])
        let received = try b.recv([ProcessQueue<String>].self, timeout: .seconds(5))
        let echo = try syncStart(QueueEcho(input: received[0], output: received[1]))
        try input.put("hello")
        #expect(try output.get(timeout: .seconds(30)) == "echo hello")
        try syncExpectEnded(echo)
        // Outside a task or message, a queue does not encode.
        #expect(throws: MultiprocessingError.self) { try BinaryEncoder().encode(input) }
    }

    @Test("1,000,000 items through 2 producers and 2 consumers: exactly once each, FIFO per producer")
    func twoByTwo() throws {
        let perProducer = 500_000
        let queue = try ProcessQueue<Int>(maxSize: 10_000)
        let results = try ProcessSimpleQueue<[UInt8]>()
        let consumers = try (0..<2).map { _ in try syncStart(QueueIntConsumer(queue: queue, results: results, perProducer: perProducer), .forkserver) }
        let producers = try (0..<2).map { try syncStart(QueueIntProducer(queue: queue, producer: $0, count: perProducer), .forkserver) }
        // Debug builds move these at some 100,000 items a second: generous bounds.
        for producer in producers { #expect(try producer.join(timeout: .seconds(240)) && producer.exitCode == 0) }
        for _ in 0..<2 { try queue.put(-1, timeout: .seconds(30)) }
        for consumer in consumers { #expect(try consumer.join(timeout: .seconds(60)) && consumer.exitCode == 0) }
        let first = try results.get()
        let second = try results.get()
        var total = 0
        for index in first.indices {
            #expect(first[index] & second[index] == 0, "an item arrived twice")
            total += (first[index] | second[index]).nonzeroBitCount
        }
        #expect(total == 2 * perProducer)
        #expect(queue.isEmpty)
    }

    @Test("a 100 MiB value through a queue, from a child")
    func hugeValue() throws {
        let queue = try ProcessQueue<[UInt8]>(maxSize: 1)
        let size = 100 << 20
        let child = try syncStart(QueueHugePut(queue: queue, size: size))
        let value = try queue.get(timeout: .seconds(60))
        try syncExpectEnded(child)
        #expect(value.count == size)
        #expect(value.first == 7 && queueIntact(value, count: size))
    }

    @Test("a steady stream through an unbounded queue goes back to the ring's start: its memory stays near the 4 MiB window")
    func ringReuse() throws {
        let queue = try ProcessQueue<[UInt8]>()
        let item = [UInt8](repeating: 7, count: 1024)
        // About 16 MiB of records, four times the window.
        for _ in 0..<16_000 {
            try queue.put(item)
            #expect(try queue.get(timeout: .seconds(5)).count == 1024)
        }
        let resident = queue.ring.memory.residentBytes
        #expect(resident <= QueueRing.window + (256 << 10), "the ring holds \(resident) bytes")
        #expect(resident >= QueueRing.window / 2)
    }

    @Test("a producer SIGKILLed mid-put leaves no torn value, and the queue keeps working")
    func producerKilled() throws {
        for round in 0..<3 {
            let queue = try ProcessQueue<[UInt8]>(maxSize: 4)
            let started = try ProcessEvent()
            let child = try syncStart(QueueBigProducer(queue: queue, started: started), .forkserver)
            #expect(started.wait(timeout: .seconds(30)))
            // Read some while it writes, then kill it at a moment that varies.
            for _ in 0..<(2 + round * 3) { _ = try queue.get(timeout: .seconds(30)) }
            usleep(UInt32(round * 300))
            try syncKill(child)
                var seeds: [Int] = []
            while let value = try? queue.getNoWait() {
                #expect(value.count == 1 << 20)
                #expect(queueIntact(value, count: 1 << 20), "a torn value")
                seeds.append(Int(value[0]))
            }
            #expect(zip(seeds, seeds.dropFirst()).allSatisfy { ($0 + 1) % 256 == $1 }, "in order, none missing: \(seeds)")
            // The dead producer may still hold the producer lock: a put takes it over.
            try queue.put([1, 2, 3], timeout: .seconds(10))
            #expect(try queue.get(timeout: .seconds(10)) == [1, 2, 3])
        }
    }

    @Test("a consumer SIGKILLed mid-get loses at most the item it held")
    func consumerKilled() throws {
        let count = 400
        let queue = try ProcessQueue<[UInt8]>()
        for seed in 0..<count { try queue.put(queuePattern(seed, count: 256 << 10)) }
        let shared = try SyncShared()
        let child = try syncStart(QueueSlowConsumer(queue: queue, shared: shared), .forkserver)
        let deadline = Deadline.after(.seconds(30))
        while shared[0] < 50 && !deadline.hasPassed { sched_yield() }
        try syncKill(child)
        let completed = shared[0]
        var rest: [Int] = []
        while let value = try? queue.get(timeout: .milliseconds(500)) {
            #expect(queueIntact(value, count: 256 << 10))
            rest.append(Int(value[0]))
        }
        #expect(completed >= 50)
        #expect(rest.count == count - completed || rest.count == count - completed - 1, "completed \(completed), left \(rest.count)")
        #expect(rest == Array((count - rest.count)..<count).map { $0 % 256 })
        try queue.put([9], timeout: .seconds(10))
        #expect(try queue.get(timeout: .seconds(10)) == [9])
    }

    @Test("async put and get across processes; for try await ends at shutdown; a cancelled get takes nothing")
    func asyncForms() async throws {
        let queue = try ProcessQueue<QueueItem>(maxSize: 8)
        let child = try syncStart(QueueProducer(queue: queue, producer: 0, count: 1000))
        var sequences: [Int] = []
        for _ in 0..<1000 { sequences.append(try await queue.get(timeout: .seconds(30)).sequence) }
        #expect(sequences == Array(0..<1000))
        try syncExpectEnded(child)
        // A blocked async get ends promptly when cancelled, and leaves the queue usable.
        let waiter = Task { try await queue.get() }
        try await Task.sleep(for: .milliseconds(50))
        waiter.cancel()
        let (result, seconds) = await syncTimed { await waiter.result }
        #expect(seconds < 10)
        #expect(throws: CancellationError.self) { try result.get() }
        try await queue.put(QueueItem(producer: 9, sequence: 9), timeout: .seconds(10))
        // The sequence reads the rest, then ends when the queue is shut down and empty.
        try await queue.put(QueueItem(producer: 9, sequence: 10))
        queue.shutdown()
        var rest: [Int] = []
        for try await item in queue { rest.append(item.sequence) }
        #expect(rest == [9, 10])
        await #expect(throws: MultiprocessingError.self) { try await queue.put(QueueItem(producer: 0, sequence: 0)) }
        // An async put waiting for room ends when cancelled.
        let full = try ProcessQueue<Int>(maxSize: 1)
        try await full.put(1)
        let putter = Task { try await full.put(2) }
        try await Task.sleep(for: .milliseconds(50))
        putter.cancel()
        await #expect(throws: CancellationError.self) { try await putter.value }
        #expect(try full.getNoWait() == 1)
        #expect(full.isEmpty)
    }

    @Test("shutdown: waiting gets in other processes end with shutDown; puts fail; gets drain first")
    func shutdown() throws {
        let queue = try ProcessQueue<Int>()
        let report = try ProcessSimpleQueue<String>()
        let waiter = try syncStart(QueueShutdownWaiter(queue: queue, report: report), .forkserver)
        usleep(100_000)
        queue.shutdown()
        #expect(try report.get() == "shutDown")
        try syncExpectEnded(waiter)
        #expect(queue.isShutDown)
        #expect(throws: MultiprocessingError(.shutDown, "put on a queue that was shut down")) { try queue.put(1) }
        let draining = try ProcessQueue<Int>()
        try draining.put(1)
        try draining.put(2)
        draining.shutdown()
        #expect(try draining.get() == 1)
        #expect(try draining.get() == 2)
        #expect(throws: MultiprocessingError.self) { try draining.get(timeout: .seconds(5)) }
    }

    @Test("JoinableQueue: taskDone per item, join returns when a child finished them; one taskDone too many is an error")
    func joinable() async throws {
        let queue = try ProcessJoinableQueue<Int>()
        #expect(throws: MultiprocessingError.self) { try queue.taskDone() }
        let total = try SyncShared()
        for item in 1...100 { try await queue.put(item) }
        try await queue.put(-1)
        #expect(queue.unfinishedTasks == 101)
        let worker = try syncStart(QueueTaskWorker(queue: queue, total: total))
        #expect(queue.join(timeout: .seconds(30)))
        #expect(total[0] == 5050)
        #expect(queue.unfinishedTasks == 0)
        #expect(throws: MultiprocessingError.self) { try queue.taskDone() }
        try syncExpectEnded(worker)
        // Async join, and a timed-out join.
        try await queue.put(1)
        #expect(!queue.join(timeout: .milliseconds(50)))
        let joiner = Task { try await queue.join(timeout: .seconds(30)) }
        _ = try await queue.get()
        try queue.taskDone()
        #expect(try await joiner.value)
    }

    @Test("shutdown(immediate:) discards items and releases joiners once outstanding taskDone calls are in")
    func immediateShutdown() async throws {
        let queue = try ProcessJoinableQueue<Int>()
        for item in 0..<10 { try await queue.put(item) }
        _ = try await queue.get()
        queue.shutdown(immediate: true)
        #expect(queue.isEmpty)
        #expect(queue.unfinishedTasks == 1)
        #expect(!queue.join(timeout: .milliseconds(20)))
        #expect(throws: MultiprocessingError.self) { try queue.get(timeout: .seconds(5)) }
        try queue.taskDone()
        #expect(queue.join(timeout: .seconds(5)))
    }

    @Test("SimpleQueue across processes")
    func simpleQueue() async throws {
        let queue = try ProcessSimpleQueue<String>()
        #expect(queue.isEmpty)
        let back = try ProcessQueue<String>()
        let (a, b) = try makePipe()
        try await a.send(queue)
        let input = try await b.recv(ProcessSimpleQueue<String>.self, timeout: .seconds(5))
        try await input.put("x")
        #expect(!queue.isEmpty)
        #expect(try await queue.get() == "x")
        try await queue.put("y")
        #expect(try await queue.get() == "y")
        _ = back
    }
}
