#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import Multiprocessing

// Helpers shared by the synchronization tests (Sync*Tests.swift).

/// A few integers in shared memory that travel to children like the primitives do.
struct SyncShared: Codable, @unchecked Sendable {
    let region: SharedRegion

    init() throws { region = try SharedRegion(.scratch) }

    /// Integer `index` (plain memory: guard it with a lock, or use ``add(_:at:)``).
    subscript(index: Int) -> Int {
        get { region.base.load(fromByteOffset: SharedRegion.dataOffset + index * 8, as: Int.self) }
        nonmutating set { region.base.storeBytes(of: newValue, toByteOffset: SharedRegion.dataOffset + index * 8, as: Int.self) }
    }

    /// Atomically adds `delta` to integer `index`; returns the new value.
    @discardableResult
    func add(_ delta: Int, at index: Int) -> Int {
        Int(region.atomic64(SharedRegion.dataOffset + index * 8).pointee.add(UInt64(bitPattern: Int64(delta)), ordering: .sequentiallyConsistent).newValue)
    }

    func encode(to encoder: any Encoder) throws { try region.encode(to: encoder) }
    init(from decoder: any Decoder) throws { region = try SharedRegion(.scratch, from: decoder) }
}

/// Throws (ending a child with exit code 1 and the message on stderr) unless `condition` holds.
func syncCheck(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw MultiprocessingError(.invalidState, "check failed: \(message())") }
}

/// Runs `body` holding `lock`, acquired within 30 s (or throws): a test never blocks without a bound.
func syncWithLock<R>(_ lock: some ProcessLocking, _ body: () throws -> R) throws -> R {
    try syncCheck(lock.acquire(blocking: true, timeout: .seconds(30)), "acquire \(lock) within 30 s")
    defer { try? lock.release() }
    return try body()
}

/// Seconds taken by `body`, with its result.
func syncTimed<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let start = Deadline.monotonicNow()
    let result = try body()
    return (result, Double(Deadline.monotonicNow() - start) / 1e9)
}

/// Seconds taken by an async `body`, with its result.
func syncTimed<T>(_ body: () async throws -> T) async rethrows -> (T, Double) {
    let start = Deadline.monotonicNow()
    let result = try await body()
    return (result, Double(Deadline.monotonicNow() - start) / 1e9)
}

/// Starts `task` under `method`.
func syncStart<T: ProcessTask>(_ task: T, _ method: StartMethod = .spawn) throws -> ChildProcess {
    let child = ChildProcess(task, context: ProcessContext(method))
    try child.start()
    return child
}

/// Joins `child` (at most 30 s) and expects it to have ended with `code`.
func syncExpectEnded(_ child: ChildProcess, code: Int32 = 0, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let ended = try child.join(timeout: .seconds(30))
    if !ended { try? child.kill(); _ = try? child.join(timeout: .seconds(10)) }
    #expect(ended, "child did not end", sourceLocation: sourceLocation)
    #expect(child.exitCode == code, "exit code \(String(describing: child.exitCode))", sourceLocation: sourceLocation)
}

/// Kills `child` with SIGKILL and reaps it.
func syncKill(_ child: ChildProcess) throws {
    try child.kill()
    #expect(try child.join(timeout: .seconds(10)))
    #expect(child.exitCode == -SIGKILL)
}

/// A timing bound for a wait of `timeout` seconds that gave up: not early, and not hugely late.
/// An `async` wait resumes on Swift's cooperative pool, which other suites' blocking tests can keep
/// busy for many seconds on a 2-core machine, so async waits get a wider upper bound.
func syncWaitedAbout(_ elapsed: Double, _ timeout: Double, async: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) {
    let slack = async ? 60.0 : 5.0
    #expect(elapsed >= timeout - 0.1 && elapsed < timeout + slack, "waited \(elapsed) s for a \(timeout) s timeout",
            sourceLocation: sourceLocation)
}

/// A thread running `body`, started at once (a plain thread, so it does not wait for Swift's
/// cooperative pool, which blocking tests may keep busy). ``join()`` waits for it and returns the result.
final class SyncThread<T>: @unchecked Sendable {
    private let body: () throws -> T
    private var result: Result<T, any Error>?
    private var thread = pthread_t()

    init(_ body: @escaping () throws -> T) {
        self.body = body
        pthread_create(&thread, nil, { context in
            let me = Unmanaged<AnyObject>.fromOpaque(context!).takeRetainedValue() as! any SyncRunnable
            me.run()
            return nil
        }, Unmanaged<AnyObject>.passRetained(self).toOpaque())
    }

    func join() throws -> T {
        pthread_join(thread, nil)
        return try result!.get()
    }

    fileprivate func runBody() { result = Result { try body() } }
}

private protocol SyncRunnable: AnyObject { func run() }
extension SyncThread: SyncRunnable { func run() { runBody() } }

/// Polls `condition` every millisecond for at most `seconds`, for states that only a poll can observe
/// (how many wait inside a primitive). Returns whether it became true.
func syncEventually(within seconds: Double = 30, _ condition: () -> Bool) -> Bool {
    let deadline = Deadline.after(.nanoseconds(Int64(seconds * 1e9)))
    while !condition() {
        if deadline.hasPassed { return false }
        usleep(1000)
    }
    return true
}

/// Like ``syncEventually(within:_:)``, sleeping between polls without holding a thread.
func syncEventuallyAsync(within seconds: Double = 30, _ condition: () -> Bool) async -> Bool {
    let deadline = Deadline.after(.nanoseconds(Int64(seconds * 1e9)))
    while !condition() {
        if deadline.hasPassed { return false }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return true
}

/// Starts `operation` in a task, waits until `waiting` says it waits inside a primitive, cancels the
/// task and returns how it ended and the seconds from the cancel to its end.
func syncCancelMidWait<T: Sendable>(
    waiting: () -> Bool, _ operation: @escaping @Sendable () async throws -> T,
    sourceLocation: SourceLocation = #_sourceLocation
) async -> (result: Result<T, any Error>, seconds: Double) {
    let task = Task(executorPreference: ThreadExecutor.current) { try await operation() }
    #expect(await syncEventuallyAsync(waiting), "the task waits", sourceLocation: sourceLocation)
    let start = Deadline.monotonicNow()
    task.cancel()
    let result = await task.result
    let seconds = Double(Deadline.monotonicNow() - start) / 1e9
    if getenv("MULTIPROCESSING_TEST_TIMINGS") != nil {
        print("cancellation at \(sourceLocation.fileName):\(sourceLocation.line) took \(seconds * 1000) ms")
    }
    #expect(seconds < 1, "a cancelled wait ended after \(seconds) s", sourceLocation: sourceLocation)
    #expect(throws: CancellationError.self, sourceLocation: sourceLocation) { try result.get() }
    return (result, seconds)
}

/// Field `number` (counted from 1, as in proc(5)) of /proc/PID/stat; 0 when it cannot be read.
func statField(of pid: Int32, _ number: Int) -> Int {
    let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 512)
    let count = read(fd, &buffer, 512)
    let text = String(decoding: buffer.prefix(max(0, count)), as: UTF8.self)
    // The name (field 2) may hold spaces; the fields after it start at field 3.
    guard number >= 3, let end = text.lastIndex(of: ")") else { return 0 }
    let fields = text[text.index(after: end)...].split(separator: " ")
    return fields.count > number - 3 ? Int(fields[number - 3]) ?? 0 : 0
}
