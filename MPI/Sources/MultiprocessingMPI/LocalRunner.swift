import Multiprocessing
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// A worker rank runs its tasks in a local child process, so that a task that crashes, is killed or runs
// past its limits ends that child only: the rank reports the failure for that input and goes on in a
// new child.

/// The local child: it reads batches from the rank (a header frame `[start u32][end u32][body length
/// u64][in inbox u8][type name]`; the batch body as rank 0 encoded it is in `inbox`, memory shared with
/// the rank, from which it is decoded in place, or when larger than that follows as a second frame) and
/// runs the inputs `start..<end`.
///
/// Before each input runs, its index plus one goes to `running`, memory shared with the rank. While
/// every input succeeds the outputs stay here, and at the end they go to `log`, memory shared with the
/// rank, as one encoded array (one `values` outcome): a batch of small tasks costs one encode, not one
/// per input. From the first input that throws on, each outcome (`[kind u8][length u64][bytes]`, the
/// result message's own format) is appended to the log as it ends, and the count of bytes written is
/// updated after each. When the child dies in the middle of a batch, the rank finds every outcome
/// logged before, and in `running` the input that was running: that input fails, and those between
/// the logged ones and it (whose outputs died with the child) run again in a new child. The channel
/// carries only a `done` frame per batch, a `flush` frame when the log is full (the rank copies it out
/// and answers), and any outcome too large for the log.
struct LocalTaskWorker: AsyncProcessTask {
    let channel: Connection
    let log: SharedMemory
    let inbox: SharedMemory
    let running: RawSharedValue<UInt64>

    static let done: UInt8 = 0xF1
    static let flush: UInt8 = 0xF0
    /// The log's first bytes hold the count of outcome bytes after them.
    static let logHeader = 64

    /// Where a batch's body is.
    enum BatchSource {
        /// The first bytes of the inbox.
        case inbox(Int)
        /// A frame of its own.
        case bytes([UInt8])
    }

    func run() async throws {
        var writer = LogWriter(log: log, channel: channel)
        // The task type of the last batch: the batches of one call name the same type, found by name once.
        var known: (name: String, type: Any.Type?)?
        while true {
            guard let header = try receive() else { return }
            var reader = MessageReader(header)
            let start = Int(try reader.read(UInt32.self))
            let end = Int(try reader.read(UInt32.self))
            let length = Int(try reader.read(UInt64.self))
            let body: BatchSource
            if try reader.read(UInt8.self) == 1 {
                guard length <= inbox.size else { throw MultiprocessingError(.protocolViolation, "a batch longer than the inbox") }
                body = .inbox(length)
            } else {
                body = .bytes(try receiveBody())
            }
            let name = String(decoding: reader.bytes[reader.offset...], as: UTF8.self)
            try writer.reset()
            do {
                let type = known?.name == name ? known?.type : _typeByName(name)
                known = (name, type)
                if let type = type as? any PoolTask.Type {
                    try runBatch(type, body: body, range: start..<end, &writer)
                } else if let type = type as? any AsyncPoolTask.Type {
                    try await runAsyncBatch(type, body: body, range: start..<end, &writer)
                } else {
                    throw BatchFailure(error: MultiprocessingError(.transport, "no pool task type named \(name) in this program"))
                }
            } catch let error as BatchFailure {
                // The body could not be decoded: every input of it fails the same way.
                for _ in start..<end { try writer.append(Self.thrown(error.error)) }
            }
            try send([Self.done])
        }
    }

    private struct BatchFailure: Error { let error: any Error }

    /// The next batch's header, or nil when the rank closed the channel. Blocking reads: the child does
    /// nothing else meanwhile.
    private func receive() throws -> [UInt8]? {
        do {
            return try channel.recvBytes()
        } catch let error as MultiprocessingError where error.code == .endOfFile {
            return nil
        }
    }

    private func receiveBody() throws -> [UInt8] { try channel.recvBytes() }

    private func send(_ frame: [UInt8]) throws { try channel.sendBytes(frame) }

