#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// A pool initializer: counts its runs in shared memory, then sets `MP_POOL_MARK` in its worker, throws,
/// or ends the worker.
struct MarkWorker: ProcessTask {
    enum Ending: String, Codable, Sendable { case mark, throwError, exit }
    let mark: String
    let runs: RawSharedValue<Int>
    var ending = Ending.mark

    func run() throws {
        runs.add(1)
        switch ending {
        case .mark: setenv("MP_POOL_MARK", mark, 1)
        case .throwError: throw ParseFailure(line: 7, reason: "no database")
        case .exit: exit(3)
        }
    }
}

/// Returns its worker's `MP_POOL_MARK`.
struct ReadMark: PoolTask {
    func run(_ input: Int) throws -> String { getenv("MP_POOL_MARK").map { String(cString: $0) } ?? "" }
}

private struct HiddenInitializer: ProcessTask {
    func run() throws {}
}

/// Waits until the pool has no workers, at most 20 s; returns whether it came to that.
private func workersGone(_ pool: ProcessPool) -> Bool {
    let end = ContinuousClock.now + .seconds(20)
    while ContinuousClock.now < end {
        if pool.workerIdentifiers.isEmpty { return true }
        usleep(10_000)
    }
    return false
}

/// Checks that `error` is the broken pool error that carries the initializer's error.
private func expectBroken(_ error: (any Error)?, saying text: String, sourceLocation: SourceLocation = #_sourceLocation) {
    guard let error = error as? MultiprocessingError else {
        Issue.record("expected a broken pool, got \(String(describing: error))", sourceLocation: sourceLocation)
        return
    }
    #expect(error.code == .brokenPool, "\(error)", sourceLocation: sourceLocation)
    #expect(error.message.contains(text), "\(error)", sourceLocation: sourceLocation)
    #expect(error.message.contains("MarkWorker"), "\(error)", sourceLocation: sourceLocation)
}

@Suite("Process pool initializer")
struct PoolInitializerTests {
    @Test("the initializer runs once in each worker before its inputs, and in each replacement", arguments: StartMethod.allCases)
    func initializerRuns(_ method: StartMethod) throws {
        let runs = try RawSharedValue(0)
        let pool = try ProcessPool(workers: 2, context: ProcessContext(method), initializer: MarkWorker(mark: "set by \(method)", runs: runs))
        #expect(try pool.submitMap(ReadMark(), 0..<20, chunkSize: 1).get(timeout: .seconds(30)) == Array(repeating: "set by \(method)", count: 20))
        pool.close()
        #expect(try pool.join(timeout: .seconds(10)))
        #expect(runs.load() == 2)

        let recycledRuns = try RawSharedValue(0)
        let recycled = try ProcessPool(
            workers: 1, context: ProcessContext(method), initializer: MarkWorker(mark: "again", runs: recycledRuns), maxTasksPerChild: 3)
        let marks = try recycled.submitMap(ReadMark(), 0..<9, chunkSize: 1).get(timeout: .seconds(30))
        #expect(marks == Array(repeating: "again", count: 9))
        recycled.close()
        #expect(try recycled.join(timeout: .seconds(10)))
        // Three workers served the inputs (a fourth may have started before close).
        #expect(recycledRuns.load() >= 3)
    }

    @Test("a throwing initializer breaks the pool: pending and later work fail with its error, and no worker starts again", arguments: StartMethod.allCases)
    func throwingInitializer(_ method: StartMethod) throws {
        let runs = try RawSharedValue(0)
        let pool = try ProcessPool(
            workers: 2, context: ProcessContext(method), initializer: MarkWorker(mark: "", runs: runs, ending: .throwError),
            workerSettings: ChildSettings(standardError: .null))
        // The failure may arrive before or after this submission.
        do {
            let pending = try pool.submitMap(Square(), 0..<10, chunkSize: 1)
            #expect(pending.wait(timeout: .seconds(30)))
            #expect(performing: { try pending.get() }, throws: { error in expectBroken(error, saying: "no database"); return true })
        } catch {
            expectBroken(error, saying: "no database")
        }
        #expect(performing: { try pool.submit(Square(), 1) }, throws: { error in expectBroken(error, saying: "no database"); return true })
        #expect(workersGone(pool))
        // Python's pool would start workers again and again; this one starts none.
        let started = runs.load()
        #expect(started >= 1 && started <= 2)
        usleep(300_000)
        #expect(runs.load() == started)
        #expect(pool.workerIdentifiers.isEmpty)
        pool.close()
        #expect(try pool.join(timeout: .seconds(10)))
    }

