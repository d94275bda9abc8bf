// The programs the MPI tests launch with mpirun: each mode runs a pool job on rank 0 and prints what the
// test checks ("OK ..." lines, or "FAIL ..." with the reason, and exit status 1).
import Multiprocessing
import MultiprocessingMPI
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

struct Square: PoolTask {
    func run(_ input: Int) throws -> Int { input * input }
}

/// Crashes its local worker with SIGSEGV on one input.
struct CrashOn: PoolTask {
    let bad: Int
    func run(_ input: Int) throws -> Int {
        if input == bad { kill(getpid(), SIGSEGV) }
        return input + 1
    }
}

struct Refused: Error, Codable, Equatable {
    let input: Int
}

/// Throws a Codable error on one input.
struct ThrowOn: PoolTask {
    let bad: Int
    func run(_ input: Int) throws -> Int {
        if input == bad { throw Refused(input: input) }
        return input
    }
}

/// Throws on one input and crashes its local worker with SIGSEGV on a later one.
struct ThrowThenCrash: PoolTask {
    let bad: Int
    let crash: Int
    func run(_ input: Int) throws -> Int {
        if input == bad { throw Refused(input: input) }
        if input == crash { kill(getpid(), SIGSEGV) }
        return input + 1
    }
}

/// Kills the worker rank that runs it (its local worker's parent) on one input.
struct KillRankOn: PoolTask {
    let bad: Int
    func run(_ input: Int) throws -> Int {
        if input == bad { kill(getppid(), SIGKILL) }
        return input
    }
}

/// Never ends on one input.
struct HangOn: PoolTask {
    let bad: Int
    func run(_ input: Int) throws -> Int {
        if input == bad { while true { var time = timespec(tv_sec: 1, tv_nsec: 0); nanosleep(&time, nil) } }
        return input
    }
}

/// Sleeps for the input's number of seconds.
struct SleepFor: PoolTask {
    func run(_ input: Int) throws -> Int {
        var time = timespec(tv_sec: input, tv_nsec: 0)
        nanosleep(&time, nil)
        return input
    }
}

/// On one input spins until its CPU-time limit ends its local worker; on another kills its worker with
/// SIGKILL; otherwise returns the input.
struct BurnOrDie: PoolTask {
    let burn: Int
    let die: Int
    func run(_ input: Int) throws -> Int {
        if input == die { kill(getpid(), SIGKILL) }
        if input == burn {
            // An endless loop whose result may be printed, so an optimizer can neither drop nor end it.
            var x: UInt64 = 1
            while true {
                for _ in 0..<1_000_000 { x = x &* 6364136223846793005 &+ 1442695040888963407 }
                if x == 0 { print("x reached 0") }
            }
        }
        return input
    }
}

