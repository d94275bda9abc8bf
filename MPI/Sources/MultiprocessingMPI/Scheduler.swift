import CMPI
import Multiprocessing
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Rank 0's side: callers queue batches (already encoded on their own thread), and the MPI thread
/// sends them to the worker ranks, a few in flight per rank, and delivers the results to their jobs.
final class Scheduler: @unchecked Sendable {
    struct Batch {
        var job: UInt64
        var first: Int
        var count: Int
        var message: [UInt8]
    }

    private struct State {
        var queue: [Batch] = []
        var head = 0
        var jobs: [UInt64: any JobSink] = [:]
        var remaining: [UInt64: Int] = [:]
        var nextJob: UInt64 = 1
        var closing = false
        var broken: MultiprocessingError?
        /// The bytes of the queued batches not yet sent.
        var unsentBytes = 0
        /// The thread running the loop (a caller there, in a progress report, must not wait for it).
        var loopThread: pthread_t?
        var lostAny = false
    }

    private let state = Mutex(State())
    private let wakeup = Gate()
    /// Opened when batches leave the queue, for a caller waiting for room in it.
    private let room = Gate()
    /// How many bytes of encoded batches may wait to be sent before a caller waits to encode more: the
    /// memory of large inputs is then encoded into the buffers of batches already sent (see
    /// ``MessageBuffers``) instead of all at once into fresh memory.
    static let unsentLimit = 16 << 20
    /// Opens when the loop has stopped the workers and ended.
    let stopped = Gate()
    let workers: [Int32]
    /// Buffers of sent batches, for the next batches to be encoded into.
    let buffers = MessageBuffers()
    /// Batches a worker rank holds at once: one running, one waiting, so it never idles between them.
    private let window = 2
    /// Batches a worker rank holds at once while its batches take less than ``quickBatch`` each (the
    /// round trip of the last one over the batches it went behind): then the time a result takes to come
    /// back and the next batch to go out (polls on both sides) is about that of a batch's run, and two
    /// more in hand keep the rank busy meanwhile.
    private let quickWindow = 4
    private let quickBatch: Duration = .milliseconds(1)

    init(workers: [Int32]) { self.workers = workers }

    /// Starts a new job of `count` inputs: `make` builds its batches given the job's number and queues
    /// each as soon as it is built, so the first travel while the caller encodes the rest. A batch
    /// waits to be queued while ``unsentLimit`` bytes of others wait to be sent.
    func submit(_ sink: any JobSink, count: Int, batches make: (UInt64, (Batch) -> Void) throws -> Void) throws {
        let job = try state.withLock { state -> UInt64 in
            if let broken = state.broken { throw broken }
            guard !state.closing else { throw MultiprocessingError(.invalidState, "the MPI pool is shut down") }
            defer { state.nextJob += 1 }
            if count > 0 {
                state.jobs[state.nextJob] = sink
                state.remaining[state.nextJob] = count
            }
            return state.nextJob
        }
        var queued = 0
        do {
            try make(job) { batch in
                queued += batch.count
                while true {
                    let queuedNow = state.withLock { state -> Bool in
                        let full = state.unsentBytes > 0 && state.unsentBytes + batch.message.count > Self.unsentLimit
                        let onLoop = state.loopThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false
                        guard !full || state.broken != nil || onLoop else { return false }
                        state.queue.append(batch)
                        state.unsentBytes += batch.message.count
                        return true
                    }
                    if queuedNow { break }
                    wakeup.open()
                    room.wait(timeout: .milliseconds(50))
                }
                wakeup.open()
            }
        } catch {
            // The inputs not queued will never come back: the job ends with the queued ones.
            finish(job, count - queued)
            throw error
        }
    }

    /// Whether a worker rank was lost: then MPI is not finalised (its finalisation can wait for good).
    var lostAny: Bool { state.withLock { $0.lostAny } }

    /// Asks the loop to finish the queued work, stop the workers and end.
    func close() {
        state.withLock { $0.closing = true }
        wakeup.open()
    }

