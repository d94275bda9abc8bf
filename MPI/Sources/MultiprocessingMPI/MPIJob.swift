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
    /// The outputs of whole batches that succeeded, by their first input's index (kept as arrays: a
    /// job's storage must cost little per input, since it runs as unspecialised generic code).
    private var segments: [Int: [Output]] = [:]
    /// Outcomes stored one by one (failures, and batches with failures).
    private var singles: [Int: Result<Output, any Error>] = [:]
    /// For each input, the first index of its segment, ``single``, or ``pending`` (8 bytes an input,
    /// not an optional's 16: a job's table is allocated and cleared afresh for every call).
    private var location: [Int]
    private static var single: Int { -1 }
    private static var pending: Int { -2 }
    /// Indexes in the order their results arrived (for imapUnordered).
    private var arrivals: [Int] = []
    private var finished = 0
    /// The async waiters, each with what it waits for: a delivery wakes only those it satisfies.
    private var waiters: [UInt64: (ready: (MPIJob) -> Bool, continuation: CheckedContinuation<Void, Never>)] = [:]
    /// What each blocked thread waits for: a delivery wakes them only when it satisfies one (a map's
    /// caller waits for the last batch, not a wake-up and a wait again per batch).
    private var blocked: [UInt64: (MPIJob) -> Bool] = [:]
    private var nextWaiter: UInt64 = 0
    private let progress: (@Sendable (Int, Int) -> Void)?

    init(count: Int, progress: (@Sendable (Int, Int) -> Void)?) {
        location = Array(repeating: Self.pending, count: count)
        arrivals.reserveCapacity(count)
        self.progress = progress
        initializeMonotonicWait(&mutex, &condition)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    var count: Int { location.count }

    func deliver(first: Int, reader: inout MessageReader, count: Int, rank: Int32, host: String) throws {
        var batch: [Result<Output, any Error>] = []
        var done = 0
        while done < count {
            let kind = try reader.read(UInt8.self)
            let length = try reader.read(UInt64.self)
            guard length <= UInt64(Int.max) else { throw MultiprocessingError(.protocolViolation, "an outcome's length is too large") }
            let bytes = try reader.read(count: Int(length))
            if kind == OutcomeKind.values.rawValue {
                let values: [Output]
                do {
                    // Decoded where they lie in the message, without copying them out first.
                    values = try bytes.withUnsafeBytes { try BinaryDecoder().decode([Output].self, from: $0) }
                } catch {
                    throw MultiprocessingError(.transport, "the outputs of inputs from \(first + done) from rank \(rank) (host \(host)) could not be decoded: \(error)")
                }
                guard values.count <= count - done else {
                    throw MultiprocessingError(.protocolViolation, "rank \(rank) sent more outputs than inputs")
                }
                if done == 0 && values.count == count {
                    storeSegment(first: first, values)
                    return
                }
                batch.append(contentsOf: values.map { .success($0) })
                done += values.count
            } else {
                batch.append(Self.outcome(kind, Array(bytes), index: first + done, rank: rank, host: host))
                done += 1
            }
        }
        store(first: first, batch)
    }

    func fail(first: Int, count: Int, with error: any Error) {
        store(first: first, Array(repeating: .failure(error), count: count))
    }

    func failRemaining(with error: any Error) {
        pthread_mutex_lock(&mutex)
        let missing = location.indices.filter { location[$0] == Self.pending }
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
        case .values:
            return .failure(MultiprocessingError(.protocolViolation, "rank \(rank) sent outputs in an unexpected place"))
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
        for (offset, result) in batch.enumerated() where first + offset < location.count && location[first + offset] == Self.pending {
            singles[first + offset] = result
            location[first + offset] = Self.single
            arrivals.append(first + offset)
            finished += 1
        }
        notify()
    }

    private func storeSegment(first: Int, _ values: [Output]) {
        pthread_mutex_lock(&mutex)
        guard first + values.count <= location.count, location[first..<first + values.count].allSatisfy({ $0 == Self.pending }) else {
            pthread_mutex_unlock(&mutex)
            return
        }
        segments[first] = values
        // Through a buffer: element by element, each access to this class's arrays is checked for
        // exclusivity at run time (most of a batch's delivery time for 1,250 small outputs).
        location.withUnsafeMutableBufferPointer { location in
            for index in first..<first + values.count { location[index] = first }
        }
        arrivals.append(contentsOf: first..<first + values.count)
        finished += values.count
        notify()
    }

    /// Wakes the waiters and reports progress; called with the mutex held, releases it.
    /// Progress is reported before the waiters wake, so a caller whose wait ended has seen every report.
    private func notify() {
        let done = finished
        let total = location.count
        if let progress {
            pthread_mutex_unlock(&mutex)
            progress(done, total)
            pthread_mutex_lock(&mutex)
        }
        var resumed: [CheckedContinuation<Void, Never>] = []
        for (id, waiter) in waiters where waiter.ready(self) {
            resumed.append(waiter.continuation)
            waiters[id] = nil
        }
        if blocked.values.contains(where: { $0(self) }) { pthread_cond_broadcast(&condition) }
        pthread_mutex_unlock(&mutex)
        for continuation in resumed { continuation.resume() }
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
        if !ready(self) {
            // Registered only while this thread waits (under the mutex), so it never outlives the call.
            try withoutActuallyEscaping(ready) { ready in
                let id = nextWaiter
                nextWaiter += 1
                blocked[id] = ready
                defer { blocked[id] = nil }
                while !ready(self) {
                    if timeout == nil {
                        pthread_cond_wait(&condition, &mutex)
                    } else if pthread_cond_timedwait(&condition, &mutex, &deadline) == ETIMEDOUT, !ready(self) {
                        throw MultiprocessingError(.timedOut, "results of the MPI pool not ready within \(timeout!)")
                    }
                }
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
                        waiters[id] = (ready, continuation)
                        pthread_mutex_unlock(&mutex)
                    }
                }
            } onCancel: {
                pthread_mutex_lock(&mutex)
                let waiter = waiters.removeValue(forKey: id)
                pthread_mutex_unlock(&mutex)
                waiter?.continuation.resume()
            }
        }
    }

    // Conditions and takers, called with the job's mutex held.

    var isComplete: Bool { finished == location.count }
    func hasResult(_ index: Int) -> Bool { location[index] != Self.pending }
    func result(_ index: Int) -> Result<Output, any Error> {
        switch location[index] {
        case Self.single: return singles[index]!
        case let first: return .success(segments[first]![index - first])
        }
    }
    func hasArrival(_ position: Int) -> Bool { arrivals.count > position }
    func arrival(_ position: Int) -> Result<Output, any Error> { result(arrivals[position]) }

    /// Every output in input order, or the first failure in input order.
    func outputs() throws -> [Output] {
        var outputs: [Output] = []
        outputs.reserveCapacity(location.count)
        var index = 0
        while index < location.count {
            if let segment = segments[index], location[index] == index {
                outputs.append(contentsOf: segment)
                index += segment.count
            } else {
                outputs.append(try result(index).get())
                index += 1
            }
        }
        return outputs
    }
}
