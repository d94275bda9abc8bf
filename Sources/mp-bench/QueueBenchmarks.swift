import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

/// The small message of the queue workloads (Python sends the same fields as a tuple).
struct BenchMessage: Codable, Sendable {
    var id: Int
    var value: Double
    var tag: String
}

/// Puts `count` values after `go` is set, announcing itself on `ready` first.
struct BenchQueueProducer<Value: Codable & Sendable>: ProcessTask {
    let queue: ProcessQueue<Value>
    let ready: ProcessSemaphore
    let go: ProcessEvent
    let count: Int
    let value: Value
    func run() throws {
        try ready.release()
        guard go.wait(timeout: .seconds(60)) else { throw BenchError("no go") }
        for _ in 0..<count { try queue.put(value, timeout: .seconds(60)) }
    }
}

/// Gets `count` values.
struct BenchQueueConsumer<Value: Codable & Sendable>: ProcessTask {
    let queue: ProcessQueue<Value>
    let ready: ProcessSemaphore
    let count: Int
    func run() throws {
        try ready.release()
        for _ in 0..<count { _ = try queue.get(timeout: .seconds(60)) }
    }
}

/// Puts `count` values into a SimpleQueue after `go` is set.
struct BenchSimpleProducer: ProcessTask {
    let queue: ProcessSimpleQueue<BenchMessage>
    let ready: ProcessSemaphore
    let go: ProcessEvent
    let count: Int
    func run() throws {
        try ready.release()
        guard go.wait(timeout: .seconds(60)) else { throw BenchError("no go") }
        for index in 0..<count { try queue.put(BenchMessage(id: index, value: 1.5, tag: "item")) }
    }
}

/// Items (or bytes) per second: `producers` child processes put `perProducer` values each,
/// `consumers` get them (the parent when `consumers` is 0). The clock runs from the go signal to the
/// last get.
private func queueThroughput<Value: Codable & Sendable>(
    _ value: Value, maxSize: Int = 0, producers: Int = 1, consumers: Int = 0, perProducer: Int
) throws -> Double {
    let queue = try ProcessQueue<Value>(maxSize: maxSize)
    let ready = try ProcessSemaphore(0)
    let go = try ProcessEvent()
    let total = producers * perProducer
    var children = (0..<producers).map { _ in
        ChildProcess(BenchQueueProducer(queue: queue, ready: ready, go: go, count: perProducer, value: value))
    }
    children += (0..<consumers).map { _ in
        ChildProcess(BenchQueueConsumer(queue: queue, ready: ready, count: total / consumers))
    }
    for child in children { try child.start() }
    for _ in children { guard ready.acquire(timeout: .seconds(60)) else { throw BenchError("child not ready") } }
    let start = now()
    go.set()
    if consumers == 0 {
        for _ in 0..<total { _ = try queue.get(timeout: .seconds(60)) }
    }
    for child in children {
        guard try child.join(timeout: .seconds(120)), child.exitCode == 0 else { throw BenchError("queue child failed") }
    }
    return Double(total) / (now() - start)
}

private func simpleQueueThroughput(count: Int) throws -> Double {
    let queue = try ProcessSimpleQueue<BenchMessage>()
    let ready = try ProcessSemaphore(0)
    let go = try ProcessEvent()
    let child = ChildProcess(BenchSimpleProducer(queue: queue, ready: ready, go: go, count: count))
    try child.start()
    guard ready.acquire(timeout: .seconds(60)) else { throw BenchError("child not ready") }
    let start = now()
    go.set()
    for _ in 0..<count { _ = try queue.get() }
    let elapsed = now() - start
    guard try child.join(timeout: .seconds(60)), child.exitCode == 0 else { throw BenchError("producer failed") }
    return Double(count) / elapsed
}

