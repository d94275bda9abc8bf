#if canImport(Glibc)
import Glibc
#endif

/// How one input ended: the encoded output, its place among a batch's outputs, or the error that the
/// caller will see.
enum PoolOutcome: @unchecked Sendable {
    case output([UInt8])
    /// The output is among those of the batch whose first input has this index (see ``PoolCall/batch(at:)``).
    case batched(first: Int)
    case failure(any Error)
}

/// One input on its way through the pool, or a batch: several consecutive inputs of a map encoded as
/// one array, sent in one job and answered by one reply when all of them succeed.
struct PoolItem: @unchecked Sendable {
    let call: PoolCall
    /// The input's index in its call (a batch's first).
    let index: Int
    /// The input's encoding, or a batch's: its inputs as one array.
    let input: [UInt8]
    /// How many inputs: 1, or a batch's count.
    var count = 1
    /// A batch's inputs encoded one by one, for when they must travel singly after all (the worker
    /// running the batch died, or answered only some of its inputs); nil for a single input.
    var singles: (@Sendable () -> [Result<[UInt8], any Error>])? = nil

    var isBatch: Bool { singles != nil }
}

/// What a waiter waits for.
enum PoolWaitGoal {
    /// Input `index` has its outcome.
    case item(Int)
    /// At least `n` inputs have their outcomes.
    case count(Int)
}

/// One submission to a pool (an apply, a map, an imap): its task, encoded once, and the outcome of each
/// input as it arrives. The supervisor writes outcomes; callers wait for them, blocking on a condition
/// or awaiting a continuation the supervisor resumes (no thread per await).
final class PoolCall: @unchecked Sendable {
    let taskName: [UInt8]
    let task: [UInt8]
    let kind: UInt8
    let chunkSize: Int
    /// The wall-clock limit of each input, in nanoseconds.
    let timeoutNanoseconds: UInt64?
    let timeout: Duration?
    /// The task's type, for messages.
    let taskDescription: String
    /// Thrown errors stay as the worker's report (``PoolThrownReport``) instead of being decoded here.
    let keepsThrownReports: Bool
    /// Inputs are encoded and sent a chunk at a time as one array (a batch), answered as one array when
    /// all of them succeed. Not for calls with a per-input timeout, nor in pools that recycle workers by
    /// count or memory: those need each input answered on its own.
    let batches: Bool

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    // Guarded by `mutex`.
    private var outcomes: [PoolOutcome?] = []
    /// The outputs of batches, by the index of their first input.
    private var batchOutputs: [Int: PoolBatchOutputs] = [:]
    private(set) var completedOrder: [Int] = []
    private var waiters: [UInt64: (goal: PoolWaitGoal, continuation: CheckedContinuation<Bool, Never>)] = [:]
    private var nextWaiter: UInt64 = 0
    private var cancelledFlag = false

    /// Called on the supervisor's thread for each outcome (Python's callbacks), before it is published.
    var onOutcome: (@Sendable (Int, PoolOutcome) -> Void)?
    /// Receive the completed count after each batch of outcomes (guarded by `mutex`).
    private var progressStreams: [AsyncStream<Int>.Continuation] = []
    /// No more inputs will be added (an imap whose inputs ran out, or any other call once made).
    private var sealed = true

