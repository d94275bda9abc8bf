/// A queue whose consumers say when they have finished each item: Python's
/// `multiprocessing.JoinableQueue`, typed.
///
/// Every put counts an unfinished task; ``taskDone()`` finishes one; `join(timeout:)` waits
/// until none is unfinished. Everything else is as for ``ProcessQueue``. The count lives in the
/// queue's shared memory, counted by the same store that publishes an item, so a producer killed
/// mid-put never leaves a task that nobody can finish.
public final class ProcessJoinableQueue<Element: Codable & Sendable>: ProcessQueue<Element>, @unchecked Sendable {
    /// A new joinable queue holding at most `maxSize` items; 0 or less means no bound.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a `maxSize` above 134,217,728;
    ///   ``MultiprocessingError/Code/system`` when the shared memory cannot be created.
    public override init(maxSize: Int = 0) throws { try super.init(maxSize: maxSize) }

    /// Decodes a joinable queue sent by another process: the same queue, shared.
    /// - Throws: ``MultiprocessingError/Code/transport`` when the message does not carry a queue.
    public required init(from decoder: any Decoder) throws { try super.init(from: decoder) }

    /// The number of items put and not yet marked done, in every process.
    public var unfinishedTasks: Int { Int(ring.unfinished) }

    /// Marks one item taken from the queue as finished: Python's `task_done()`.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when called more times than items were put
    ///   (Python's `ValueError`).
    public func taskDone() throws {
        guard ring.taskDone() else {
            throw MultiprocessingError(.invalidState, "taskDone() called more times than there were items")
        }
    }

    /// Waits until every item put has been marked done with ``taskDone()``: Python's `join()`.
    /// - Parameter timeout: how long to wait at most; nil waits as long as it takes.
    /// - Returns: whether no task was unfinished (false when the timeout passed first).
    @discardableResult
    public func join(timeout: Duration? = nil) -> Bool {
        let deadline = Deadline.after(timeout)
        while true {
            if ring.joinStep(until: deadline) != nil { return true }
            if deadline.hasPassed { return false }
        }
    }

    /// Waits, without blocking a thread, until every item put has been marked done; see `join(timeout:)`.
    /// - Throws: `CancellationError` when the task is cancelled while waiting;
    ///   ``MultiprocessingError/Code/system`` when no thread could be started to wait on.
    @discardableResult
    public func join(timeout: Duration? = nil) async throws -> Bool {
        if ring.unfinished == 0 { return true }
        let ring = self.ring
        return try await WaitPool.shared.wait(until: .after(timeout), interrupt: { ring.interruptJoin() }) { sliceEnd, _ in
            ring.joinStep(until: sliceEnd)
        } ?? false
    }
}
