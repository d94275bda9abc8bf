#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import Multiprocessing

/// Squares its input.
struct Square: PoolTask {
    func run(_ input: Int) throws -> Int { input * input }
}

/// Multiplies by a factor: a generic task type, found by name in spawned workers.
struct Scale<Value: Codable & Sendable & Numeric>: PoolTask {
    let factor: Value
    func run(_ input: Value) throws -> Value { input * factor }
}

/// What a worker does with one input of ``Misbehave``.
enum Misdeed: String, Codable, Sendable {
    case none, killSelf, segfault, sleep, throwCodable, throwOpaque, allocate, badOutput, fatal
}

/// One input of ``Misbehave``: a value and what to do with it.
struct Deed: Codable, Sendable {
    var value: Int
    var misdeed = Misdeed.none
}

/// A value that refuses to be encoded when negative.
struct Picky: Codable, Sendable, Equatable {
    let value: Int
    init(_ value: Int) { self.value = value }
    init(from decoder: any Decoder) throws { value = try decoder.singleValueContainer().decode(Int.self) }
    func encode(to encoder: any Encoder) throws {
        guard value >= 0 else { throw MultiprocessingError(.invalidArgument, "negative values stay home") }
        var container = encoder.singleValueContainer()
        try container.encode(value)
    }
}

/// Returns its input's value, unless told to misbehave.
struct Misbehave: PoolTask {
    func run(_ input: Deed) throws -> Picky {
        switch input.misdeed {
        case .none: break
        case .killSelf: kill(getpid(), SIGKILL)
        case .segfault: UnsafeMutablePointer<Int>(bitPattern: 16)!.pointee = 1
        case .sleep: usleep(UInt32(input.value) * 1000)
        case .throwCodable: throw ParseFailure(line: input.value, reason: "bad input")
        case .throwOpaque: throw OpaqueFailure(detail: input.value)
        case .allocate:
            let array = [UInt8](repeating: 1, count: input.value)
            return Picky(Int(array[input.value / 2]))
        case .badOutput: return Picky(-input.value)
        case .fatal: fatalError("worker gives up on \(input.value)")
        }
        return Picky(input.value)
    }
}

/// Returns the worker's pid.
struct WorkerPid: PoolTask {
    func run(_ input: Int) throws -> Int32 { getpid() }
}

/// Sleeps `input` milliseconds with `Task.sleep`, then returns it.
struct AsyncNap: AsyncPoolTask {
    func run(_ input: Int) async throws -> Int {
        try await Task.sleep(for: .milliseconds(input))
        return input
    }
}

/// Leaves a pool open and returns: the program must still end.
struct LeavePoolOpen: ProcessTask {
    func run() throws {
        let pool = try ProcessPool(workers: 2)
        let squares = try pool.submitMap(Square(), 1...20).get(timeout: .seconds(30))
        guard squares.reduce(0, +) == 2870 else { exit(3) }
        // Kept alive to the end of the program, never closed nor terminated.
        _ = Unmanaged.passRetained(pool)
    }
}

/// Counts how many of its elements were read: an endless sequence for imap's backpressure.
final class CountingNaturals: Sequence, Sendable {
    let reads = Mutex(0)
    struct Iterator: IteratorProtocol {
        let owner: CountingNaturals
        var last = 0
        mutating func next() -> Int? {
            owner.reads.withLock { $0 += 1 }
            last += 1
            return last
        }
    }
    func makeIterator() -> Iterator { Iterator(owner: self) }
}

private struct Hidden: PoolTask {
    func run(_ input: Int) throws -> Int { input }
}

func deeds(_ count: Int, _ special: [Int: Deed]) -> [Deed] {
    (0..<count).map { special[$0] ?? Deed(value: $0) }
}

