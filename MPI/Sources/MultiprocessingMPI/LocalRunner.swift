import Multiprocessing
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// A worker rank runs its tasks in a local child process, so that a task that crashes, is killed or runs
// past its limits ends that child only: the rank reports the failure for that input and goes on in a
// new child. This runner is the package's own, to be replaced by the local pool's entry point for
// encoded jobs once that exists.

/// The local child: it reads batches from the rank (a header frame `[skip u32][count u32][body length
/// u64][in inbox u8][type name]`; the batch body as rank 0 encoded it is in `inbox`, memory shared with
/// the rank, or when larger than that follows as a second frame) and runs every input from `skip` on.
///
/// Each input's outcome (`[kind u8][length u64][bytes]`, the result message's own format) is appended to
/// `log`, memory shared with the rank, and the count of bytes written is updated after each: when the
/// child dies in the middle of a batch, the rank still finds every outcome finished before the crash,
/// and the input after them is the one that crashed. The channel carries only a `done` frame per batch,
/// a `flush` frame when the log is full (the rank copies it out and answers), and any outcome too large
/// for the log.
struct LocalTaskWorker: AsyncProcessTask {
    let channel: Connection
    let log: SharedMemory
    let inbox: SharedMemory

    static let done: UInt8 = 0xF1
    static let flush: UInt8 = 0xF0
    /// The log's first bytes hold the count of outcome bytes after them.
    static let logHeader = 64

