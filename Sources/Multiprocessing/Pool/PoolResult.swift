/// The pending result of work handed to a pool: Python's `AsyncResult` (from `apply_async` and
/// `map_async`) and `concurrent.futures.Future` in one.
///
/// ```swift
/// let result = try pool.submit(Square(), 7)
/// print(try result.get(timeout: .seconds(10)))   // 49
/// print(try await result.value)                  // the same, without holding a thread
/// ```
public final class PoolResult<Value: Sendable>: @unchecked Sendable {
    let call: PoolCall
    let supervisor: PoolSupervisor
    private let goal: PoolWaitGoal
    private let extract: @Sendable (PoolCall) throws -> Value

    init(call: PoolCall, supervisor: PoolSupervisor, goal: PoolWaitGoal, extract: @escaping @Sendable (PoolCall) throws -> Value) {
        self.call = call
        self.supervisor = supervisor
        self.goal = goal
        self.extract = extract
    }

    /// Whether the work has ended, well or badly (Python's `ready()`).
    public var isReady: Bool { call.wait(for: goal, until: .now) }

    /// Whether the work ended without an error (Python's `successful()`).
    /// - Throws: ``MultiprocessingError/Code/invalidState`` while the work has not ended, as Python's
    ///   `ValueError`.
    public var isSuccessful: Bool {
        get throws {
            guard isReady else { throw MultiprocessingError(.invalidState, "the result is not ready") }
            return (try? extract(call)) != nil
        }
    }

    /// Inputs of this work that have ended so far, and how many there are.
    public var completedCount: Int { call.completed }
    /// How many inputs this work has.
    public var totalCount: Int { call.count }

    /// Waits until the work has ended, at most `timeout` (nil: as long as it takes); returns
    /// whether it has (Python's `wait`).
    @discardableResult
    public func wait(timeout: Duration? = nil) -> Bool {
        call.wait(for: goal, until: .after(timeout))
    }

    /// Waits at most `timeout` (nil: no limit) for the work to end, without holding a thread, and returns
    /// whether it has (Python's `wait`, awaited).
    /// - Throws: `CancellationError` when the awaiting task is cancelled; the work goes on.
    public func wait(timeout: Duration? = nil) async throws -> Bool {
        try await call.wait(for: goal, timeout: timeout)
    }

    /// The value, waiting at most `timeout` for it (Python's `get`).
    /// - Throws: ``MultiprocessingError/Code/timedOut`` when the work has not ended in time (it goes on);
    ///   otherwise the error the work ended with: the task's own thrown error when its type is `Codable`,
    ///   ``MultiprocessingError/Code/remote`` for other thrown errors, ``MultiprocessingError/Code/childFailed``
    ///   when the worker died running it (with the worker's pid and signal),
    ///   ``MultiprocessingError/Code/timedOut`` when it ran past the pool's per-task timeout,
    ///   ``MultiprocessingError/Code/transport`` when an input or output could not be encoded or decoded,
    ///   ``MultiprocessingError/Code/closed`` when the pool was terminated first,
    ///   ``MultiprocessingError/Code/brokenPool`` when the pool's initializer failed, and `CancellationError`
    ///   after ``cancel()``.
    public func get(timeout: Duration? = nil) throws -> Value {
        guard wait(timeout: timeout) else {
            throw MultiprocessingError(.timedOut, "the result was not ready within \(timeout ?? .zero)").with(timeout: timeout)
        }
        return try extract(call)
    }

    /// The value, awaited without holding a thread. Cancelling the awaiting task cancels the work: inputs
    /// not started are dropped, and a worker running one is killed and replaced.
    /// - Throws: the errors of ``get(timeout:)`` (never its wait timeout), and `CancellationError`.
    public var value: Value {
        get async throws {
            let call = call
            let supervisor = supervisor
            try await call.wait(for: goal, onCancel: { supervisor.cancel(call) })
            return try extract(call)
        }
    }

    /// Cancels the work: inputs not started yet fail with `CancellationError`, and a worker running one is
    /// killed (and replaced), so that input fails the same way. Work that has ended keeps its outcome.
    public func cancel() { supervisor.cancel(call) }

    /// The number of ended inputs, each time it grows, until every input has ended: progress of a map
    /// as it runs. Each call makes a new sequence that starts with the present count.
    public var progress: AsyncStream<Int> { call.makeProgressStream() }
}

extension PoolCall {
    /// The decoded output of input `index`, or the error it ended with.
    func value<Output: Decodable>(_ index: Int, as _: Output.Type) throws -> Output {
        guard let outcome = outcome(index) else {
            throw MultiprocessingError(.invalidState, "input \(index) has not ended")
        }
        return try value(of: outcome, index, as: Output.self)
    }

    /// The decoded output in `outcome` (of input `index`), or the error it holds.
    func value<Output: Decodable>(of outcome: PoolOutcome, _ index: Int, as _: Output.Type) throws -> Output {
        try value(of: outcome, index, as: Output.self, batch: batch(at:))
    }

    private func value<Output: Decodable>(
        of outcome: PoolOutcome, _ index: Int, as _: Output.Type, batch: (Int) -> PoolBatchOutputs?
    ) throws -> Output {
        switch outcome {
        case .failure(let error): throw error
        case .batched(let first):
            guard let outputs = batch(first) else { throw MultiprocessingError(.invalidState, "input \(index) has no batch") }
            return try outputs.values(as: Output.self, task: taskDescription)[index - first].get()
        case .output(let bytes):
            do {
                var decoder = BinaryDecoder()
                decoder.memoryBudget = .unlimited
                return try decoder.decode(Output.self, from: bytes)
            } catch {
                throw MultiprocessingError(.transport, "the output of input \(index) of \(taskDescription) could not be decoded: \(error)")
            }
        }
    }

    /// The decoded outputs of inputs `0..<count` in order, or the first error among them; a batch's
    /// outputs are decoded together, straight into the result.
    func values<Output: Decodable>(_ count: Int, as _: Output.Type) throws -> [Output] {
        let (outcomes, batches) = snapshot
        var values: [Output] = []
        values.reserveCapacity(count)
        var index = 0
        while index < min(count, outcomes.count) {
            guard let outcome = outcomes[index] else { break }
            if case .batched(let first) = outcome, first == index, let outputs = batches[first], index + outputs.count <= count,
                outcomes[index..<index + outputs.count].allSatisfy({ if case .batched(first)? = $0 { true } else { false } }),
                let all = outputs.encoded.decodeAll(as: Output.self) {
                values.append(contentsOf: all)
                index += outputs.count
                continue
            }
            values.append(try value(of: outcome, index, as: Output.self, batch: { batches[$0] }))
            index += 1
        }
        guard index == count else { throw MultiprocessingError(.invalidState, "input \(index) has not ended") }
        return values
    }
}
