/// The outputs of ``ProcessPool/imap(_:_:chunkSize:timeout:window:)`` and
/// ``ProcessPool/imapUnordered(_:_:chunkSize:timeout:window:)``: Python's `IMapIterator`, reading its
/// inputs only as the consumer takes outputs, so that at most `window` inputs are in the pool at a time.
///
/// ```swift
/// let squares = try pool.imap(Square(), 1...)          // an endless input is fine
/// while let square = try squares.next(timeout: .seconds(5)), square < 1_000 { print(square) }
/// for try await square in try pool.imapUnordered(Square(), 1...10) { print(square) }
/// ```
public final class PoolResults<Output: Decodable & Sendable>: AsyncSequence, @unchecked Sendable {
    public typealias Element = Output

    let call: PoolCall
    private let supervisor: PoolSupervisor
    private let ordered: Bool
    private let window: Int
    private struct Feed {
        var next: () -> Result<[UInt8], any Error>?
        var fed = 0
        var exhausted = false
        var consumed = 0
    }
    private let feed: ForkSafeMutex<Feed>

    init<S: Sequence>(call: PoolCall, supervisor: PoolSupervisor, inputs: S, ordered: Bool, window: Int) where S.Element: Encodable {
        self.call = call
        self.supervisor = supervisor
        self.ordered = ordered
        self.window = Swift.max(1, window)
        var iterator = inputs.makeIterator()
        let encoder = BinaryEncoder()
        feed = ForkSafeMutex(Feed(next: { iterator.next().map { input in Result { try encoder.encode(input) } } }))
        call.setSealed(false)
    }

    deinit { supervisor.cancel(call) }

    /// Reads inputs until `window` are in the pool (or none are left); throws when the pool is closed.
    private func refill(_ feed: inout Feed) throws {
        var batch: [Result<[UInt8], any Error>] = []
        while !feed.exhausted && feed.fed + batch.count - feed.consumed < window {
            if let input = feed.next() {
                batch.append(input)
            } else {
                feed.exhausted = true
            }
        }
        if !batch.isEmpty {
            try PoolFeeder.feed(call, encoded: batch, into: supervisor)
            feed.fed += batch.count
        }
        if feed.exhausted { call.setSealed(true) }
    }

    /// What the next output waits for, or nil when the inputs ran out and every output was taken.
    private func claim() throws -> (goal: PoolWaitGoal, position: Int)? {
        try feed.withLock { feed in
            try refill(&feed)
            guard feed.consumed < feed.fed else { return nil }
            let position = feed.consumed
            feed.consumed += 1
            return (ordered ? .item(position) : .count(position + 1), position)
        }
    }

    private func take(_ position: Int) throws -> Output {
        try feed.withLock { try refill(&$0) }
        let index = ordered ? position : call.completed(at: position)!
        return try call.value(index, as: Output.self)
    }

    /// The next output, waiting at most `timeout` (nil: as long as it takes); nil once every input's
    /// output was taken.
    /// - Throws: ``MultiprocessingError/Code/timedOut`` when the output did not come in time (the same
    ///   output is waited for by the next call); otherwise the input's own error, as
    ///   ``PoolResult/get(timeout:)`` describes.
    public func next(timeout: Duration? = nil) throws -> Output? {
        guard let (goal, position) = try claim() else { return nil }
        guard call.wait(for: goal, until: .after(timeout)) else {
            feed.withLock { $0.consumed -= 1 }
            throw MultiprocessingError(.timedOut, "the next result was not ready within \(timeout ?? .zero)").with(timeout: timeout)
        }
        return try take(position)
    }

    /// Iterates the outputs without holding a thread; cancelling the iterating task cancels the inputs
    /// not ended.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let results: PoolResults

        /// The next output, or nil after the last.
        /// - Throws: the input's error (see ``PoolResult/get(timeout:)``), or `CancellationError`.
        public mutating func next() async throws -> Output? {
            guard let (goal, position) = try results.claim() else { return nil }
            let call = results.call
            let supervisor = results.supervisor
            try await call.wait(for: goal, onCancel: { supervisor.cancel(call) })
            return try results.take(position)
        }
    }

    /// An iterator over the outputs.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(results: self) }

    /// Inputs ended so far: progress while the results are consumed.
    public var completedCount: Int { call.completed }
}
