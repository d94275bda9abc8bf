import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// Pools: throughput of trivial tasks (what the pool's own machinery costs per task) and the speedup of a
// CPU-bound task on two workers. CPython's side uses Pool(2) and ProcessPoolExecutor(2).

/// Returns its input plus one: a task whose cost is all the pool's.
struct BenchIncrement: PoolTask {
    func run(_ input: Int) throws -> Int { input &+ 1 }
}

/// Burns CPU: `input` rounds of an integer hash the optimizer cannot fold.
struct BenchBurn: PoolTask {
    func run(_ input: Int) throws -> Int {
        var value = UInt64(truncatingIfNeeded: input) | 1
        for _ in 0..<input { value = value &* 6364136223846793005 &+ 1442695040888963407 ^ (value >> 29) }
        return Int(truncatingIfNeeded: value & 0xFF)
    }
}

/// Tasks per second of `map` over `count` trivial inputs on 2 workers.
private func poolMap(count: Int, chunkSize: Int?) throws -> Double {
    let pool = try ProcessPool(workers: 2)
    defer { pool.terminate() }
    _ = try pool.submitMap(BenchIncrement(), 0..<1000, chunkSize: chunkSize).get(timeout: .seconds(60))
    let start = now()
    let outputs = try pool.submitMap(BenchIncrement(), 0..<count, chunkSize: chunkSize).get(timeout: .seconds(600))
    let seconds = now() - start
    guard outputs.count == count, outputs.last == count else { throw BenchError("pool map gave wrong outputs") }
    return Double(count) / seconds
}

/// Tasks per second of `count` submits followed by a `get` of each.
private func poolSubmit(count: Int) throws -> Double {
    let pool = try ProcessPool(workers: 2)
    defer { pool.terminate() }
    _ = try pool.submit(BenchIncrement(), 1).get(timeout: .seconds(60))
    let start = now()
    let results = try (0..<count).map { try pool.submit(BenchIncrement(), $0) }
    var sum = 0
    for result in results { sum &+= try result.get(timeout: .seconds(600)) }
    let seconds = now() - start
    guard sum == count * (count + 1) / 2 else { throw BenchError("pool submit gave wrong outputs") }
    return Double(count) / seconds
}

/// Tasks per second of `count` executor submits, each awaited.
private func executorSubmit(count: Int) throws -> Double {
    let executor = try ProcessPoolExecutor(maxWorkers: 2)
    defer { executor.killWorkers() }
    return try runAwaited {
        _ = try await executor.run(BenchIncrement(), 1)
        let start = now()
        let futures = try (0..<count).map { try executor.submit(BenchIncrement(), $0) }
        var sum = 0
        for future in futures { sum &+= try await future.value }
        let seconds = now() - start
        guard sum == count * (count + 1) / 2 else { throw BenchError("executor gave wrong outputs") }
        return Double(count) / seconds
    }
}

/// Time of a CPU-bound map on 1 worker divided by its time on 2.
private func poolSpeedup() throws -> Double {
    func seconds(workers: Int) throws -> Double {
        let pool = try ProcessPool(workers: workers)
        defer { pool.terminate() }
        _ = try pool.submitMap(BenchBurn(), [1000, 1000], chunkSize: 1).get(timeout: .seconds(60))
        let start = now()
        _ = try pool.submitMap(BenchBurn(), Array(repeating: 20_000_000, count: 32), chunkSize: 1).get(timeout: .seconds(600))
        return now() - start
    }
    let one = try seconds(workers: 1)
    return one / (try seconds(workers: 2))
}

private func pythonPoolMap(count: Int, chunked: Bool) -> String {
    """
    import multiprocessing as mp, time
    def increment(x):
        return x + 1
    def measure(n):
        with mp.get_context('spawn').Pool(2) as pool:
            pool.map(increment, range(1000)\(chunked ? "" : ", chunksize=1"))
            pool_map = pool.map
            start = time.monotonic()
            out = pool_map(increment, range(n)\(chunked ? "" : ", chunksize=1"))
            seconds = time.monotonic() - start
            assert len(out) == n and out[-1] == n
        return n / seconds
    if __name__ == '__main__':
        print(measure(\(count)))
    """
}

private func pythonApplyAsync(count: Int) -> String {
    """
    import multiprocessing as mp, time
    def increment(x):
        return x + 1
    def measure(n):
        with mp.get_context('spawn').Pool(2) as pool:
            pool.apply_async(increment, (1,)).get()
            apply_async = pool.apply_async
            start = time.monotonic()
            results = [apply_async(increment, (i,)) for i in range(n)]
            total = sum(r.get() for r in results)
            seconds = time.monotonic() - start
            assert total == n * (n + 1) // 2
        return n / seconds
    if __name__ == '__main__':
        print(measure(\(count)))
    """
}

private func pythonExecutorSubmit(count: Int) -> String {
    """
    import multiprocessing as mp, time
    from concurrent.futures import ProcessPoolExecutor
    def increment(x):
        return x + 1
    def measure(n):
        with ProcessPoolExecutor(2, mp_context=mp.get_context('spawn')) as executor:
            executor.submit(increment, 1).result()
            submit = executor.submit
            start = time.monotonic()
            futures = [submit(increment, i) for i in range(n)]
            total = sum(f.result() for f in futures)
            seconds = time.monotonic() - start
            assert total == n * (n + 1) // 2
        return n / seconds
    if __name__ == '__main__':
        print(measure(\(count)))
    """
}

private let pythonSpeedup = """
    import multiprocessing as mp, time
    def burn(n):
        value = n | 1
        mask = (1 << 64) - 1
        for _ in range(n):
            value = ((value * 6364136223846793005 + 1442695040888963407) & mask) ^ (value >> 29)
        return value & 0xFF
    def seconds(workers):
        with mp.get_context('spawn').Pool(workers) as pool:
            pool.map(burn, [1000, 1000], chunksize=1)
            start = time.monotonic()
            pool.map(burn, [100_000] * 16, chunksize=1)
            return time.monotonic() - start
    if __name__ == '__main__':
        one = seconds(1)
        print(one / seconds(2))
    """

let poolWorkloads: [Workload] = [
    Workload(name: "pool-map-chunk1", unit: "tasks/s", higherIsBetter: true,
             swift: { try poolMap(count: 100_000, chunkSize: 1) }, python: pythonPoolMap(count: 100_000, chunked: false)),
    Workload(name: "pool-map-default", unit: "tasks/s", higherIsBetter: true,
             swift: { try poolMap(count: 100_000, chunkSize: nil) }, python: pythonPoolMap(count: 100_000, chunked: true)),
    Workload(name: "pool-apply-async", unit: "tasks/s", higherIsBetter: true,
             swift: { try poolSubmit(count: 10_000) }, python: pythonApplyAsync(count: 10_000)),
    Workload(name: "executor-submit", unit: "tasks/s", higherIsBetter: true,
             swift: { try executorSubmit(count: 10_000) }, python: pythonExecutorSubmit(count: 10_000)),
    Workload(name: "pool-speedup", unit: "x", higherIsBetter: true,
             swift: { try poolSpeedup() }, python: pythonSpeedup),
]
