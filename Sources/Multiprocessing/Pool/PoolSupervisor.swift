#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Logging
import Synchronization

/// The thread behind one pool (CPython has three: task, result and worker handlers; one suffices here).
///
/// It owns the workers. It sends them chunks of inputs (several in flight per worker, many frames per
/// write, never blocking on a full socket), reads their batched replies, watches their pidfds, kills a
/// worker whose input ran past its deadline or whose call was cancelled, and replaces workers that died
/// or retired. When a worker dies, the input it recorded as started (in shared memory) is the one it was
/// running: that input fails with the worker's pid and signal, and its other unanswered inputs go to
/// other workers.
final class PoolSupervisor: @unchecked Sendable {
    struct Configuration: Sendable {
        var workers: Int
        var context: ProcessContext
        var maxTasksPerChild: Int?
        var maxMemoryPerChild: Int?
        var settings: ChildSettings
        var logger: Logger
        /// A closure pool's work (fork only).
        var closure: PoolClosure? = nil
        /// Run by each worker as it starts (Python's `initializer`).
        var initializer: (any ProcessTask)? = nil
        /// Workers start as work arrives that no idle worker can take, up to `workers` (an executor's way);
        /// otherwise all start with the pool.
        var startsOnDemand = false
    }

    enum Phase { case running, closed, terminating }

    private struct Shared {
        var incoming: [PoolItem] = []
        var cancelled: [PoolCall] = []
        var phase = Phase.running
        var sleeping = false
        var woken = false
        var finished = false
        var workerPids: [Int32] = []
        /// Why the pool runs no more work (its initializer failed).
        var broken: MultiprocessingError?
        /// Inputs not yet handed to a worker are to fail with `CancellationError`.
        var cancelsPending = false

        /// Whether the caller must write to the wake pipe (once per sleep).
        mutating func wakeIfSleeping() -> Bool {
            guard sleeping, !woken else { return false }
            woken = true
            return true
        }
    }

    let configuration: Configuration
    private let shared = Mutex(Shared())
    private let wakeRead: Int32
    private let wakeWrite: Int32
    /// Signalled once the thread has ended (every worker reaped).
    private let finishedCall: PoolCall

    // The supervisor thread's own state.
    private var slots: [WorkerSlot] = []
    private var pending: [PoolItem] = []
    private var pendingHead = 0
    private var nextID: UInt64 = 1
    private var workerCount = 0
    /// How many workers the pool keeps: all of them, or (on demand) as many as work has needed so far.
    private var wantedWorkers = 0
    /// A running estimate of one input's time in a worker, to decide how many to send ahead.
    private var serviceNanoseconds: UInt64 = 1_000_000
    /// Why the pool runs no more work: its initializer failed in a worker.
    private var broken: MultiprocessingError?

    init(_ configuration: Configuration) throws {
        guard configuration.workers >= 1 else {
            throw MultiprocessingError(.invalidArgument, "a pool needs at least one worker, not \(configuration.workers)")
        }
        if let limit = configuration.maxTasksPerChild, limit < 1 {
            throw MultiprocessingError(.invalidArgument, "maxTasksPerChild must be at least 1, not \(limit)")
        }
        if let limit = configuration.maxMemoryPerChild, limit < 1 {
            throw MultiprocessingError(.invalidArgument, "maxMemoryPerChild must be at least 1 byte, not \(limit)")
        }
        if currentProcess().daemon {
            throw MultiprocessingError(.invalidState, "daemonic processes are not allowed to have children")
        }
        self.configuration = configuration
        (wakeRead, wakeWrite) = try Syscall.pipe()
        finishedCall = PoolCall(taskName: [], task: [], kind: 0, chunkSize: 1, timeout: nil, taskDescription: "")
        _ = finishedCall.reserve(1)
        ExitHooks.install()
        do {
            wantedWorkers = configuration.startsOnDemand ? 0 : configuration.workers
            for _ in 0..<wantedWorkers { slots.append(try startWorker()) }
        } catch {
            for slot in slots { slot.abandon() }
            Syscall.close(wakeRead)
            Syscall.close(wakeWrite)
            throw error
        }
        publishPids()
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let started = pthread_create(&thread, nil, { context in
            let supervisor = Unmanaged<PoolSupervisor>.fromOpaque(context!).takeRetainedValue()
            mp_set_thread_name("mp-pool")
            supervisor.serve()
            return nil
        }, context)
        guard started == 0 else {
            Unmanaged<PoolSupervisor>.fromOpaque(context).release()
            for slot in slots { slot.abandon() }
            throw MultiprocessingError.system("pthread_create", errno: started)
        }
        pthread_detach(thread)
    }

