import CMPI
import Multiprocessing
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The messages between rank 0 and the worker ranks, by MPI tag.
///
/// - `task` (rank 0 to a worker): `[job u64][first u32][count u32][input timeout ns u64, 0: the pool's]`
///   `[name length u32][task type name]`
///   then the batch body, the core's binary encoding of the task value and the inputs. A worker hands
///   the body to its local child as it arrived, without decoding it.
/// - `result` (a worker to rank 0): `[job u64][first u32][count u32][host length u32][host]`, then per
///   input one outcome `[kind u8][length u64][bytes]` (``OutcomeKind``).
/// - `settings` (rank 0 to every worker, first): ``WorkerSettings`` encoded.
/// - `stop` (rank 0 to every worker, last): empty.
/// - `heartbeat` (each way, every ``heartbeatInterval``): empty. A worker rank silent for
///   ``silenceLimit`` with work in flight is taken for lost; a worker rank that hears nothing from rank 0
///   for ``masterSilenceLimit`` ends (only an MPI library that lets the job go on after a rank died,
///   such as Open MPI's `mpirun --enable-recovery`, leaves the others running to notice).
enum Tag {
    static let task: Int32 = 1
    static let result: Int32 = 2
    static let settings: Int32 = 3
    static let stop: Int32 = 4
    static let heartbeat: Int32 = 5

    static let heartbeatInterval: Duration = .seconds(1)
    static let silenceLimit: Duration = .seconds(5)
    static let masterSilenceLimit: Duration = .seconds(10)
}

/// How one input's call ended, as the first byte of its outcome.
enum OutcomeKind: UInt8 {
    /// The bytes are the output, encoded.
    case value = 0
    /// The bytes are a ``ThrownError``.
    case thrown = 1
    /// The local child died running the input: the bytes are a ``CrashFacts``.
    case crashed = 2
    /// The call ran past the pool's task timeout and its child was killed: a ``CrashFacts``.
    case timedOut = 3
    /// The bytes are the encoded array of the outputs of this and the following inputs, all of which
    /// succeeded: one decode for a whole batch instead of one per input.
    case values = 4
}

/// What every worker rank applies to the local children that run its tasks.
struct WorkerSettings: Codable, Sendable {
    var taskTimeout: Duration?
    var limits: ResourceLimits
}

/// An error a task threw, as it crosses to rank 0: its type and words, and the value itself when it is
/// `Codable` and its type can be found by name.
struct ThrownError: Codable, Sendable {
    var typeName: String
    var message: String
    var valueType: String?
    var value: [UInt8]?

    init(_ error: any Error) {
        typeName = String(reflecting: type(of: error))
        message = String(describing: error)
        if let encodable = error as? any Encodable, let name = _mangledTypeName(type(of: error)), !name.contains("$"),
            let bytes = try? BinaryEncoder().encode(encodable)
        {
            valueType = name
            value = bytes
        }
    }

    /// The error as the caller sees it: the thrown value when it decodes here, else a remote error
    /// naming where it was thrown.
    func error(rank: Int32, host: String, index: Int) -> any Error {
        if let valueType, let value, let type = _typeByName(valueType) as? any (Error & Decodable).Type,
            let decoded = try? decodeError(type, from: value)
        {
            return decoded
        }
        return MultiprocessingError(.remote, "input \(index) on rank \(rank) (host \(host)) threw \(typeName): \(message)")
    }
}

private func decodeError<E: Error & Decodable>(_ type: E.Type, from bytes: [UInt8]) throws -> any Error {
    try BinaryDecoder().decode(E.self, from: bytes)
}

/// How a local child ended while it ran an input.
struct CrashFacts: Codable, Sendable {
    var pid: Int32?
    var signal: Int32?
    var exitCode: Int32?
    var message: String
}

/// Appends fixed-size little-endian integers and byte runs to a message.
struct MessageWriter {
    var bytes: [UInt8] = []

    mutating func append<I: FixedWidthInteger>(_ value: I) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func append(string: String) {
        let utf8 = Array(string.utf8)
        append(UInt32(utf8.count))
        bytes.append(contentsOf: utf8)
    }
}

/// Reads what ``MessageWriter`` wrote, refusing to read past the end.
struct MessageReader {
    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func read<I: FixedWidthInteger>(_ type: I.Type) throws -> I {
        let size = MemoryLayout<I>.size
        guard bytes.count - offset >= size else { throw truncated() }
        var value: I = 0
        withUnsafeMutableBytes(of: &value) { target in
            bytes.withUnsafeBytes { target.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + size])) }
        }
        offset += size
        return I(littleEndian: value)
    }

    mutating func read(count: Int) throws -> ArraySlice<UInt8> {
        guard count >= 0, bytes.count - offset >= count else { throw truncated() }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    mutating func readString() throws -> String {
        let count = Int(try read(UInt32.self))
        return String(decoding: try read(count: count), as: UTF8.self)
    }

    private func truncated() -> MultiprocessingError {
        MultiprocessingError(.protocolViolation, "an MPI pool message ended early (\(bytes.count) bytes)")
    }
}

/// Non-blocking point-to-point messaging over one communicator, used only on the MPI thread.
///
/// Sends never block (a rank that sends a large message while its peer sends one too would otherwise
/// deadlock in a rendezvous): each send's bytes stay alive here until MPI reports it complete.
final class Mailbox {
    let communicator: Communicator
    private var pending: [(request: MPI_Request?, rank: Int32, bytes: [UInt8])] = []
    /// Where the bytes of completed sends go for reuse, if anywhere.
    private let recycling: MessageBuffers?

