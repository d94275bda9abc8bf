#if canImport(Glibc)
import Glibc
#endif

/// The supervisor's view of one worker: its process, its channel, what it was sent and has not answered
/// (in order: the first is the input it runs), and the frames waiting for room in its socket.
/// Touched only by the supervisor's thread.
final class WorkerSlot {
    enum KillReason { case timedOut, cancelled, poolBroken }

    let process: ChildProcess
    let channel: Connection
    let fd: Int32
    let sentinel: Int32
    let pid: Int32
    /// The id of the input the worker started last (written by the worker).
    let started: RawSharedValue<UInt64>

    /// Sent and not fully answered, in order, each with the id of its first input.
    private var inflight: [(id: UInt64, item: PoolItem)] = []
    private var inflightHead = 0
    /// Inputs of the first entry already answered (a batch answered input by input).
    private var headAnswered = 0
    /// Inputs sent and not answered.
    private(set) var inflightCount = 0
    private var output: [UInt8] = []
    private var outputOffset = 0
    /// Inputs sent over the worker's life (for maxTasksPerChild).
    private(set) var sentTotal = 0
    /// When the worker started the input it runs now (monotonic nanoseconds).
    var busySince: UInt64 = 0
    /// The worker announced it ends after its reply (memory cap).
    var retiring = false
    var killReason: KillReason?
    /// The worker's end reported end of file, or its replies broke the protocol.
    var channelEnded = false
    /// A write to the worker failed (it is gone). What it wrote before it went, such as its initializer's
    /// failure report, is still read: only the sending side ended.
    private(set) var sendFailed = false
    private(set) var channelClosedByPool = false

    init(process: ChildProcess, channel: Connection, started: RawSharedValue<UInt64>) throws {
        self.process = process
        self.started = started
        self.channel = channel
        fd = try channel.fileno
        sentinel = try process.sentinel
        pid = process.pid ?? -1
    }

    var runningItem: PoolItem? { inflightHead < inflight.count ? inflight[inflightHead].item : nil }
    var hasOutput: Bool { outputOffset < output.count }
    var acceptsWork: Bool { !retiring && !channelClosedByPool && !channelEnded && !sendFailed && killReason == nil }

    /// Queues one job frame for `chunk` (ids `firstID`...) and tries to write it.
    func send(_ chunk: ArraySlice<PoolItem>, firstID: UInt64) throws {
        let call = chunk.first!.call
        try PoolWire.appendJob(
            to: &output, kind: call.kind | (call.timeoutNanoseconds == nil ? 0 : PoolWire.answerAtOnce), firstID: firstID, name: call.taskName, task: call.task, inputs: chunk)
        if inflightCount == 0 { busySince = Deadline.monotonicNow() }
        var id = firstID
        for item in chunk {
            inflight.append((id, item))
            id &+= UInt64(item.count)
            inflightCount += item.count
            sentTotal += item.count
        }
    }

    /// Writes what the socket takes of the queued frames.
    func flush() {
        guard hasOutput else { return }
        do {
            let written = try output.withUnsafeBytes { bytes in
                try Syscall.sendWithoutBlocking(fd, UnsafeRawBufferPointer(rebasing: bytes[outputOffset...]))
            }
            outputOffset += written
        } catch {
            // The worker is gone; its pidfd reports it and its inputs are handled then.
            sendFailed = true
            outputOffset = output.count
        }
        if outputOffset == output.count {
            output.removeAll(keepingCapacity: output.count < 1 << 20)
            outputOffset = 0
        }
    }

    /// The input answered by reply `id`, which must be the first unanswered one: its item and its
    /// place in the item (0 but for a batch answered input by input).
    func answered(_ id: UInt64) -> (item: PoolItem, offset: Int)? {
        guard inflightHead < inflight.count, inflight[inflightHead].id &+ UInt64(headAnswered) == id else { return nil }
        let item = inflight[inflightHead].item
        let offset = headAnswered
        headAnswered += 1
        if headAnswered == item.count { popHead() }
        inflightCount -= 1
        busySince = Deadline.monotonicNow()
        return (item, offset)
    }

    /// The batch answered whole by reply `id`, which must be the first unanswered one.
    func answeredBatch(_ id: UInt64) -> PoolItem? {
        guard inflightHead < inflight.count, headAnswered == 0, inflight[inflightHead].id == id, inflight[inflightHead].item.isBatch else {
            return nil
        }
        let item = inflight[inflightHead].item
        popHead()
        inflightCount -= item.count
        busySince = Deadline.monotonicNow()
        return item
    }

    private func popHead() {
        inflightHead += 1
        headAnswered = 0
        if inflightHead == inflight.count {
            inflight.removeAll(keepingCapacity: true)
            inflightHead = 0
        }
    }

    /// The unanswered inputs, in order: each item with the id of its first input and the range of
    /// its inputs not answered. The slot forgets them.
    func takeInflight() -> [(id: UInt64, item: PoolItem, unanswered: Range<Int>)] {
        let entries = inflight[inflightHead...].enumerated().map { position, entry in
            (entry.id, entry.item, (position == 0 ? headAnswered : 0)..<entry.item.count)
        }
        inflight.removeAll()
        inflightHead = 0
        headAnswered = 0
        inflightCount = 0
        return entries
    }

    /// Closes the pool's end: the worker reads end of file and ends.
    func closeChannel() {
        guard !channelClosedByPool else { return }
        channelClosedByPool = true
        flush()
        _ = shutdown(fd, Int32(SHUT_WR))
    }

    func kill() { try? process.kill() }

    /// After the worker ended: releases the process and the channel.
    func release() {
        _ = try? process.join(timeout: .seconds(5))
        try? process.close()
        channel.close()
    }

    /// A worker that could not be taken into service: kill and release it.
    func abandon() {
        kill()
        release()
    }
}
