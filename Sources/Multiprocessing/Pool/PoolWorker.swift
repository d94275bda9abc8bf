#if canImport(Glibc)
import Glibc
#endif

/// A pool worker under the fork start method: runs ``PoolTask`` jobs read from `channel` until the pool
/// closes its end. (Fork workers cannot run async work; see ``AsyncProcessTask``.)
struct PoolWorker: ProcessTask {
    let channel: Connection
    /// The resident memory in bytes after which the worker ends (after answering its task).
    let memoryCap: Int?
    /// Where the worker records the id of the input it starts (read by the pool when the worker dies).
    let started: RawSharedValue<UInt64>
    /// The pool's descriptors this forked worker inherited (the other workers' channels, the wake pipe).
    let inherited: [Int32]
    /// The work of a ``ClosurePool``: it reaches the worker in the forked memory, never encoded.
    var closure: PoolClosure? = nil
    /// The pool's initializer, run before the first job (it too comes with the forked memory).
    var initializer: (any ProcessTask)? = nil

    private enum CodingKeys: String, CodingKey { case channel, memoryCap, started, inherited }

    func run() throws {
        for fd in inherited { Syscall.close(fd) }
        var session = PoolWorkerSession(channel: channel, memoryCap: memoryCap, started: started, closure: closure)
        guard session.initialize(initializer) else { return }
        // Made only when needed: describing an error looks up its type's name, which takes a runtime lock
        // that another thread of the parent may have held when this worker was forked (the worker then
        // waits on it forever).
        func refusal() -> PoolWorkerSession.Outcome { PoolWorkerSession.refusal("async work cannot run in a worker started by fork") }
        while let job = session.nextJob() {
            if let batch = job.batch {
                let outcome: PoolWorkerSession.BatchOutcome
                switch job.runner {
                case .sync(_, let runBatch): outcome = runBatch(batch, session.starter(job.firstID))
                case .async: outcome = .each(Array(repeating: refusal(), count: job.count))
                case .broken(let outcomeForAll): outcome = .each(Array(repeating: outcomeForAll, count: job.count))
                }
                guard session.reply(outcome, job: job) else { return }
                continue
            }
            for index in 0..<job.count {
                session.begin(job.firstID &+ UInt64(index))
                let outcome: PoolWorkerSession.Outcome
                switch job.runner {
                case .sync(let run, _): outcome = run(job.inputs[index])
                case .async: outcome = refusal()
                case .broken(let outcomeForAll): outcome = outcomeForAll
                }
                guard session.reply(outcome, id: job.firstID &+ UInt64(index), atOnce: job.answersAtOnce) else { return }
            }
        }
    }
}

/// A pool worker under spawn and forkserver: runs ``PoolTask`` and ``AsyncPoolTask`` jobs read from
/// `channel` until the pool closes its end.
struct PoolAsyncWorker: AsyncProcessTask {
    let channel: Connection
    let memoryCap: Int?
    let started: RawSharedValue<UInt64>
    /// The pool's initializer, run before the first job.
    let initializer: TaskEnvelope?

    func run() async throws {
        var session = PoolWorkerSession(channel: channel, memoryCap: memoryCap, started: started)
        guard session.initialize(initializer?.task as? any ProcessTask) else { return }
        while let job = session.nextJob() {
            if let batch = job.batch {
                let outcome: PoolWorkerSession.BatchOutcome
                switch job.runner {
                case .sync(_, let runBatch): outcome = runBatch(batch, session.starter(job.firstID))
                case .async(_, let runBatch): outcome = await runBatch(batch, session.starter(job.firstID))
                case .broken(let outcomeForAll): outcome = .each(Array(repeating: outcomeForAll, count: job.count))
                }
                guard session.reply(outcome, job: job) else { return }
                continue
            }
            for index in 0..<job.count {
                session.begin(job.firstID &+ UInt64(index))
                let outcome: PoolWorkerSession.Outcome
                switch job.runner {
                case .sync(let run, _): outcome = run(job.inputs[index])
                case .async(let run, _): outcome = await run(job.inputs[index])
                case .broken(let outcomeForAll): outcome = outcomeForAll
                }
                guard session.reply(outcome, id: job.firstID &+ UInt64(index), atOnce: job.answersAtOnce) else { return }
            }
        }
    }
}