@Suite("Process pool")
struct PoolTests {
    @Test("map, generic tasks, submit with callbacks, async apply, and Python's close/join rules")
    func basics() async throws {
        let pool = try ProcessPool(workers: 2)
        let squares = try pool.submitMap(Square(), 0..<100).get(timeout: .seconds(30))
        #expect(squares == (0..<100).map { $0 * $0 })
        #expect(try pool.submitMap(Scale(factor: 2.5), [1.0, 2.0]).get(timeout: .seconds(30)) == [2.5, 5.0])
        #expect(try pool.submitMap(Scale(factor: 3), [1, 2], chunkSize: 1).get(timeout: .seconds(30)) == [3, 6])

        let seen = Mutex<[Int]>([])
        let result = try pool.submit(Square(), 9, onSuccess: { value in seen.withLock { $0.append(value) } })
        #expect(try result.get(timeout: .seconds(30)) == 81)
        #expect(result.isReady)
        #expect(try result.isSuccessful)
        #expect(seen.withLock { $0 } == [81])
        let failed = Mutex<String?>(nil)
        let bad = try pool.submit(Misbehave(), Deed(value: 3, misdeed: .throwOpaque), onFailure: { error in failed.withLock { $0 = "\(error)" } })
        #expect(bad.wait(timeout: .seconds(30)))
        #expect(try bad.isSuccessful == false)
        #expect(failed.withLock { $0 }?.contains("opaque failure 3") == true)

        #expect(try await withTimeLimit(.seconds(30)) { try await pool.apply(Square(), 12) } == 144)
        #expect(try await withTimeLimit(.seconds(30)) { try await pool.apply(AsyncNap(), 5) } == 5)
        #expect(try await withTimeLimit(.seconds(30)) { try await pool.map(AsyncNap(), [3, 1, 2]) } == [3, 1, 2])

        #expect(throws: MultiprocessingError.self) { try pool.submit(Hidden(), 1) }
        do {
            _ = try await pool.join(timeout: .seconds(1))
            Issue.record("join before close must fail")
        } catch let error as MultiprocessingError {
            #expect(error.code == .invalidState)
        }
        pool.close()
        do {
            _ = try pool.submit(Square(), 1)
            Issue.record("submit after close must fail")
        } catch let error as MultiprocessingError {
            #expect(error.code == .invalidState)
        }
        #expect(try await pool.join(timeout: .seconds(10)))
        #expect(pool.workerIdentifiers.isEmpty)
    }