/// The CPython side: `producers` processes put `per` copies of `VALUE` after `go`, `consumers`
/// processes (or the main process when 0) get them; prints items per second times `SCALE`.
private func pythonQueue(value: String, queue: String = "mp.Queue()", producers: Int = 1, consumers: Int = 0, per: Int, scale: String = "1") -> String {
    """
    import multiprocessing as mp, time
    VALUE = \(value)
    def produce(q, ready, go, n):
        put = q.put; value = VALUE
        ready.release(); go.wait()
        for _ in range(n):
            put(value)
    def consume(q, ready, n):
        get = q.get
        ready.release()
        for _ in range(n):
            get()
    def main():
        q = \(queue); ready = mp.Semaphore(0); go = mp.Event()
        producers, consumers, per = \(producers), \(consumers), \(per)
        total = producers * per
        procs = [mp.Process(target=produce, args=(q, ready, go, per)) for _ in range(producers)]
        procs += [mp.Process(target=consume, args=(q, ready, total // consumers)) for _ in range(consumers)]
        for p in procs: p.start()
        for _ in procs: ready.acquire()
        get = q.get
        start = time.monotonic()
        go.set()
        if consumers == 0:
            for _ in range(total):
                get()
        for p in procs: p.join()
        print(total / (time.monotonic() - start) * \(scale))
    if __name__ == '__main__':
        main()
    """
}

let queueWorkloads: [Workload] = [
    Workload(name: "queue-small", unit: "msg/s", higherIsBetter: true,
             swift: { try queueThroughput(BenchMessage(id: 1, value: 1.5, tag: "item"), perProducer: 2_000_000) },
             python: pythonQueue(value: "(1, 1.5, 'item')", per: 200_000)),
    Workload(name: "queue-1kib", unit: "msg/s", higherIsBetter: true,
             swift: { try queueThroughput([UInt8](repeating: 7, count: 1024), perProducer: 1_000_000) },
             python: pythonQueue(value: "bytes(1024)", per: 200_000)),
    Workload(name: "queue-1mib", unit: "MB/s", higherIsBetter: true,
             swift: { try queueThroughput([UInt8](repeating: 7, count: 1 << 20), maxSize: 8, perProducer: 2000) * 1.048576 },
             python: pythonQueue(value: "bytes(1 << 20)", queue: "mp.Queue(8)", per: 1000, scale: "1.048576")),
    Workload(name: "simplequeue-small", unit: "msg/s", higherIsBetter: true,
             swift: { try simpleQueueThroughput(count: 2_000_000) },
             python: pythonQueue(value: "(1, 1.5, 'item')", queue: "mp.SimpleQueue()", per: 200_000)),
    Workload(name: "queue-2x2-small", unit: "msg/s", higherIsBetter: true,
             swift: { try queueThroughput(BenchMessage(id: 1, value: 1.5, tag: "item"), producers: 2, consumers: 2, perProducer: 1_000_000) },
             python: pythonQueue(value: "(1, 1.5, 'item')", producers: 2, consumers: 2, per: 100_000)),
]

/// Nanoseconds per put and get of the small message in one process (no waiting, no other process):
/// the cost of the codec and the ring alone, the best of 20 batches of 20,000.
private func simpleQueueLocalRoundTrip() throws -> Double {
    let queue = try ProcessSimpleQueue<BenchMessage>()
    let batch = 20_000
    var best = Double.infinity
    var checksum = 0
    for round in 0..<21 {
        let start = now()
        for index in 0..<batch {
            try queue.put(BenchMessage(id: index, value: 1.5, tag: "item"))
            checksum &+= try queue.get().id
        }
        // The first batch warms up.
        if round > 0 { best = min(best, now() - start) }
    }
    guard checksum == 21 * (batch * (batch - 1) / 2) else { throw BenchError("wrong items: \(checksum)") }
    return best / Double(batch) * 1e9
}

let queueLocalWorkloads: [Workload] = [
    Workload(name: "simplequeue-local-small", unit: "ns", higherIsBetter: false, swift: simpleQueueLocalRoundTrip, python: """
        import multiprocessing as mp, time
        def best(q, batch, rounds):
            put, get, perf = q.put, q.get, time.perf_counter
            result = float('inf')
            for round in range(rounds + 1):
                start = perf()
                for i in range(batch):
                    put((i, 1.5, 'item'))
                    get()
                if round > 0:
                    result = min(result, perf() - start)
            return result
        if __name__ == '__main__':
            print(best(mp.SimpleQueue(), 20000, 20) / 20000 * 1e9)
        """),
]
