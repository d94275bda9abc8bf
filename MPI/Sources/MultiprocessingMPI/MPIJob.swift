@_spi(Transport) import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

/// What the scheduler needs of a job: a place to put the outcomes of a batch, and a way to fail what is
/// left of it. Called on the MPI thread.
protocol JobSink: AnyObject, Sendable {
    func deliver(first: Int, reader: inout MessageReader, count: Int, rank: Int32, host: String) throws
    func fail(first: Int, count: Int, with error: any Error)
    func failRemaining(with error: any Error)
}

/// The results of one call (a map, an imap, an apply), filled in by the MPI thread as batches come back
/// and waited for by the caller: blocking with a timeout, or on the Swift concurrency runtime.
final class MPIJob<Output: Decodable & Sendable>: JobSink, @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var results: [Result<Output, any Error>?]
    /// Indexes in the order their results arrived (for imapUnordered).
    private var arrivals: [Int] = []
    private var finished = 0
    private var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    private var nextWaiter: UInt64 = 0
    private let progress: (@Sendable (Int, Int) -> Void)?

    init(count: Int, progress: (@Sendable (Int, Int) -> Void)?) {
        results = Array(repeating: nil, count: count)
        self.progress = progress
        pthread_mutex_init(&mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(&condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    var count: Int { results.count }

    func deliver(first: Int, reader: inout MessageReader, count: Int, rank: Int32, host: String) throws {
        var batch: [Result<Output, any Error>] = []
        batch.reserveCapacity(count)
        for offset in 0..<count {
            let kind = try reader.read(UInt8.self)
            let length = try reader.read(UInt64.self)
            guard length <= UInt64(Int.max) else { throw MultiprocessingError(.protocolViolation, "an outcome's length is too large") }
            let bytes = Array(try reader.read(count: Int(length)))
            batch.append(Self.outcome(kind, bytes, index: first + offset, rank: rank, host: host))
        }
        store(first: first, batch)
    }

    func fail(first: Int, count: Int, with error: any Error) {
        store(first: first, Array(repeating: .failure(error), count: count))
    }

    func failRemaining(with error: any Error) {
        pthread_mutex_lock(&mutex)
        let missing = results.indices.filter { results[$0] == nil }
        pthread_mutex_unlock(&mutex)
        for index in missing { store(first: index, [.failure(error)]) }
    }

    private static func outcome(_ kind: UInt8, _ bytes: [UInt8], index: Int, rank: Int32, host: String) -> Result<Output, any Error> {
        switch OutcomeKind(rawValue: kind) {
        case .value:
            do {
                return .success(try BinaryDecoder().decode(Output.self, from: bytes))
            } catch {
                return .failure(MultiprocessingError(.transport, "the output of input \(index) from rank \(rank) (host \(host)) could not be decoded: \(error)"))
            }
        case .thrown:
            guard let thrown = try? BinaryDecoder().decode(ThrownError.self, from: bytes) else {
                return .failure(MultiprocessingError(.transport, "the error thrown by input \(index) on rank \(rank) (host \(host)) could not be decoded"))
            }
            return .failure(thrown.error(rank: rank, host: host, index: index))
        case .crashed, .timedOut:
            let facts = (try? BinaryDecoder().decode(CrashFacts.self, from: bytes))
                ?? CrashFacts(pid: nil, signal: nil, exitCode: nil, message: "ended abnormally")
            let timedOut = OutcomeKind(rawValue: kind) == .timedOut
            let what = timedOut ? "ran past the task timeout" : "crashed its local worker"
            let error = MultiprocessingError(
                timedOut ? .timedOut : .childFailed,
                "input \(index) \(what) on rank \(rank) (host \(host)), pid \(facts.pid.map(String.init) ?? "unknown"): \(facts.message)"
            ).withFacts(pid: facts.pid, signal: timedOut ? nil : facts.signal)
            return .failure(error)
        case nil:
            return .failure(MultiprocessingError(.protocolViolation, "rank \(rank) sent an outcome of unknown kind \(kind)"))
        }
    }

    private func store(first: Int, _ batch: [Result<Output, any Error>]) {
        pthread_mutex_lock(&mutex)
        for (offset, result) in batch.enumerated() where first + offset < results.count && results[first + offset] == nil {
            results[first + offset] = result
            arrivals.append(first + offset)
            finished += 1
        }
        let done = finished
        let resumed = waiters.values
        waiters.removeAll()
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
        for waiter in resumed { waiter.resume() }
        progress?(done, results.count)
    }

    // MARK: Waiting

    /// Waits until `ready` holds, at most `timeout`, then returns `take`'s value.
    func wait<R>(timeout: Duration?, until ready: (MPIJob) -> Bool, take: (MPIJob) throws -> R) throws -> R {
        var deadline = timespec()
        if let timeout {
            clock_gettime(CLOCK_MONOTONIC, &deadline)
            let (seconds, attoseconds) = timeout.components
            var nanoseconds = Int(deadline.tv_nsec) + Int(attoseconds / 1_000_000_000)
            deadline.tv_sec += Int(seconds) + nanoseconds / 1_000_000_000
            nanoseconds %= 1_000_000_000
            deadline.tv_nsec = nanoseconds
        }
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while !ready(self) {
            if timeout == nil {
                pthread_cond_wait(&condition, &mutex)
            } else if pthread_cond_timedwait(&condition, &mutex, &deadline) == ETIMEDOUT, !ready(self) {
                throw MultiprocessingError(.timedOut, "results of the MPI pool not ready within \(timeout!)")
            }
        }
        return try take(self)
    }

    /// Waits on the concurrency runtime until `ready` holds, then returns `take`'s value. Cancellation
    /// ends the wait with `CancellationError` (the work goes on).
    func wait<R>(until ready: @escaping (MPIJob) -> Bool, take: (MPIJob) throws -> R) async throws -> R {
        while true {
            try Task.checkCancellation()
            pthread_mutex_lock(&mutex)
            if ready(self) {
                defer { pthread_mutex_unlock(&mutex) }
                return try take(self)
            }
            let id = nextWaiter
            nextWaiter += 1
            pthread_mutex_unlock(&mutex)
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    pthread_mutex_lock(&mutex)
                    if ready(self) || Task.isCancelled {
                        pthread_mutex_unlock(&mutex)
                        continuation.resume()
                    } else {
                        waiters[id] = continuation
                        pthread_mutex_unlock(&mutex)
                    }
                }
            } onCancel: {
                pthread_mutex_lock(&mutex)
                let waiter = waiters.removeValue(forKey: id)
                pthread_mutex_unlock(&mutex)
                waiter?.resume()
            }
        }
    }

    // Conditions and takers, called with the job's mutex held.

    var isComplete: Bool { finished == results.count }
    func hasResult(_ index: Int) -> Bool { results[index] != nil }
    func result(_ index: Int) -> Result<Output, any Error> { results[index]! }
    func hasArrival(_ position: Int) -> Bool { arrivals.count > position }
    func arrival(_ position: Int) -> Result<Output, any Error> { results[arrivals[position]]! }
    func all() -> [Result<Output, any Error>] { results.map { $0! } }
}
