#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// Shared memory that carries a manager connection's messages when the manager is on the same machine
/// (reached over a Unix socket): two single-producer single-consumer byte rings, requests one way and
/// replies the other, with the socket kept beside them for wake-ups and for noticing that the other
/// side is gone.
///
/// A manager call over the socket alone costs a `sendmsg` and a `recvmsg` per message on each side,
/// and waits that spin on non-blocking receives: measured with `perf` on `mp-bench --filter manager`,
/// about 70% of both processes' time was in the kernel. Through the rings a message is two copies, and
/// a side that waits spins on the ring's counter without system calls, as long as a socket's receive
/// would poll it (``SpinBudget``: the usual spin, or longer for an answer measured to come a little later).
///
/// **Layout.** An anonymous memfd (no name to leak), made by the client and sent to the server with
/// `attachChannel`: a header page, then the requests' ring, then the replies' ring, each
/// ``ringSize`` bytes. Each ring has a tail (bytes written so far, stored only by its producer) and a
/// head (bytes read so far, stored only by its consumer), both 64-bit counters that only grow, each on
/// a cache line of its own; its producer publishes bytes with a releasing store of the tail after
/// copying them in, and its consumer frees room with a releasing store of the head after copying them
/// out. The streams carry the socket's framing (``Framing``), so a message of any size passes: one
/// larger than the ring streams through it while the reader consumes.
///
/// **Waiting for data.** A reader with an empty ring spins on the tail, then sets its side's
/// `waiting` word, makes a full fence, looks at the tail again, and sleeps in poll() on the socket. A
/// writer, after publishing, makes a full fence and looks at the peer's `waiting` word: when it is set,
/// clears it and writes one doorbell byte to the socket (without waiting; a full socket buffer already
/// holds a wake-up). Each side stores its own word before it loads the other's counter, so one of them
/// always sees the other (Dekker): no wake-up is lost. Only the one party that reads a ring sleeps on
/// the socket in each process (a link's reader, a server's reading thread), so a doorbell always wakes
/// the party it was meant for.
///
/// **Waiting for room.** A writer with a full ring spins on the head, then sets the ring's
/// `roomWaiting` word and sleeps on the ring's room bell (a futex), with the same fence and second
/// look; the reader that moves the head past bytes while the word is set rings the bell. The writer
/// wakes every ``livenessSlice`` to look at the socket, so a peer that died while its ring was full is
/// noticed.
///
/// **The other side gone.** The socket's end of file, or a hang-up, means the other process ended or
/// its connection was shut down (``ManagerLink/lose(_:)`` and a server's closing of a client both shut
/// the socket down, which wakes a sleeper in poll()): a reader then takes what is still in its ring and
/// then throws ``MultiprocessingError/Code/endOfFile``, as a ``Connection`` does, so the loss handling
/// of the link and of the server is the same for both transports.
final class ManagerChannel: @unchecked Sendable {
    /// Marks a channel's header, so that another kind of descriptor is refused.
    static let magic: UInt32 = 0x4D50_4D43
    /// The header's size; the rings follow it.
    static let headerSize = 4096
    /// Each ring's size in bytes (a power of two).
    static let ringSize = 256 * 1024
    /// The mapping's size.
    static let mappingSize = headerSize + 2 * ringSize
    /// How often a writer asleep waiting for room looks whether the other side is gone.
    static let livenessSlice = Duration.milliseconds(10)

    /// Which end of the connection a process holds: the client writes requests and reads replies.
    enum Side: Sendable { case client, server }

    /// The header page and the rings.
    private let mapping: SharedMapping
    /// The memfd.
    var fd: Int32 { mapping.fd }
    /// The start of the mapping (the header).
    private let base: UnsafeMutableRawPointer

    /// A new channel, for the client to send to the server.
    ///
    /// - Throws: ``MultiprocessingError/Code/system`` when the memory cannot be made or mapped.
    init() throws {
        mapping = try SharedMapping(size: Self.mappingSize, magic: Self.magic, name: "multiprocessing-manager-channel")
        base = mapping.base
        base.storeBytes(of: UInt32(Self.ringSize), toByteOffset: 4, as: UInt32.self)
    }

