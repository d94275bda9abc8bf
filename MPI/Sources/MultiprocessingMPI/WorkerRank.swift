import CMPI
import Multiprocessing
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A worker rank: receives batches from rank 0 on the MPI thread, runs them on a runner thread through a
/// ``LocalRunner`` (one local child at a time), and sends each batch's outcomes back.
final class WorkerRank: @unchecked Sendable {
    private struct Queues {
        var inbox: [[UInt8]] = []
        var outbox: [[UInt8]] = []
        var busy = false
        var stopping = false
    }
    private let queues = Mutex(Queues())
    private let work = Gate()
    /// Opened by the runner when a result is ready to send.
    private let resultReady = Gate()
    private let host = MPIEnvironment.hostName

    /// Serves rank `master` of `communicator` until it says stop. Runs on the MPI thread.
    /// Returns false when rank 0 said a rank was lost, so MPI must not be finalised.
    static func serve(_ communicator: Communicator, master: Int32) throws -> Bool {
        let rank = WorkerRank(sender: MPIEnvironment.threadMultiple ? ResultSender(communicator, master: master) : nil)
        try rank.serve(Mailbox(communicator), master: master)
        return rank.finalise
    }

    /// Sends results from the runner thread, where MPI allows it; else the MPI thread sends them.
    private let sender: ResultSender?

    private init(sender: ResultSender?) { self.sender = sender }

    private var finalise = true

    private func serve(_ mailbox: Mailbox, master: Int32) throws {
        var settings: WorkerSettings?
        var backoff = Backoff()
        var runnerDone: Gate?
        var lastBeat = ContinuousClock.now
        var lastHeard = ContinuousClock.now
        while true {
            var worked = false
            if ContinuousClock.now - lastBeat >= Tag.heartbeatInterval {
                try mailbox.send([], to: master, tag: Tag.heartbeat)
                lastBeat = .now
            }
            while let (_, tag, bytes) = try mailbox.receive(from: master) {
                worked = true
                lastHeard = .now
                switch tag {
                case Tag.heartbeat:
                    break
                case Tag.settings:
                    let decoded = try BinaryDecoder().decode(WorkerSettings.self, from: bytes)
                    settings = decoded
                    if runnerDone == nil { runnerDone = try startRunner(LocalRunner(settings: decoded)) }
                case Tag.task:
                    if runnerDone == nil { runnerDone = try startRunner(LocalRunner(settings: settings ?? WorkerSettings(limits: ResourceLimits()))) }
                    queues.withLock { $0.inbox.append(bytes) }
                    work.open()
                case Tag.stop:
                    finalise = bytes.first != 1
                    queues.withLock { $0.stopping = true }
                    work.open()
                default:
                    throw MultiprocessingError(.protocolViolation, "rank 0 sent a message with the unknown tag \(tag)")
                }
            }
            while let result = queues.withLock({ $0.outbox.isEmpty ? nil : $0.outbox.removeFirst() }) {
                try mailbox.send(result, to: master, tag: Tag.result)
                worked = true
            }
            if try mailbox.progress() { worked = true }
            if try sender?.progress() == true { worked = true }
            if ContinuousClock.now - lastHeard > Tag.masterSilenceLimit {
                // Rank 0 is gone and the job goes on without it: end rather than serve nobody forever.
                writeError("MPI worker rank: nothing from rank 0 for \(Tag.masterSilenceLimit), ending\n")
                finalise = false
                queues.withLock {
                    $0.inbox.removeAll()
                    $0.stopping = true
                }
                work.open()
                break
            }
            let finished = queues.withLock { $0.stopping && $0.inbox.isEmpty && $0.outbox.isEmpty && !$0.busy }
            if finished && !mailbox.hasPendingSends && !(sender?.hasPending ?? false) { break }
            if worked { backoff.reset() } else { backoff.pause(on: resultReady) }
        }
        runnerDone?.wait(timeout: .seconds(30))
    }

    /// Starts the runner thread; the gate opens when it has stopped its child and ended.
    private func startRunner(_ runner: LocalRunner) throws -> Gate {
        let done = Gate()
        let context = Unmanaged.passRetained(RunnerContext(rank: self, runner: runner, done: done))
        var thread = pthread_t()
        let created = pthread_create(&thread, nil, { raw in
            let context = Unmanaged<RunnerContext>.fromOpaque(raw!).takeRetainedValue()
            context.rank.runLoop(context.runner)
            context.done.open()
            return nil
        }, context.toOpaque())
        if created != 0 {
            context.release()
            throw MultiprocessingError(.system, "cannot start a worker rank's runner thread", errno: created)
        }
        pthread_detach(thread)
        return done
    }

    private final class RunnerContext {
        let rank: WorkerRank
        let runner: LocalRunner
        let done: Gate
        init(rank: WorkerRank, runner: LocalRunner, done: Gate) {
            self.rank = rank
            self.runner = runner
            self.done = done
        }
    }

    private func runLoop(_ runner: LocalRunner) {
        while true {
            let next = queues.withLock { queues -> (batch: [UInt8]?, stop: Bool) in
                if queues.inbox.isEmpty { return (nil, queues.stopping) }
                queues.busy = true
                return (queues.inbox.removeFirst(), false)
            }
            if next.stop { break }
            guard let batch = next.batch else {
                work.wait(timeout: .milliseconds(100))
                continue
            }
            let result = run(batch, runner)
            // Sent before the rank counts as idle, so the MPI thread never ends with it unsent.
            let sent = !result.isEmpty && sender?.send(result) == true
            queues.withLock {
                if !sent { $0.outbox.append(result) }
                $0.busy = false
            }
            resultReady.open()
        }
        runner.close()
    }

    /// Runs one task message and builds its result message.
    private func run(_ message: [UInt8], _ runner: LocalRunner) -> [UInt8] {
        var reader = MessageReader(message)
        var result = MessageWriter()
        guard let job = try? reader.read(UInt64.self), let first = try? reader.read(UInt32.self),
            let count = try? reader.read(UInt32.self), let timeout = try? reader.read(UInt64.self),
            let name = try? reader.readString()
        else {
            // Rank 0 never sends this; without a job number there is nobody to answer.
            return []
        }
        let outcomes = runner.run(
            message: message, bodyOffset: reader.offset, count: Int(count), typeName: name,
            timeout: timeout == 0 ? nil : .nanoseconds(Int64(clamping: timeout)))
        result.append(job)
        result.append(first)
        result.append(count)
        result.append(string: host)
        guard result.bytes.count + outcomes.count <= Mailbox.sizeLimit else {
            // Too large for one MPI message: every input of the batch fails, saying why.
            let error = MultiprocessingError(
                .transport, "the outputs of inputs \(first)..<\(first + count) take \(outcomes.count) bytes, past MPI's limit of \(Mailbox.sizeLimit) for one message: use a smaller chunk size")
            let thrown = (try? BinaryEncoder().encode(ThrownError(error))) ?? []
            for _ in 0..<count {
                result.append(OutcomeKind.thrown.rawValue)
                result.append(UInt64(thrown.count))
                result.bytes.append(contentsOf: thrown)
            }
            return result.bytes
        }
        result.bytes.append(contentsOf: outcomes)
        return result.bytes
    }
}