    /// The batch, decoded where it is (in the inbox, without copying it out first); its inputs must
    /// cover `range`.
    private func decode<Task: Codable, Input: Codable>(_ type: BatchBody<Task, Input>.Type, _ body: BatchSource, range: Range<Int>) throws -> BatchBody<Task, Input> {
        let batch: BatchBody<Task, Input>
        do {
            switch body {
            case .inbox(let length):
                batch = try inbox.withUnsafeMutableBytes { try BinaryDecoder().decode(type, from: UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
            case .bytes(let bytes):
                batch = try BinaryDecoder().decode(type, from: bytes)
            }
        } catch {
            throw BatchFailure(error: error)
        }
        guard range.lowerBound >= 0, range.upperBound <= batch.inputs.count else {
            throw BatchFailure(error: MultiprocessingError(.protocolViolation, "inputs \(range) asked of a batch of \(batch.inputs.count)"))
        }
        return batch
    }

    private func runBatch<T: PoolTask>(_ type: T.Type, body: BatchSource, range: Range<Int>, _ writer: inout LogWriter) throws {
        let batch = try decode(BatchBody<T, T.Input>.self, body, range: range)
        // This runs unspecialised (the task type is found by name): each output goes straight into
        // its place, instead of an append that checks the array's uniqueness and room every time.
        var failure: (index: Int, error: any Error)?
        let task = batch.task
        let outputs = batch.inputs.withUnsafeBufferPointer { inputs in
            [T.Output](unsafeUninitializedCapacity: range.count) { buffer, initialized in
                guard var next = buffer.baseAddress else { return }
                for index in range {
                    running.store(UInt64(index + 1))
                    do {
                        next.initialize(to: try task.run(inputs[index]))
                    } catch {
                        failure = (index, error)
                        return
                    }
                    next += 1
                    initialized += 1
                }
            }
        }
        if let failure {
            // From here on each outcome is logged as it ends.
            try Self.logEach(outputs, &writer)
            try writer.append(Self.thrown(failure.error))
            for later in failure.index + 1..<range.upperBound {
                running.store(UInt64(later + 1))
                let frame: [UInt8]
                do { frame = try Self.value(try task.run(batch.inputs[later])) } catch { frame = Self.thrown(error) }
                try writer.append(frame)
            }
            return
        }
        try Self.logAll(outputs, &writer)
    }

    private func runAsyncBatch<T: AsyncPoolTask>(_ type: T.Type, body: BatchSource, range: Range<Int>, _ writer: inout LogWriter) async throws {
        let batch = try decode(BatchBody<T, T.Input>.self, body, range: range)
        var outputs: [T.Output] = []
        outputs.reserveCapacity(range.count)
        for index in range {
            running.store(UInt64(index + 1))
            do {
                outputs.append(try await batch.task.run(batch.inputs[index]))
            } catch {
                try Self.logEach(outputs, &writer)
                try writer.append(Self.thrown(error))
                for later in index + 1..<range.upperBound {
                    running.store(UInt64(later + 1))
                    let frame: [UInt8]
                    do { frame = try Self.value(try await batch.task.run(batch.inputs[later])) } catch { frame = Self.thrown(error) }
                    try writer.append(frame)
                }
                return
            }
        }
        try Self.logAll(outputs, &writer)
    }

    /// Logs the outputs of a batch whose inputs all succeeded as one encoded array, when it encodes and
    /// fits in the log; else one by one.
    private static func logAll<Output: Encodable>(_ outputs: [Output], _ writer: inout LogWriter) throws {
        if !outputs.isEmpty, let frame = try? outcome(.values, { try BinaryEncoder().encode(outputs, appendingTo: &$0) }),
            writer.appendIfRoom(frame)
        {
            return
        }
        try logEach(outputs, &writer)
    }

    /// Logs each output on its own: an output that cannot be encoded fails alone.
    private static func logEach<Output: Encodable>(_ outputs: [Output], _ writer: inout LogWriter) throws {
        for output in outputs {
            let frame: [UInt8]
            do { frame = try value(output) } catch { frame = thrown(error) }
            try writer.append(frame)
        }
    }

    /// An outcome: `[kind u8][length u64]` then the bytes.
    private static func outcome(_ kind: OutcomeKind, _ body: (inout [UInt8]) throws -> Void) rethrows -> [UInt8] {
        var frame = [UInt8](repeating: 0, count: 9)
        frame[0] = kind.rawValue
        try body(&frame)
        withUnsafeBytes(of: UInt64(frame.count - 9).littleEndian) { frame.replaceSubrange(1..<9, with: $0) }
        return frame
    }

    private static func value<Output: Encodable>(_ output: Output) throws -> [UInt8] {
        try outcome(.value) { try BinaryEncoder().encode(output, appendingTo: &$0) }
    }

    private static func thrown(_ error: any Error) -> [UInt8] {
        // A ThrownError is strings and bytes: encoding it cannot fail.
        outcome(.thrown) { try? BinaryEncoder().encode(ThrownError(error), appendingTo: &$0) }
    }
}

/// Appends outcomes to the shared log, flushing through the rank when it is full.
struct LogWriter {
    let log: SharedMemory
    let channel: Connection
    private var used = 0

    init(log: SharedMemory, channel: Connection) {
        self.log = log
        self.channel = channel
    }

    mutating func reset() throws {
        used = 0
        try log.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(0), toByteOffset: 0, as: UInt64.self) }
    }