    deinit {
        Syscall.close(wakeRead)
        Syscall.close(wakeWrite)
    }

    // MARK: Called by the pool's users

    var phase: Phase { shared.withLock { $0.phase } }
    /// Whether calls may send their inputs in batches: not when workers are recycled by count or
    /// memory, which is checked input by input.
    var batchesAllowed: Bool { configuration.maxTasksPerChild == nil && configuration.maxMemoryPerChild == nil }
    var workerPids: [Int32] { shared.withLock { $0.workerPids } }

    /// Queues items; throws once the pool is closed.
    func submit(_ items: [PoolItem]) throws {
        let wake: Bool = try shared.withLock { state in
            guard state.phase == .running else {
                throw MultiprocessingError(.invalidState, state.phase == .closed ? "pool is closed" : "pool was terminated")
            }
            if let broken = state.broken { throw broken }
            state.incoming.append(contentsOf: items)
            return state.wakeIfSleeping()
        }
        if wake { wakeUp() }
    }

    /// Fails the call's inputs that have not ended; a worker running one of them is killed and replaced.
    func cancel(_ call: PoolCall) {
        call.markCancelled()
        let wake = shared.withLock { state in
            state.cancelled.append(call)
            return state.wakeIfSleeping()
        }
        if wake { wakeUp() }
    }

    /// Fails the inputs not yet handed to a worker with `CancellationError` (those a worker holds run).
    func cancelPending() {
        let wake = shared.withLock { state in
            state.cancelsPending = true
            return state.wakeIfSleeping()
        }
        if wake { wakeUp() }
    }

    /// No more submissions; workers end once every queued input has its outcome.
    func close() {
        let wake = shared.withLock { state in
            if state.phase == .running { state.phase = .closed }
            return state.wakeIfSleeping()
        }
        if wake { wakeUp() }
    }

    /// Kills the workers now; inputs without an outcome fail.
    func terminate() {
        let wake = shared.withLock { state in
            state.phase = .terminating
            return state.wakeIfSleeping()
        }
        if wake { wakeUp() }
    }

    /// Waits until every worker has ended (after ``close()`` or ``terminate()``).
    func join(until deadline: Deadline) -> Bool {
        finishedCall.wait(for: .item(0), until: deadline)
    }

    func join() async throws {
        try await finishedCall.wait(for: .item(0), onCancel: {})
    }

    func join(timeout: Duration) async throws -> Bool {
        try await finishedCall.wait(for: .item(0), timeout: timeout)
    }

    private func wakeUp() {
        var byte: UInt8 = 1
        _ = withUnsafeBytes(of: &byte) { try? Syscall.writeAll(wakeWrite, $0) }
    }

    private func publishPids() {
        let pids = slots.map(\.pid)
        shared.withLock { $0.workerPids = pids }
    }

    // MARK: The supervisor thread