    func run() async throws {
        var writer = LogWriter(log: log, channel: channel)
        while true {
            guard let header = try receive() else { return }
            var reader = MessageReader(header)
            let skip = Int(try reader.read(UInt32.self))
            let count = Int(try reader.read(UInt32.self))
            let length = Int(try reader.read(UInt64.self))
            let body: [UInt8]
            if try reader.read(UInt8.self) == 1 {
                guard length <= inbox.size else { throw MultiprocessingError(.protocolViolation, "a batch longer than the inbox") }
                body = try inbox.withUnsafeMutableBytes { Array(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
            } else {
                body = try receiveBody()
            }
            let name = String(decoding: reader.bytes[reader.offset...], as: UTF8.self)
            try writer.reset()
            do {
                let type = _typeByName(name)
                if let type = type as? any PoolTask.Type {
                    try runBatch(type, body: body, skip: skip, &writer)
                } else if let type = type as? any AsyncPoolTask.Type {
                    try await runAsyncBatch(type, body: body, skip: skip, &writer)
                } else {
                    throw BatchFailure(error: MultiprocessingError(.transport, "no pool task type named \(name) in this program"))
                }
            } catch let error as BatchFailure {
                // The body could not be decoded: every input of it fails the same way.
                for _ in skip..<count { try writer.append(Self.thrown(error.error)) }
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

    private func decode<T: Decodable>(_ type: T.Type, _ body: [UInt8]) throws -> T {
        do { return try BinaryDecoder().decode(type, from: body) } catch { throw BatchFailure(error: error) }
    }

    private func runBatch<T: PoolTask>(_ type: T.Type, body: [UInt8], skip: Int, _ writer: inout LogWriter) throws {
        let batch = try decode(BatchBody<T, T.Input>.self, body)
        var outputs: [T.Output]? = []
        outputs?.reserveCapacity(batch.inputs.count - skip)
        for input in batch.inputs.dropFirst(skip) {
            let frame: [UInt8]
            do {
                let output = try batch.task.run(input)
                frame = try Self.value(output)
                outputs?.append(output)
            } catch {
                frame = Self.thrown(error)
                outputs = nil
            }
            try writer.append(frame)
        }
        try Self.appendValues(outputs, &writer)
    }

    private func runAsyncBatch<T: AsyncPoolTask>(_ type: T.Type, body: [UInt8], skip: Int, _ writer: inout LogWriter) async throws {
        let batch = try decode(BatchBody<T, T.Input>.self, body)
        var outputs: [T.Output]? = []
        for input in batch.inputs.dropFirst(skip) {
            let frame: [UInt8]
            do {
                let output = try await batch.task.run(input)
                frame = try Self.value(output)
                outputs?.append(output)
            } catch {
                frame = Self.thrown(error)
                outputs = nil
            }
            try writer.append(frame)
        }
        try Self.appendValues(outputs, &writer)
    }

    /// After a batch whose inputs all succeeded, adds their outputs again as one array: the rank then
    /// sends that alone and rank 0 decodes once. Only when the per-input outcomes are all still in the
    /// log (no flush) and the array fits.
    private static func appendValues<Output: Encodable>(_ outputs: [Output]?, _ writer: inout LogWriter) throws {
        guard let outputs, outputs.count > 1, !writer.flushed else { return }
        let frame = try outcome(.values) { try BinaryEncoder().encode(outputs, appendingTo: &$0) }
        writer.appendIfRoom(frame)
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
    /// Whether the log was flushed since the batch began.
    private(set) var flushed = false

    init(log: SharedMemory, channel: Connection) {
        self.log = log
        self.channel = channel
    }

    mutating func reset() throws {
        used = 0
        flushed = false
        try log.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(0), toByteOffset: 0, as: UInt64.self) }
    }

    mutating func append(_ frame: [UInt8]) throws {
        let capacity = log.size - LocalTaskWorker.logHeader
        if used + frame.count > capacity {
            // Full: the rank copies what is there, then the log starts again.
            try channel.sendBytes([LocalTaskWorker.flush])
            _ = try channel.recvBytes()
            try reset()
            flushed = true
        }
        if frame.count > capacity {
            try channel.sendBytes(frame)
            return
        }
        try write(frame)
    }

    /// Appends `frame` when it fits in what is left of the log.
    mutating func appendIfRoom(_ frame: [UInt8]) {
        guard used + frame.count <= log.size - LocalTaskWorker.logHeader else { return }
        try? write(frame)
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
    /// The size of the outcome log shared with each local child.
    static let logSize = 4 << 20
    /// The size of the memory that carries batches to each local child (pages are used only as touched).
    static let inboxSize = 16 << 20

    init(settings: WorkerSettings) { self.settings = settings }

    /// Runs the batch in `message` (a task message as rank 0 sent it) whose body starts at `bodyOffset`.
    /// Returns the outcomes, `[kind u8][length u64][bytes]` each, one per input, concatenated.
    /// `timeout` limits each input's run; nil: the pool's ``WorkerSettings/taskTimeout``.
    func run(message: [UInt8], bodyOffset: Int, count: Int, typeName: String, timeout: Duration?) -> [UInt8] {
        let taskTimeout = timeout ?? settings.taskTimeout
        var outcomes: [UInt8] = []
        var finished = 0
        var freshChildFailures = 0
        while finished < count {
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
                var header = MessageWriter()
                header.append(UInt32(finished))
                header.append(UInt32(count))
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
            var lastCommitted = 0
            var lastProgress = ContinuousClock.now
            batch: while true {
                do {
                    // Wake now and then to see whether the running input has passed the task timeout.
                    let frame: [UInt8]
                    do {
                        frame = try channel.recvBytes(timeout: taskTimeout.map { min($0, .milliseconds(100)) })
                    } catch let error as MultiprocessingError where error.code == .timedOut {
                        let committed = committedBytes()
                        if committed != lastCommitted {
                            lastCommitted = committed
                            lastProgress = .now
                        } else if let limit = taskTimeout, ContinuousClock.now - lastProgress >= limit {
                            finished += takeLog(into: &outcomes)
                            let facts = retire(killing: true)
                            append(crash(.timedOut, facts), to: &outcomes)
                            finished += 1
                            break batch
                        }
                        continue
                    }
                    switch frame.first {
                    case LocalTaskWorker.done?:
                        finished += takeLog(into: &outcomes)
                        break batch
                    case LocalTaskWorker.flush?:
                        finished += takeLog(into: &outcomes)
                        lastCommitted = 0
                        try channel.sendBytes([1])
                    default:
                        guard frame.count >= 9, OutcomeKind(rawValue: frame[0]) != nil else {
                            throw MultiprocessingError(.protocolViolation, "a local worker sent an unknown frame")
                        }
                        outcomes.append(contentsOf: frame)
                        finished += 1
                    }
                } catch {
                    // The child died (or broke the protocol): what it logged stands, the next input crashed.
                    finished += takeLog(into: &outcomes)
                    let facts = retire(killing: true)
                    if finished < count {
                        append(crash(.crashed, facts), to: &outcomes)
                        finished += 1
                    }
                    break batch
                }
            }
        }
        return outcomes
    }

    /// The number of outcome bytes in the log.
    private func committedBytes() -> Int {
        guard let log else { return 0 }
        return (try? log.withUnsafeMutableBytes { Int($0.load(fromByteOffset: 0, as: UInt64.self)) }) ?? 0
    }

    /// Copies the log's outcomes to `outcomes` and returns how many there were.
    private func takeLog(into outcomes: inout [UInt8]) -> Int {
        guard let log else { return 0 }
        return (try? log.withUnsafeMutableBytes { memory -> Int in
            let committed = min(Int(memory.load(fromByteOffset: 0, as: UInt64.self)), memory.count - LocalTaskWorker.logHeader)
            let region = UnsafeRawBufferPointer(rebasing: memory[LocalTaskWorker.logHeader..<LocalTaskWorker.logHeader + committed])
            var offset = 0
            var taken = 0
            var values: Range<Int>?
            while committed - offset >= 9 {
                let length = Int(region.loadUnaligned(fromByteOffset: offset + 1, as: UInt64.self).littleEndian)
                guard length >= 0, length <= committed - offset - 9 else { break }
                if region[offset] == OutcomeKind.values.rawValue {
                    values = offset..<offset + 9 + length
                } else {
                    taken += 1
                }
                offset += 9 + length
            }
            // The outputs as one array stand for the per-input outcomes before them.
            outcomes.append(contentsOf: UnsafeRawBufferPointer(rebasing: region[values ?? 0..<offset]))
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
        let child = ChildProcess(LocalTaskWorker(channel: theirs, log: log, inbox: inbox), name: "mpi-task-runner", daemon: true)
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