    mutating func append(_ frame: [UInt8]) throws {
        let capacity = log.size - LocalTaskWorker.logHeader
        if used + frame.count > capacity {
            // Full: the rank copies what is there, then the log starts again.
            try channel.sendBytes([LocalTaskWorker.flush])
            _ = try channel.recvBytes()
            try reset()
        }
        if frame.count > capacity {
            try channel.sendBytes(frame)
            return
        }
        try write(frame)
    }

    /// Appends `frame` when it fits in what is left of the log; true when it did.
    mutating func appendIfRoom(_ frame: [UInt8]) -> Bool {
        guard used + frame.count <= log.size - LocalTaskWorker.logHeader else { return false }
        return (try? write(frame)) != nil
    }

    private mutating func write(_ frame: [UInt8]) throws {
        let start = used
        try log.withUnsafeMutableBytes { memory in
            frame.withUnsafeBytes { memory.baseAddress!.advanced(by: LocalTaskWorker.logHeader + start).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            memory.storeBytes(of: UInt64(start + frame.count), toByteOffset: 0, as: UInt64.self)
        }
        used += frame.count
    }
}

/// The task and the inputs of one batch, as they travel from rank 0 to a worker's local child.
struct BatchBody<Task: Codable, Input: Codable>: Codable {
    var task: Task
    var inputs: [Input]
}

/// The rank's side of its local child: runs a batch and returns one outcome per input, whatever happens
/// to the child. Used from one thread at a time.
final class LocalRunner {
    private let settings: WorkerSettings
    private var child: ChildProcess?
    private var channel: Connection?
    private var log: SharedMemory?
    private var inbox: SharedMemory?
    /// The input each child is running (its index plus one; 0: none yet), shared with every child.
    private var running: RawSharedValue<UInt64>?
    /// The size of the outcome log shared with each local child.
    static let logSize = 4 << 20
    /// The size of the memory that carries batches to each local child (pages are used only as touched).
    static let inboxSize = 16 << 20

    init(settings: WorkerSettings) { self.settings = settings }