    @Test("one pool survives SIGKILL, a segfault, fatalError, timeouts and encoding failures: only those inputs fail")
    func failuresStayWithTheirInput() throws {
        let pool = try ProcessPool(workers: 2, workerSettings: ChildSettings(standardError: .null))
        // SIGKILL of the worker running input 500 of 1,000.
        let killed = try pool.mapResults(Misbehave(), deeds(1000, [500: Deed(value: 500, misdeed: .killSelf)]), chunkSize: 1)
        #expect(killed.count == 1000)
        for (index, outcome) in killed.enumerated() where index != 500 {
            #expect((try? outcome.get()) == Picky(index))
        }
        guard case .failure(let error as MultiprocessingError) = killed[500] else {
            Issue.record("input 500 should fail")
            return
        }
        #expect(error.code == .childFailed)
        #expect(error.signal == .kill)
        #expect(error.pid != nil)
        #expect(error.message.contains("input 500"))

        // A segfault, fatalError, a timeout, thrown errors and encoding failures in one map, default chunks.
        var inputs = deeds(60, [
            10: Deed(value: 10, misdeed: .segfault), 20: Deed(value: 20, misdeed: .fatal),
            30: Deed(value: 5_000, misdeed: .sleep), 40: Deed(value: 40, misdeed: .throwCodable),
            50: Deed(value: 50, misdeed: .throwOpaque), 55: Deed(value: 55, misdeed: .badOutput),
        ])
        inputs.append(Deed(value: 1, misdeed: .none))
        let began = ContinuousClock.now
        let outcomes = try pool.mapResults(Misbehave(), inputs, timeout: .milliseconds(1500))
        #expect(ContinuousClock.now - began < .seconds(4))
        for (index, outcome) in outcomes.enumerated() where ![10, 20, 30, 40, 50, 55].contains(index) {
            #expect((try? outcome.get()) == Picky(inputs[index].value))
        }
        func failure(_ index: Int) -> (any Error)? {
            if case .failure(let error) = outcomes[index] { return error }
            return nil
        }
        let segfault = failure(10) as? MultiprocessingError
        #expect(segfault?.code == .childFailed && segfault?.signal == .segmentationViolation, "\(String(describing: segfault))")
        let fatal = failure(20) as? MultiprocessingError
        #expect(fatal?.code == .childFailed && fatal?.signal != nil, "\(String(describing: fatal))")
        let late = failure(30) as? MultiprocessingError
        #expect(late?.code == .timedOut && late?.pid != nil && late?.timeout == .milliseconds(1500), "\(String(describing: late))")
        #expect(failure(40) as? ParseFailure == ParseFailure(line: 40, reason: "bad input"))
        let opaque = failure(50) as? MultiprocessingError
        #expect(opaque?.code == .remote && opaque?.message.contains("opaque failure 50") == true)
        let output = failure(55) as? MultiprocessingError
        #expect(output?.code == .remote || output?.code == .transport, "\(String(describing: output))")

        // An input that cannot be encoded fails alone, in the parent.
        let picky = try pool.mapResults(PickyEcho(), [Picky(1), Picky(-1), Picky(2)])
        #expect(picky.map { try? $0.get() } == [Picky(1), nil, Picky(2)])
        if case .failure(let error as MultiprocessingError) = picky[1] { #expect(error.code == .transport) }
        let unencodable = try pool.submit(PickyEcho(), Picky(-5))
        #expect(throws: MultiprocessingError.self) { try unencodable.get(timeout: .seconds(10)) }
        #expect(try pool.submit(PickyEcho(), Picky(5)).get(timeout: .seconds(10)) == Picky(5))

        // The pool still has its two workers and works.
        #expect(try pool.submitMap(Square(), 1...4).get(timeout: .seconds(30)) == [1, 4, 9, 16])
        #expect(pool.workerIdentifiers.count == 2)
        pool.terminate()
        #expect(try pool.join(timeout: .seconds(10)))
    }

    @Test("maxTasksPerChild and maxMemoryPerChild recycle workers; a memory limit kill names the limit")
    func recycling() throws {
        let pool = try ProcessPool(workers: 2, maxTasksPerChild: 2)
        let pids = try pool.submitMap(WorkerPid(), 0..<10, chunkSize: 1).get(timeout: .seconds(30))
        #expect(Set(pids).count >= 5)
        #expect(Dictionary(grouping: pids, by: { $0 }).values.allSatisfy { $0.count <= 2 })
        pool.close()
        #expect(try pool.join(timeout: .seconds(10)))

        let capped = try ProcessPool(workers: 1, maxMemoryPerChild: 1)
        let cappedPids = try capped.submitMap(WorkerPid(), 0..<4, chunkSize: 1).get(timeout: .seconds(30))
        #expect(Set(cappedPids).count == 4)
        capped.close()
        #expect(try capped.join(timeout: .seconds(10)))

        let limited = try ProcessPool(
            workers: 1, workerSettings: ChildSettings(limits: ResourceLimits(addressSpaceBytes: 2 << 30), standardError: .null))
        let outcome = try limited.mapResults(Misbehave(), [Deed(value: 4 << 30, misdeed: .allocate), Deed(value: 7)])
        guard case .failure(let error as MultiprocessingError) = outcome[0] else {
            Issue.record("the allocation should fail")
            return
        }
        #expect(error.code == .childFailed)
        #expect(error.message.contains("limit"), "\(error)")
        #expect((try? outcome[1].get()) == Picky(7))
        limited.terminate()
        #expect(try limited.join(timeout: .seconds(10)))
    }

    @Test("50 workers map 1,000 inputs to the exact sum")
    func fiftyWorkers() throws {
        let pool = try ProcessPool(workers: 50)
        #expect(pool.workerIdentifiers.count == 50)
        let squares = try pool.submitMap(Square(), 1...1000).get(timeout: .seconds(60))
        #expect(squares.reduce(0, +) == 333_833_500)
        pool.close()
        #expect(try pool.join(timeout: .seconds(20)))
    }

    @Test("a pool left open does not hang the program's exit")
    func openPoolAtExit() throws {
        let child = ChildProcess(LeavePoolOpen())
        try child.start()
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 0)
    }