    private func serve() {
        var phase = Phase.running
        var entries: [pollfd] = []
        while true {
            phase = absorb()
            if phase == .terminating {
                terminateAll()
                break
            }
            if phase == .running || pendingCount > 0 { replaceWorkers() }
            dispatch()
            flushAll()
            if phase == .closed && pendingCount == 0 {
                for slot in slots where slot.inflightCount == 0 { slot.closeChannel() }
                if slots.isEmpty { break }
            }

            entries.removeAll(keepingCapacity: true)
            entries.append(pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0))
            for slot in slots {
                var events = Int16(0)
                if !slot.channelEnded { events |= Int16(POLLIN) }
                if slot.hasOutput { events |= Int16(POLLOUT) }
                entries.append(pollfd(fd: events == 0 ? -1 : slot.fd, events: events, revents: 0))
                entries.append(pollfd(fd: slot.sentinel, events: Int16(POLLIN), revents: 0))
            }
            let deadline = nearestDeadline()
            let mayWait = shared.withLock { state in
                if !state.incoming.isEmpty || !state.cancelled.isEmpty || state.cancelsPending || state.phase != phase { return false }
                state.sleeping = true
                return true
            }
            _ = try? Syscall.pollEntries(&entries, until: mayWait ? deadline : .now)
            shared.withLock { state in
                state.sleeping = false
                state.woken = false
            }
            if entries[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                _ = drain.withUnsafeMutableBytes { try? Syscall.readSome(wakeRead, $0) }
            }
            let watched = slots
            var ended: [WorkerSlot] = []
            for (position, slot) in watched.enumerated() {
                let io = entries[1 + 2 * position].revents
                let exit = entries[2 + 2 * position].revents
                if io & Int16(POLLIN | POLLHUP | POLLERR) != 0 { readReplies(slot) }
                if io & Int16(POLLOUT) != 0 { slot.flush() }
                if exit != 0 { ended.append(slot) }
            }
            for slot in ended { workerEnded(slot) }
            enforceDeadlines()
        }
        for item in pending[pendingHead...] { fail(item, MultiprocessingError(.closed, "the pool was terminated before this input ran")) }
        pending.removeAll()
        pendingHead = 0
        shared.withLock {
            $0.finished = true
            $0.workerPids = []
        }
        finishedCall.deliver([(0, .output([]))])
    }

    private var pendingCount: Int { pending.count - pendingHead }

    /// Moves submitted items to the queue and applies cancellations; returns the phase.
    private func absorb() -> Phase {
        let (incoming, cancelled, phase, cancelsPending) = shared.withLock { state in
            defer {
                state.incoming.removeAll(keepingCapacity: true)
                state.cancelled.removeAll()
                state.cancelsPending = false
            }
            return (state.incoming, state.cancelled, state.phase, state.cancelsPending)
        }
        if pendingHead > 4096 && pendingHead * 2 > pending.count {
            pending.removeFirst(pendingHead)
            pendingHead = 0
        }
        if let broken {
            for item in incoming { fail(item, broken) }
        } else {
            pending.append(contentsOf: incoming)
        }
        if cancelsPending {
            for item in pending[pendingHead...] { fail(item, CancellationError()) }
            pending.removeAll()
            pendingHead = 0
        }
        for call in cancelled {
            for slot in slots where slot.runningItem?.call === call && slot.killReason == nil {
                slot.killReason = .cancelled
                slot.kill()
            }
            let cancelledError = CancellationError()
            var kept: [PoolItem] = []
            for item in pending[pendingHead...] {
                if item.call === call { fail(item, cancelledError) } else { kept.append(item) }
            }
            pending = kept
            pendingHead = 0
        }
        return phase
    }

    /// Sends queued inputs to workers with room, one chunk per worker per round so the load spreads.
    private func dispatch() {
        guard pendingCount > 0 else { return }
        var progressed = true
        while progressed && pendingCount > 0 {
            progressed = false
            for slot in slots where slot.acceptsWork {
                guard pendingCount > 0 else { break }
                let call = pending[pendingHead].call
                if call.isCancelled {
                    fail(pending[pendingHead], CancellationError())
                    pendingHead += 1
                    progressed = true
                    continue
                }
                let window = sendAhead(call)
                var room = window - slot.inflightCount
                if let limit = configuration.maxTasksPerChild { room = min(room, limit - slot.sentTotal) }
                guard room > 0 else { continue }
                // A batch goes alone; single inputs of one call go together, up to a chunk.
                var end = pendingHead + 1
                if !pending[pendingHead].isBatch {
                    let limit = min(pendingCount, call.chunkSize, room)
                    while end - pendingHead < limit && pending[end].call === call && !pending[end].isBatch { end += 1 }
                }
                let chunk = pending[pendingHead..<end]
                pendingHead = end
                do {
                    try slot.send(chunk, firstID: nextID)
                    nextID &+= UInt64(chunk.reduce(0) { $0 + $1.count })
                } catch {
                    for item in chunk { fail(item, error) }
                }
                progressed = true
            }
        }
    }

    /// How many inputs of `call` a worker may hold: two chunks, and for short inputs enough to cover
    /// a round trip to the parent.
    private func sendAhead(_ call: PoolCall) -> Int {
        let chunks = 2 * call.chunkSize
        if call.timeoutNanoseconds != nil { return max(chunks, 1) }
        if serviceNanoseconds < 50_000 { return max(chunks, 256) }
        if serviceNanoseconds < 500_000 { return max(chunks, 16) }
        return chunks
    }

    private func flushAll() {
        for slot in slots where slot.hasOutput { slot.flush() }
    }

    /// What one reply answers: one input, or a whole batch.
    private enum Answer {
        case one(PoolCall, Int, PoolOutcome)
        case batch(PoolCall, PoolBatchOutputs)
        /// The pool's initializer threw in the worker: its report.
        case initializerFailed([UInt8])
    }

    private func readReplies(_ slot: WorkerSlot) {
        // Replies come in runs of one call: each run is delivered at once (a batch's outputs alone).
        var runs: [(call: PoolCall, outcomes: [(Int, PoolOutcome)], outputs: PoolBatchOutputs?)] = []
        var served = 0
        var initializerFailure: [UInt8]?
        let busySince = slot.busySince
        while true {
            let frame: [UInt8]?
            do { frame = try slot.channel.receiveBytesIfReady(maxLength: nil) } catch {
                slot.channelEnded = true
                break
            }
            guard let frame else { break }
            guard let (answer, flags) = answer(slot, frame) else {
                configuration.logger.error("pool worker \(slot.pid) sent a reply that does not follow the protocol; killing it")
                slot.kill()
                slot.channelEnded = true
                break
            }
            switch answer {
            case .one(let call, let index, let outcome):
                served += 1
                if let last = runs.indices.last, runs[last].call === call, runs[last].outputs == nil {
                    runs[last].outcomes.append((index, outcome))
                } else {
                    runs.append((call, [(index, outcome)], nil))
                }
            case .batch(let call, let outputs):
                served += outputs.count
                runs.append((call, [], outputs))
            case .initializerFailed(let report):
                initializerFailure = report
            }
            if flags & PoolWire.retiring != 0 {
                slot.retiring = true
                configuration.logger.info("pool worker \(slot.pid) passed its memory cap of \(configuration.maxMemoryPerChild ?? 0) bytes; replacing it")
            }
        }
        if served > 0 {
            let now = Deadline.monotonicNow()
            let elapsed = min((now > busySince ? now - busySince : 0) / UInt64(served), 1_000_000_000)
            serviceNanoseconds = (serviceNanoseconds * 7 + elapsed) / 8
        }
        for run in runs {
            if let outputs = run.outputs { run.call.deliver(outputs) } else { run.call.deliver(run.outcomes) }
        }
        if let initializerFailure {
            let report = try? BinaryDecoder().decode(FailureReport.self, from: initializerFailure)
            let reason = report.map { "\($0.typeName): \($0.message)" } ?? "an error that could not be decoded"
            breakPool(MultiprocessingError(.brokenPool, "the pool's initializer \(initializerName) threw in worker \(slot.pid): \(reason); the pool runs no more work").with(pid: slot.pid))
        }
    }

    private var initializerName: String { configuration.initializer.map { "\(type(of: $0))" } ?? "" }

    /// The pool runs no more work: every input not ended fails with `error`, the workers are killed
    /// and not replaced, and later submissions throw `error` (Python's broken pool, without the
    /// endless respawning of workers whose initializer fails).
    private func breakPool(_ error: MultiprocessingError) {
        guard broken == nil else { return }
        broken = error
        shared.withLock { $0.broken = error }
        configuration.logger.error("\(error.message)")
        for slot in slots {
            if slot.killReason == nil {
                slot.killReason = .poolBroken
                slot.kill()
            }
            for (_, item, _) in slot.takeInflight() { fail(item, error) }
        }
        for item in pending[pendingHead...] { fail(item, error) }
        pending.removeAll()
        pendingHead = 0
    }

    /// What a reply answers, and its flags; nil when it does not answer what the worker was sent.
    private func answer(_ slot: WorkerSlot, _ frame: [UInt8]) -> (Answer, flags: UInt8)? {
        let fields = frame.withUnsafeBytes { bytes -> (kind: UInt8, flags: UInt8, id: UInt64, header: Int)? in
            var reader = WireFieldReader(bytes, what: "a pool frame")
            guard let kind = try? reader.byte(), let flags = try? reader.byte(), let id = try? reader.integer(UInt64.self) else { return nil }
            return (kind, flags, id, reader.position)
        }
        guard let (kind, flags, id, header) = fields else { return nil }
        if kind == PoolWire.initializerFailed { return (.initializerFailed(Array(frame[header...])), flags) }
        if kind == PoolWire.outputs {
            guard let item = slot.answeredBatch(id) else { return nil }
            let outputs = PoolEncodedBatch(bytes: frame, range: header..<frame.count, count: item.count)
            return (.batch(item.call, PoolBatchOutputs(outputs, firstIndex: item.index)), flags)
        }
        guard let (item, offset) = slot.answered(id) else { return nil }
        let payload = Array(frame[header...])
        let outcome: PoolOutcome
        if kind == PoolWire.output {
            outcome = .output(payload)
        } else if item.call.keepsThrownReports, let report = try? BinaryDecoder().decode(FailureReport.self, from: payload) {
            outcome = .failure(PoolThrownReport(report: report))
        } else {
            outcome = .failure(Self.remoteError(payload))
        }
        return (.one(item.call, item.index + offset, outcome), flags)
    }

    /// The error an input's reply carries: the thrown error itself when its type is Codable and known
    /// here, otherwise ``MultiprocessingError/Code/remote`` with its type name and description.
    static func remoteError(_ payload: [UInt8]) -> any Error {
        guard let report = try? BinaryDecoder().decode(FailureReport.self, from: payload) else {
            return MultiprocessingError(.transport, "a worker's error could not be decoded")
        }
        let failure = report.failure
        if let error = failure.error { return error }
        return MultiprocessingError(.remote, "\(report.typeName): \(report.message)")
    }

    private func workerEnded(_ slot: WorkerSlot) {
        let code = slot.process.exitCode ?? -1
        if !slot.channelEnded { readReplies(slot) }
        let startedID = slot.started.load()
        if startedID == PoolWire.initializing && slot.killReason == nil && !ExitHooks.exiting.load(ordering: .relaxed) {
            breakPool(MultiprocessingError(
                .brokenPool, "the pool's initializer \(initializerName) did not finish: \(died(slot, code: code, running: nil).message); the pool runs no more work"
            ).with(pid: slot.pid, signal: code < 0 ? -code : nil))
        }
        var requeue: [PoolItem] = []
        var running: (call: PoolCall, index: Int)?
        for (id, item, unanswered) in slot.takeInflight() {
            // The input the worker recorded as started is the one it was running.
            var failed: Int?
            if startedID &- id < UInt64(item.count), unanswered.contains(Int(startedID &- id)) {
                let offset = Int(startedID &- id)
                let index = item.index + offset
                running = (item.call, index)
                switch slot.killReason {
                case .timedOut:
                    failed = offset
                    let limit = item.call.timeout ?? .zero
                    fail(item.call, index, MultiprocessingError(
                        .timedOut, "input \(index) of \(item.call.taskDescription) ran past its timeout of \(limit); worker \(slot.pid) was killed and replaced"
                    ).with(pid: slot.pid, timeout: limit))
                case .cancelled:
                    failed = offset
                    fail(item.call, index, CancellationError())
                case .poolBroken:
                    break
                case nil:
                    if !(code == 0 && slot.retiring) {
                        failed = offset
                        fail(item.call, index, died(slot, code: code, running: running))
                    }
                }
            }
            requeue += remaining(item, unanswered, except: failed)
        }
        if !requeue.isEmpty {
            pending.replaceSubrange(pendingHead..<pendingHead, with: requeue)
        }
        if slot.killReason == nil && !(code == 0 && (slot.retiring || slot.channelClosedByPool)) {
            configuration.logger.warning("\(died(slot, code: code, running: running).message)")
        } else if slot.retiring || slot.channelClosedByPool {
            configuration.logger.debug("pool worker \(slot.pid) ended after \(slot.sentTotal) inputs")
        }
        slot.release()
        slots.removeAll { $0 === slot }
        publishPids()
    }

    /// The inputs of `item` in `range` but `skipped`, to send again: the item itself when that is all
    /// of it, otherwise (part of a batch) each input encoded on its own.
    private func remaining(_ item: PoolItem, _ range: Range<Int>, except skipped: Int?) -> [PoolItem] {
        if skipped == nil && range == 0..<item.count { return [item] }
        guard let singles = item.singles else { return [] }
        let offsets = range.filter { $0 != skipped }
        if item.call.isCancelled {
            for offset in offsets { fail(item.call, item.index + offset, CancellationError()) }
            return []
        }
        let encoded = singles()
        var items: [PoolItem] = []
        for offset in offsets {
            switch encoded[offset] {
            case .success(let bytes): items.append(PoolItem(call: item.call, index: item.index + offset, input: bytes))
            case .failure(let error): fail(item.call, item.index + offset, PoolFeeder.unencodable(item.call, item.index + offset, error))
            }
        }
        return items
    }

    private func died(_ slot: WorkerSlot, code: Int32, running: (call: PoolCall, index: Int)?) -> MultiprocessingError {
        var message = "pool worker \(slot.pid) "
        message += code < 0 ? "was killed by \(Signal(rawValue: -code).name)" : "exited with code \(code)"
        if let running { message += " while running input \(running.index) of \(running.call.taskDescription)" }
        if let limit = slot.process.exceededLimit { message += " (it exceeded its \(limit) limit)" }
        return MultiprocessingError(.childFailed, message).with(pid: slot.pid, signal: code < 0 ? -code : nil)
    }

    /// Starts workers until the pool has its number again (not while the program exits).
    private func replaceWorkers() {
        guard !ExitHooks.exiting.load(ordering: .relaxed), broken == nil else { return }
        var changed = false
        if configuration.startsOnDemand, pendingCount > 0 {
            let idle = slots.filter { $0.inflightCount == 0 && !$0.channelClosedByPool }.count
            if pendingCount > idle {
                wantedWorkers = min(configuration.workers, max(wantedWorkers, slots.count + pendingCount - idle))
            }
        }
        while slots.count < wantedWorkers {
            do {
                slots.append(try startWorker())
                changed = true
            } catch {
                configuration.logger.error("pool could not start a worker: \(error)")
                break
            }
        }
        // A worker that reached maxTasksPerChild, or passed its memory cap, ends once it has answered.
        for slot in slots where !slot.channelClosedByPool && slot.inflightCount == 0 {
            if slot.retiring { slot.closeChannel() }
            if let limit = configuration.maxTasksPerChild, slot.sentTotal >= limit { slot.closeChannel() }
        }
        if changed { publishPids() }
    }

    private func nearestDeadline() -> Deadline {
        var nearest: UInt64?
        for slot in slots where slot.killReason == nil {
            guard let running = slot.runningItem, let limit = running.call.timeoutNanoseconds else { continue }
            let end = slot.busySince &+ limit
            nearest = min(nearest ?? end, end)
        }
        return Deadline(nanoseconds: nearest)
    }

    private func enforceDeadlines() {
        let now = Deadline.monotonicNow()
        for slot in slots where slot.killReason == nil {
            guard let running = slot.runningItem, let limit = running.call.timeoutNanoseconds else { continue }
            if now >= slot.busySince &+ limit {
                slot.killReason = .timedOut
                slot.kill()
                configuration.logger.warning("pool worker \(slot.pid) ran input \(running.index) of \(running.call.taskDescription) past its timeout; killing it")
            }
        }
    }

    private func terminateAll() {
        for slot in slots { slot.kill() }
        let error = MultiprocessingError(.closed, "the pool was terminated before this input finished")
        for slot in slots {
            _ = try? slot.process.join(timeout: .seconds(10))
            for (_, item, _) in slot.takeInflight() { fail(item, error) }
            slot.release()
        }
        slots.removeAll()
        for item in pending[pendingHead...] { fail(item, error) }
        pending.removeAll()
        pendingHead = 0
    }

    /// Fails every input of `item` that has no outcome yet.
    private func fail(_ item: PoolItem, _ error: any Error) {
        item.call.deliver((0..<item.count).map { (item.index + $0, .failure(error)) })
    }

    private func fail(_ call: PoolCall, _ index: Int, _ error: any Error) {
        call.deliver([(index, .failure(error))])
    }

    private func startWorker() throws -> WorkerSlot {
        workerCount += 1
        let (mine, theirs) = try Syscall.socketPair()
        let channel: Connection
        let workerEnd: Connection
        do {
            channel = try Connection(adopting: mine)
        } catch {
            Syscall.close(mine)
            Syscall.close(theirs)
            throw error
        }
        do { workerEnd = try Connection(adopting: theirs) } catch {
            Syscall.close(theirs)
            throw error
        }
        defer { workerEnd.close() }
        let started = try RawSharedValue<UInt64>(0)
        let name = "PoolWorker-\(workerCount)"
        let context = configuration.context
        let process: ChildProcess
        if context.startMethod == .fork {
            // A forked worker inherits the pool's other descriptors; it closes them so that each
            // worker sees its own channel end when the pool closes it.
            let inherited = slots.map(\.fd) + [mine, wakeRead, wakeWrite]
            var worker = PoolWorker(channel: workerEnd, memoryCap: configuration.maxMemoryPerChild, started: started, inherited: inherited)
            worker.closure = configuration.closure
            worker.initializer = configuration.initializer
            process = ChildProcess(worker, name: name, daemon: true, context: context)
        } else {
            process = ChildProcess(
                PoolAsyncWorker(
                    channel: workerEnd, memoryCap: configuration.maxMemoryPerChild, started: started,
                    initializer: configuration.initializer.map(TaskEnvelope.init)),
                name: name, daemon: true, context: context)
        }
        try process.setSettings(configuration.settings)
        try process.start()
        return try WorkerSlot(process: process, channel: channel, started: started)
    }
}