    /// Maps a channel received from a client; takes ownership of `fd` (closed on failure).
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when `fd` is not a channel's memory;
    ///   ``MultiprocessingError/Code/system`` when it cannot be mapped.
    init(adopting fd: Int32) throws {
        mapping = try SharedMapping(adopting: fd, size: Self.mappingSize, magic: Self.magic, what: "a manager channel")
        base = mapping.base
        guard base.load(fromByteOffset: 4, as: UInt32.self) == UInt32(Self.ringSize) else {
            throw MultiprocessingError(.transport, "descriptor \(fd) is not a manager channel's shared memory")
        }
    }

    /// The 64-bit atomic at header `offset`.
    private func atomic64(_ offset: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        (base + offset).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    /// The 32-bit atomic at header `offset`.
    private func atomic32(_ offset: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + offset).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    /// The ring that `side` writes: requests for the client, replies for the server. Header offsets,
    /// each on a cache line of its own: the tail at 64 (requests) or 192 (replies), the head 64 bytes
    /// after it; the reader's `waiting` word at 320 (the server's, for requests) or 384 (the
    /// client's); the writer's `roomWaiting` word and room bell at 448 and 452 (requests) or 512 and
    /// 516 (replies).
    func ring(writtenBy side: Side) -> Ring {
        let requests = side == .client
        return Ring(
            channel: self,
            data: base + Self.headerSize + (requests ? 0 : Self.ringSize),
            tail: atomic64(requests ? 64 : 192),
            head: atomic64(requests ? 128 : 256),
            readerWaiting: atomic32(requests ? 320 : 384),
            roomWaiting: atomic32(requests ? 448 : 512),
            roomBell: atomic32(requests ? 452 : 516))
    }

    /// One direction of a channel: its bytes and the words its two ends share.
    struct Ring: @unchecked Sendable {
        /// Keeps the mapping alive while the ring is used.
        let channel: ManagerChannel
        /// The ring's ``ManagerChannel/ringSize`` bytes.
        let data: UnsafeMutableRawPointer
        /// Bytes written so far (stored by the writer only, with release).
        let tail: UnsafeMutablePointer<Atomic<UInt64>>
        /// Bytes read so far (stored by the reader only, with release).
        let head: UnsafeMutablePointer<Atomic<UInt64>>
        /// Set by the reader before it sleeps in poll(); cleared by the writer that rings the doorbell.
        let readerWaiting: UnsafeMutablePointer<Atomic<UInt32>>
        /// Set by the writer before it sleeps on ``roomBell``; cleared by the reader that rings it.
        let roomWaiting: UnsafeMutablePointer<Atomic<UInt32>>
        let roomBell: UnsafeMutablePointer<Atomic<UInt32>>

        /// The bytes written and not read yet (the ring's size at most, whatever the counters say).
        var unreadBytes: Int {
            let head = head.pointee.load(ordering: .acquiring)
            return Int(min(tail.pointee.load(ordering: .acquiring) &- head, UInt64(ManagerChannel.ringSize)))
        }

        /// Checks that the other side left the counters consistent: `tail` at most a ring's size past
        /// `head`. The memory is shared with another process, so they are input like any other.
        ///
        /// - Throws: ``MultiprocessingError/Code/protocolViolation`` when they are not.
        static func check(tail: UInt64, head: UInt64) throws {
            guard tail &- head <= UInt64(ManagerChannel.ringSize) else {
                throw MultiprocessingError(
                    .protocolViolation, "a manager channel's counters do not fit its ring (tail \(tail), head \(head)): the other side broke it")
            }
        }

        /// The room a writer at `tail` has when the reader is at `head` (counters that passed ``check(tail:head:)``).
        static func room(tail: UInt64, head: UInt64) -> Int { ManagerChannel.ringSize - Int(tail &- head) }

        /// Copies `count` bytes at stream position `position` into `target` (the ring wraps).
        func copy(from position: UInt64, count: Int, into target: UnsafeMutableRawPointer) {
            let offset = Int(position % UInt64(ManagerChannel.ringSize))
            let first = min(count, ManagerChannel.ringSize - offset)
            target.copyMemory(from: data + offset, byteCount: first)
            if count > first { (target + first).copyMemory(from: data, byteCount: count - first) }
        }

        /// Copies `bytes` into the ring at stream position `position` (the ring wraps).
        func copy(_ bytes: UnsafeRawBufferPointer, to position: UInt64) {
            guard let source = bytes.baseAddress else { return }
            let offset = Int(position % UInt64(ManagerChannel.ringSize))
            let first = min(bytes.count, ManagerChannel.ringSize - offset)
            (data + offset).copyMemory(from: source, byteCount: first)
            if bytes.count > first { data.copyMemory(from: source + first, byteCount: bytes.count - first) }
        }
    }

    /// Throws ``MultiprocessingError/Code/system`` (errno `EPIPE`) when the socket `fd` says its other
    /// side is gone or it was shut down: for a writer that waits for room and never reads.
    static func checkPeer(_ fd: Int32) throws {
        var entry = pollfd(fd: fd, events: 0, revents: 0)
        guard poll(&entry, 1, 0) > 0, entry.revents & Int16(POLLHUP | POLLERR | POLLNVAL) != 0 else { return }
        throw MultiprocessingError(.system, "the peer closed the connection", errno: EPIPE)
    }
}

/// How a manager connection's messages go out: over the socket, or, once a ``ManagerChannel`` is
/// attached, through its ring with the socket for doorbells. Used by one party at a time (see
/// ``ManagerWriter``), by a link for its requests and by a server for a client's replies.
final class ManagerSender: @unchecked Sendable {
    /// The socket (a descriptor of its own, for sending).
    let connection: Connection
    /// The ring this side writes, once a channel is attached.
    private var ring: ManagerChannel.Ring?
    /// A head this sender saw: the room it leaves is at least the room there is.
    private var knownHead: UInt64 = 0