    @Test("terminate kills running work promptly; its inputs fail with closed")
    func terminate() throws {
        let pool = try ProcessPool(workers: 2)
        let long = try pool.submitMap(Misbehave(), [Deed(value: 20_000, misdeed: .sleep), Deed(value: 20_000, misdeed: .sleep), Deed(value: 1)], chunkSize: 1)
        let pids = pool.workerIdentifiers
        let began = ContinuousClock.now
        pool.terminate()
        #expect(try pool.join(timeout: .seconds(5)))
        #expect(ContinuousClock.now - began < .seconds(5))
        #expect(long.wait(timeout: .seconds(1)))
        #expect(throws: MultiprocessingError.self) { try long.get(timeout: .seconds(1)) }
        for pid in pids { #expect(kill(pid.rawValue, 0) != 0) }
    }

    @Test("awaited wait and join with a timeout: false while the work runs, true once it ended; cancelling the wait leaves the work alone", .ownThread)
    func awaitedWaitAndJoinTimeouts() async throws {
        let pool = try ProcessPool(workers: 1)
        let slow = try pool.submit(Misbehave(), Deed(value: 1_500, misdeed: .sleep))
        let began = ContinuousClock.now
        #expect(try await slow.wait(timeout: .milliseconds(100)) == false)
        #expect(ContinuousClock.now - began < .seconds(1))
        let waiter = Task(executorPreference: ThreadExecutor.current) { try await slow.wait(timeout: .seconds(30)) }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        #expect(try await slow.wait(timeout: .seconds(30)))
        #expect(try slow.get(timeout: .seconds(1)) == Picky(1_500))
        pool.close()
        #expect(try await pool.join(timeout: .seconds(10)))
        let busy = try ProcessPool(workers: 1)
        _ = try busy.submit(Misbehave(), Deed(value: 1_500, misdeed: .sleep))
        busy.close()
        #expect(try await busy.join(timeout: .milliseconds(100)) == false)
        #expect(try await busy.join(timeout: .seconds(30)))
    }

    @Test("imap reads its inputs lazily; imapUnordered iterates asynchronously; progress is observable")
    func lazyAndProgress() async throws {
        let pool = try ProcessPool(workers: 2)
        let naturals = CountingNaturals()
        let squares = try pool.imap(Square(), naturals, window: 8)
        var taken: [Int] = []
        while taken.count < 20, let square = try squares.next(timeout: .seconds(30)) { taken.append(square) }
        #expect(taken == (1...20).map { $0 * $0 })
        #expect(naturals.reads.withLock { $0 } <= 20 + 8 + 1)

        let unordered = try pool.imapUnordered(Square(), Array(1...50), chunkSize: 4)
        let collected = try await withTimeLimit(.seconds(30)) {
            var all: [Int] = []
            for try await square in unordered { all.append(square) }
            return all
        }
        #expect(collected.sorted() == (1...50).map { $0 * $0 })

        var reported: [(Int, Int)] = []
        let mapped = try pool.map(Misbehave(), (0..<40).map { _ in Deed(value: 2, misdeed: .sleep) }, chunkSize: 1, timeout: .seconds(20), progress: { done, total in
            reported.append((done, total))
        })
        #expect(mapped.count == 40)
        #expect(reported.last.map { $0 == (40, 40) } == true)
        #expect(reported.count >= 2)
        #expect(zip(reported, reported.dropFirst()).allSatisfy { $0.0 < $1.0 })

        let running = try pool.submitMap(Misbehave(), (0..<30).map { _ in Deed(value: 2, misdeed: .sleep) }, chunkSize: 1)
        let counts = try await withTimeLimit(.seconds(30)) {
            var counts: [Int] = []
            for await count in running.progress { counts.append(count) }
            return counts
        }
        #expect(counts.last == 30)
        #expect(counts == counts.sorted())
        pool.close()
        #expect(try await pool.join(timeout: .seconds(10)))
    }

    @Test("cancelling an awaiting task kills the worker running its input", .ownThread)
    func cancellation() async throws {
        let pool = try ProcessPool(workers: 1)
        let before = pool.workerIdentifiers
        let outcome = try await cancelMidWait {
            _ = try await pool.apply(Misbehave(), Deed(value: 20_000, misdeed: .sleep))
        }
        expectCancelled(outcome, "pool apply")
        #expect(try pool.submit(Square(), 3).get(timeout: .seconds(30)) == 9)
        #expect(pool.workerIdentifiers != before)
        pool.close()
        #expect(try await pool.join(timeout: .seconds(10)))
    }

    @Test("a closure pool's workers are awaited without a thread; joining before close is refused", .ownThread)
    func closurePoolAsyncJoin() async throws {
        let pool = try ClosurePool(workers: 2) { (x: Int) -> Int in x * 3 }
        #expect(try pool.submit(5).get(timeout: .seconds(30)) == 15)
        await #expect(throws: MultiprocessingError.self) { try await pool.join() }
        pool.close()
        try await withTimeLimit(.seconds(30)) { try await pool.join() }
    }

    @Test("a closure pool runs a capturing closure in fork workers, and refuses other start methods")
    func closurePool() throws {
        let offset = Int(getpid() % 1000)
        let pool = try ClosurePool(workers: 2, workerSettings: ChildSettings(standardError: .null)) { (x: Int) -> Int in
            if x == 13 { kill(getpid(), SIGKILL) }
            return x + offset
        }
        let outcomes = try pool.mapResults(0..<40, chunkSize: 1)
        for (index, outcome) in outcomes.enumerated() where index != 13 {
            #expect((try? outcome.get()) == index + offset)
        }
        if case .failure(let error as MultiprocessingError) = outcomes[13] {
            #expect(error.code == .childFailed && error.signal == .kill)
        } else {
            Issue.record("input 13 should fail")
        }
        #expect(try pool.submit(2).get(timeout: .seconds(30)) == 2 + offset)
        pool.close()
        #expect(try pool.join(timeout: .seconds(10)))
        do {
            _ = try ClosurePool(workers: 1, context: ProcessContext(.spawn)) { (x: Int) in x }
            Issue.record("a closure pool must refuse spawn")
        } catch let error as MultiprocessingError {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("fork"))
        }
    }