/// The name of the host that ran the input.
struct HostName: PoolTask {
    func run(_ input: Int) throws -> String {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count - 1)
        return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The sum of the bytes, to check a large input arrived whole.
struct ByteSum: PoolTask {
    func run(_ input: [UInt8]) throws -> Int { input.reduce(0) { $0 + Int($1) } }
}

struct Length: PoolTask {
    func run(_ input: [UInt8]) throws -> Int { input.count }
}

/// As many bytes as the input says.
struct Fill: PoolTask {
    func run(_ input: Int) throws -> [UInt8] { [UInt8](repeating: 9, count: input) }
}

struct AsyncDouble: AsyncPoolTask {
    func run(_ input: Int) async throws -> Int {
        await Task.yield()
        return input * 2
    }
}

/// The async map of an async task, and an awaited future.
func asyncMap(_ pool: MPIPool) async throws -> [Int] {
    let doubled: [Int] = try await pool.map(AsyncDouble(), 0..<100, chunkSize: 7)
    let squared = try await pool.submit(Square(), 9).value
    expect(squared == 81, "awaited future")
    return doubled
}

private struct Hidden: PoolTask {
    func run(_ input: Int) throws -> Int { input }
}

func expectCode(_ code: MultiprocessingError.Code, _ body: () throws -> Void) {
    do {
        try body()
        fail("no error, expected \(code)")
    } catch let error as MultiprocessingError {
        expect(error.code == code, "expected \(code), got \(error)")
    } catch {
        fail("expected \(code), got \(error)")
    }
}

/// This process's resident memory, from /proc/self/statm.
func residentBytes() -> Int {
    guard let file = fopen("/proc/self/statm", "r") else { return 0 }
    defer { fclose(file) }
    var size = 0
    var resident = 0
    guard withUnsafeMutablePointer(to: &size, { size in
        withUnsafeMutablePointer(to: &resident) { resident in
            withVaList([size, resident]) { vfscanf(file, "%ld %ld", $0) }
        }
    }) == 2 else { return 0 }
    return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
}

func fail(_ text: String) -> Never {
    print("FAIL \(text)")
    exit(1)
}

func expect(_ condition: Bool, _ text: @autoclosure () -> String) {
    if !condition { fail(text()) }
}

let mode = CommandLine.arguments.dropFirst().first ?? ""
let limit: Duration = .seconds(60)

do {
    switch mode {
    case "map":
        let pool = try MPIPool()
        let count = Int(CommandLine.arguments.dropFirst(2).first ?? "1000") ?? 1000
        let results = try pool.map(Square(), 0..<count, timeout: limit)
        expect(results == (0..<count).map { $0 * $0 }, "map results differ")
        // Inputs of other shapes (closed ranges, slices, lazy sequences) give the same outputs.
        expect(try pool.map(Square(), -3...300, chunkSize: 7, timeout: limit) == (-3...300).map { $0 * $0 }, "closed range")
        expect(try pool.map(Square(), Array(0..<count)[10..<90], timeout: limit) == (10..<90).map { $0 * $0 }, "array slice")
        expect(try pool.map(Square(), (0..<50).lazy.map { $0 + 1 }, timeout: limit) == (1...50).map { $0 * $0 }, "lazy sequence")
        let async = try await asyncMap(pool)
        expect(async == (0..<100).map { $0 * 2 }, "async map results differ")
        let future = try pool.submit(Square(), 12)
        expect(try future.get(timeout: limit) == 144, "submit")
        expect(try pool.apply(Square(), 7, timeout: limit) == 49, "apply")
        let ordered = try pool.imap(Square(), 0..<50, chunkSize: 3).map { try $0.get() }
        expect(ordered == (0..<50).map { $0 * $0 }, "imap order")
        let unordered = try pool.imapUnordered(Square(), 0..<50, chunkSize: 2).map { try $0.get() }
        expect(unordered.sorted() == (0..<50).map { $0 * $0 }, "imapUnordered set")
        let big = [UInt8](repeating: 3, count: 1 << 20)
        let sums = try pool.map(ByteSum(), Array(repeating: big, count: 8), chunkSize: 1, timeout: limit)
        expect(sums == Array(repeating: 3 << 20, count: 8), "1 MiB inputs")
        // Rank 0 lets go of each batch once it is sent: 200 MiB of inputs do not stay behind.
        let before = residentBytes()
        let many = try pool.map(Length(), Array(repeating: big, count: 200), chunkSize: 1, timeout: limit)
        let kept = residentBytes() - before
        expect(many == Array(repeating: 1 << 20, count: 200) && kept < 64 << 20, "rank 0 kept \(kept >> 20) MiB after a map of 200 MiB")
        // One batch whose outputs overflow the memory they go back through (6 MiB), then one larger than it.
        let sizes = Array(repeating: 512 << 10, count: 12) + [5 << 20]
        let blocks = try pool.map(Fill(), sizes, chunkSize: sizes.count, timeout: limit)
        expect(blocks.map(\.count) == sizes && blocks.allSatisfy { $0.allSatisfy { $0 == 9 } }, "large outputs")
        // A progress report that submits more work while 16 MiB or more wait to be sent: queued at once
        // (the report runs on the thread that sends, which it must not wait for).
        let later = Mutex<MPIResults<Int>?>(nil)
        let firsts = try pool.map(Length(), Array(repeating: big, count: 40), chunkSize: 1, timeout: limit) { _, _ in
            later.withLock { if $0 == nil { $0 = try? pool.imap(Length(), Array(repeating: big, count: 20)) } }
        }
        let seconds = later.withLock { $0 }.map { Array($0).compactMap { try? $0.get() } }
        expect(firsts.count == 40 && seconds == Array(repeating: 1 << 20, count: 20), "work submitted from a progress report")
        // Progress: one report per batch, the last one complete, all before map returns.
        let reports = Mutex<[Int]>([])
        _ = try pool.map(Square(), 0..<100, chunkSize: 10, timeout: limit) { finished, total in
            reports.withLock { $0.append(total == 100 ? finished : -1) }
        }
        let seen = reports.withLock { $0 }
        expect(seen.count == 10 && seen.max() == 100 && !seen.contains(-1), "progress reports \(seen)")
        // A per-call timeout: the input past it fails alone with timedOut, as for the local pool.
        let timed = try pool.mapResults(SleepFor(), [0, 30, 0], chunkSize: 1, timeout: .milliseconds(500))
        guard case .failure(let late as MultiprocessingError) = timed[1], late.code == .timedOut,
            (try? timed[0].get()) == 0, (try? timed[2].get()) == 0
        else { fail("per-call timeout: \(timed)") }
        // Bad input: a typed error, and the pool still serves.
        expectCode(.invalidArgument) { _ = try pool.map(Square(), 0..<4, chunkSize: 0) }
        expectCode(.invalidArgument) { _ = try pool.map(Hidden(), 0..<4) }
        expectCode(.invalidArgument) { _ = try MPIPool(spawningWorkers: 0) }
        expectCode(.timedOut) { _ = try pool.map(SleepFor(), [1], timeout: .milliseconds(200)) }
        expect(try pool.map(Square(), [], timeout: limit).isEmpty, "an empty map")
        print("OK map \(count) workers \(pool.workerCount)")
        try pool.shutdown()
    case "crash":
        let pool = try MPIPool()
        let results = Array(try pool.imap(CrashOn(bad: 150), 0..<300, chunkSize: 10))
        for (index, result) in results.enumerated() where index != 150 {
            expect((try? result.get()) == index + 1, "input \(index) gave \(result)")
        }
        guard case .failure(let error as MultiprocessingError) = results[150] else { fail("input 150 gave \(results[150])") }
        expect(error.code == .childFailed, "code \(error.code)")
        expect(error.signal == .segmentationViolation, "signal \(String(describing: error.signal))")
        expect(error.message.contains("rank ") && error.message.contains("host "), "message \(error.message)")
        print("OK crash \(error)")
        // The ranks keep serving after the crash; a thrown error comes back as itself.
        do {
            _ = try pool.map(ThrowOn(bad: 3), 0..<10, timeout: limit)
            fail("the thrown error was lost")
        } catch let refused as Refused {
            expect(refused == Refused(input: 3), "thrown \(refused)")
        }
        expect(try pool.map(Square(), 0..<20, timeout: limit) == (0..<20).map { $0 * $0 }, "after the crash")
        let outcomes = try pool.mapResults(CrashOn(bad: 3), 0..<10, chunkSize: 5)
        expect(outcomes.indices.allSatisfy { index in
            index == 3 ? (try? outcomes[index].get()) == nil : (try? outcomes[index].get()) == index + 1
        }, "mapResults \(outcomes)")
        // In one batch: an input that throws, one that crashes after it, and the rest succeed.
        let mixed = try pool.mapResults(ThrowThenCrash(bad: 2, crash: 5), 0..<8, chunkSize: 8)
        expect(mixed.indices.allSatisfy { index in
            switch (index, mixed[index]) {
            case (2, .failure(let error)): return (error as? Refused) == Refused(input: 2)
            case (5, .failure(let error)): return (error as? MultiprocessingError)?.signal == .segmentationViolation
            case (_, .success(let output)): return output == index + 1
            default: return false
            }
        }, "a throw then a crash in one batch: \(mixed)")
        print("OK thrown")
        try pool.shutdown()
    case "timeout":
        let pool = try MPIPool(taskTimeout: .seconds(1))
        let results = Array(try pool.imap(HangOn(bad: 4), 0..<12, chunkSize: 3))
        guard case .failure(let error as MultiprocessingError) = results[4] else { fail("input 4 gave \(results[4])") }
        expect(error.code == .timedOut, "code \(error.code)")
        for (index, result) in results.enumerated() where index != 4 {
            expect((try? result.get()) == index, "input \(index) gave \(result)")
        }
        print("OK timeout \(error)")
        try pool.shutdown()
    case "killrank":
        let pool = try MPIPool()
        print("STARTED")
        _ = try pool.map(KillRankOn(bad: 5), 0..<40, chunkSize: 1, timeout: limit)
        print("UNEXPECTED completion")
        try pool.shutdown()
    case "killrank-recover":
        // Under `mpirun --enable-recovery` the job outlives a dead rank: its inputs fail, the rest run.
        let pool = try MPIPool()
        let results = Array(try pool.imap(KillRankOn(bad: 5), 0..<40, chunkSize: 1))
        var lost = 0
        for (index, result) in results.enumerated() {
            switch result {
            case .success(let value): expect(value == index, "input \(index) gave \(value)")
            case .failure(let error as MultiprocessingError) where error.code == .rankLost: lost += 1
            case .failure(let error): fail("input \(index) failed with \(error)")
            }
        }
        // What the killed rank held: up to four one-input batches while its batches run quickly (the
        // scheduler's deeper window), two otherwise.
        expect(lost >= 1 && lost <= 4, "\(lost) inputs lost")
        expect(try pool.map(Square(), 0..<50, timeout: limit) == (0..<50).map { $0 * $0 }, "after the rank was lost")
        print("OK recovered \(lost) lost")
        try pool.shutdown(timeout: .seconds(20))
        print("OK shut down")
    case "limits":
        // A task past its CPU-time limit, and one killed, each fail alone with their signal.
        let pool = try MPIPool(limits: ResourceLimits(cpuSeconds: 1))
        let results = Array(try pool.imap(BurnOrDie(burn: 3, die: 11), 0..<16, chunkSize: 4))
        guard case .failure(let burned as MultiprocessingError) = results[3], burned.code == .childFailed,
            burned.signal == .cpuTimeLimitExceeded || burned.signal == .kill
        else { fail("input 3 gave \(results[3])") }
        guard case .failure(let killed as MultiprocessingError) = results[11], killed.code == .childFailed, killed.signal == .kill
        else { fail("input 11 gave \(results[11])") }
        for (index, result) in results.enumerated() where index != 3 && index != 11 {
            expect((try? result.get()) == index, "input \(index) gave \(result)")
        }
        print("OK limits \(burned.signal!) \(killed.signal!)")
        try pool.shutdown()
    case "noshutdown":
        // The program ends without shutdown(): the exit hook stops the workers and finalises MPI.
        let pool = try MPIPool()
        expect(try pool.map(Square(), 0..<100, timeout: limit) == (0..<100).map { $0 * $0 }, "map")
        print("OK noshutdown")
    case "killmaster":
        // Rank 0 dies with inputs in flight; under `mpirun --enable-recovery` the worker ranks then end
        // on their own instead of serving nobody forever.
        let pool = try MPIPool()
        _ = try pool.submit(SleepFor(), 2)
        _ = try pool.submit(SleepFor(), 2)
        print("STARTED")
        var time = timespec(tv_sec: 0, tv_nsec: 300_000_000)
        nanosleep(&time, nil)
        kill(getpid(), SIGKILL)
    case "single":
        expectCode(.invalidState) { _ = try MPIPool() }
        print("OK single")
    case "spawn":
        let workers = Int(CommandLine.arguments.dropFirst(2).first ?? "2") ?? 2
        let pool = try MPIPool(spawningWorkers: workers)
        let results = try pool.map(Square(), 0..<500, timeout: limit)
        expect(results == (0..<500).map { $0 * $0 }, "spawned map results differ")
        let crashed = Array(try pool.imap(CrashOn(bad: 7), 0..<20))
        guard case .failure(let error as MultiprocessingError) = crashed[7], error.code == .childFailed else { fail("crash in spawned worker: \(crashed[7])") }
        print("OK spawn \(pool.workerCount)")
        try pool.shutdown()
    case "hosts":
        let pool = try MPIPool()
        let hosts = try pool.map(HostName(), 0..<200, chunkSize: 5, timeout: limit)
        let squares = try pool.map(Square(), 0..<200, timeout: limit)
        expect(squares == (0..<200).map { $0 * $0 }, "results across hosts differ")
        print("OK hosts \(Set(hosts).sorted().joined(separator: ","))")
        try pool.shutdown()
    default:
        fail("unknown mode \(mode)")
    }
} catch {
    fail("\(error)")
}
