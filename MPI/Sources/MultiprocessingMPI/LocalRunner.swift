import Multiprocessing
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// A worker rank runs its tasks in a local child process, so that a task that crashes, is killed or runs
// past its limits ends that child only: the rank reports the failure for that input and goes on in a
// new child. This runner is the package's own, to be replaced by the local pool's entry point for
// encoded jobs once that exists.

/// The local child: it reads batches from the rank (a header frame `[skip u32][count u32][type name]`,
/// then the batch body as rank 0 encoded it), runs every input from `skip` on, and sends one outcome
/// frame (`[kind u8]` + bytes) per input as soon as it has it.
struct LocalTaskWorker: AsyncProcessTask {
    let channel: Connection

    func run() async throws {
        while true {
            guard let (header, body) = try receive() else { return }
            var reader = MessageReader(header)
            let skip = Int(try reader.read(UInt32.self))
            let count = Int(try reader.read(UInt32.self))
            let name = String(decoding: reader.bytes[reader.offset...], as: UTF8.self)
            do {
                let type = _typeByName(name)
                if let type = type as? any PoolTask.Type {
                    try runBatch(type, body: body, skip: skip)
                } else if let type = type as? any AsyncPoolTask.Type {
                    try await runAsyncBatch(type, body: body, skip: skip)
                } else {
                    throw MultiprocessingError(.transport, "no pool task type named \(name) in this program")
                }
            } catch let error as BatchFailure {
                // The body could not be decoded: every input of it fails the same way.
                for _ in skip..<count { try send(Self.thrown(error.error)) }
            }
        }
    }

    private struct BatchFailure: Error { let error: any Error }

    /// The next batch's header and body, or nil when the rank closed the channel. Blocking reads: the
    /// child does nothing else meanwhile.
    private func receive() throws -> ([UInt8], [UInt8])? {
        do {
            let header = try channel.recvBytes()
            return (header, try channel.recvBytes())
        } catch let error as MultiprocessingError where error.code == .endOfFile {
            return nil
        }
    }

    private func send(_ frame: [UInt8]) throws { try channel.sendBytes(frame) }

    private func decode<T: Decodable>(_ type: T.Type, _ body: [UInt8]) throws -> T {
        do { return try BinaryDecoder().decode(type, from: body) } catch { throw BatchFailure(error: error) }
    }

    private func runBatch<T: PoolTask>(_ type: T.Type, body: [UInt8], skip: Int) throws {
        let batch = try decode(BatchBody<T, T.Input>.self, body)
        for input in batch.inputs.dropFirst(skip) {
            let frame: [UInt8]
            do { frame = try Self.value(batch.task.run(input)) } catch { frame = Self.thrown(error) }
            try channel.sendBytes(frame)
        }
    }

    private func runAsyncBatch<T: AsyncPoolTask>(_ type: T.Type, body: [UInt8], skip: Int) async throws {
        let batch = try decode(BatchBody<T, T.Input>.self, body)
        for input in batch.inputs.dropFirst(skip) {
            let frame: [UInt8]
            do { frame = try Self.value(await batch.task.run(input)) } catch { frame = Self.thrown(error) }
            try send(frame)
        }
    }

    private static func value<Output: Encodable>(_ output: Output) throws -> [UInt8] {
        var frame: [UInt8] = [OutcomeKind.value.rawValue]
        try BinaryEncoder().encode(output, appendingTo: &frame)
        return frame
    }

    private static func thrown(_ error: any Error) -> [UInt8] {
        var frame: [UInt8] = [OutcomeKind.thrown.rawValue]
        // A ThrownError is strings and bytes: encoding it cannot fail.
        try? BinaryEncoder().encode(ThrownError(error), appendingTo: &frame)
        return frame
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

    init(settings: WorkerSettings) { self.settings = settings }

    /// Runs the batch in `message` (a task message as rank 0 sent it) whose body starts at `bodyOffset`.
    func run(message: [UInt8], bodyOffset: Int, count: Int, typeName: String) -> [(OutcomeKind, [UInt8])] {
        var outcomes: [(OutcomeKind, [UInt8])] = []
        outcomes.reserveCapacity(count)
        var freshChildFailures = 0
        while outcomes.count < count {
            let next = outcomes.count
            let channel: Connection
            let fresh: Bool
            do {
                (channel, fresh) = try ensureChild()
                var header = MessageWriter()
                header.append(UInt32(next))
                header.append(UInt32(count))
                header.bytes.append(contentsOf: typeName.utf8)
                try channel.sendBytes(header.bytes)
                try channel.sendBytes(message, offset: bodyOffset)
            } catch {
                // A child that died while idle: start another; one that cannot even take a batch fails
                // the input rather than looping.
                let facts = retire(killing: true)
                freshChildFailures += 1
                if freshChildFailures >= 2 { outcomes.append(crash(.crashed, facts, error)) }
                continue
            }
            if fresh { freshChildFailures = 0 }
            while outcomes.count < count {
                do {
                    let frame = try channel.recvBytes(timeout: settings.taskTimeout)
                    guard let first = frame.first, let kind = OutcomeKind(rawValue: first) else {
                        throw MultiprocessingError(.protocolViolation, "a local worker sent an empty or unknown outcome")
                    }
                    outcomes.append((kind, Array(frame.dropFirst())))
                } catch let error as MultiprocessingError where error.code == .timedOut {
                    let facts = retire(killing: true)
                    outcomes.append(crash(.timedOut, facts, error))
                    break
                } catch {
                    let facts = retire(killing: false)
                    outcomes.append(crash(.crashed, facts, error))
                    break
                }
            }
        }
        return outcomes
    }

    /// Stops the child, if one runs: it ends when its channel closes.
    func close() {
        guard let child, let channel else { return }
        channel.close()
        if (try? child.join(timeout: .seconds(5))) != true { try? child.kill(); _ = try? child.join(timeout: .seconds(5)) }
        try? child.close()
        self.child = nil
        self.channel = nil
    }

    private func ensureChild() throws -> (Connection, Bool) {
        if let channel { return (channel, false) }
        let (mine, theirs) = try makePipe()
        let child = ChildProcess(LocalTaskWorker(channel: theirs), name: "mpi-task-runner", daemon: true)
        do {
            try child.setSettings(ChildSettings(limits: settings.limits))
            try child.start()
        } catch {
            mine.close()
            theirs.close()
            throw error
        }
        theirs.close()
        self.child = child
        self.channel = mine
        return (mine, true)
    }

    /// Ends the present child (killing it first when asked) and says how it ended.
    private func retire(killing: Bool) -> CrashFacts {
        defer {
            channel?.close()
            channel = nil
            try? child?.close()
            child = nil
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

    private func crash(_ kind: OutcomeKind, _ facts: CrashFacts, _ error: any Error) -> (OutcomeKind, [UInt8]) {
        var facts = facts
        if kind == .timedOut { facts.message = "ran past the task timeout and was killed" }
        return (kind, (try? BinaryEncoder().encode(facts)) ?? [])
    }
}
