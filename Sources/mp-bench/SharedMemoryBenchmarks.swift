import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

/// Microseconds per create + attach + close + close + unlink of a 4 KiB named block.
private func sharedMemoryCycle(cycles: Int = 20_000) throws -> Double {
    try SharedMemory(size: 1).unlink()  // starts this process's tracker, as CPython's warm-up starts its own
    let start = now()
    for _ in 0..<cycles {
        let block = try SharedMemory(size: 4096)
        let other = try SharedMemory(attachingTo: block.name)
        other.close()
        block.close()
        try block.unlink()
    }
    return (now() - start) / Double(cycles) * 1e6
}

/// Adds 1 to a shared counter `count` times with an atomic add.
struct AtomicCounterChild: ProcessTask {
    let counter: RawSharedValue<Int>
    let count: Int
    func run() throws {
        for _ in 0..<count { counter.add(1) }
    }
}

/// Atomic adds per second, two processes adding 1 to one shared counter.
private func atomicCounter(processes: Int = 2, count: Int = 50_000_000) throws -> Double {
    let counter = try RawSharedValue<Int>(0)
    let children = (0..<processes).map { _ in ChildProcess(AtomicCounterChild(counter: counter, count: count)) }
    let start = now()
    for child in children { try child.start() }
    for child in children {
        guard try child.join(timeout: .seconds(120)), child.exitCode == 0 else {
            throw BenchError("counter child failed: \(String(describing: child.exitCode))")
        }
    }
    let elapsed = now() - start
    guard counter.load() == processes * count else { throw BenchError("counter reached \(counter.load())") }
    return Double(processes * count) / elapsed
}

/// Sums a shared array in a child and reports the sum.
struct ArraySumChild: ProcessTask {
    let array: RawSharedArray<Int64>
    let result: RawSharedValue<Int64>
    func run() throws {
        result.value = array.withUnsafeMutableBufferPointer { $0.reduce(0, &+) }
    }
}

/// GB/s of a child summing a 1 GiB array of Int64 that the parent filled, timed by the parent from the
/// child's start to its end (so mapping the memory and faulting it in count, on both sides). The child
/// comes from the fork server, the quick start method, as CPython's side uses its quick default, fork.
private func arraySum(bytes: Int = 1 << 30) throws -> Double {
    let count = bytes / 8
    let array = try RawSharedArray<Int64>(repeating: 0, count: count)
    array.withUnsafeMutableBufferPointer { buffer in
        for index in buffer.indices { buffer[index] = Int64(index) }
    }
    let result = try RawSharedValue<Int64>(0)
    let child = ChildProcess(ArraySumChild(array: array, result: result), context: ProcessContext(.forkserver))
    let start = now()
    try child.start()
    guard try child.join(timeout: .seconds(120)), child.exitCode == 0 else {
        throw BenchError("sum child failed: \(String(describing: child.exitCode))")
    }
    let elapsed = now() - start
    let expected = Int64(count) * Int64(count - 1) / 2
    guard result.value == expected else { throw BenchError("sum \(result.value), expected \(expected)") }
    return Double(bytes) / elapsed / 1e9
}

let sharedMemoryWorkloads: [Workload] = [
    Workload(
        name: "shm-cycle", unit: "us", higherIsBetter: false,
        swift: { try sharedMemoryCycle() },
        python: """
            import time
            from multiprocessing import shared_memory

            def bench(cycles):
                SharedMemory = shared_memory.SharedMemory
                warm = SharedMemory(create=True, size=1)
                warm.close()
                warm.unlink()
                start = time.perf_counter()
                for _ in range(cycles):
                    block = SharedMemory(create=True, size=4096)
                    other = SharedMemory(block.name)
                    other.close()
                    block.close()
                    block.unlink()
                return (time.perf_counter() - start) / cycles * 1e6

            print(bench(5000))
            """),
    Workload(
        name: "shared-counter-atomic-2proc", unit: "ops/s", higherIsBetter: true,
        swift: { try atomicCounter() },
        python: """
            import multiprocessing as mp
            import time

            def add(value, count):
                lock = value.get_lock()
                raw = value.get_obj()
                for _ in range(count):
                    with lock:
                        raw.value += 1

            def bench(count):
                value = mp.Value("q", 0)
                children = [mp.Process(target=add, args=(value, count)) for _ in range(2)]
                start = time.perf_counter()
                for child in children:
                    child.start()
                for child in children:
                    child.join()
                elapsed = time.perf_counter() - start
                assert value.value == 2 * count, value.value
                return 2 * count / elapsed

            if __name__ == "__main__":
                print(bench(200_000))
            """),
    Workload(
        name: "shared-array-sum-1gib", unit: "GB/s", higherIsBetter: true,
        swift: { try arraySum() },
        python: """
            import multiprocessing as mp
            import time
            import numpy as np
            from multiprocessing import shared_memory

            def total(name, count, results):
                block = shared_memory.SharedMemory(name)
                array = np.ndarray((count,), dtype=np.int64, buffer=block.buf)
                results.send(int(array.sum()))
                del array
                block.close()

            def bench(nbytes):
                count = nbytes // 8
                block = shared_memory.SharedMemory(create=True, size=nbytes)
                array = np.ndarray((count,), dtype=np.int64, buffer=block.buf)
                array[:] = np.arange(count, dtype=np.int64)
                receiver, sender = mp.Pipe(duplex=False)
                child = mp.Process(target=total, args=(block.name, count, sender))
                start = time.perf_counter()
                child.start()
                result = receiver.recv()
                child.join()
                elapsed = time.perf_counter() - start
                assert result == count * (count - 1) // 2, result
                del array
                block.close()
                block.unlink()
                return nbytes / elapsed / 1e9

            if __name__ == "__main__":
                print(bench(1 << 30))
            """),
]
