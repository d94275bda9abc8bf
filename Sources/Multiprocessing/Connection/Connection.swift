#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// One end of a message channel between processes: Python's `multiprocessing.connection.Connection`.
///
/// Messages keep their boundaries, empty ones included. ``sendBytes(_:offset:size:)-5s2jq`` and
/// ``recvBytes(maxLength:timeout:)-7rggb`` use CPython's framing, so a Python peer's `recv_bytes`/`send_bytes`
/// interoperate. ``send(_:)-70itn`` and ``recv(_:timeout:)-957pz`` carry any `Codable` value in the package's binary
/// format; values that contain connections, locks or shared memory carry their descriptors along (over
/// Unix sockets, such as the ends of ``makePipe(duplex:)``).
///
/// Writing to a peer that has gone is an error, never a `SIGPIPE` death, and signals do not cut a blocked
/// call short. A connection is meant for one thread at a time, like Python's; guard it with a lock to
/// share it. It is `Sendable` so that it can be stored in a child's task or moved into another task.
public final class Connection: @unchecked Sendable, Codable, CustomStringConvertible {
    /// The descriptor, or -1 once closed.
    private var fd: Int32
    /// Whether this end may receive.
    public let readable: Bool
    /// Whether this end may send.
    public let writable: Bool
    /// How much memory the value that ``recv(_:timeout:)-957pz`` decodes from one message may take, in
    /// proportion to the message's size (see ``BinaryDecoder/MemoryBudget``); a message over it throws
    /// ``MultiprocessingError/Code/transport``. Raise it to accept messages that decode into much more
    /// memory than they take on the wire, such as long arrays of nils decoded into large optional types.
    public var decodingBudget = BinaryDecoder.MemoryBudget.default

    /// Received bytes not consumed yet live in `buffer[start..<end]`.
    private var buffer: UnsafeMutableRawPointer
    private var capacity: Int
    private var start = 0
    private var end = 0
    /// Descriptors that arrived and no message has claimed yet, oldest first, each with the stream
    /// positions where the read that brought it began and ended. A descriptor rides on the first byte of
    /// its frame, which lies somewhere in that read: one read can bring a frame without descriptors and
    /// the next frame's descriptors together, so a descriptor can only be known to belong to a frame
    /// consumed already once its read ended within the frames consumed.
    private var receivedDescriptors: [(position: UInt64, end: UInt64, fd: Int32)] = []
    /// The stream position of `buffer[start]`: how many bytes were consumed so far.
    private var consumed: UInt64 = 0
    /// Whether descriptors that arrive are kept; when false (before authentication) they are closed at once.
    var acceptsDescriptors = true
    /// The frame being sent, kept to reuse its storage.
    private var scratch: [UInt8] = []
    /// An encoder whose descriptor transfer is still empty, kept for the next send.
    private var encoderCache: (BinaryEncoder, DescriptorTransfer)?
    /// Whether the descriptor still looks like a socket (cleared at the first ENOTSOCK).
    private var isSocket = true
    private static let initialCapacity = 64 * 1024
    /// When a receive spins before it sleeps (a socket's only).
    private var spin = SpinBudget()
    /// When the last message was sent, while no receive has measured the peer's answer to it yet (0).
    private var lastSent: UInt64 = 0

    /// Tells a connection that only receives that a message it answers went out at `sent` (monotonic
    /// nanoseconds) through another descriptor of the same socket, so that its next receive measures the
    /// peer's turnaround and spins long enough for it, as after its own send. Call it from the thread
    /// that receives.
    func answerExpected(sentAt sent: UInt64) {
        if isSocket && SpinBudget.available { lastSent = sent }
    }

    /// Wraps an open descriptor; the connection owns it and closes it on ``close()`` or deinit.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` when `fd` is negative or not open, or when
    ///   the connection would be neither readable nor writable.
    public init(adopting fd: Int32, readable: Bool = true, writable: Bool = true) throws {
        guard fd >= 0, fcntl(fd, F_GETFD) >= 0 else {
            throw MultiprocessingError(.invalidArgument, "invalid file descriptor \(fd)", errno: EBADF)
        }
        guard readable || writable else {
            throw MultiprocessingError(.invalidArgument, "at least one of readable and writable must be true")
        }
        self.fd = fd
        self.readable = readable
        self.writable = writable
        self.capacity = Self.initialCapacity
        self.buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    }

    deinit {
        closeDescriptors()
        buffer.deallocate()
    }

    /// Whether ``close()`` was called.
    public var closed: Bool { fd < 0 }

    /// The underlying descriptor (Python's `fileno()`).
    ///
    /// - Throws: ``MultiprocessingError/Code/closed`` once the connection is closed.
    public var fileno: Int32 {
        get throws {
            try checkOpen()
            return fd
        }
    }

    /// A short description with the descriptor and direction.
    public var description: String {
        closed ? "Connection(closed)" : "Connection(fd: \(fd), readable: \(readable), writable: \(writable))"
    }

    /// Closes the connection. Closing twice is harmless.
    public func close() {
        closeDescriptors()
        start = 0
        end = 0
    }

    private func closeDescriptors() {
        if fd >= 0 { EventLoop.closing(fd) }
        Syscall.close(fd)
        fd = -1
        for received in receivedDescriptors { Syscall.close(received.fd) }
        receivedDescriptors = []
    }

    // MARK: Sending

