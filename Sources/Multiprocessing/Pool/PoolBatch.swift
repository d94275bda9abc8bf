import Synchronization

/// `count` values encoded as one array (with ``BinaryEncoder``), found at `range` of `bytes`: a
/// batch's inputs in the job frame that brought them, or its outputs in the reply frame. Read where
/// they are, without copying them out of the frame.
struct PoolEncodedBatch: Sendable {
    let bytes: [UInt8]
    let range: Range<Int>
    let count: Int

    /// All values, or nil when they do not decode together.
    func decodeAll<Value: Decodable>(as _: Value.Type) -> [Value]? {
        let values = bytes.withUnsafeBytes { raw in
            try? Self.decoder.decode([Value].self, from: UnsafeRawBufferPointer(rebasing: raw[range]))
        }
        return values?.count == count ? values : nil
    }

    /// Each value, or the error it fails with: decoded together, and when that fails one by one, so
    /// that a value that cannot be decoded fails alone.
    func decodeEach<Value: Decodable>(as _: Value.Type) -> [Result<Value, any Error>] {
        if let values = decodeAll(as: Value.self) { return values.map { .success($0) } }
        do {
            let values = try bytes.withUnsafeBytes { raw in
                try Self.decoder.decode([PoolLenient<Value>].self, from: UnsafeRawBufferPointer(rebasing: raw[range]))
            }
            guard values.count == count else {
                throw MultiprocessingError(.protocolViolation, "a batch of \(count) values holds \(values.count)")
            }
            return values.map(\.result)
        } catch {
            return Array(repeating: .failure(error), count: count)
        }
    }

    private static var decoder: BinaryDecoder {
        var decoder = BinaryDecoder()
        decoder.memoryBudget = .unlimited
        return decoder
    }
}

/// Decodes a value, keeping its failure as a result instead of failing the array it is an element of.
struct PoolLenient<Value: Decodable>: Decodable {
    let result: Result<Value, any Error>

    init(from decoder: any Decoder) throws {
        result = Result { try decoder.singleValueContainer().decode(Value.self) }
    }
}

/// The outputs of a batch as its reply brought them, decoded once by the first reader that takes
/// them one by one (a map decodes them all at once instead, see ``PoolCall/values(_:as:)``).
final class PoolBatchOutputs: @unchecked Sendable {
    let encoded: PoolEncodedBatch
    /// The index of the batch's first input in its call.
    let firstIndex: Int
    private let decoded = Mutex<AnyObject?>(nil)

    init(_ encoded: PoolEncodedBatch, firstIndex: Int) {
        self.encoded = encoded
        self.firstIndex = firstIndex
    }

    var count: Int { encoded.count }

    /// Each output, or the error it fails with.
    func values<Output: Decodable>(as _: Output.Type, task: String) -> [Result<Output, any Error>] {
        let box = decoded.withLock { cache -> PoolBox<[Result<Output, any Error>]> in
            if let box = cache as? PoolBox<[Result<Output, any Error>]> { return box }
            let box = PoolBox(encoded.decodeEach(as: Output.self).enumerated().map { offset, result in
                result.mapError { error -> any Error in
                    MultiprocessingError(.transport, "the output of input \(self.firstIndex + offset) of \(task) could not be decoded: \(error)")
                }
            })
            cache = box
            return box
        }
        return box.value
    }
}

/// A value held by reference (a decoded batch, kept as `AnyObject` for any output type).
final class PoolBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// A batch's inputs in a worker.
struct PoolBatchInputs<Input: Decodable> {
    /// The inputs, when they decoded together.
    let all: [Input]?
    private let each: [Result<Input, any Error>]

    init(_ encoded: PoolEncodedBatch) {
        all = encoded.decodeAll(as: Input.self)
        each = all == nil ? encoded.decodeEach(as: Input.self) : []
    }

    func input(_ offset: Int) throws -> Input {
        if let all { return all[offset] }
        return try each[offset].get()
    }
}
