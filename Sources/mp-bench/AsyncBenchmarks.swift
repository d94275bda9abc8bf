import Dispatch
import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// Awaited forms beside the blocking ones: the same workload measured both ways in one run. The BENCH line
// compares the awaited form with CPython's blocking one (CPython's multiprocessing has no awaitable
// connections); an ASYNC line gives the awaited and blocking Swift figures and their ratio.

/// Runs `body` on Swift's concurrency runtime and waits for its result.
final class ResultBox<T>: @unchecked Sendable { var result: Result<T, any Error>? }

func runAwaited<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        do { box.result = .success(try await body()) } catch { box.result = .failure(error) }
        done.signal()
    }
    done.wait()
    return try box.result!.get()
}

/// Echoes `count` messages back, awaiting each receive and send on the child's own event loop.
struct BenchAsyncEcho: ProcessTask {
    let connection: Connection
    let count: Int
    func run() throws {
        let connection = connection, count = count
        try runAwaited {
            for _ in 0..<count { try await connection.sendBytes(connection.recvBytes()) }
        }
    }
}

/// Microseconds per round trip of a 16-byte message, awaited on both sides or blocking on both sides.
private func roundTrip(awaited: Bool) throws -> Double {
    let warmup = 2_000, count = 50_000
    let (mine, theirs) = try makePipe()
    let child = awaited ? ChildProcess(BenchAsyncEcho(connection: theirs, count: warmup + count))
                        : ChildProcess(BenchEcho(connection: theirs, count: warmup + count))
    try child.start()
    theirs.close()
    let message = [UInt8](repeating: 0x78, count: 16)
    let micros: Double
    if awaited {
        micros = try runAwaited {
            for _ in 0..<warmup { try await mine.sendBytes(message); _ = try await mine.recvBytes() }
            let start = now()
            for _ in 0..<count { try await mine.sendBytes(message); _ = try await mine.recvBytes() }
            return (now() - start) / Double(count) * 1e6
        }
    } else {
        for _ in 0..<warmup { try mine.sendBytes(message); _ = try mine.recvBytes() }
        let start = now()
        for _ in 0..<count { try mine.sendBytes(message); _ = try mine.recvBytes() }
        micros = (now() - start) / Double(count) * 1e6
    }
    guard try child.join(timeout: .seconds(60)), child.exitCode == 0 else {
        throw BenchError("echo child ended with \(String(describing: child.exitCode))")
    }
    return micros
}

/// Milliseconds per start + join of a no-op spawned child, the join awaited or blocking.
private func startJoinSpawn(awaited: Bool, count: Int = 200) throws -> Double {
    let warm = ChildProcess(NoOp())
    try warm.start()
    try warm.join()
    if awaited {
        return try runAwaited {
            let start = now()
            for _ in 0..<count {
                let child = ChildProcess(NoOp())
                try child.start()
                try await child.join()
                guard child.exitCode == 0 else { throw BenchError("child ended with \(String(describing: child.exitCode))") }
            }
            return (now() - start) / Double(count) * 1000
        }
    }
    let start = now()
    for _ in 0..<count {
        let child = ChildProcess(NoOp())
        try child.start()
        try child.join()
    }
    return (now() - start) / Double(count) * 1000
}

/// Measures the awaited and blocking forms alternately, three times each, keeps the best of each, prints
/// the ASYNC line and returns the awaited figure.
private func awaitedBesideBlocking(_ name: String, _ measure: (Bool) throws -> Double) throws -> Double {
    var awaited = Double.infinity, blocking = Double.infinity
    for _ in 0..<3 {
        blocking = min(blocking, try measure(false))
        awaited = min(awaited, try measure(true))
    }
    print("ASYNC \(name) awaited=\(format(awaited)) blocking=\(format(blocking)) ratio=\(format(awaited / blocking))")
    return awaited
}

let asyncWorkloads: [Workload] = [
    Workload(name: "async-pipe-roundtrip", unit: "us", higherIsBetter: false,
             swift: { try awaitedBesideBlocking("async-pipe-roundtrip", roundTrip(awaited:)) },
             python: pythonPipeRoundTrip),
    Workload(name: "async-join-spawn", unit: "ms", higherIsBetter: false,
             swift: { try awaitedBesideBlocking("async-join-spawn") { try startJoinSpawn(awaited: $0) } },
             python: """
                import multiprocessing as mp, time
                def noop():
                    pass
                def main(n):
                    ctx = mp.get_context('spawn')
                    Process = ctx.Process
                    p = Process(target=noop); p.start(); p.join()
                    start = time.monotonic()
                    for _ in range(n):
                        p = Process(target=noop); p.start(); p.join()
                    return (time.monotonic() - start) / n * 1000
                if __name__ == '__main__':
                    print(main(20))
                """),
]