    @Test("an initializer that ends its worker breaks the pool; the executor breaks the same way; a private initializer type is refused")
    func endingInitializer() async throws {
        let runs = try RawSharedValue(0)
        let pool = try ProcessPool(workers: 1, initializer: MarkWorker(mark: "", runs: runs, ending: .exit))
        do {
            _ = try pool.submit(Square(), 2).get(timeout: .seconds(30))
            Issue.record("the pool should be broken")
        } catch {
            expectBroken(error, saying: "exited with code 3")
        }
        #expect(workersGone(pool))
        pool.terminate()
        #expect(try await pool.join(timeout: .seconds(10)))

        let executor = try ProcessPoolExecutor(
            maxWorkers: 2, initializer: MarkWorker(mark: "", runs: runs, ending: .throwError), workerSettings: ChildSettings(standardError: .null))
        try await withTimeLimit(.seconds(30)) {
            do {
                _ = try await executor.run(Square(), 3)
                Issue.record("the executor should be broken")
            } catch {
                expectBroken(error, saying: "no database")
            }
        }
        #expect(performing: { try executor.submit(Square(), 1) }, throws: { error in expectBroken(error, saying: "no database"); return true })
        executor.killWorkers()

        do {
            _ = try ProcessPool(workers: 1, context: ProcessContext(.spawn), initializer: HiddenInitializer())
            Issue.record("a private initializer type must be refused under spawn")
        } catch let error as MultiprocessingError {
            #expect(error.code == .invalidArgument)
        }
    }
}

/// Creates the file at its input path, then sleeps 300 ms and returns 300.
struct AnnouncedNap: PoolTask {
    func run(_ input: String) throws -> Int {
        close(open(input, O_CREAT | O_WRONLY, 0o600))
        usleep(300_000)
        return 300
    }
}

@Suite("Process pool executor shutdown", .ownThread)
struct PoolExecutorShutdownTests {
    @Test("shutdown(cancelPending:) fails submissions not handed to a worker with CancellationError; the running one finishes")
    func cancelPending() async throws {
        let executor = try ProcessPoolExecutor(maxWorkers: 1)
        let path = "/tmp/mp-pool-started-\(getpid())"
        defer { unlink(path) }
        let running = try executor.submit(AnnouncedNap(), path)
        let queued = try (0..<10).map { try executor.submit(Square(), $0) }
        // The running input announces itself by creating the file.
        let end = ContinuousClock.now + .seconds(30)
        while access(path, F_OK) != 0 && ContinuousClock.now < end { usleep(2_000) }
        #expect(access(path, F_OK) == 0)
        try await withTimeLimit(.seconds(30)) { try await executor.shutdown(wait: true, cancelPending: true) }
        #expect(try running.get(timeout: .seconds(1)) == 300)
        var cancelled = 0
        for (input, future) in queued.enumerated() {
            do {
                #expect(try future.get(timeout: .seconds(1)) == input * input)
            } catch is CancellationError {
                cancelled += 1
            }
        }
        // At most one input waits in the worker behind the running one; the rest never left the pool.
        #expect(cancelled >= 9)
        #expect(executor.pool.workerIdentifiers.isEmpty)
        #expect(throws: MultiprocessingError.self) { try executor.submit(Square(), 1) }

        // Without cancelPending every submission runs.
        let patient = try ProcessPoolExecutor(maxWorkers: 1)
        let first = try patient.submit(Misbehave(), Deed(value: 100, misdeed: .sleep))
        let rest = try (0..<10).map { try patient.submit(Square(), $0) }
        try await withTimeLimit(.seconds(30)) { try await patient.shutdown() }
        #expect(try first.get(timeout: .seconds(1)) == Picky(100))
        #expect(try rest.map { try $0.get(timeout: .seconds(1)) } == (0..<10).map { $0 * $0 })
    }
}
