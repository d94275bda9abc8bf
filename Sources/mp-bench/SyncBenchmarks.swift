import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

/// Acquire + release pairs per second on an uncontended ProcessLock.
private func lockUncontended() throws -> Double {
    let lock = try ProcessLock()
    let count = 20_000_000
    let start = now()
    for _ in 0..<count {
        lock.acquire()
        try lock.release()
    }
    return Double(count) / (now() - start)
}

/// Increments per second of a counter in shared memory, two processes each incrementing it under one
/// ProcessLock. The counter lives in an anonymous shared mapping, which the fork start method hands down.
private func lockedCounter(processes: Int = 2, increments: Int = 2_000_000) throws -> Double {
    let lock = try ProcessLock()
    guard let memory = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0),
          memory != MAP_FAILED else { throw BenchError("mmap failed") }
    defer { munmap(memory, 4096) }
    let counter = memory.bindMemory(to: Int.self, capacity: 1)
    counter.pointee = 0
    let address = Int(bitPattern: counter)
    let children = (0..<processes).map { _ in
        ChildProcess(context: ProcessContext(.fork)) {
            let counter = UnsafeMutablePointer<Int>(bitPattern: address)!
            for _ in 0..<increments {
                lock.acquire()
                counter.pointee += 1
                try lock.release()
            }
        }
    }
    let start = now()
    for child in children { try child.start() }
    for child in children {
        guard try child.join(timeout: .seconds(120)), child.exitCode == 0 else {
            throw BenchError("counter child failed: \(String(describing: child.exitCode))")
        }
    }
    let elapsed = now() - start
    guard counter.pointee == processes * increments else {
        throw BenchError("counter reached \(counter.pointee), expected \(processes * increments)")
    }
    return Double(processes * increments) / elapsed
}

/// Answers every ping with a pong.
struct EventPong: ProcessTask {
    let ping: ProcessEvent
    let pong: ProcessEvent
    let rounds: Int
    func run() throws {
        for _ in 0..<rounds {
            guard ping.wait(timeout: .seconds(30)) else { throw BenchError("no ping") }
            ping.clear()
            pong.set()
        }
    }
}

/// Microseconds per ping-pong round trip with two Events between two processes.
private func eventRoundTrip(rounds: Int = 20_000) throws -> Double {
    let ping = try ProcessEvent(), pong = try ProcessEvent()
    let child = ChildProcess(EventPong(ping: ping, pong: pong, rounds: rounds + 100))
    try child.start()
    func play(_ count: Int) throws {
        for _ in 0..<count {
            ping.set()
            guard pong.wait(timeout: .seconds(30)) else { throw BenchError("no pong") }
            pong.clear()
        }
    }
    try play(100)
    let start = now()
    try play(rounds)
    let elapsed = now() - start
    guard try child.join(timeout: .seconds(30)), child.exitCode == 0 else { throw BenchError("pong child failed") }
    return elapsed / Double(rounds) * 1e6
}

/// Runs `body` in a task and blocks the calling thread until it ends.
private func runAwaiting(_ body: @escaping @Sendable () async throws -> Void) throws {
    let finished = try ProcessSemaphore(0)
    let failure = FailureBox()
    Task.detached {
        do { try await body() } catch { failure.error = "\(error)" }
        try? finished.release()
    }
    guard finished.acquire(timeout: .seconds(300)) else { throw BenchError("the awaiting task did not end") }
    if let error = failure.error { throw BenchError(error) }
}

private final class FailureBox: @unchecked Sendable { var error: String? }