    /// Sends over `connection` until a channel is attached.
    init(_ connection: Connection) { self.connection = connection }

    /// Sends from now on through `channel`, as `side`.
    func attach(_ channel: ManagerChannel, as side: ManagerChannel.Side) {
        let ring = channel.ring(writtenBy: side)
        knownHead = ring.head.pointee.load(ordering: .acquiring)
        self.ring = ring
    }

    /// Whether a channel carries the messages.
    var usesChannel: Bool { ring != nil }

    /// One message whose bytes `write` appends to an empty buffer, framed (see
    /// ``Connection/sendMessage(_:)``).
    ///
    /// - Throws: what `write` throws.
    static func message(_ write: (inout [UInt8]) throws -> Void) rethrows -> [UInt8] {
        var message: [UInt8] = [0, 0, 0, 0]
        try write(&message)
        Framing.fillHeader(of: &message)
        return message
    }

    /// Sends one message whose bytes `write` appends to an empty buffer (see
    /// ``Connection/sendMessage(_:)``), waiting for room as long as it takes.
    ///
    /// - Throws: what `write` throws (nothing was sent then); ``MultiprocessingError/Code/system``
    ///   (errno `EPIPE`) when the other side is gone; the errors of ``Connection/sendMessage(_:)``.
    func send(_ write: (inout [UInt8]) throws -> Void) throws {
        try put(Self.message(write))
    }

    /// Sends `message` (from ``message(_:)``), waiting for room as long as it takes.
    ///
    /// - Throws: ``MultiprocessingError/Code/system`` (errno `EPIPE`) when the other side is gone; the
    ///   errors of ``Connection/sendFrames(_:)``.
    func put(_ message: [UInt8]) throws {
        guard let ring else { return try connection.sendFrames(message) }
        try message.withUnsafeBytes { try put($0, into: ring) }
    }

    /// Whether `count` bytes can be written now without waiting: the ring's free room, or the socket's
    /// (with as much again to spare for the kernel's overhead per buffer).
    func hasRoom(for count: Int) -> Bool {
        guard let ring else {
            guard let fd = try? connection.fileno else { return false }
            return mp_socket_free_send_room(fd) >= 2 * count + 4096
        }
        knownHead = ring.head.pointee.load(ordering: .acquiring)
        let tail = ring.tail.pointee.load(ordering: .relaxed)
        // Counters that make no sense leave the message to the writer's thread, whose put reports them.
        guard (try? ManagerChannel.Ring.check(tail: tail, head: knownHead)) != nil else { return false }
        return ManagerChannel.Ring.room(tail: tail, head: knownHead) >= count
    }

    /// Copies `bytes` into the ring, as much at a time as there is room for, publishing each part.
    private func put(_ bytes: UnsafeRawBufferPointer, into ring: ManagerChannel.Ring) throws {
        var tail = ring.tail.pointee.load(ordering: .relaxed)
        try ManagerChannel.Ring.check(tail: tail, head: knownHead)
        var sent = 0
        while sent < bytes.count {
            let left = bytes.count - sent
            var room = ManagerChannel.Ring.room(tail: tail, head: knownHead)
            if room < left {
                knownHead = ring.head.pointee.load(ordering: .acquiring)
                try ManagerChannel.Ring.check(tail: tail, head: knownHead)
                room = ManagerChannel.Ring.room(tail: tail, head: knownHead)
            }
            if room == 0 {
                try waitForRoom(in: ring, tail: tail)
                continue
            }
            let count = min(room, left)
            ring.copy(UnsafeRawBufferPointer(rebasing: bytes[sent..<sent + count]), to: tail)
            tail &+= UInt64(count)
            ring.tail.pointee.store(tail, ordering: .releasing)
            sent += count
            ringDoorbell(ring)
        }
    }

