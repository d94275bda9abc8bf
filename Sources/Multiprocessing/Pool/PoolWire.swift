/// The frames a pool and its workers exchange, packed by hand: a job frame carries one chunk of inputs
/// for one task value, a reply frame one input's outcome (or a whole batch's outputs). Both ride in the
/// package's connection framing (a 4-byte big-endian length), so a worker reads them with
/// ``Connection/recvBytes(maxLength:timeout:)-7rggb``.
///
/// Job: `kind u8 | first id u64 | name length u32 | name | task length u32 | task | count u32 | (length u32 | input)*`;
/// a batch job (kind flag ``batched``) has one `length u32 | inputs` after its count: all its inputs
/// encoded as one array.
/// Reply: `kind u8 | flags u8 | id u64 | payload` (the encoded output, an encoded ``FailureReport``, or for
/// ``outputs`` the encoded array of a batch's outputs, answering every input of the batch at once).
/// A worker writes several replies at once, each with its connection header.
enum PoolWire {
    /// Job kinds: how the worker runs the task.
    static let syncJob: UInt8 = 1
    static let asyncJob: UInt8 = 2
    /// Job flag: answer each input as soon as it ends (its call has a per-input timeout).
    static let answerAtOnce: UInt8 = 0x80
    /// Job flag: the inputs travel as one encoded array (a batch).
    static let batched: UInt8 = 0x40
    /// Reply kinds.
    static let output: UInt8 = 0
    static let failure: UInt8 = 1
    /// Reply kind: the outputs of every input of a batch, as one encoded array.
    static let outputs: UInt8 = 2
    /// Reply kind: the pool's initializer threw in this worker (payload: an encoded ``FailureReport``),
    /// which ends.
    static let initializerFailed: UInt8 = 3
    /// What a worker records as started while it runs the pool's initializer (input ids start at 1).
    static let initializing = UInt64.max
    /// The largest payload of a batch's reply: its frame's length must fit the connection's 4-byte header.
    static let largestBatchReply = Int(Int32.max) - 64
    /// Reply flag: the worker ends after this reply (its memory passed the pool's cap).
    static let retiring: UInt8 = 1

    /// Appends one job frame, with its connection header, to `buffer`.
    static func appendJob(
        to buffer: inout [UInt8], kind: UInt8, firstID: UInt64, name: [UInt8], task: [UInt8], inputs: ArraySlice<PoolItem>
    ) throws {
        var size = 1 + 8 + 4 + name.count + 4 + task.count + 4
        for item in inputs { size += 4 + item.input.count }
        let batch = inputs.count == 1 && inputs.first!.isBatch
        guard size <= Int(Int32.max) else {
            throw MultiprocessingError(.invalidArgument, "a chunk of \(size) bytes is too large to send to a worker")
        }
        buffer.reserveCapacity(buffer.count + 4 + size)
        Framing.appendBigEndian(UInt32(size), to: &buffer)
        buffer.append(batch ? kind | batched : kind)
        WireFields.append(firstID, to: &buffer)
        WireFields.append(field: name, to: &buffer)
        WireFields.append(field: task, to: &buffer)
        WireFields.append(UInt32(batch ? inputs.first!.count : inputs.count), to: &buffer)
        for item in inputs { WireFields.append(field: item.input, to: &buffer) }
    }

    /// Appends one reply frame, with its connection header, to `buffer`.
    static func appendReply(to buffer: inout [UInt8], kind: UInt8, flags: UInt8, id: UInt64, payload: [UInt8]) {
        Framing.appendBigEndian(UInt32(10 + payload.count), to: &buffer)
        buffer.append(kind)
        buffer.append(flags)
        WireFields.append(id, to: &buffer)
        buffer.append(contentsOf: payload)
    }
}