    @Test("workers ignore SIGINT, so Ctrl-C reaches only the parent")
    func workersIgnoreInterrupt() throws {
        let pool = try ProcessPool(workers: 1)
        let before = try pool.submit(WorkerPid(), 0).get(timeout: .seconds(30))
        #expect(kill(before, SIGINT) == 0)
        // The reply to a later input proves the worker read and answered after the signal arrived.
        let after = try pool.submit(WorkerPid(), 1).get(timeout: .seconds(30))
        #expect(after == before)
        #expect(pool.workerIdentifiers == [ProcessIdentifier(rawValue: before)])
        pool.close()
        #expect(try pool.join(timeout: .seconds(10)))
    }

    @Test("fork workers refuse async work")
    func forkRefusesAsync() throws {
        let pool = try ProcessPool(workers: 1, context: ProcessContext(.fork))
        do {
            _ = try pool.submit(AsyncNap(), 1)
            Issue.record("async work under fork must be refused")
        } catch let error as MultiprocessingError {
            #expect(error.code == .unsupported)
        }
        #expect(try pool.submitMap(Square(), 1...3).get(timeout: .seconds(30)) == [1, 4, 9])
        pool.close()
        #expect(try pool.join(timeout: .seconds(10)))
    }
}

@Suite("Process pool executor", .ownThread)
struct PoolExecutorTests {
    @Test("run, submit, map and async work; a crash fails one submission and later ones work; shutdown ends the workers")
    func executor() async throws {
        let executor = try ProcessPoolExecutor(maxWorkers: 2, workerSettings: ChildSettings(standardError: .null))
        try await withTimeLimit(.seconds(30)) {
            #expect(try await executor.run(Square(), 12) == 144)
            let futures = try (1...20).map { try executor.submit(Square(), $0) }
            var sum = 0
            for future in futures { sum += try await future.value }
            #expect(sum == 2870)
            #expect(try await executor.run(AsyncNap(), 3) == 3)
            do {
                _ = try await executor.run(Misbehave(), Deed(value: 1, misdeed: .killSelf))
                Issue.record("a killed worker must fail its submission")
            } catch let error as MultiprocessingError {
                #expect(error.code == .childFailed && error.signal == .kill)
            }
            #expect(try await executor.map(Square(), [1, 2, 3]) == [1, 4, 9])
            var streamed: [Int] = []
            for try await square in try executor.results(Square(), [4, 5]) { streamed.append(square) }
            #expect(streamed == [16, 25])
            try await executor.shutdown()
        }
        #expect(executor.pool.workerIdentifiers.isEmpty)
        #expect(throws: MultiprocessingError.self) { try executor.submit(Square(), 1) }
    }

    @Test("workers start on demand up to maxWorkers, and counts below one are refused")
    func workersOnDemand() async throws {
        let executor = try ProcessPoolExecutor(maxWorkers: 3)
        #expect(executor.pool.workerIdentifiers.isEmpty, "no worker before any submission")
        try await withTimeLimit(.seconds(30)) {
            #expect(try await executor.run(Square(), 7) == 49)
            #expect(executor.pool.workerIdentifiers.count == 1, "one submission at a time needs one worker")
            #expect(try await executor.run(Square(), 8) == 64)
            #expect(executor.pool.workerIdentifiers.count == 1, "an idle worker takes the next submission")
            let squares = try await executor.map(Square(), Array(0..<200), chunkSize: 1)
            #expect(squares == (0..<200).map { $0 * $0 })
            let count = executor.pool.workerIdentifiers.count
            #expect(count > 1 && count <= 3, "a burst starts more workers, never more than maxWorkers: \(count)")
            try await executor.shutdown()
        }
        #expect(throws: MultiprocessingError.self) { try ProcessPoolExecutor(maxWorkers: 0) }
        #expect(throws: MultiprocessingError.self) { try ProcessPoolExecutor(maxWorkers: -2) }
    }
}

/// Returns its input, whose encoding may fail.
struct PickyEcho: PoolTask {
    func run(_ input: Picky) throws -> Picky { input }
}