    /// Runs the batch in `message` (a task message as rank 0 sent it) whose body starts at `bodyOffset`.
    /// Returns the outcomes, `[kind u8][length u64][bytes]` each, one per input or one `values` outcome
    /// for a run of inputs that all succeeded, concatenated in input order.
    /// `timeout` limits each input's run; nil: the pool's ``WorkerSettings/taskTimeout``.
    func run(message: [UInt8], bodyOffset: Int, count: Int, typeName: String, timeout: Duration?) -> [UInt8] {
        let taskTimeout = timeout ?? settings.taskTimeout
        var outcomes: [UInt8] = []
        // Inputs before `finished` have their outcomes in `outcomes`.
        var finished = 0
        // Inputs that crashed or timed out, with their outcomes: placed when every input before them has
        // its own (those whose outputs died with the child run again first).
        var failures: [Int: (OutcomeKind, [UInt8])] = [:]
        var freshChildFailures = 0
        while finished < count {
            if let failure = failures.removeValue(forKey: finished) {
                append(failure, to: &outcomes)
                finished += 1
                continue
            }
            let end = failures.keys.min() ?? count
            let channel: Connection
            let fresh: Bool
            do {
                (channel, fresh) = try ensureChild()
                let length = message.count - bodyOffset
                let viaInbox = try inbox.map { inbox in
                    try length <= inbox.size && inbox.withUnsafeMutableBytes { memory in
                        message.withUnsafeBytes { memory.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[bodyOffset...])) }
                        return true
                    }
                } ?? false
                running?.store(0)
                var header = MessageWriter()
                header.append(UInt32(finished))
                header.append(UInt32(end))
                header.append(UInt64(length))
                header.append(UInt8(viaInbox ? 1 : 0))
                header.bytes.append(contentsOf: typeName.utf8)
                try channel.sendBytes(header.bytes)
                if !viaInbox { try channel.sendBytes(message, offset: bodyOffset) }
            } catch {
                // A child that died while idle: start another; one that cannot even take a batch fails
                // the input rather than looping.
                let facts = retire(killing: true)
                freshChildFailures += 1
                if freshChildFailures >= 2 {
                    append(crash(.crashed, facts), to: &outcomes)
                    finished += 1
                }
                continue
            }
            if fresh { freshChildFailures = 0 }
            var lastProgress = ContinuousClock.now
            var lastMark = progressMark()
            batch: while true {
                do {
                    // Wake now and then to see whether the running input has passed the task timeout.
                    let frame: [UInt8]
                    do {
                        frame = try channel.recvBytes(timeout: taskTimeout.map { min($0, .milliseconds(100)) })
                    } catch let error as MultiprocessingError where error.code == .timedOut {
                        let mark = progressMark()
                        if mark != lastMark {
                            lastMark = mark
                            lastProgress = .now
                        } else if let limit = taskTimeout, ContinuousClock.now - lastProgress >= limit {
                            let culprit = runningInput(from: finished, before: end)
                            finished += takeLog(into: &outcomes, covering: end - finished)
                            let facts = retire(killing: true)
                            if finished < end { failures[max(culprit, finished)] = crash(.timedOut, facts) }
                            break batch
                        }
                        continue
                    }
                    switch frame.first {
                    case LocalTaskWorker.done?:
                        finished += takeLog(into: &outcomes, covering: end - finished)
                        if finished < end {
                            throw MultiprocessingError(.protocolViolation, "a local worker ended a batch without every outcome")
                        }
                        break batch
                    case LocalTaskWorker.flush?:
                        finished += takeLog(into: &outcomes, covering: end - finished)
                        try channel.sendBytes([1])
                    default:
                        guard frame.count >= 9, let kind = OutcomeKind(rawValue: frame[0]), kind != .values else {
                            throw MultiprocessingError(.protocolViolation, "a local worker sent an unknown frame")
                        }
                        outcomes.append(contentsOf: frame)
                        finished += 1
                    }
                } catch {
                    // The child died (or broke the protocol): what it logged stands, the input it was
                    // running crashed, and those between them run again.
                    let culprit = runningInput(from: finished, before: end)
                    finished += takeLog(into: &outcomes, covering: end - finished)
                    let facts = retire(killing: true)
                    if finished < end { failures[max(culprit, finished)] = crash(.crashed, facts) }
                    break batch
                }
            }
        }
        return outcomes
    }

    /// What changes while the child makes progress: the bytes logged and the input running.
    private func progressMark() -> (Int, UInt64) {
        (committedBytes(), running?.load() ?? 0)
    }

    /// The input the child is running, within `first..<end`; `first` when it says none there.
    private func runningInput(from first: Int, before end: Int) -> Int {
        let mark = Int(clamping: running?.load() ?? 0) - 1
        return mark >= first && mark < end ? mark : first
    }

    /// The number of outcome bytes in the log.
    private func committedBytes() -> Int {
        guard let log else { return 0 }
        return (try? log.withUnsafeMutableBytes { Int($0.load(fromByteOffset: 0, as: UInt64.self)) }) ?? 0
    }

    /// Copies the log's outcomes to `outcomes` and returns for how many inputs: a `values` outcome (the
    /// outputs of a whole run that succeeded, logged alone) stands for `covering` inputs.
    private func takeLog(into outcomes: inout [UInt8], covering: Int) -> Int {
        guard let log else { return 0 }
        return (try? log.withUnsafeMutableBytes { memory -> Int in
            let committed = min(Int(memory.load(fromByteOffset: 0, as: UInt64.self)), memory.count - LocalTaskWorker.logHeader)
            let region = UnsafeRawBufferPointer(rebasing: memory[LocalTaskWorker.logHeader..<LocalTaskWorker.logHeader + committed])
            var offset = 0
            var taken = 0
            while committed - offset >= 9 {
                let length = Int(region.loadUnaligned(fromByteOffset: offset + 1, as: UInt64.self).littleEndian)
                guard length >= 0, length <= committed - offset - 9 else { break }
                taken += region[offset] == OutcomeKind.values.rawValue ? covering : 1
                offset += 9 + length
            }
            outcomes.append(contentsOf: UnsafeRawBufferPointer(rebasing: region[0..<offset]))
            memory.storeBytes(of: UInt64(0), toByteOffset: 0, as: UInt64.self)
            return taken
        }) ?? 0
    }

    private func append(_ outcome: (OutcomeKind, [UInt8]), to outcomes: inout [UInt8]) {
        outcomes.append(outcome.0.rawValue)
        withUnsafeBytes(of: UInt64(outcome.1.count).littleEndian) { outcomes.append(contentsOf: $0) }
        outcomes.append(contentsOf: outcome.1)
    }

    /// Stops the child, if one runs: it ends when its channel closes.
    func close() {
        guard let child, let channel else { return }
        channel.close()
        if (try? child.join(timeout: .seconds(5))) != true { try? child.kill(); _ = try? child.join(timeout: .seconds(5)) }
        try? child.close()
        self.child = nil
        self.channel = nil
        log?.close()
        log = nil
        inbox?.close()
        inbox = nil
    }

    private func ensureChild() throws -> (Connection, Bool) {
        if let channel { return (channel, false) }
        let running = try self.running ?? RawSharedValue<UInt64>(0)
        self.running = running
        let (mine, theirs) = try makePipe()
        let log: SharedMemory
        let inbox: SharedMemory
        do {
            log = try SharedMemory(size: Self.logSize)
            do {
                inbox = try SharedMemory(size: Self.inboxSize)
            } catch {
                try? log.unlink()
                log.close()
                throw error
            }
        } catch {
            mine.close()
            theirs.close()
            throw error
        }
        let child = ChildProcess(LocalTaskWorker(channel: theirs, log: log, inbox: inbox, running: running), name: "mpi-task-runner", daemon: true)
        do {
            try child.setSettings(ChildSettings(limits: settings.limits))
            try child.start()
        } catch {
            mine.close()
            theirs.close()
            for block in [log, inbox] {
                try? block.unlink()
                block.close()
            }
            throw error
        }
        // The child has the memory through its descriptors: the names can go now.
        try? log.unlink()
        try? inbox.unlink()
        theirs.close()
        self.child = child
        self.channel = mine
        self.log = log
        self.inbox = inbox
        return (mine, true)
    }

    /// Ends the present child (killing it first when asked) and says how it ended.
    private func retire(killing: Bool) -> CrashFacts {
        defer {
            channel?.close()
            channel = nil
            try? child?.close()
            child = nil
            log?.close()
            log = nil
            inbox?.close()
            inbox = nil
        }
        guard let child else { return CrashFacts(pid: nil, signal: nil, exitCode: nil, message: "no local worker") }
        if killing { try? child.kill() }
        if (try? child.join(timeout: .seconds(10))) != true {
            try? child.kill()
            _ = try? child.join(timeout: .seconds(10))
        }
        let failure = child.failure
        return CrashFacts(
            pid: child.pid, signal: failure?.signal, exitCode: child.exitCode,
            message: failure?.description ?? "exited with code \(child.exitCode.map(String.init) ?? "unknown")")
    }

    private func crash(_ kind: OutcomeKind, _ facts: CrashFacts) -> (OutcomeKind, [UInt8]) {
        var facts = facts
        if kind == .timedOut { facts.message = "ran past the task timeout and was killed" }
        return (kind, (try? BinaryEncoder().encode(facts)) ?? [])
    }
}