    /// The loop, on the MPI thread, until closed.
    func run(_ mailbox: Mailbox, settings: WorkerSettings) {
        state.withLock { $0.loopThread = pthread_self() }
        var inFlight: InFlight = [:]
        // Ranks whose last batch took less than quickBatch.
        var quick: Set<Int32> = []
        var lost: Set<Int32> = []
        var lastHeard = [Int32: ContinuousClock.Instant](uniqueKeysWithValues: workers.map { ($0, .now) })
        var backoff = Backoff()
        do {
            let encoded = try BinaryEncoder().encode(settings)
            for rank in workers { try mailbox.send(encoded, to: rank, tag: Tag.settings) }
            var lastBeat = ContinuousClock.now
            while true {
                var worked = false
                if ContinuousClock.now - lastBeat >= Tag.heartbeatInterval {
                    lastBeat = .now
                    for rank in workers where !lost.contains(rank) {
                        do {
                            try mailbox.send([], to: rank, tag: Tag.heartbeat)
                        } catch {
                            lose(rank, lostRank(rank, error), mailbox, &inFlight, &lost)
                        }
                    }
                }
                // Send: fill every live rank's window.
                if fill(mailbox, &inFlight, &lost, quick: quick) { worked = true }
                // Receive: deliver every result that has arrived.
                while let (source, tag, bytes) = try mailbox.receive() {
                    worked = true
                    lastHeard[source] = .now
                    if tag == Tag.heartbeat { continue }
                    guard tag == Tag.result else {
                        throw MultiprocessingError(.protocolViolation, "rank \(source) sent a message with the unexpected tag \(tag)")
                    }
                    var reader = MessageReader(bytes)
                    let job = try reader.read(UInt64.self)
                    let first = Int(try reader.read(UInt32.self))
                    let count = Int(try reader.read(UInt32.self))
                    let host = try reader.readString()
                    if let index = inFlight[source]?.firstIndex(where: { $0.job == job && $0.first == first }),
                        let held = inFlight[source]?.remove(at: index)
                    {
                        if (ContinuousClock.now - held.sent) / (held.ahead + 1) < quickBatch { quick.insert(source) } else { quick.remove(source) }
                    }
                    // Keep the rank busy before spending time on its results.
                    fill(mailbox, &inFlight, &lost, quick: quick)
                    guard let sink = state.withLock({ $0.jobs[job] }) else { continue }
                    do {
                        try sink.deliver(first: first, reader: &reader, count: count, rank: source, host: host)
                    } catch {
                        sink.fail(first: first, count: count, with: error)
                    }
                    finish(job, count)
                }
                if try mailbox.progress() { worked = true }
                // A rank silent too long with work in flight is lost: its batches fail, the others go on.
                let now = ContinuousClock.now
                for rank in workers where !lost.contains(rank) && !(inFlight[rank]?.isEmpty ?? true) {
                    if let heard = lastHeard[rank], now - heard > Tag.silenceLimit {
                        let error = MultiprocessingError(
                            .rankLost, "worker rank \(rank) was lost with this input in flight: silent for \(now - heard)")
                        lose(rank, error, mailbox, &inFlight, &lost)
                    }
                }
                // Every rank lost: nothing queued can run.
                if lost.count == workers.count {
                    throw MultiprocessingError(.rankLost, "every worker rank of the MPI pool is lost")
                }
                let idle = inFlight.values.allSatisfy(\.isEmpty)
                let (closing, queued) = state.withLock { ($0.closing, $0.head < $0.queue.count) }
                if closing && idle && !queued { break }
                if worked {
                    backoff.reset()
                } else if idle && !queued {
                    wakeup.wait(timeout: .milliseconds(50))
                } else {
                    backoff.pause(on: wakeup)
                }
            }
            // After a loss, MPI_Finalize can wait for good on the dead rank: every rank ends without it.
            let skipFinalize: [UInt8] = lost.isEmpty ? [] : [1]
            if !lost.isEmpty { state.withLock { $0.lostAny = true } }
            for rank in workers where !lost.contains(rank) { try mailbox.send(skipFinalize, to: rank, tag: Tag.stop) }
            var rounds = 0
            while mailbox.hasPendingSends && rounds < 20_000 {
                try mailbox.progress()
                backoff.pause()
                rounds += 1
            }
        } catch {
            // MPI reported an error it let the job survive: fail everything outstanding, refuse new work.
            let broken = (error as? MultiprocessingError) ?? MultiprocessingError(.system, "the MPI pool failed: \(error)")
            let jobs = state.withLock { state -> [any JobSink] in
                state.broken = broken
                state.queue.removeAll()
                state.unsentBytes = 0
                state.head = 0
                defer { state.jobs.removeAll() }
                return Array(state.jobs.values)
            }
            for sink in jobs { sink.failRemaining(with: broken) }
        }
        stopped.open()
    }