/// What both kinds of worker share: reading jobs, keeping the last task decoded, recording which input
/// runs (so that the pool knows which input a dead worker was running), answering, and watching the
/// worker's resident memory.
///
/// Replies are batched: they are written when the worker would wait for its next job, when 2 ms passed
/// since the first unsent one, or when 256 KiB are waiting; a job with a per-input timeout is answered
/// input by input, so that the pool knows when each input started. If the worker dies, the inputs it
/// answered but had not sent yet run again elsewhere; only the one it was running fails.
///
/// A batch (a chunk of a map, its inputs encoded as one array) is answered by one reply holding every
/// output as one array when all of its inputs succeeded and their outputs encode together; otherwise
/// by one reply per input, as a chunk of single inputs is. Its inputs are decoded together, and when
/// that fails one by one, so that an input that cannot be decoded fails alone.
struct PoolWorkerSession {
    typealias Outcome = (kind: UInt8, payload: [UInt8])
    /// Runs a batch: its encoded inputs, and a function to call with an input's offset as it starts.
    typealias BatchRunner = (PoolEncodedBatch, (Int) -> Void) -> BatchOutcome
    typealias AsyncBatchRunner = (PoolEncodedBatch, (Int) -> Void) async -> BatchOutcome

    enum Runner {
        case sync(([UInt8]) -> Outcome, BatchRunner)
        case async(([UInt8]) async -> Outcome, AsyncBatchRunner)
        /// The task could not be decoded: every input gets this outcome.
        case broken(Outcome)
    }

    /// How a batch ended: every output as one encoded array, or each input's outcome.
    enum BatchOutcome {
        case outputs([UInt8])
        case each([Outcome])
    }

    struct Job {
        let firstID: UInt64
        let runner: Runner
        /// The inputs of a chunk of single inputs.
        let inputs: [[UInt8]]
        /// A batch's inputs, encoded as one array.
        let batch: PoolEncodedBatch?
        let count: Int
        let answersAtOnce: Bool
    }

    let channel: Connection
    let memoryCap: Int?
    let started: RawSharedValue<UInt64>
    private var cachedKey: (name: [UInt8], task: [UInt8])?
    private var cachedRunner: Runner?
    private var outbox: [UInt8] = []
    private var outboxSince: UInt64 = 0
    private var nextFrame: [UInt8]?

    private let closure: PoolClosure?

    init(channel: Connection, memoryCap: Int?, started: RawSharedValue<UInt64>, closure: PoolClosure? = nil) {
        self.closure = closure
        self.channel = channel
        self.memoryCap = memoryCap
        self.started = started
        channel.decodingBudget = .unlimited
        // Ctrl-C reaches the whole foreground process group: the parent decides what happens to the pool.
        signal(SIGINT, SIG_IGN)
    }

    /// The next job, or nil once the pool closed the channel (or sent something unreadable). Unsent
    /// replies go out first unless the next job is already here.
    mutating func nextJob() -> Job? {
        if nextFrame == nil, !outbox.isEmpty {
            nextFrame = try? channel.receiveBytesIfReady(maxLength: nil)
            if nextFrame == nil { guard flush() else { return nil } }
        }
        let received = nextFrame ?? (try? channel.recvBytes())
        nextFrame = nil
        guard let frame = received else { return nil }
        do {
            let (kind, firstID, name, task, count, inputs, batch) = try frame.withUnsafeBytes { bytes in
                var reader = WireFieldReader(bytes, what: "a pool frame")
                let kind = try reader.byte()
                let firstID = try reader.integer(UInt64.self)
                let name = Array(try reader.field())
                let task = Array(try reader.field())
                let count = Int(try reader.integer(UInt32.self))
                var inputs: [[UInt8]] = []
                var batch: PoolEncodedBatch?
                if kind & PoolWire.batched != 0 {
                    batch = PoolEncodedBatch(bytes: frame, range: try reader.fieldRange(), count: count)
                } else {
                    inputs.reserveCapacity(count)
                    for _ in 0..<count { inputs.append(Array(try reader.field())) }
                }
                return (kind, firstID, name, task, count, inputs, batch)
            }
            return Job(
                firstID: firstID, runner: runner(name: name, task: task), inputs: inputs, batch: batch, count: count,
                answersAtOnce: kind & PoolWire.answerAtOnce != 0)
        } catch {
            return nil
        }
    }

    /// Runs the pool's initializer, recorded as started (so that the pool knows a worker that died in
    /// it); false when it threw: the pool was told why, and the worker ends.
    mutating func initialize(_ initializer: (any ProcessTask)?) -> Bool {
        guard let initializer else { return true }
        started.store(PoolWire.initializing)
        do {
            try initializer.run()
        } catch {
            outbox.removeAll()
            PoolWire.appendReply(to: &outbox, kind: PoolWire.initializerFailed, flags: 0, id: 0, payload: Self.failure(error).payload)
            _ = flush()
            return false
        }
        started.store(0)
        return true
    }