    init(
        taskName: [UInt8], task: [UInt8], kind: UInt8, chunkSize: Int, timeout: Duration?, taskDescription: String,
        keepsThrownReports: Bool = false, batches: Bool = false
    ) {
        self.keepsThrownReports = keepsThrownReports
        self.batches = batches && chunkSize > 1 && timeout == nil
        self.taskName = taskName
        self.task = task
        self.kind = kind
        self.chunkSize = max(1, chunkSize)
        self.timeout = timeout
        self.taskDescription = taskDescription
        timeoutNanoseconds = timeout.map(Deadline.nanoseconds(in:))
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    private func locked<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Makes room for `count` more inputs; returns the index of the first.
    func reserve(_ count: Int) -> Int {
        locked {
            let first = outcomes.count
            outcomes.append(contentsOf: repeatElement(nil, count: count))
            return first
        }
    }

    var count: Int { locked { outcomes.count } }
    var completed: Int { locked { completedOrder.count } }
    var isCancelled: Bool { locked { cancelledFlag } }

    /// Marks the call cancelled; the supervisor fails its inputs that have not ended.
    func markCancelled() { locked { cancelledFlag = true } }

    func outcome(_ index: Int) -> PoolOutcome? { locked { index < outcomes.count ? outcomes[index] : nil } }

    /// The index of the `position`th input to complete.
    func completed(at position: Int) -> Int? { locked { position < completedOrder.count ? completedOrder[position] : nil } }

    private func satisfied(_ goal: PoolWaitGoal) -> Bool {
        switch goal {
        case .item(let index): index < outcomes.count && outcomes[index] != nil
        case .count(let n): completedOrder.count >= n
        }
    }

    /// Stores outcomes (the first one for an input wins), wakes the waiters they satisfy, then runs the
    /// callbacks and reports progress.
    func deliver(_ batch: [(Int, PoolOutcome)]) {
        // Callbacks run before the outcomes are published, as Python's do: a caller that saw the result
        // ready sees the callback's effects.
        if let onOutcome {
            let fresh: [(Int, PoolOutcome)] = locked { batch.filter { $0.0 < outcomes.count && outcomes[$0.0] == nil } }
            for (index, outcome) in fresh { onOutcome(index, outcome) }
        }
        publish {
            for (index, outcome) in batch { Self.store(outcome, at: index, in: &outcomes, order: &completedOrder) }
        }
    }

    /// Stores the outputs of a batch, as ``deliver(_:)`` does.
    func deliver(_ outputs: PoolBatchOutputs) {
        let first = outputs.firstIndex
        locked { batchOutputs[first] = outputs }
        if onOutcome != nil {
            deliver((0..<outputs.count).map { (first + $0, .batched(first: first)) })
            return
        }
        publish {
            Self.store(.batched(first: first), at: first..<first + outputs.count, in: &outcomes, order: &completedOrder)
        }
    }

    /// The outputs of the batch whose first input is `first`.
    func batch(at first: Int) -> PoolBatchOutputs? { locked { batchOutputs[first] } }

    /// Stores an outcome unless the input has one (the first one wins); called under the lock.
    private static func store(_ outcome: PoolOutcome, at index: Int, in outcomes: inout [PoolOutcome?], order: inout [Int]) {
        guard index < outcomes.count, outcomes[index] == nil else { return }
        outcomes[index] = outcome
        order.append(index)
    }

    /// Stores one outcome for a run of inputs (a batch's), as ``store(_:at:in:order:)``; one access to
    /// the arrays for the whole run.
    private static func store(_ outcome: PoolOutcome, at indices: Range<Int>, in outcomes: inout [PoolOutcome?], order: inout [Int]) {
        order.reserveCapacity(outcomes.count)
        for index in indices { store(outcome, at: index, in: &outcomes, order: &order) }
    }

    /// Runs `body` (which stores outcomes) under the lock, then wakes the waiters it satisfied and
    /// reports progress.
    private func publish(_ body: () -> Void) {
        var ready: [CheckedContinuation<Bool, Never>] = []
        var streams: [AsyncStream<Int>.Continuation] = []
        var allDone = false
        let (before, done): (Int, Int) = locked {
            let before = completedOrder.count
            body()
            guard completedOrder.count > before else { return (before, before) }
            for (id, waiter) in waiters where satisfied(waiter.goal) {
                ready.append(waiter.continuation)
                waiters[id] = nil
            }
            pthread_cond_broadcast(condition)
            streams = progressStreams
            allDone = sealed && completedOrder.count == outcomes.count
            if allDone { progressStreams = [] }
            return (before, completedOrder.count)
        }
        guard done > before else { return }
        for continuation in ready { continuation.resume(returning: true) }
        for stream in streams {
            stream.yield(done)
            if allDone { stream.finish() }
        }
    }

    /// Every outcome so far (nil for inputs not ended) and the batches' outputs.
    var snapshot: (outcomes: [PoolOutcome?], batches: [Int: PoolBatchOutputs]) { locked { (outcomes, batchOutputs) } }

    /// Marks whether more inputs may still be added (an imap that has not read all its inputs).
    func setSealed(_ value: Bool) {
        let finishing: [AsyncStream<Int>.Continuation] = locked {
            sealed = value
            guard value, completedOrder.count == outcomes.count else { return [] }
            defer { progressStreams = [] }
            return progressStreams
        }
        for stream in finishing { stream.finish() }
    }

    /// A sequence of completed counts: the present one, then one per batch of outcomes, until all ended.
    func makeProgressStream() -> AsyncStream<Int> {
        let (stream, continuation) = AsyncStream.makeStream(of: Int.self, bufferingPolicy: .bufferingNewest(64))
        let (done, finished): (Int, Bool) = locked {
            let finished = sealed && completedOrder.count == outcomes.count
            if !finished { progressStreams.append(continuation) }
            return (completedOrder.count, finished)
        }
        continuation.yield(done)
        if finished { continuation.finish() }
        return stream
    }

    /// Blocks until `goal` holds or `deadline` passes; returns whether it holds.
    func wait(for goal: PoolWaitGoal, until deadline: Deadline) -> Bool {
        locked {
            while !satisfied(goal) {
                if var time = deadline.timespec {
                    if pthread_cond_timedwait(condition, mutex, &time) == ETIMEDOUT { return satisfied(goal) }
                } else {
                    pthread_cond_wait(condition, mutex)
                }
            }
            return true
        }
    }

    /// Blocks until `goal` holds, the deadline passes, or the completed count moves past `seen`;
    /// returns the completed count.
    func waitForProgress(beyond seen: Int, until deadline: Deadline) -> Int {
        locked {
            while completedOrder.count <= seen && completedOrder.count < outcomes.count {
                if var time = deadline.timespec {
                    if pthread_cond_timedwait(condition, mutex, &time) == ETIMEDOUT { break }
                } else {
                    pthread_cond_wait(condition, mutex)
                }
            }
            return completedOrder.count
        }
    }

    /// Waits for `goal` at most `timeout` (nil: no limit) without holding a thread, and returns whether it
    /// was reached. Cancelling the awaiting task ends the wait with `CancellationError` and leaves the
    /// work alone.
    func wait(for goal: PoolWaitGoal, timeout: Duration?) async throws -> Bool {
        let deadline = Deadline.after(timeout)
        if deadline.nanoseconds == nil {
            try await wait(for: goal, onCancel: {})
            return true
        }
        return try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await self.wait(for: goal, onCancel: {})
                return true
            }
            group.addTask { try await EventLoop.shared.wait(for: [], until: deadline) != .timedOut }
            defer { group.cancelAll() }
            // The first to end decides; a timer that fires at the moment the goal is reached still counts it.
            let first = try await group.next() ?? false
            return first || locked { satisfied(goal) }
        }
    }

    /// Waits for `goal` without holding a thread; throws `CancellationError` when the awaiting task is
    /// cancelled (after calling `onCancel`).
    func wait(for goal: PoolWaitGoal, onCancel: @escaping @Sendable () -> Void) async throws {
        let id: UInt64 = locked {
            nextWaiter += 1
            return nextWaiter
        }
        let reached = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let now: Bool? = locked {
                    if satisfied(goal) { return true }
                    if Task.isCancelled { return false }
                    waiters[id] = (goal, continuation)
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            let waiter = self.locked { self.waiters.removeValue(forKey: id) }
            waiter?.continuation.resume(returning: false)
        }
        if !reached {
            onCancel()
            throw CancellationError()
        }
    }
}