    /// After publishing: wakes the reader if it sleeps (it set its word before it looked at the tail).
    private func ringDoorbell(_ ring: ManagerChannel.Ring) {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        guard ring.readerWaiting.pointee.load(ordering: .relaxed) != 0,
              ring.readerWaiting.pointee.exchange(0, ordering: .acquiringAndReleasing) != 0,
              let fd = try? connection.fileno
        else { return }
        var bell: UInt8 = 1
        // A full socket buffer holds a doorbell already; a peer that is gone is noticed by the reading side.
        _ = Glibc.send(fd, &bell, 1, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
    }

    /// Waits until the reader frees room in the ring (written up to `tail`), or throws when the other
    /// side is gone.
    private func waitForRoom(in ring: ManagerChannel.Ring, tail: UInt64) throws {
        let hasRoom = { [self] () -> Bool in
            knownHead = ring.head.pointee.load(ordering: .acquiring)
            // Counters that make no sense end the wait too: the caller checks them.
            return tail &- knownHead != UInt64(ManagerChannel.ringSize)
        }
        if SpinBudget.spin(for: SpinBudget.usualNanoseconds, until: .never, hasRoom) != .gaveUp { return }
        while true {
            let bell = ring.roomBell.pointee.load(ordering: .acquiring)
            ring.roomWaiting.pointee.store(1, ordering: .sequentiallyConsistent)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            if hasRoom() { return ring.roomWaiting.pointee.store(0, ordering: .relaxed) }
            Futex.wait(Futex.address(ring.roomBell), expected: bell, until: .after(ManagerChannel.livenessSlice))
            if hasRoom() { return }
            try ManagerChannel.checkPeer(try connection.fileno)
        }
    }
}

/// How a manager connection's messages come in: over the socket, or, once a ``ManagerChannel`` is
/// attached, through its ring, sleeping in poll() on the socket when the ring stays empty. Read by one
/// party at a time (a link's read turn, a server's reading thread).
final class ManagerReceiver: @unchecked Sendable {
    /// The socket (the descriptor that did the handshake).
    let connection: Connection
    /// The ring this side reads, once a channel is attached.
    private var ring: ManagerChannel.Ring?
    /// The bytes of the message being read so far: its header, then its payload.
    private var message: [UInt8] = []
    /// A tail this receiver saw: there are at least this many bytes written.
    private var knownTail: UInt64 = 0
    /// When the message this side expects an answer to went out (0: none, or measured already).
    private var lastSent: UInt64 = 0
    /// How long a wait for data spins, and whether it does (the rule a socket's receive follows too).
    private var spin = SpinBudget()

    /// Receives from `connection` until a channel is attached.
    init(_ connection: Connection) { self.connection = connection }

    /// Receives from now on through `channel`, as `side`.
    func attach(_ channel: ManagerChannel, as side: ManagerChannel.Side) {
        let ring = channel.ring(writtenBy: side == .client ? .server : .client)
        knownTail = ring.tail.pointee.load(ordering: .acquiring)
        self.ring = ring
    }

    /// Whether a channel carries the messages.
    var usesChannel: Bool { ring != nil }

    /// Says that a message the other side answers went out at `sent` (monotonic nanoseconds), so that
    /// the next receive measures how long the answer took and spins that long afterwards, as a socket's
    /// receive does (see ``Connection/answerExpected(sentAt:)``).
    func answerExpected(sentAt sent: UInt64) {
        if ring == nil { connection.answerExpected(sentAt: sent) } else { lastSent = sent }
    }