    /// Records that input `id` starts.
    func begin(_ id: UInt64) { started.store(id) }

    /// Records that the input at an offset of a batch whose first id is `firstID` starts.
    func starter(_ firstID: UInt64) -> (Int) -> Void {
        { [started] offset in started.store(firstID &+ UInt64(offset)) }
    }

    /// Queues a batch's reply, or its inputs' replies; false when the worker should end.
    mutating func reply(_ outcome: BatchOutcome, job: Job) -> Bool {
        switch outcome {
        case .outputs(let payload):
            // Sent at once: the pool hands this worker its next batch when it has this one's outputs.
            return reply((PoolWire.outputs, payload), id: job.firstID, atOnce: true)
        case .each(let outcomes):
            for (offset, outcome) in outcomes.enumerated() {
                guard reply(outcome, id: job.firstID &+ UInt64(offset), atOnce: job.answersAtOnce) else { return false }
            }
            return true
        }
    }

    /// Queues one input's outcome and sends the queue when due; false when the worker should end (the
    /// pool is gone, or memory passed the cap).
    mutating func reply(_ outcome: Outcome, id: UInt64, atOnce: Bool) -> Bool {
        let retiring = memoryCap.map { Self.residentBytes() > $0 } ?? false
        if outbox.isEmpty { outboxSince = Deadline.monotonicNow() }
        PoolWire.appendReply(to: &outbox, kind: outcome.kind, flags: retiring ? PoolWire.retiring : 0, id: id, payload: outcome.payload)
        if atOnce || retiring || outbox.count >= 256 * 1024 || Deadline.monotonicNow() &- outboxSince >= 2_000_000 {
            guard flush() else { return false }
        }
        return !retiring
    }

    /// Writes the queued replies; false when the pool is gone.
    private mutating func flush() -> Bool {
        defer { outbox.removeAll(keepingCapacity: true) }
        guard let fd = try? channel.fileno else { return false }
        return (try? outbox.withUnsafeBytes { try Syscall.writeAll(fd, $0) }) != nil
    }

    private mutating func runner(name: [UInt8], task: [UInt8]) -> Runner {
        if let cachedKey, let cachedRunner, cachedKey.name == name, cachedKey.task == task { return cachedRunner }
        let made: Runner
        if name.isEmpty {
            // A closure pool's job: the closure came with the fork.
            guard let closure else { return .broken(Self.refusal("this worker has no closure to run")) }
            return .sync(closure.run, closure.runBatch)
        }
        do {
            let typeName = String(decoding: name, as: UTF8.self)
            guard let type = TaskEnvelope.resolveType(named: typeName) else {
                throw MultiprocessingError(.transport, "no pool task type named \(typeName) in the worker's program")
            }
            if let type = type as? any PoolTask.Type {
                made = try Self.syncRunner(type, task)
            } else if let type = type as? any AsyncPoolTask.Type {
                made = try Self.asyncRunner(type, task)
            } else {
                throw MultiprocessingError(.transport, "\(type) is not a PoolTask or AsyncPoolTask")
            }
        } catch {
            made = .broken(Self.failure(error))
        }
        cachedKey = (name, task)
        cachedRunner = made
        return made
    }

    private static func syncRunner<T: PoolTask>(_: T.Type, _ bytes: [UInt8]) throws -> Runner {
        var decoder = BinaryDecoder()
        decoder.memoryBudget = .unlimited
        let task = try decoder.decode(T.self, from: bytes)
        let encoder = BinaryEncoder()
        return .sync({ [decoder] input in
            do {
                let value = try decoder.decode(T.Input.self, from: input)
                let output = try task.run(value)
                return (PoolWire.output, try encoder.encode(output))
            } catch {
                return failure(error)
            }
        }, { batch, begin in runBatch(batch, begin: begin, task.run) })
    }

