/// How one already-encoded job ended on a local pool: what ``ProcessPool/runEncoded(taskType:task:input:timeout:)``
/// returns to a library that serves remote work through a local pool (an MPI pool, say), so that a crash
/// stays in a local worker.
@_spi(PoolTransport)
public enum EncodedPoolOutcome: Sendable, Codable, Equatable {
    /// The task's output, encoded with ``BinaryEncoder``.
    case output([UInt8])
    /// The task threw: the error's type name (`String(reflecting:)`), its description, and when its
    /// type is `Codable` its mangled type name and ``BinaryEncoder`` encoding, from which a process of
    /// the same program decodes it back.
    case thrown(typeName: String, message: String, valueType: String?, value: [UInt8]?)
    /// The pool could not run the job: the worker died or timed out, the task type is unknown in the
    /// worker's program, the pool was terminated. The code is a ``MultiprocessingError/Code`` name.
    case failed(code: String, message: String, pid: Int32?, signal: Int32?)
}

/// A thrown error's report kept as the worker sent it (for ``ProcessPool/runEncoded(taskType:task:input:timeout:)``).
struct PoolThrownReport: Error {
    let report: FailureReport
}

extension ProcessPool {
    /// Runs one job given as bytes: the mangled name of a ``PoolTask`` or ``AsyncPoolTask`` type
    /// (`_mangledTypeName`), the task value and one input, each encoded with ``BinaryEncoder``. The
    /// worker resolves the type by name, as for typed work; nothing is decoded in this process.
    ///
    /// ```swift
    /// let outcome = try await pool.runEncoded(
    ///     taskType: _mangledTypeName(Square.self)!, task: try BinaryEncoder().encode(Square()),
    ///     input: try BinaryEncoder().encode(7), timeout: .seconds(60))
    /// if case .output(let bytes) = outcome { print(try BinaryDecoder().decode(Int.self, from: bytes)) }
    /// ```
    ///
    /// Every way the job can end is a value; cancelling the awaiting task kills the worker running it
    /// and throws `CancellationError`.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` once the pool is closed or terminated, and
    ///   `CancellationError`.
    @_spi(PoolTransport)
    public func runEncoded(taskType: String, task: [UInt8], input: [UInt8], timeout: Duration? = nil) async throws -> EncodedPoolOutcome {
        let call = PoolCall(
            taskName: Array(taskType.utf8), task: task, kind: PoolWire.syncJob, chunkSize: 1, timeout: timeout,
            taskDescription: taskType, keepsThrownReports: true)
        try PoolFeeder.feed(call, encoded: [.success(input)], into: supervisor)
        let supervisor = supervisor
        try await call.wait(for: .item(0), onCancel: { supervisor.cancel(call) })
        switch call.outcome(0) {
        case .output(let bytes)?: return .output(bytes)
        case .failure(let thrown as PoolThrownReport)?:
            let report = thrown.report
            return .thrown(typeName: report.typeName, message: report.message, valueType: report.valueType, value: report.value)
        case .failure(let error as MultiprocessingError)?:
            return .failed(code: error.code.rawValue, message: error.message, pid: error.pid?.rawValue, signal: error.signal?.rawValue)
        case .failure(let error)?:
            if error is CancellationError { throw error }
            return .failed(code: MultiprocessingError.Code.remote.rawValue, message: "\(error)", pid: nil, signal: nil)
        case nil, .batched?:
            // (A single input is never part of a batch.)
            return .failed(code: MultiprocessingError.Code.invalidState.rawValue, message: "the job has no outcome", pid: nil, signal: nil)
        }
    }
}