    /// Receives one message and hands its bytes to `read` (see ``Connection/receiveMessage(timeout:_:)``).
    /// Bytes of a message that had partly arrived before a timeout are kept for the next receive.
    ///
    /// - Throws: ``MultiprocessingError/Code/endOfFile`` when the other side is gone and nothing is
    ///   left to read; ``MultiprocessingError/Code/timedOut``; ``MultiprocessingError/Code/protocolViolation``
    ///   for a bad frame header; what `read` throws.
    func receive<R>(timeout: Duration? = nil, _ read: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard let ring else { return try connection.receiveMessage(timeout: timeout, read) }
        let deadline = Deadline.after(timeout)
        while true {
            let wanted: Int
            if let (length, headerSize) = try message.withUnsafeBytes({ try Framing.parseHeader($0) }) {
                if message.count - headerSize == length {
                    defer { message.removeAll(keepingCapacity: message.capacity <= 1 << 20) }
                    return try message.withUnsafeBytes { try read(UnsafeRawBufferPointer(rebasing: $0[headerSize...])) }
                }
                wanted = headerSize + length - message.count
            } else {
                wanted = (message.count < 4 ? 4 : 12) - message.count
            }
            try take(atMost: wanted, from: ring, until: deadline)
        }
    }

    /// Appends up to `wanted` bytes from the ring to ``message``, waiting for some when it is empty.
    private func take(atMost wanted: Int, from ring: ManagerChannel.Ring, until deadline: Deadline) throws {
        let head = ring.head.pointee.load(ordering: .relaxed)
        if knownTail == head {
            knownTail = ring.tail.pointee.load(ordering: .acquiring)
            if knownTail == head {
                try waitForData(in: ring, head: head, until: deadline)
                return
            }
        }
        try ManagerChannel.Ring.check(tail: knownTail, head: head)
        if lastSent > 0 {
            spin.answered(after: Deadline.monotonicNow() &- lastSent)
            lastSent = 0
        }
        let count = min(Int(knownTail &- head), wanted)
        let old = message.count
        message.append(contentsOf: repeatElement(0, count: count))
        message.withUnsafeMutableBytes { ring.copy(from: head, count: count, into: $0.baseAddress! + old) }
        ring.head.pointee.store(head &+ UInt64(count), ordering: .releasing)
        // Wakes a writer asleep for room (it set its word before it looked at the head).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if ring.roomWaiting.pointee.load(ordering: .relaxed) != 0,
           ring.roomWaiting.pointee.exchange(0, ordering: .acquiringAndReleasing) != 0
        {
            ring.roomBell.pointee.wrappingAdd(1, ordering: .releasing)
            Futex.wake(Futex.address(ring.roomBell))
        }
    }

    /// Returns once the ring (read up to `head`) holds bytes, or the socket rang; throws when the other
    /// side is gone and the ring is empty, or at `deadline`.
    private func waitForData(in ring: ManagerChannel.Ring, head: UInt64, until deadline: Deadline) throws {
        let hasData = { [self] () -> Bool in
            knownTail = ring.tail.pointee.load(ordering: .acquiring)
            return knownTail != head
        }
        if spin.takeSpin() {
            let outcome = SpinBudget.spin(for: spin.window, until: deadline, hasData)
            spin.spinEnded(inTime: outcome == .ready)
            if outcome != .gaveUp { return }
        }
        ring.readerWaiting.pointee.store(1, ordering: .sequentiallyConsistent)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if hasData() { return ring.readerWaiting.pointee.store(0, ordering: .relaxed) }
        let fd = try connection.fileno
        let woken = try Syscall.pollReadable([fd], until: deadline)
        ring.readerWaiting.pointee.store(0, ordering: .relaxed)
        if woken.isEmpty {
            if hasData() { return }
            throw MultiprocessingError(.timedOut, "no message arrived before the timeout")
        }
        let gone = try Self.drainDoorbells(fd)
        if hasData() || !gone { return }
        throw MultiprocessingError(
            .endOfFile, message.isEmpty ? "the peer closed the connection" : "the peer closed the connection in the middle of a message")
    }

    /// Reads the doorbell bytes waiting on the socket without blocking (a bounded number of reads, so
    /// a peer that keeps writing cannot hold the reader here); returns whether the socket's other side
    /// is gone (end of file, or a reset).
    private static func drainDoorbells(_ fd: Int32) throws -> Bool {
        var bells = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        var reads = 0
        while true {
            let result = withUnsafeMutableBytes(of: &bells) { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            reads += 1
            if result > 0 {
                if reads >= 64 { return false }
                continue
            }
            if result == 0 { return true }
            switch errno {
            case EINTR: continue
            case EAGAIN: return false
            case ECONNRESET: return true
            case let error: throw MultiprocessingError.system("recv", errno: error)
            }
        }
    }
}