    private static func asyncRunner<T: AsyncPoolTask>(_: T.Type, _ bytes: [UInt8]) throws -> Runner {
        var decoder = BinaryDecoder()
        decoder.memoryBudget = .unlimited
        let task = try decoder.decode(T.self, from: bytes)
        let encoder = BinaryEncoder()
        return .async({ [decoder] input in
            do {
                let value = try decoder.decode(T.Input.self, from: input)
                let output = try await task.run(value)
                return (PoolWire.output, try encoder.encode(output))
            } catch {
                return failure(error)
            }
        }, { batch, begin in
            // As runBatch, awaiting each input.
            let count = batch.count
            let inputs = PoolBatchInputs<T.Input>(batch)
            var outputs: [T.Output] = []
            outputs.reserveCapacity(count)
            var offset = 0
            var failed: (any Error)?
            if let all = inputs.all {
                do {
                    while offset < count {
                        begin(offset)
                        outputs.append(try await task.run(all[offset]))
                        offset += 1
                    }
                    return batchOutcome(outputs)
                } catch {
                    failed = error
                }
            }
            var outcomes = singleOutcomes(outputs, then: failed)
            offset += failed == nil ? 0 : 1
            while offset < count {
                begin(offset)
                do { outcomes.append(outcome(.success(try await task.run(try inputs.input(offset))))) } catch { outcomes.append(failure(error)) }
                offset += 1
            }
            return .each(outcomes)
        })
    }

    /// Runs a batch of a synchronous task. The inputs run in a plain loop while all succeed (the
    /// worker runs generic code unspecialized: the loop touches no generic type but the arrays); after
    /// a failure, each input's outcome is kept on its own.
    static func runBatch<Input: Decodable, Output: Encodable>(
        _ batch: PoolEncodedBatch, begin: (Int) -> Void, _ body: (Input) throws -> Output
    ) -> BatchOutcome {
        let count = batch.count
        let inputs = PoolBatchInputs<Input>(batch)
        var outputs: [Output] = []
        outputs.reserveCapacity(count)
        var offset = 0
        var failed: (any Error)?
        if let all = inputs.all {
            do {
                while offset < count {
                    begin(offset)
                    outputs.append(try body(all[offset]))
                    offset += 1
                }
                return batchOutcome(outputs)
            } catch {
                failed = error
            }
        }
        var outcomes = singleOutcomes(outputs, then: failed)
        offset += failed == nil ? 0 : 1
        while offset < count {
            begin(offset)
            outcomes.append(outcome(Result { try body(try inputs.input(offset)) }))
            offset += 1
        }
        return .each(outcomes)
    }

    /// Every output of a batch as one array, or each output on its own when they do not encode together
    /// (or not within one frame).
    static func batchOutcome<Output: Encodable>(_ outputs: [Output]) -> BatchOutcome {
        if let bytes = try? BinaryEncoder().encode(outputs), bytes.count <= PoolWire.largestBatchReply { return .outputs(bytes) }
        return .each(outputs.map { outcome(.success($0)) })
    }

    /// The outcomes of the inputs of a batch that succeeded before one failed with `failed`.
    static func singleOutcomes<Output: Encodable>(_ outputs: [Output], then failed: (any Error)?) -> [Outcome] {
        var outcomes = outputs.map { outcome(.success($0)) }
        if let failed { outcomes.append(failure(failed)) }
        return outcomes
    }

    static func outcome<Output: Encodable>(_ result: Result<Output, any Error>) -> Outcome {
        do { return (PoolWire.output, try BinaryEncoder().encode(result.get())) } catch { return failure(error) }
    }

    static func failure(_ error: any Error) -> Outcome {
        (PoolWire.failure, (try? BinaryEncoder().encode(FailureReport(error))) ?? [])
    }

    static func refusal(_ message: String) -> Outcome {
        failure(MultiprocessingError(.unsupported, message))
    }

    /// This process's resident set in bytes, from /proc/self/statm (0 when it cannot be read).
    static func residentBytes() -> Int {
        guard let fd = try? Syscall.open("/proc/self/statm", O_RDONLY | O_CLOEXEC) else { return 0 }
        defer { Syscall.close(fd) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let count = (try? buffer.withUnsafeMutableBytes { try Syscall.readSome(fd, $0) }) ?? 0
        let fields = String(decoding: buffer[0..<count], as: UTF8.self).split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

/// A closure pool's work in a worker: encoded input in, outcome out.
final class PoolClosure: Sendable {
    let run: @Sendable ([UInt8]) -> PoolWorkerSession.Outcome
    let runBatch: @Sendable (PoolEncodedBatch, (Int) -> Void) -> PoolWorkerSession.BatchOutcome

    init<Input: Decodable & Sendable, Output: Encodable & Sendable>(_ body: @escaping @Sendable (Input) throws -> Output) {
        runBatch = { batch, begin in PoolWorkerSession.runBatch(batch, begin: begin, body) }
        run = { bytes in
            do {
                var decoder = BinaryDecoder()
                decoder.memoryBudget = .unlimited
                let output = try body(try decoder.decode(Input.self, from: bytes))
                return (PoolWire.output, try BinaryEncoder().encode(output))
            } catch {
                return PoolWorkerSession.failure(error)
            }
        }
    }
}