/// Microseconds per ping-pong round trip with two Events between two processes, the parent awaiting
/// each pong in a task (the child answers with blocking waits, as in event-roundtrip: tasks started
/// in a child of this statically linked binary never run).
private func asyncEventRoundTrip(rounds: Int = 10_000) throws -> Double {
    let ping = try ProcessEvent(), pong = try ProcessEvent()
    let child = ChildProcess(EventPong(ping: ping, pong: pong, rounds: rounds + 100))
    try child.start()
    @Sendable func play(_ count: Int) async throws {
        for _ in 0..<count {
            ping.set()
            guard try await pong.wait(timeout: .seconds(30)) else { throw BenchError("no pong") }
            pong.clear()
        }
    }
    let elapsed = ElapsedBox()
    try runAwaiting {
        try await play(100)
        let start = now()
        try await play(rounds)
        elapsed.seconds = now() - start
    }
    guard try child.join(timeout: .seconds(30)), child.exitCode == 0 else { throw BenchError("pong child failed") }
    return elapsed.seconds / Double(rounds) * 1e6
}

private final class ElapsedBox: @unchecked Sendable { var seconds = 0.0 }

let synchronizationWorkloads: [Workload] = [
    Workload(name: "lock-uncontended", unit: "ops/s", higherIsBetter: true, swift: { try lockUncontended() },
             python: """
                import multiprocessing as mp, time
                def measure(n):
                    lock = mp.Lock()
                    acquire, release = lock.acquire, lock.release
                    start = time.monotonic()
                    for _ in range(n):
                        acquire(); release()
                    return n / (time.monotonic() - start)
                if __name__ == '__main__':
                    print(measure(1000000))
                """),
    Workload(name: "locked-counter-2proc", unit: "ops/s", higherIsBetter: true, swift: { try lockedCounter() },
             python: """
                import multiprocessing as mp, time
                def work(value, n):
                    for _ in range(n):
                        with value.get_lock():
                            value.value += 1
                if __name__ == '__main__':
                    value = mp.Value('i', 0); n = 200000
                    procs = [mp.Process(target=work, args=(value, n)) for _ in range(2)]
                    start = time.monotonic()
                    for p in procs: p.start()
                    for p in procs: p.join()
                    elapsed = time.monotonic() - start
                    assert value.value == 2 * n, value.value
                    print(2 * n / elapsed)
                """),
    Workload(name: "event-roundtrip", unit: "us", higherIsBetter: false, swift: { try eventRoundTrip() },
             python: """
                import multiprocessing as mp, time
                def pong(ping, pong, n):
                    for _ in range(n):
                        ping.wait(); ping.clear(); pong.set()
                if __name__ == '__main__':
                    ping, pong_ = mp.Event(), mp.Event(); n = 5000
                    p = mp.Process(target=pong, args=(ping, pong_, n + 100)); p.start()
                    def play(k):
                        for _ in range(k):
                            ping.set(); pong_.wait(); pong_.clear()
                    play(100)
                    start = time.monotonic()
                    play(n)
                    elapsed = time.monotonic() - start
                    p.join()
                    print(elapsed / n * 1e6)
                """),
    Workload(name: "async-event-roundtrip", unit: "us", higherIsBetter: false, swift: { try asyncEventRoundTrip() },
             python: """
                import multiprocessing as mp, time, asyncio
                def pong(ping, pong, n):
                    for _ in range(n):
                        ping.wait(); ping.clear(); pong.set()
                async def play(k, ping, pong_):
                    loop = asyncio.get_running_loop()
                    set_, wait, clear = ping.set, pong_.wait, pong_.clear
                    for _ in range(k):
                        set_(); await loop.run_in_executor(None, wait); clear()
                async def timed(n, ping, pong_):
                    await play(100, ping, pong_)
                    start = time.monotonic()
                    await play(n, ping, pong_)
                    return time.monotonic() - start
                if __name__ == '__main__':
                    ping, pong_ = mp.Event(), mp.Event(); n = 2000
                    p = mp.Process(target=pong, args=(ping, pong_, n + 100)); p.start()
                    elapsed = asyncio.run(timed(n, ping, pong_))
                    p.join()
                    print(elapsed / n * 1e6)
                """),
]