    /// The batches each rank holds, with when each was sent and how many it went behind.
    typealias InFlight = [Int32: [(job: UInt64, first: Int, count: Int, sent: ContinuousClock.Instant, ahead: Int)]]

    /// Sends queued batches to every live rank with room in its window (deeper for `quick` ranks), a
    /// batch to each rank in turn until the windows are full or the queue is empty; true when it sent one.
    /// (All in one call: between two turns of the loop, MPI's polls yield the core to every other
    /// runnable thread when ranks outnumber cores, so a window filled a batch a turn took hundreds of
    /// microseconds to fill.)
    @discardableResult
    private func fill(_ mailbox: Mailbox, _ inFlight: inout InFlight, _ lost: inout Set<Int32>, quick: Set<Int32>) -> Bool {
        var sent = false
        var sentThisTurn = true
        while sentThisTurn {
            sentThisTurn = false
            for rank in workers where !lost.contains(rank) && inFlight[rank, default: []].count < (quick.contains(rank) ? quickWindow : window) {
                guard let batch = state.withLock({ state -> Batch? in
                    guard state.head < state.queue.count else { return nil }
                    // The queue lets go of the message: once sent, the mailbox holds it until MPI is done.
                    let batch = state.queue[state.head]
                    state.queue[state.head].message = []
                    state.unsentBytes -= batch.message.count
                    defer {
                        state.head += 1
                        if state.head > 1024, state.head * 2 > state.queue.count {
                            state.queue.removeFirst(state.head)
                            state.head = 0
                        }
                    }
                    return batch
                }) else { return sent }
                room.open()
                do {
                    try mailbox.send(batch.message, to: rank, tag: Tag.task)
                    inFlight[rank, default: []].append((batch.job, batch.first, batch.count, .now, inFlight[rank, default: []].count))
                } catch {
                    fail(batch.job, first: batch.first, count: batch.count, lostRank(rank, error))
                    lose(rank, lostRank(rank, error), mailbox, &inFlight, &lost)
                }
                sent = true
                sentThisTurn = true
            }
        }
        return sent
    }

    /// Takes `rank` for lost: its batches fail with `error`, its unfinished sends are dropped, and it
    /// gets no more work.
    private func lose(_ rank: Int32, _ error: MultiprocessingError, _ mailbox: Mailbox, _ inFlight: inout InFlight, _ lost: inout Set<Int32>) {
        lost.insert(rank)
        for held in inFlight.removeValue(forKey: rank) ?? [] { fail(held.job, first: held.first, count: held.count, error) }
        mailbox.cancelSends(to: rank)
    }

    private func lostRank(_ rank: Int32, _ error: any Error) -> MultiprocessingError {
        MultiprocessingError(.rankLost, "worker rank \(rank) was lost with this input in flight: \(error)")
    }

    private func fail(_ job: UInt64, first: Int, count: Int, _ error: any Error) {
        guard let sink = state.withLock({ $0.jobs[job] }) else { return }
        sink.fail(first: first, count: count, with: error)
        finish(job, count)
    }

    private func finish(_ job: UInt64, _ count: Int) {
        state.withLock { state in
            let left = state.remaining[job, default: 0] - count
            if left <= 0 {
                state.jobs[job] = nil
                state.remaining[job] = nil
            } else {
                state.remaining[job] = left
            }
        }
    }
}