    init(_ communicator: Communicator, recycling: MessageBuffers? = nil) {
        self.communicator = communicator
        self.recycling = recycling
    }

    var hasPendingSends: Bool { !pending.isEmpty }

    /// The largest message MPI's `int` counts allow.
    static let sizeLimit = Int(Int32.max)

    func send(_ bytes: [UInt8], to rank: Int32, tag: Int32) throws {
        guard bytes.count <= Self.sizeLimit else {
            throw MultiprocessingError(.invalidArgument, "a message of \(bytes.count) bytes is past MPI's limit of \(Self.sizeLimit)")
        }
        var request: MPI_Request?
        // An array held here and never mutated keeps its storage where it is until the send completes.
        let result = bytes.withUnsafeBytes { buffer in
            MPI_Isend(buffer.baseAddress, Int32(buffer.count), cmpi_byte(), rank, tag, communicator.raw, &request)
        }
        try check(result, "MPI_Isend to rank \(rank)")
        pending.append((request, rank, bytes))
    }

    /// Drops the unfinished sends to `rank`, a rank taken for lost, so they hold nothing up.
    func cancelSends(to rank: Int32) {
        pending.removeAll { entry in
            guard entry.rank == rank else { return false }
            var request = entry.request
            MPI_Cancel(&request)
            MPI_Request_free(&request)
            return true
        }
    }

    /// Completes the sends MPI has finished; true when one did.
    @discardableResult
    func progress() throws -> Bool {
        var index = 0
        var any = false
        while index < pending.count {
            var done: Int32 = 0
            try check(MPI_Test(&pending[index].request, &done, cmpi_status_ignore()), "MPI_Test")
            if done != 0 {
                let sent = pending.remove(at: index)
                recycling?.give(sent.bytes)
                any = true
            } else {
                index += 1
            }
        }
        return any
    }

    /// Receives one message that has arrived from `source` (any rank by default), or nil.
    func receive(from source: Int32 = MPI_ANY_SOURCE) throws -> (source: Int32, tag: Int32, bytes: [UInt8])? {
        var flag: Int32 = 0
        var status = MPI_Status()
        try check(MPI_Iprobe(source, MPI_ANY_TAG, communicator.raw, &flag, &status), "MPI_Iprobe")
        guard flag != 0 else { return nil }
        var count: Int32 = 0
        try check(MPI_Get_count(&status, cmpi_byte(), &count), "MPI_Get_count")
        let sender = status.MPI_SOURCE
        let tag = status.MPI_TAG
        let bytes = try [UInt8](unsafeUninitializedCapacity: Int(count)) { buffer, initialised in
            try check(
                MPI_Recv(buffer.baseAddress, count, cmpi_byte(), sender, tag, communicator.raw, cmpi_status_ignore()),
                "MPI_Recv from rank \(sender)")
            initialised = Int(count)
        }
        return (sender, tag, bytes)
    }
}

/// The buffers of messages MPI has sent, kept (up to ``keptBytes`` of capacity in all) for the next
/// messages to be encoded into: a large message then goes into memory already mapped instead of
/// fresh pages, each of which the kernel would fault in and clear (256 of them for 1 MiB).
final class MessageBuffers: Sendable {
    private let free = Mutex<(buffers: [[UInt8]], bytes: Int)>(([], 0))
    static let keptBytes = 16 << 20

    /// An empty buffer, with the capacity of one that was sent when there is one.
    func take() -> [UInt8] {
        guard var buffer = free.withLock({ free -> [UInt8]? in
            guard let buffer = free.buffers.popLast() else { return nil }
            free.bytes -= buffer.capacity
            return buffer
        }) else { return [] }
        // Emptied here, where nothing else holds it (elsewhere it would be copied instead).
        buffer.removeAll(keepingCapacity: true)
        return buffer
    }

    /// Keeps `buffer` for reuse when there is room.
    func give(_ buffer: [UInt8]) {
        guard buffer.capacity <= Self.keptBytes else { return }
        free.withLock { free in
            guard free.bytes + buffer.capacity <= Self.keptBytes else { return }
            free.bytes += buffer.capacity
            free.buffers.append(buffer)
        }
    }
}

/// Waits a little longer each idle round (from 20 us up to 50 us, and up to 250 us once idle for about
/// 20 ms), so that a waiting rank leaves the cores to the ranks and children doing work instead of
/// spinning in MPI's progress engine, yet answers within about 50 us while work comes and goes. A wait
/// on a gate ends early when another thread of this process opens it (new work to send). The MPI
/// thread sets its timer slack to 1 us (``MPIThread``), so the naps are as short as asked.
struct Backoff {
    private var nanoseconds = 0
    private var idleRounds = 0

    /// The longest nap while work came recently, and after.
    static let activeLimit = 50_000
    static let idleLimit = 250_000
    /// Naps at ``activeLimit`` before the limit becomes ``idleLimit`` (about 20 ms).
    static let activeRounds = 400

    mutating func reset() {
        nanoseconds = 0
        idleRounds = 0
    }

    mutating func pause(on gate: Gate? = nil) {
        idleRounds += 1
        let limit = idleRounds > Self.activeRounds ? Self.idleLimit : Self.activeLimit
        nanoseconds = nanoseconds == 0 ? 20_000 : min(nanoseconds * 2, limit)
        if let gate {
            gate.wait(timeout: .nanoseconds(nanoseconds))
        } else {
            var time = timespec(tv_sec: 0, tv_nsec: nanoseconds)
            nanosleep(&time, nil)
        }
    }
}
