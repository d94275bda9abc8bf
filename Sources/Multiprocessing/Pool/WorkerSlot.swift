#if canImport(Glibc)
import Glibc
#endif

/// The supervisor's view of one worker: its process, its channel, what it was sent and has not answered
/// (in order: the first is the input it runs), and the frames waiting for room in its socket.
/// Touched only by the supervisor's thread.
final class WorkerSlot {
    enum KillReason { case timedOut, cancelled }

    let process: ChildProcess
    let channel: Connection
    let fd: Int32
    let sentinel: Int32
    let pid: Int32
    /// The id of the input the worker started last (written by the worker).
    let started: RawSharedValue<UInt64>

    private var inflight: [(id: UInt64, item: PoolItem)] = []
    private var inflightHead = 0
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
    private(set) var channelClosedByPool = false

    init(process: ChildProcess, channel: Connection, started: RawSharedValue<UInt64>) throws {
        self.process = process
        self.started = started
        self.channel = channel
        fd = try channel.fileno
        sentinel = try process.sentinel
        pid = process.pid ?? -1
    }

    var inflightCount: Int { inflight.count - inflightHead }
    var runningItem: PoolItem? { inflightHead < inflight.count ? inflight[inflightHead].item : nil }
    var hasOutput: Bool { outputOffset < output.count }
    var acceptsWork: Bool { !retiring && !channelClosedByPool && !channelEnded && killReason == nil }

    /// Queues one job frame for `chunk` (ids `firstID`...) and tries to write it.
    func send(_ chunk: ArraySlice<PoolItem>, firstID: UInt64) throws {
        let call = chunk.first!.call
        try PoolWire.appendJob(
            to: &output, kind: call.kind | (call.timeoutNanoseconds == nil ? 0 : PoolWire.answerAtOnce), firstID: firstID, name: call.taskName, task: call.task, inputs: chunk)
        if inflightCount == 0 { busySince = Deadline.monotonicNow() }
        var id = firstID
        for item in chunk {
            inflight.append((id, item))
            id &+= 1
        }
        sentTotal += chunk.count
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
            channelEnded = true
            outputOffset = output.count
        }
        if outputOffset == output.count {
            output.removeAll(keepingCapacity: output.count < 1 << 20)
            outputOffset = 0
        }
    }

    /// The input answered by reply `id`, which must be the first unanswered one.
    func answered(_ id: UInt64) -> PoolItem? {
        guard inflightHead < inflight.count, inflight[inflightHead].id == id else { return nil }
        let item = inflight[inflightHead].item
        inflightHead += 1
        if inflightHead == inflight.count {
            inflight.removeAll(keepingCapacity: true)
            inflightHead = 0
        }
        busySince = Deadline.monotonicNow()
        return item
    }

    /// The unanswered inputs, in order; the slot forgets them.
    func takeInflight() -> [PoolItem] {
        takeInflightSplit().all
    }

    /// The unanswered inputs of a worker that ended, in order, and the one it was running (by the id
    /// it recorded) if that one is among them.
    func takeInflightSplit() -> (all: [PoolItem], running: Int?) {
        let entries = inflight[inflightHead...]
        let startedID = started.load()
        let running = entries.firstIndex { $0.id == startedID }.map { $0 - inflightHead }
        let items = entries.map(\.item)
        inflight.removeAll()
        inflightHead = 0
        return (items, running)
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