    /// Sends `bytes[offset..<offset + size]` as one message (Python's `send_bytes`); `size` nil means
    /// everything from `offset` on.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` when `offset` or `size` is negative or the
    ///   range does not fit in `bytes`; ``MultiprocessingError/Code/system`` (errno `EPIPE`) when the peer
    ///   has closed its end.
    public func sendBytes(_ bytes: [UInt8], offset: Int = 0, size: Int? = nil) throws {
        try bytes.withUnsafeBytes { try sendBytes($0, offset: offset, size: size) }
    }

    /// Sends part of a raw buffer as one message, as ``sendBytes(_:offset:size:)-5s2jq`` does.
    public func sendBytes(_ bytes: UnsafeRawBufferPointer, offset: Int = 0, size: Int? = nil) throws {
        guard offset >= 0 else { throw MultiprocessingError(.invalidArgument, "offset is negative") }
        guard bytes.count >= offset else { throw MultiprocessingError(.invalidArgument, "buffer length < offset") }
        let size = size ?? bytes.count - offset
        guard size >= 0 else { throw MultiprocessingError(.invalidArgument, "size is negative") }
        guard bytes.count >= offset + size else {
            throw MultiprocessingError(.invalidArgument, "buffer length < offset + size")
        }
        try checkWritable()
        let payload = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + size])
        let header = Framing.header(forLength: size)
        try header.withUnsafeBytes { try writeMessage(header: $0, body: payload, descriptors: []) }
    }

    /// Sends a `Codable` value as one message (Python's `send`). Connections, locks and shared memory
    /// inside the value travel with it, and arrive open in the receiver.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the value cannot be encoded, or the errors
    ///   of ``sendBytes(_:offset:size:)-5s2jq``.
    public func send<T: Encodable>(_ value: T) throws {
        try checkWritable()
        let descriptors = try frame(of: value, into: &scratch)
        defer { if scratch.capacity > 1 << 20 { scratch = [] } }  // keep small frames' storage only
        try write(scratch, descriptors: descriptors)
    }

    /// One message carrying `value`, framed as ``send(_:)-70itn`` frames it, for a descriptor that has no
    /// connection object yet (a child's bootstrap, written before the child exists). The value's
    /// descriptors are borrowed: keep it alive until the message is sent.
    static func message<T: Encodable>(carrying value: T) throws -> UnsentMessage {
        let (encoder, transfer) = makeEncoder()
        var bytes: [UInt8] = [0, 0, 0, 0, 0]
        try encoder.encode(value, appendingTo: &bytes)
        bytes[4] = UInt8(transfer.outgoing.count)
        Framing.fillHeader(of: &bytes)
        return UnsentMessage(bytes: bytes[...], descriptors: transfer.outgoing)
    }

    /// Sends one message whose bytes `write` appends to an empty buffer: for messages with a layout of
    /// their own, which skip the coder (a manager's requests and replies). The receiver reads it with
    /// ``receiveMessage(timeout:_:)``.
    func sendMessage(_ write: (inout [UInt8]) throws -> Void) throws {
        try checkWritable()
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: [0, 0, 0, 0])
        try write(&scratch)
        defer { if scratch.capacity > 1 << 20 { scratch = [] } }
        Framing.fillHeader(of: &scratch)
        try self.write(scratch, descriptors: [])
    }

    /// Writes `frames`, whole frames built beforehand (``ManagerSender/message(_:)``), waiting for room
    /// as long as it takes.
    func sendFrames(_ frames: [UInt8]) throws {
        try checkWritable()
        try write(frames, descriptors: [])
    }

    /// Receives one message sent with ``sendMessage(_:)`` and hands its bytes to `read`, without copying
    /// them; descriptors that came with it are closed.
    ///
    /// - Throws: the errors of ``recvBytes(maxLength:timeout:)-7rggb`` and those `read` throws.
    func receiveMessage<R>(timeout: Duration? = nil, _ read: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        try receiveFrame(maxLength: nil, deadline: .after(timeout)) { payload in
            dropFrameDescriptors()
            return try read(payload)
        }
    }

    /// Sends each value as a message of its own, with as few system calls as possible: the messages are
    /// written in batches of about 64 KiB. The receiver sees exactly what separate ``send(_:)-70itn`` calls
    /// would give it; a sender with many small messages ready gains an order of magnitude in throughput.
    public func send<S: Sequence>(contentsOf values: S) throws where S.Element: Encodable {
        try checkWritable()
        var batch: [UInt8] = []
        for value in values {
            let descriptors: [Int32]
            do {
                descriptors = try frame(of: value, into: &scratch)
            } catch {
                // As with separate sends, the values before the one that failed are sent.
                if !batch.isEmpty { try write(batch, descriptors: []) }
                throw error
            }
            // A value's descriptors are borrowed from it: send them while it is still alive, on the
            // first byte of its own frame (the receiver pairs them with the frame they arrive on).
            if !descriptors.isEmpty {
                if !batch.isEmpty { try write(batch, descriptors: []) }
                batch.removeAll(keepingCapacity: true)
                try write(scratch, descriptors: descriptors)
                continue
            }
            batch += scratch
            if batch.count >= 64 * 1024 {
                try write(batch, descriptors: [])
                batch.removeAll(keepingCapacity: true)
            }
        }
        if !batch.isEmpty { try write(batch, descriptors: []) }
    }

    /// Sends a `Codable` value as ``send(_:)`` does, without holding a thread while the peer's buffer is
    /// full.
    ///
    /// Cancellation: a send cancelled while it waits for room before any of the message was written
    /// throws `CancellationError` and leaves the connection usable; one cancelled after part of the
    /// message was written closes the connection (the peer could not read another message after half a
    /// message) and throws `CancellationError`.
    public func send<T: Encodable>(_ value: T) async throws {
        try checkWritable()
        var message = scratch
        scratch = []
        defer { if message.capacity <= 1 << 20 { scratch = message } }
        let descriptors = try frame(of: value, into: &message)
        defer { withExtendedLifetime(value) {} }  // the descriptors are borrowed from the value
        try await writeFramesAsync(message, descriptors: descriptors)
    }

    /// Sends `bytes[offset..<offset + size]` as one message, as ``sendBytes(_:offset:size:)-5s2jq``
    /// does, without holding a thread while the peer's buffer is full. Cancellation as for ``send(_:)-70itn``.
    public func sendBytes(_ bytes: [UInt8], offset: Int = 0, size: Int? = nil) async throws {
        guard offset >= 0, offset <= bytes.count else { throw MultiprocessingError(.invalidArgument, "offset \(offset) is out of range") }
        let size = size ?? bytes.count - offset
        guard size >= 0, offset + size <= bytes.count else {
            throw MultiprocessingError(.invalidArgument, "buffer length < offset + size")
        }
        try checkWritable()
        try await writeFramesAsync(Framing.header(forLength: size) + bytes[offset..<offset + size], descriptors: [])
    }

    /// Replaces `message` with one frame carrying `value`, and returns the descriptors it carries.
    /// The payload is a descriptor count byte followed by the encoded value.
    private func frame<T: Encodable>(of value: T, into message: inout [UInt8]) throws -> [Int32] {
        // The encoder and its transfer are kept for the next message as long as no descriptor used them.
        let (encoder, transfer) = encoderCache ?? Self.makeEncoder()
        encoderCache = nil
        message.removeAll(keepingCapacity: true)
        message.append(contentsOf: [0, 0, 0, 0, UInt8(0)])
        try encoder.encode(value, appendingTo: &message)
        message[4] = UInt8(transfer.outgoing.count)
        Framing.fillHeader(of: &message)
        if transfer.outgoing.isEmpty { encoderCache = (encoder, transfer) }
        return transfer.outgoing
    }

    private static func makeEncoder() -> (BinaryEncoder, DescriptorTransfer) {
        let transfer = DescriptorTransfer()
        var encoder = BinaryEncoder()
        encoder.userInfo[.descriptorTransfer] = transfer
        return (encoder, transfer)
    }

    /// Writes bytes that already hold whole frames.
    private func write(_ frames: [UInt8], descriptors: [Int32]) throws {
        try frames.withUnsafeBytes { try writeMessage(header: UnsafeRawBufferPointer(start: nil, count: 0), body: $0, descriptors: descriptors) }
    }

    /// Writes header and body with as few system calls as possible; descriptors ride on the first byte.
    private func writeMessage(header: UnsafeRawBufferPointer, body: UnsafeRawBufferPointer, descriptors: [Int32]) throws {
        let total = header.count + body.count
        var iov = [
            iovec(iov_base: UnsafeMutableRawPointer(mutating: header.baseAddress), iov_len: header.count),
            iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress), iov_len: body.count),
        ]
        if header.count == 0 { iov.removeFirst() }
        var sent = 0
        var pendingDescriptors = descriptors
        while sent < total {
            let result = writeOnce(iov, descriptors: pendingDescriptors, blocking: true)
            if result < 0 {
                try checkWriteFailure(errno, descriptors: pendingDescriptors)
                continue
            }
            sent += result
            pendingDescriptors = []
            var skip = result
            while skip > 0, !iov.isEmpty {
                if skip >= iov[0].iov_len {
                    skip -= iov[0].iov_len
                    iov.removeFirst()
                } else {
                    iov[0].iov_base += skip
                    iov[0].iov_len -= skip
                    skip = 0
                }
            }
        }
        if isSocket && SpinBudget.available { lastSent = Deadline.monotonicNow() }
    }

    /// Writes `frames` (whole frames) without holding a thread while the peer's buffer is full: the task
    /// waits for room on the event loop.
    private func writeFramesAsync(_ frames: [UInt8], descriptors: [Int32]) async throws {
        var sent = 0
        var pendingDescriptors = descriptors
        while sent < frames.count {
            let result = frames.withUnsafeBytes { bytes in
                let rest = UnsafeMutableRawPointer(mutating: bytes.baseAddress! + sent)
                return writeOnce([iovec(iov_base: rest, iov_len: bytes.count - sent)], descriptors: pendingDescriptors, blocking: false)
            }
            if result >= 0 {
                sent += result
                pendingDescriptors = []
                continue
            }
            let error = errno
            guard error == EAGAIN || error == EWOULDBLOCK else {
                try checkWriteFailure(error, descriptors: pendingDescriptors)
                continue
            }
            do {
                _ = try await EventLoop.shared.wait(for: [(try fileno, .writable)], until: .never)
            } catch is CancellationError where sent > 0 {
                // Half a message on the wire cannot be taken back; the peer could never read another.
                close()
                throw CancellationError()
            }
        }
    }

    /// One sendmsg (or writev on a pipe): bytes written, or -1 with errno (EAGAIN when not `blocking`
    /// and there is no room).
    private func writeOnce(_ iov: [iovec], descriptors: [Int32], blocking: Bool) -> Int {
        iov.withUnsafeBufferPointer { vectors in
            descriptors.withUnsafeBufferPointer { fds in
                if isSocket {
                    return mp_sendmsg_fds_flags(
                        fd, vectors.baseAddress, Int32(vectors.count), fds.baseAddress, Int32(fds.count), blocking ? 0 : 1)
                }
                // A pipe cannot be written without blocking per call; pipes to a reading peer drain.
                return mp_writev_nosigpipe(fd, vectors.baseAddress, Int32(vectors.count))
            }
        }
    }

    /// Turns a failed write's errno into an error, or returns when the write should be tried again.
    private func checkWriteFailure(_ error: Int32, descriptors: [Int32]) throws {
        switch error {
        case EINTR:
            return
        case ENOTSOCK where isSocket:
            guard descriptors.isEmpty else {
                throw MultiprocessingError(.unsupported, "descriptors can only travel over a Unix socket connection")
            }
            isSocket = false
        case EPIPE, ECONNRESET:
            throw MultiprocessingError(.system, "the peer closed the connection", errno: error)
        case EBADF where fd < 0:
            throw MultiprocessingError(.closed, "the connection was closed while sending")
        default:
            throw MultiprocessingError.system("send", errno: error)
        }
    }

    // MARK: Receiving

    /// Receives one message's bytes (Python's `recv_bytes`).
    ///
    /// - Parameters:
    ///   - maxLength: a message longer than this throws ``MultiprocessingError/Code/protocolViolation``
    ///     ("bad message length") and closes the connection, as Python's does.
    ///   - timeout: how long to wait for a whole message; nil waits as long as it takes.
    /// - Throws: ``MultiprocessingError/Code/endOfFile`` once every copy of the peer end is closed and
    ///   nothing is left; ``MultiprocessingError/Code/timedOut`` when no whole message arrived in time.
    public func recvBytes(maxLength: Int? = nil, timeout: Duration? = nil) throws -> [UInt8] {
        try receiveBytes(maxLength: maxLength, deadline: .after(timeout))
    }

    func receiveBytes(maxLength: Int?, deadline: Deadline) throws -> [UInt8] {
        try checkReadable()
        while true {
            if let bytes = try takeBytes(maxLength: maxLength) { return bytes }
            if let length = largeFrameLength() {
                return try [UInt8](unsafeUninitializedCapacity: length) { storage, count in
                    try receiveLargeFrame(into: UnsafeMutableRawPointer(storage.baseAddress!), deadline: deadline)
                    count = length
                }
            }
            _ = try fill(deadline: deadline, blocking: true)
        }
    }

    /// The next message's bytes if a whole one can be read without waiting, else nil (what did arrive
    /// stays buffered).
    func receiveBytesIfReady(maxLength: Int?) throws -> [UInt8]? {
        try checkReadable()
        while true {
            if let bytes = try takeBytes(maxLength: maxLength) { return bytes }
            guard try fill(deadline: .now, blocking: false) else { return nil }
        }
    }

    /// The first buffered message's bytes (its descriptors closed), or nil when none is whole yet.
    private func takeBytes(maxLength: Int?) throws -> [UInt8]? {
        try takeFrame(maxLength: maxLength) { payload in
            dropFrameDescriptors()
            return Array(payload)
        }
    }

    /// Receives one message into `buffer` at byte `offset` and returns its length (Python's
    /// `recv_bytes_into`).
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` when `offset` is outside the buffer;
    ///   ``MultiprocessingError/Code/bufferTooShort`` when the message does not fit, with the complete
    ///   message in the error's ``MultiprocessingError/payload`` (the message is consumed); and the errors
    ///   of ``recvBytes(maxLength:timeout:)-7rggb``.
    public func recvBytes(into buffer: UnsafeMutableRawBufferPointer, offset: Int = 0, timeout: Duration? = nil) throws -> Int {
        guard offset >= 0, offset <= buffer.count else {
            throw MultiprocessingError(.invalidArgument, "offset \(offset) is out of bounds for a buffer of \(buffer.count) bytes")
        }
        let deadline = Deadline.after(timeout)
        try checkReadable()
        while true {
            if let count = try takeFrame(maxLength: nil, { payload in
                dropFrameDescriptors()
                guard payload.count <= buffer.count - offset else {
                    throw MultiprocessingError(
                        .bufferTooShort, "a message of \(payload.count) bytes does not fit in \(buffer.count - offset) bytes",
                        payload: Array(payload))
                }
                if let base = payload.baseAddress, let target = buffer.baseAddress {
                    (target + offset).copyMemory(from: base, byteCount: payload.count)
                }
                return payload.count
            }) { return count }
            if let length = largeFrameLength(), length <= buffer.count - offset, let target = buffer.baseAddress {
                try receiveLargeFrame(into: target + offset, deadline: deadline)
                return length
            }
            _ = try fill(deadline: deadline, blocking: true)
        }
    }

    /// Receives one message into `buffer` at byte `offset`, as
    /// ``recvBytes(into:offset:timeout:)-(UnsafeMutableRawBufferPointer,_,_)`` does.
    public func recvBytes(into buffer: inout [UInt8], offset: Int = 0, timeout: Duration? = nil) throws -> Int {
        try buffer.withUnsafeMutableBytes { try recvBytes(into: $0, offset: offset, timeout: timeout) }
    }

    /// Receives one `Codable` value sent with ``send(_:)-70itn`` (Python's `recv`).
    ///
    /// - Throws: ``MultiprocessingError/Code/endOfFile``, ``MultiprocessingError/Code/timedOut``, or
    ///   ``MultiprocessingError/Code/transport`` when the bytes do not decode as `T` or would take more
    ///   memory than ``decodingBudget`` allows.
    public func recv<T: Decodable>(_ type: T.Type = T.self, timeout: Duration? = nil) throws -> T {
        try receiveFrame(maxLength: nil, deadline: .after(timeout)) { try decodeValue(T.self, from: $0) }
    }

    /// Decodes a frame's payload written by ``send(_:)``: a descriptor count, then the value.
    private func decodeValue<T: Decodable>(_ type: T.Type, from payload: UnsafeRawBufferPointer) throws -> T {
        guard let count = payload.first else {
            throw MultiprocessingError(.transport, "empty message: not a value sent with send(_:)")
        }
        let body = UnsafeRawBufferPointer(rebasing: payload[1...])
        var decoder = BinaryDecoder()
        decoder.memoryBudget = decodingBudget
        guard count > 0 else { return try decoder.decode(T.self, from: body) }
        let transfer: DescriptorTransfer
        do { transfer = try takeDescriptors(Int(count)) } catch where payload.last == UInt8(ascii: ".") { throw Self.pickleArrived(payload) }
        defer { transfer.closeUntaken() }
        decoder.userInfo[.descriptorTransfer] = transfer
        return try decoder.decode(T.self, from: body)
    }

    /// The first `count` descriptors that may have come with the frame just consumed, for the message
    /// being decoded; of the rest, those that can only have come with it (or an earlier frame) are closed.
    private func takeDescriptors(_ count: Int) throws -> DescriptorTransfer {
        let candidates = receivedDescriptors.prefix { $0.position < consumed }.count
        guard candidates >= count else {
            dropFrameDescriptors()
            throw MultiprocessingError(.transport, "message announces \(count) descriptors but \(candidates) arrived")
        }
        let taken = receivedDescriptors.prefix(count).map(\.fd)
        receivedDescriptors.removeFirst(count)
        dropFrameDescriptors()
        return DescriptorTransfer(received: taken)
    }

    /// Closes the descriptors that can only have come with the frames consumed so far (their read ended
    /// within them) and that no message claimed: nobody asked for them.
    private func dropFrameDescriptors() {
        guard let first = receivedDescriptors.first, first.end <= consumed else { return }
        let count = receivedDescriptors.firstIndex { $0.end > consumed } ?? receivedDescriptors.count
        for received in receivedDescriptors.prefix(count) { Syscall.close(received.fd) }
        receivedDescriptors.removeFirst(count)
    }

    /// Receives one value as ``recv(_:timeout:)`` does, waiting on the package's event loop, so that no
    /// thread is held while it waits.
    ///
    /// Cancellation: cancelling the awaiting task ends the wait promptly with `CancellationError`. Bytes of
    /// a message that had partly arrived stay buffered, so the next receive returns that message whole.
    public func recv<T: Decodable & Sendable>(_ type: T.Type = T.self, timeout: Duration? = nil) async throws -> T {
        try await receiveFrame(maxLength: nil, deadline: .after(timeout)) { try decodeValue(T.self, from: $0) }
    }

    /// Receives one message's bytes as ``recvBytes(maxLength:timeout:)`` does, waiting on the event loop.
    /// Cancellation as for ``recv(_:timeout:)-957pz``.
    public func recvBytes(maxLength: Int? = nil, timeout: Duration? = nil) async throws -> [UInt8] {
        try await receiveFrame(maxLength: maxLength, deadline: .after(timeout)) { payload in
            dropFrameDescriptors()
            return Array(payload)
        }
    }

    /// Whether a message (or end of file) is ready to read, waiting up to `timeout` on the event loop, as
    /// ``poll(timeout:)`` does. Cancellation ends the wait with `CancellationError`; nothing is consumed.
    public func poll(timeout: Duration? = .zero) async throws -> Bool {
        try checkReadable()
        if end > start { return true }
        return try await EventLoop.shared.waitReadable(fd, until: .after(timeout)) == .ready
    }

    /// Sends an open descriptor to the process at the other end (Python's `reduction.send_handle`); the
    /// receiver gets its own copy from ``recvDescriptor(timeout:)``, and this process keeps `fd` open.
    /// Works over Unix sockets only.
    public func sendDescriptor(_ fd: Int32) throws {
        try send(DescriptorMessage(fd: fd))
    }

    /// Receives a descriptor sent with ``sendDescriptor(_:)`` (Python's `reduction.recv_handle`); the
    /// caller owns it and must close it.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the message carries no descriptor.
    public func recvDescriptor(timeout: Duration? = nil) throws -> Int32 {
        do {
            return try recv(DescriptorMessage.self, timeout: timeout).fd
        } catch let error as MultiprocessingError where error.code == .transport {
            throw MultiprocessingError(.transport, "no descriptor arrived with the message: \(error.message)")
        }
    }

    /// Whether a message (or end of file) is ready to read, waiting up to `timeout`
    /// (Python's `poll`): zero or negative checks and returns at once, nil waits without limit.
    /// Polling never consumes data.
    ///
    /// - Throws: ``MultiprocessingError/Code/closed`` or ``MultiprocessingError/Code/invalidState`` for
    ///   a closed or write-only connection.
    public func poll(timeout: Duration? = .zero) throws -> Bool {
        try checkReadable()
        if end > start { return true }
        return try !Syscall.pollReadable([fd], until: .after(timeout)).isEmpty
    }

    /// Reads one frame and hands its payload to `body` while it sits in the buffer.
    private func receiveFrame<R>(maxLength: Int?, deadline: Deadline, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        try checkReadable()
        while true {
            if let result = try takeFrame(maxLength: maxLength, body) { return result }
            _ = try fill(deadline: deadline, blocking: true)
        }
    }

    /// Reads one frame as the blocking form does, waiting on the event loop instead of in a system call.
    /// Bytes of a message that arrived before a cancellation or timeout stay buffered for the next call.
    private func receiveFrame<R>(
        maxLength: Int?, deadline: Deadline, _ body: (UnsafeRawBufferPointer) throws -> R
    ) async throws -> R {
        try checkReadable()
        while true {
            if let result = try takeFrame(maxLength: maxLength, body) { return result }
            try await fillAsync(deadline: deadline)
        }
    }

    /// Waits on the event loop until bytes arrive, and reads them.
    private func fillAsync(deadline: Deadline) async throws {
        while try !fill(deadline: deadline, blocking: false) {
            if try await EventLoop.shared.waitReadable(fileno, until: deadline) == .timedOut {
                throw MultiprocessingError(.timedOut, "no message arrived before the timeout")
            }
        }
    }

    /// Hands the first buffered frame to `body` and consumes it; nil when no whole frame is buffered yet
    /// (room for it is made then).
    private func takeFrame<R>(maxLength: Int?, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        let available = UnsafeRawBufferPointer(start: buffer + start, count: end - start)
        let header: (length: Int, headerSize: Int)?
        do {
            header = try Framing.parseHeader(available)
        } catch {
            close()
            throw error
        }
        guard let (length, headerSize) = header else { return nil }
        if let maxLength, length > maxLength {
            close()
            throw MultiprocessingError(.protocolViolation, "bad message length: \(length) bytes exceeds the limit of \(maxLength)")
        }
        guard available.count - headerSize >= length else {
            reserve(headerSize + length)
            return nil
        }
        let payload = UnsafeRawBufferPointer(start: buffer + start + headerSize, count: length)
        start += headerSize + length
        consumed &+= UInt64(headerSize + length)
        defer { if start == end { start = 0; end = 0; shrinkIfLarge() } }
        return try body(payload)
    }

    /// Messages at least this long whose bytes have not all arrived yet are read straight into the
    /// caller's storage by the blocking receives, rather than through the receive buffer and a copy.
    static let directReadThreshold = 256 * 1024
    /// Longer messages grow the receive buffer by steps as their bytes arrive instead, so that a bogus
    /// length in a frame header never reserves more memory than about twice what actually arrived.
    static let directReadLimit = 64 * 1024 * 1024

    /// The length of the buffered frame's payload when it is large and has not all arrived (so
    /// ``receiveLargeFrame(into:deadline:)`` may read the rest into the caller's storage), else nil.
    private func largeFrameLength() -> Int? {
        let available = UnsafeRawBufferPointer(start: buffer + start, count: end - start)
        guard let header = try? Framing.parseHeader(available),
              (Self.directReadThreshold...Self.directReadLimit).contains(header.length),
              available.count - header.headerSize < header.length
        else { return nil }
        return header.length
    }

    /// Reads the frame whose header is buffered (see ``largeFrameLength()``) into `target`: the bytes
    /// already buffered first, then the rest straight from the descriptor, one system call per chunk the
    /// kernel has ready, with no copy in between. On a timeout or end of file, what was read goes back into
    /// the receive buffer, so the next receive still returns the whole message.
    private func receiveLargeFrame(into target: UnsafeMutableRawPointer, deadline: Deadline) throws {
        let available = UnsafeRawBufferPointer(start: buffer + start, count: end - start)
        guard let (length, headerSize) = try Framing.parseHeader(available) else { return }
        var filled = available.count - headerSize
        target.copyMemory(from: buffer + start + headerSize, byteCount: filled)
        do {
            while filled < length {
                let result = readAvailable(into: target + filled, count: length - filled,
                                           position: consumed &+ UInt64(headerSize + filled),
                                           blocking: deadline.nanoseconds == nil)
                if result > 0 {
                    filled += result
                    continue
                }
                if result == 0 { throw MultiprocessingError(.endOfFile, "the peer closed the connection in the middle of a message") }
                if try Self.retryRead(after: errno) { continue }
                if try Syscall.pollReadable([fd], until: deadline).isEmpty {
                    throw MultiprocessingError(.timedOut, "no message arrived before the timeout")
                }
            }
        } catch {
            // Keep the partial message for the next receive.
            let read = filled - (available.count - headerSize)
            makeRoom(read)
            (buffer + end).copyMemory(from: target + (filled - read), byteCount: read)
            end += read
            throw error
        }
        start = 0
        end = 0
        consumed &+= UInt64(headerSize + length)
        dropFrameDescriptors()
        shrinkIfLarge()
    }

    /// Makes room for a frame of `frameSize` bytes, growing by steps as data arrives so that a bogus
    /// length never allocates more than about twice what was actually received.
    private func reserve(_ frameSize: Int) {
        if start > 0 && capacity - start < frameSize {
            buffer.copyMemory(from: buffer + start, byteCount: end - start)
            end -= start
            start = 0
        }
        guard capacity - end < 16 * 1024, capacity < frameSize else { return }
        regrow(to: min(frameSize, max(capacity * 2, Self.initialCapacity)))
    }

    /// Makes room for `count` more bytes that have already arrived (so their number is no peer's claim).
    private func makeRoom(_ count: Int) {
        guard capacity - end < count else { return }
        regrow(to: max(end - start + count, Self.initialCapacity))
    }

    /// Moves the unread bytes to the start of a new buffer of `wanted` bytes.
    private func regrow(to wanted: Int) {
        let grown = UnsafeMutableRawPointer.allocate(byteCount: wanted, alignment: 16)
        grown.copyMemory(from: buffer + start, byteCount: end - start)
        buffer.deallocate()
        buffer = grown
        capacity = wanted
        end -= start
        start = 0
    }

    /// Returns to the initial buffer after a very large message; buffers up to 4 MiB are kept for the next.
    private func shrinkIfLarge() {
        guard capacity > 4 * 1024 * 1024 else { return }
        buffer.deallocate()
        capacity = Self.initialCapacity
        buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    }

    /// Reads what is available into the buffer (at least one byte) and returns true, or throws at EOF or
    /// timeout. A socket is read without blocking for a few microseconds first (see ``SpinBudget``).
    /// When not `blocking`, returns false instead of waiting any longer than that.
    private func fill(deadline: Deadline, blocking: Bool) throws -> Bool {
        if end == capacity {
            if start > 0 {
                buffer.copyMemory(from: buffer + start, byteCount: end - start)
                end -= start
                start = 0
            } else {
                reserve(capacity * 2)
            }
        }
        // A spin polls until `spinUntil`. A gap of more than `SpinBudget.preemptedGap` between two polls means this
        // thread lost its CPU meanwhile: data that came then likely came from a peer on our own CPU, which
        // the spin only delayed, so such a spin counts as one in vain.
        var spinUntil: UInt64 = 0
        var lastPoll: UInt64 = 0
        var preempted = false
        // A wait that starts just after a send measures how long the peer takes to answer.
        var sentAt: UInt64 = 0
        if isSocket && SpinBudget.available && !deadline.hasPassed {
            let start = Deadline.monotonicNow()
            if lastSent > 0, start - lastSent < SpinBudget.usualNanoseconds { sentAt = lastSent }
            lastSent = 0
            if spin.takeSpin() {
                lastPoll = start
                spinUntil = lastPoll + spin.window
            }
        }
        // Without a spin, a wait without deadline goes straight to a blocking read.
        var mayBlock = spinUntil == 0 && blocking
        while true {
            let result = readAvailable(blocking: mayBlock && deadline.nanoseconds == nil)
            if result > 0 {
                if spinUntil > 0 || sentAt > 0 {
                    let now = Deadline.monotonicNow()
                    if spinUntil > 0 {
                        spin.spinEnded(inTime: !preempted && now - lastPoll <= SpinBudget.preemptedGap)
                    }
                    if sentAt > 0 { spin.answered(after: now - sentAt) }
                }
                end += result
                return true
            }
            if result == 0 {
                throw MultiprocessingError(.endOfFile, end > start ? "the peer closed the connection in the middle of a message" : "the peer closed the connection")
            }
            let error = errno
            if error == ENOTSOCK && isSocket {
                isSocket = false
                spinUntil = 0
                continue
            }
            if try Self.retryRead(after: error) { continue }
            // Nothing ready (EAGAIN).
            if spinUntil > 0 {
                let now = Deadline.monotonicNow()
                preempted = preempted || now - lastPoll > SpinBudget.preemptedGap
                lastPoll = now
                if now < spinUntil, !deadline.hasPassed { continue }
                spinUntil = 0
                spin.spinEnded(inTime: false)
            }
            if !blocking { return false }
            if deadline.nanoseconds == nil {
                mayBlock = true
            } else if try Syscall.pollReadable([fd], until: deadline).isEmpty {
                throw MultiprocessingError(.timedOut, "no message arrived before the timeout")
            }
        }
    }

    /// After a read that failed with `error`: true to read again at once (interrupted), false when
    /// nothing is ready yet (EAGAIN); a reset peer is the end of file, anything else a system error.
    private static func retryRead(after error: Int32) throws -> Bool {
        switch error {
        case EINTR:
            return true
        case EAGAIN:
            return false
        case ECONNRESET:
            throw MultiprocessingError(.endOfFile, "the peer reset the connection")
        default:
            throw MultiprocessingError.system("recv", errno: error)
        }
    }

    /// One read into the free end of the buffer: bytes read, 0 at end of file, or -1 with errno (EAGAIN
    /// when nothing is ready and `blocking` is false). Descriptors that arrive are kept for decoding.
    private func readAvailable(blocking: Bool) -> Int {
        readAvailable(into: buffer + end, count: capacity - end, position: consumed &+ UInt64(end - start), blocking: blocking)
    }

    /// One read of at most `count` bytes into `target`, as ``readAvailable(blocking:)`` does; descriptors
    /// that arrive are paired with stream position `position`.
    private func readAvailable(into target: UnsafeMutableRawPointer, count: Int, position: UInt64, blocking: Bool) -> Int {
        guard isSocket else {
            // A pipe or file: wait with poll(2), since its reads cannot be made non-blocking per call.
            if !blocking, (try? Syscall.pollReadable([fd], until: .now).isEmpty) ?? false {
                errno = EAGAIN
                return -1
            }
            return read(fd, target, count)
        }
        return withUnsafeTemporaryAllocation(of: Int32.self, capacity: Int(MP_MAX_FDS_PER_MESSAGE)) { fds in
            var received: Int32 = 0
            let result = mp_recvmsg_fds_flags(
                fd, target, count, fds.baseAddress, MP_MAX_FDS_PER_MESSAGE, &received, blocking ? 0 : 1)
            if received > 0 {
                for fd in fds.prefix(Int(received)) {
                    if acceptsDescriptors && result > 0 {
                        receivedDescriptors.append((position, position &+ UInt64(result), fd))
                    } else {
                        Syscall.close(fd)
                    }
                }
            }
            return result
        }
    }

    // MARK: State checks

    private func checkOpen() throws {
        guard fd >= 0 else { throw MultiprocessingError(.closed, "the connection is closed") }
    }

    private func checkReadable() throws {
        try checkOpen()
        guard readable else { throw MultiprocessingError(.invalidState, "connection is write-only") }
    }

    private func checkWritable() throws {
        try checkOpen()
        guard writable else { throw MultiprocessingError(.invalidState, "connection is read-only") }
    }

    /// Whether received bytes wait in the buffer, so that a read would not block.
    var hasBufferedBytes: Bool { end > start }

    /// The receive buffer's size, for tests that check a bogus length allocates nothing.
    var receiveBufferCapacity: Int { capacity }

    // MARK: Transfer to another process

    private enum CodingKeys: String, CodingKey { case descriptor, readable, writable, buffered }

    /// Encodes the connection for transfer to another process: its descriptor travels beside the
    /// message, and bytes already read but not yet consumed travel inside it, so nothing is lost.
    public func encode(to encoder: any Encoder) throws {
        try checkOpen()
        let transfer = try DescriptorTransfer.from(encoder.userInfo, for: "a Connection")
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(transfer.add(fd), forKey: .descriptor)
        try container.encode(readable, forKey: .readable)
        try container.encode(writable, forKey: .writable)
        try container.encode(Array(UnsafeRawBufferPointer(start: buffer + start, count: end - start)), forKey: .buffered)
    }

    /// Rebuilds a connection that arrived from another process.
    public required convenience init(from decoder: any Decoder) throws {
        let transfer = try DescriptorTransfer.from(decoder.userInfo, for: "a Connection")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let readable = try container.decode(Bool.self, forKey: .readable)
        let writable = try container.decode(Bool.self, forKey: .writable)
        let buffered = try container.decode([UInt8].self, forKey: .buffered)
        let index = try container.decode(Int.self, forKey: .descriptor)
        try self.init(adopting: transfer.take(index), readable: readable, writable: writable)
        if !buffered.isEmpty {
            reserve(buffered.count)
            buffered.withUnsafeBytes { (buffer + end).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            end += buffered.count
        }
    }
}

extension Connection: Hashable {
    /// Two connections are equal when they are the same object, so a connection can key a dictionary, as in
    /// Python's `workers[conn]` pattern with ``wait(_:timeout:)-91uhk``.
    public static func == (lhs: Connection, rhs: Connection) -> Bool { lhs === rhs }

    /// Hashes the object's identity.
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// A message that is one descriptor.
private struct DescriptorMessage: Codable {
    let fd: Int32

    init(fd: Int32) { self.fd = fd }

    init(from decoder: any Decoder) throws {
        let transfer = try DescriptorTransfer.from(decoder.userInfo, for: "a descriptor")
        fd = try transfer.take(decoder.singleValueContainer().decode(Int.self))
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(DescriptorTransfer.from(encoder.userInfo, for: "a descriptor").add(fd))
    }
}

/// Creates a connected pair of connections (Python's `multiprocessing.Pipe`).
///
/// With `duplex` true (the default) both ends send and receive. With `duplex` false the first end
/// only receives and the second only sends, as in Python: `let (reader, writer) = try makePipe(duplex: false)`;
/// using an end in the wrong direction throws ``MultiprocessingError/Code/invalidState``.
/// Both ends are Unix sockets, so either can carry descriptors.
public func makePipe(duplex: Bool = true) throws -> (Connection, Connection) {
    let (a, b) = try Syscall.socketPair()
    if duplex {
        return (try Connection(adopting: a), try Connection(adopting: b))
    }
    shutdown(a, Int32(SHUT_WR))
    shutdown(b, Int32(SHUT_RD))
    return (try Connection(adopting: a, readable: true, writable: false),
            try Connection(adopting: b, readable: false, writable: true))
}

/// A message for a Unix stream socket, or the part of one still to write, with its descriptors while
/// none of it went out (they ride on its first byte).
struct UnsentMessage {
    var bytes: ArraySlice<UInt8>
    var descriptors: [Int32]

    /// Writes as much as `fd`'s buffer takes without waiting, and returns what is left.
    /// - Throws: ``MultiprocessingError/Code/system`` (errno EPIPE or ECONNRESET when the peer is closed).
    func sendWithoutWaiting(on fd: Int32) throws -> UnsentMessage {
        var rest = self
        try rest.write(on: fd, blocking: false)
        return rest
    }

    /// Writes everything left to `fd`, waiting for room as long as it takes.
    func sendRest(on fd: Int32) throws {
        var rest = self
        try rest.write(on: fd, blocking: true)
    }

    private mutating func write(on fd: Int32, blocking: Bool) throws {
        while !bytes.isEmpty {
            let sent = bytes.withUnsafeBytes { raw in
                var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress), iov_len: raw.count)
                return descriptors.withUnsafeBufferPointer {
                    mp_sendmsg_fds_flags(fd, &vector, 1, $0.baseAddress, Int32($0.count), blocking ? 0 : 1)
                }
            }
            if sent >= 0 {
                bytes = bytes.dropFirst(sent)
                descriptors = []
                continue
            }
            switch errno {
            case EINTR: continue
            case EAGAIN where !blocking: return
            case EPIPE, ECONNRESET: throw MultiprocessingError(.system, "the peer closed the connection", errno: errno)
            default: throw MultiprocessingError.system("send", errno: errno)
            }
        }
    }
}
