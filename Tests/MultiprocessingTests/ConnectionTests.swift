#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import Multiprocessing

// Task types for the connection tests, at file scope so that spawned children can find them.

/// Echoes every message's bytes back until the peer closes.
struct ConnEcho: ProcessTask {
    let connection: Connection
    func run() throws {
        while let bytes = try? connection.recvBytes(timeout: .seconds(60)) { try connection.sendBytes(bytes) }
    }
}

/// Receives a value, sends it back, then sends the bytes of a message back, then returns.
struct ConnValueEcho: ProcessTask {
    let connection: Connection
    func run() throws {
        try connection.send(try connection.recv([Double?].self, timeout: .seconds(30)))
        try connection.sendBytes(try connection.recvBytes(timeout: .seconds(30)))
    }
}

/// Receives a connection over `control`, then says hello over the received connection.
struct ConnReceiveConnection: ProcessTask {
    let control: Connection
    func run() throws {
        let received = try control.recv(Connection.self, timeout: .seconds(30))
        try received.send("hello from \(getpid())")
        try control.send("done")
    }
}

/// Sends `message` after `delayMilliseconds`, then waits for the parent to close.
struct ConnSendLater: ProcessTask {
    let connection: Connection
    let delayMilliseconds: Int
    let message: [UInt8]
    func run() throws {
        usleep(UInt32(delayMilliseconds * 1000))
        try connection.sendBytes(message)
        _ = try? connection.recvBytes(timeout: .seconds(30))
    }
}

/// Waits for a byte, then sleeps for a while and returns (a sentinel that becomes ready late).
struct ConnNapAfterGo: ProcessTask {
    let go: Connection
    let milliseconds: Int
    func run() throws {
        _ = try go.recvBytes(timeout: .seconds(30))
        usleep(UInt32(milliseconds * 1000))
    }
}

/// Writes `b"foo"` through a descriptor it receives.
struct ConnWriteThroughDescriptor: ProcessTask {
    let control: Connection
    func run() throws {
        let fd = try control.recvDescriptor(timeout: .seconds(30))
        _ = write(fd, "foo", 3)
        Glibc.close(fd)
        try control.send(true)
    }
}

/// Runs `body` on a new thread (for tests that need a peer in the same process).
func connectionTestThread(_ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    precondition(pthread_create(&thread, nil, { context in
        Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
        return nil
    }, box) == 0)
    pthread_detach(thread)
}

/// Starts the task `make` builds around one end of a fresh pipe, and returns the child and the other end.
func startWithPipe(_ method: StartMethod = .spawn, _ make: (Connection) -> any ProcessTask) throws -> (ChildProcess, Connection) {
    let (mine, theirs) = try makePipe()
    let child = ChildProcess(make(theirs), context: ProcessContext(method))
    try child.start()
    theirs.close()
    return (child, mine)
}

/// The signal the tests send to interrupt blocked calls.
let testSignal = SIGUSR2

/// Installs a handler that does nothing for `testSignal`, without SA_RESTART so that a blocked call sees
/// EINTR. It stays installed: restoring the default while another test still signals would end the process.
func ignoreTestSignal() {
    var action = sigaction()
    action.__sigaction_handler.sa_handler = { _ in }
    action.sa_flags = 0
    sigaction(testSignal, &action, nil)
}

/// Seconds since `start` on the monotonic clock.
func secondsSince(_ start: ContinuousClock.Instant) -> Double {
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}

/// Expects `body` to throw a MultiprocessingError with `code`, and returns it.
@discardableResult
func expectCode<R>(_ code: MultiprocessingError.Code, sourceLocation: SourceLocation = #_sourceLocation,
                   _ body: () throws -> R) -> MultiprocessingError? {
    do {
        _ = try body()
        Issue.record("expected \(code), got no error", sourceLocation: sourceLocation)
    } catch let error as MultiprocessingError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// A value whose encoding fails when `fails` is true.
struct ConnFailingValue: Codable {
    let fails: Bool
    func encode(to encoder: any Encoder) throws {
        struct Refused: Error {}
        if fails { throw Refused() }
        var container = encoder.singleValueContainer()
        try container.encode(fails)
    }
    init(fails: Bool) { self.fails = fails }
    init(from decoder: any Decoder) throws { fails = try decoder.singleValueContainer().decode(Bool.self) }
}

struct Point: Codable, Equatable, Sendable {
    var x: Int
    var label: String
    var values: [Double]
}

@Suite("Connection and Pipe")
struct ConnectionTests {
    @Test("duplex pipe: values and bytes both ways, fileno, description")
    func duplexPipe() throws {
        let (a, b) = try makePipe()
        #expect(try a.fileno >= 0 && b.fileno >= 0)
        #expect(a.readable && a.writable && b.readable && b.writable)
        try a.send(Point(x: 1, label: "piao", values: [2.25]))
        #expect(try b.recv(Point.self, timeout: .seconds(5)) == Point(x: 1, label: "piao", values: [2.25]))
        try b.sendBytes(Array("hello world".utf8))
        #expect(try a.recvBytes(timeout: .seconds(5)) == Array("hello world".utf8))
        try b.send([1, 2, 3])
        let numbers: [Int] = try a.recv(timeout: .seconds(5))
        #expect(numbers == [1, 2, 3])
        #expect(a.description.contains("fd:"))
    }

    @Test("simplex pipe: reader only reads, writer only writes")
    func simplexPipe() throws {
        let (reader, writer) = try makePipe(duplex: false)
        #expect(reader.readable && !reader.writable)
        #expect(writer.writable && !writer.readable)
        try writer.send(1)
        #expect(try reader.recv(Int.self, timeout: .seconds(5)) == 1)
        expectCode(.invalidState) { try reader.send(2) }
        expectCode(.invalidState) { try reader.sendBytes([1]) }
        expectCode(.invalidState) { try writer.recv(Int.self, timeout: .zero) }
        expectCode(.invalidState) { try writer.recvBytes(timeout: .zero) }
        expectCode(.invalidState) { try writer.poll() }
    }

    @Test("sendBytes with offset and size, and its range errors")
    func sendBytesRanges() throws {
        let (a, b) = try makePipe()
        let message = Array("abcdefghijklmnopqrstuvwxyz".utf8)
        try a.sendBytes(message, offset: 5)
        #expect(try b.recvBytes(timeout: .seconds(5)) == Array(message[5...]))
        try a.sendBytes(message, offset: 7, size: 8)
        #expect(try b.recvBytes(timeout: .seconds(5)) == Array(message[7..<15]))
        try a.sendBytes(message, offset: 26)
        #expect(try b.recvBytes(timeout: .seconds(5)) == [])
        try a.sendBytes(message, offset: 26, size: 0)
        #expect(try b.recvBytes(timeout: .seconds(5)) == [])
        expectCode(.invalidArgument) { try a.sendBytes(message, offset: 27) }
        expectCode(.invalidArgument) { try a.sendBytes(message, offset: 22, size: 5) }
        expectCode(.invalidArgument) { try a.sendBytes(message, offset: 26, size: 1) }
        expectCode(.invalidArgument) { try a.sendBytes(message, offset: -1) }
        expectCode(.invalidArgument) { try a.sendBytes(message, offset: 0, size: -1) }
        #expect(try !b.poll(), "a rejected range sends nothing")
    }

    @Test("recvBytes(maxLength:) rejects a longer message with 'bad message length' and closes")
    func maxLength() throws {
        let (a, b) = try makePipe()
        try a.sendBytes([UInt8](repeating: 7, count: 10))
        #expect(try b.recvBytes(maxLength: 10, timeout: .seconds(5)).count == 10)
        try a.sendBytes([UInt8](repeating: 7, count: 11))
        let error = expectCode(.protocolViolation) { try b.recvBytes(maxLength: 10, timeout: .seconds(5)) }
        #expect(error?.message.contains("bad message length") == true)
        #expect(b.closed)
    }

    @Test("recvBytes(into:offset:) fills at a byte offset; too short a buffer carries the whole message")
    func recvInto() throws {
        let (a, b) = try makePipe()
        var ints = [Int32](repeating: 0, count: 10)
        try [Int32(0), 1, 2, 3].withUnsafeBytes { try a.sendBytes($0) }
        let first = try ints.withUnsafeMutableBytes { try b.recvBytes(into: $0, timeout: .seconds(5)) }
        #expect(first == 16)
        #expect(ints == [0, 1, 2, 3, 0, 0, 0, 0, 0, 0])
        try [Int32(0), 1, 2, 3].withUnsafeBytes { try a.sendBytes($0) }
        let second = try ints.withUnsafeMutableBytes { try b.recvBytes(into: $0, offset: 12, timeout: .seconds(5)) }
        #expect(second == 16)
        #expect(ints == [0, 1, 2, 0, 1, 2, 3, 0, 0, 0])

        var small = [UInt8](repeating: 0, count: 40)
        let long = (0..<110).map { UInt8($0) }
        try a.sendBytes(long)
        let error = expectCode(.bufferTooShort) { try b.recvBytes(into: &small, timeout: .seconds(5)) }
        #expect(error?.payload == long)
        expectCode(.invalidArgument) { try b.recvBytes(into: &small, offset: 41, timeout: .zero) }
        expectCode(.invalidArgument) { try b.recvBytes(into: &small, offset: -1, timeout: .zero) }
        try a.sendBytes([9])
        #expect(try b.recvBytes(timeout: .seconds(5)) == [9], "the short buffer consumed only its message")
    }

    @Test("poll: false at once when empty (negative counts as zero), waits its timeout, never consumes")
    func poll() throws {
        let (a, b) = try makePipe()
        #expect(try !b.poll())
        var start = ContinuousClock.now
        #expect(try !b.poll(timeout: .seconds(-1)))
        #expect(secondsSince(start) < 0.5)
        start = ContinuousClock.now
        #expect(try !b.poll(timeout: .milliseconds(100)))
        #expect(secondsSince(start) >= 0.09 && secondsSince(start) < 5)
        try a.sendBytes([])
        start = ContinuousClock.now
        #expect(try b.poll(timeout: .milliseconds(100)))
        #expect(try b.poll())
        #expect(try b.poll(), "poll does not consume")
        #expect(secondsSince(start) < 0.5)
        #expect(try b.recvBytes(timeout: .zero) == [])
        #expect(try !b.poll())
    }

    @Test("messages keep their boundaries, empty ones included, and a timeout is typed")
    func boundaries() throws {
        let (a, b) = try makePipe()
        let strings = ["hello", "", "a", "b", "", "bye", "", "lop"].map { Array($0.utf8) }
        for string in strings { try a.sendBytes(string) }
        for string in strings { #expect(try b.recvBytes(timeout: .seconds(5)) == string) }
        let start = ContinuousClock.now
        expectCode(.timedOut) { try b.recvBytes(timeout: .milliseconds(100)) }
        expectCode(.timedOut) { try b.recv(Int.self, timeout: .zero) }
        #expect(secondsSince(start) >= 0.09 && secondsSince(start) < 5)
    }

    @Test("a 16 MiB message arrives intact, in both directions of a pipe")
    func largeMessage() throws {
        let (a, b) = try makePipe()
        let big = (0..<(16 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 7) }
        connectionTestThread { try? a.sendBytes(big) }
        #expect(try b.recvBytes(timeout: .seconds(60)) == big)
        connectionTestThread { try? b.send(big) }
        #expect(try a.recv([UInt8].self, timeout: .seconds(60)) == big)
    }

    @Test("a large message read straight into the caller's storage survives a timeout and reports end of file mid-message")
    func largeMessageDirectRead() throws {
        let length = 1 << 20
        let message = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 9) }
        let frame = [UInt8(0), 16, 0, 0] + message  // a 4-byte big-endian header: 1 MiB
        #expect(frame.count == length + 4)
        @Sendable func writeRaw(_ fd: Int32, _ bytes: ArraySlice<UInt8>) {
            var done = 0
            while done < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
                if n <= 0 { return }
                done += n
            }
        }
        for into in [false, true] {
            let (a, b) = try makePipe()
            // Part of the message, then a timeout: what arrived stays buffered for the next receive.
            writeRaw(try a.fileno, frame[0..<100_000])
            var storage = [UInt8](repeating: 0, count: length + 8)
            expectCode(.timedOut) {
                if into { _ = try b.recvBytes(into: &storage, offset: 8, timeout: .milliseconds(50)) }
                else { _ = try b.recvBytes(timeout: .milliseconds(50)) }
            }
            // More of it, read straight into the caller's storage this time, then a second timeout.
            writeRaw(try a.fileno, frame[100_000..<200_000])
            expectCode(.timedOut) {
                if into { _ = try b.recvBytes(into: &storage, offset: 8, timeout: .milliseconds(50)) }
                else { _ = try b.recvBytes(timeout: .milliseconds(50)) }
            }
            let fd = try a.fileno
            let rest = frame[200_000...]
            connectionTestThread { writeRaw(fd, rest) }
            if into {
                #expect(try b.recvBytes(into: &storage, offset: 8, timeout: .seconds(30)) == length)
                #expect(Array(storage[8...]) == message)
            } else {
                #expect(try b.recvBytes(timeout: .seconds(30)) == message)
            }
            // The connection goes on with the next message.
            try a.sendBytes([1, 2, 3])
            #expect(try b.recvBytes(timeout: .seconds(5)) == [1, 2, 3])
            // End of file in the middle of a large message is an error, never a short message.
            writeRaw(try a.fileno, frame[0..<50_000])
            a.close()
            expectCode(.endOfFile) {
                if into { _ = try b.recvBytes(into: &storage, timeout: .seconds(5)) } else { _ = try b.recvBytes(timeout: .seconds(5)) }
            }
        }
    }

    @Test("the 64-bit length form: headers, a long-form frame from a peer, and a 2 GiB send checked without allocating it")
    func longFraming() throws {
        #expect(Framing.header(forLength: 5) == [0, 0, 0, 5])
        #expect(Framing.header(forLength: Int(Int32.max)) == [0x7f, 0xff, 0xff, 0xff])
        let long = Framing.header(forLength: Int(Int32.max) + 1)
        #expect(long == [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0])
        let parsed = try long.withUnsafeBytes { try Framing.parseHeader($0) }
        #expect(parsed?.length == Int(Int32.max) + 1 && parsed?.headerSize == 12)
        #expect(try long.withUnsafeBytes { try Framing.parseHeader(UnsafeRawBufferPointer(rebasing: $0[..<8])) } == nil)
        #expect(throws: MultiprocessingError.self) {
            try [UInt8]([0xff, 0xff, 0xff, 0xfe]).withUnsafeBytes { try Framing.parseHeader($0) }
        }

        // A peer may use the long form for any length (CPython 3.8+ reads it so).
        let (a, b) = try makePipe()
        let frame: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 3, 7, 8, 9]
        try frame.withUnsafeBytes { try Syscall.writeAll(a.fileno, $0) }
        #expect(try b.recvBytes(timeout: .seconds(5)) == [7, 8, 9])

        // Send 2 GiB + 5 bytes of read-only zero pages: the receiver sees the long header and the exact
        // length, rejects it by maxLength, and the sender gets an error once the receiver has closed.
        let size = Int(Int32.max) + 6
        let region = mmap(nil, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)!
        #expect(region != MAP_FAILED)
        defer { munmap(region, size) }
        let address = Int(bitPattern: region)
        let senderDone = Mutex<MultiprocessingError?>(nil)
        let (sender, receiver) = try makePipe()
        connectionTestThread {
            do {
                try sender.sendBytes(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: size))
            } catch let error as MultiprocessingError {
                senderDone.withLock { $0 = error }
            } catch {}
        }
        let error = expectCode(.protocolViolation) { try receiver.recvBytes(maxLength: 1 << 20, timeout: .seconds(30)) }
        #expect(error?.message.contains("\(size) bytes") == true)
        #expect(receiver.closed)
        let deadline = ContinuousClock.now + .seconds(30)
        while senderDone.withLock({ $0 }) == nil, ContinuousClock.now < deadline { usleep(1000) }
        #expect(senderDone.withLock { $0?.errno } == EPIPE || senderDone.withLock { $0?.errno } == ECONNRESET)
    }

    @Test("closed: close twice is harmless, calls after close throw .closed")
    func closing() throws {
        let (a, _) = try makePipe()
        a.close()
        a.close()
        #expect(a.closed)
        expectCode(.closed) { try a.fileno }
        expectCode(.closed) { try a.send(1) }
        expectCode(.closed) { try a.recvBytes(timeout: .zero) }
        expectCode(.closed) { try a.poll() }
        #expect(a.description == "Connection(closed)")
    }

    @Test("a receive spins longer only for a peer that answers a little later than the usual spin")
    func spinWindow() {
        let usual: UInt64 = 20_000
        #expect(SpinBudget.window(afterTurnaround: 4_000) == usual)
        #expect(SpinBudget.window(afterTurnaround: 20_000) == usual)
        #expect(SpinBudget.window(afterTurnaround: 30_000) == 45_000)
        #expect(SpinBudget.window(afterTurnaround: 66_000) == 99_000)
        #expect(SpinBudget.window(afterTurnaround: 67_000) == usual)
        #expect(SpinBudget.window(afterTurnaround: 5_000_000) == usual)
        for turnaround in stride(from: UInt64(0), to: 1_000_000, by: 997) {
            #expect(SpinBudget.window(afterTurnaround: turnaround) <= SpinBudget.longestNanoseconds)
        }
    }

    @Test("each spin in vain doubles the waits that sleep at once, up to 64; a spin in time resets it")
    func spinPenalty() {
        var budget = SpinBudget()
        let first = budget.takeSpin()
        #expect(first)
        var sleptAtOnce: [Int] = []
        for _ in 0..<8 {
            budget.spinEnded(inTime: false)
            var skipped = 0
            while !budget.takeSpin() { skipped += 1 }
            sleptAtOnce.append(skipped)
        }
        #expect(sleptAtOnce == [1, 2, 4, 8, 16, 32, 64, 64])
        budget.spinEnded(inTime: true)
        let afterInTime = budget.takeSpin()
        budget.spinEnded(inTime: false)
        let afterOneInVain = (budget.takeSpin(), budget.takeSpin())
        #expect(afterInTime)
        #expect(afterOneInVain == (false, true))
    }

    @Test("invalid descriptors are refused")
    func invalidDescriptors() throws {
        expectCode(.invalidArgument) { try Connection(adopting: -1) }
        expectCode(.invalidArgument) { try Connection(adopting: 44_977_608) }
        let (a, _) = try makePipe()
        expectCode(.invalidArgument) { try Connection(adopting: try a.fileno, readable: false, writable: false) }
    }

    @Test("EOF once every copy of the peer end is closed, including the copy in a child", arguments: StartMethod.allCases)
    func endOfFile(method: StartMethod) throws {
        let (child, mine) = try startWithPipe(method) { ConnSendLater(connection: $0, delayMilliseconds: 0, message: [1]) }
        #expect(try mine.recvBytes(timeout: .seconds(30)) == [1])
        #expect(try !mine.poll(timeout: .milliseconds(50)), "the child still holds its copy")
        try mine.sendBytes([2]) // lets the child end, closing its copy
        #expect(try child.join(timeout: .seconds(30)))
        #expect(mine.readable && mine.writable)
        expectCode(.endOfFile) { try mine.recv(Int.self, timeout: .seconds(5)) }
        expectCode(.endOfFile) { try mine.recvBytes(timeout: .seconds(5)) }
    }

    // In a spawned probe: a child forked meanwhile by another test of this process would hold a copy of
    // the closed ends, and the peer would not look closed.
    @Test("sending to a closed peer is an error, not a SIGPIPE death; raw pipes too")
    func closedPeer() throws {
        let (reader, writer) = try makePipe(duplex: false)
        let probe = ChildProcess(ClosedPeerProbe(report: writer))
        try probe.start()
        let failures = try reader.recv([String].self, timeout: .seconds(60))
        #expect(failures.isEmpty, "\(failures)")
        #expect(try probe.join(timeout: .seconds(30)))
        #expect(probe.exitCode == 0)
    }

    @Test("a handled signal does not break a blocked receive")
    func signalsDoNotBreakCalls() throws {
        ignoreTestSignal()
        let (a, b) = try makePipe()
        let me = pthread_self()
        for (byte, timeout) in [(UInt8(42), Duration?.none), (43, .seconds(10))] {
            connectionTestThread {
                for _ in 0..<5 {
                    usleep(20_000)
                    pthread_kill(me, testSignal)
                }
                try? a.sendBytes([byte])
            }
            #expect(try b.recvBytes(timeout: timeout) == [byte])
        }
    }

    @Test("a pipe end given to a child at start works under each start method", arguments: StartMethod.allCases)
    func connectionToChild(method: StartMethod) throws {
        let (child, mine) = try startWithPipe(method) { ConnValueEcho(connection: $0) }
        try mine.send([1, 2.25, nil] as [Double?])
        #expect(try mine.recv([Double?].self, timeout: .seconds(30)) == [1, 2.25, nil])
        try mine.sendBytes(Array("hello world".utf8))
        #expect(try mine.recvBytes(timeout: .seconds(30)) == Array("hello world".utf8))
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 0)
    }

    @Test("a connection sent over another connection to a running child works there (fd passing)")
    func connectionOverConnection() throws {
        let (child, control) = try startWithPipe { ConnReceiveConnection(control: $0) }
        let (mine, theirs) = try makePipe()
        try control.send(theirs)
        theirs.close()
        let hello = try mine.recv(String.self, timeout: .seconds(30))
        #expect(hello == "hello from \(child.pid ?? 0)")
        #expect(try control.recv(String.self, timeout: .seconds(30)) == "done")
        #expect(try child.join(timeout: .seconds(30)))
    }

    @Test("a raw descriptor sent to a running child (Python's send_handle), and a message without one")
    func descriptorPassing() throws {
        let (child, control) = try startWithPipe { ConnWriteThroughDescriptor(control: $0) }
        let pair = try Syscall.socketPair()
        let fds = [pair.0, pair.1]
        // A descriptor number above 256 travels too.
        let high = fcntl(fds[1], F_DUPFD_CLOEXEC, 300)
        #expect(high >= 300)
        try control.sendDescriptor(high)
        Glibc.close(high)
        Glibc.close(fds[1])
        #expect(try control.recv(Bool.self, timeout: .seconds(30)))
        var bytes = [UInt8](repeating: 0, count: 8)
        #expect(read(fds[0], &bytes, 8) == 3)
        #expect(Array(bytes.prefix(3)) == Array("foo".utf8))
        Glibc.close(fds[0])
        #expect(try child.join(timeout: .seconds(30)))

        let (a, b) = try makePipe()
        try a.send(7)
        expectCode(.transport) { try b.recvDescriptor(timeout: .seconds(5)) }
    }

    @Test("a descriptor sent right after a message without one stays with its own message, though one read takes both")
    func descriptorAfterPlainMessage() throws {
        let (a, b) = try makePipe()
        let pair = try Syscall.socketPair()
        defer { Glibc.close(pair.0) }
        // Both are queued before the receiver reads: its first read takes both frames and the descriptor.
        try a.sendBytes(Array("plain".utf8))
        try a.send(3)
        try a.sendDescriptor(pair.1)
        Glibc.close(pair.1)
        #expect(try b.recvBytes(timeout: .seconds(5)) == Array("plain".utf8))
        #expect(try b.recv(Int.self, timeout: .seconds(5)) == 3)
        let received = try b.recvDescriptor(timeout: .seconds(5))
        defer { Glibc.close(received) }
        #expect(write(received, "ok", 2) == 2)
        var bytes = [UInt8](repeating: 0, count: 4)
        #expect(read(pair.0, &bytes, 4) == 2)
    }

    @Test("send(contentsOf:) delivers each value as its own message, descriptors included")
    func batches() throws {
        let (a, b) = try makePipe()
        let values = (0..<20_000).map { Point(x: $0, label: "p\($0)", values: [Double($0)]) }
        connectionTestThread { try? a.send(contentsOf: values) }
        for value in values { #expect(try b.recv(Point.self, timeout: .seconds(10)) == value) }

        // A value that cannot be encoded stops the batch there; the values before it are sent.
        expectCode(.transport) { try a.send(contentsOf: [ConnFailingValue(fails: false), ConnFailingValue(fails: true), ConnFailingValue(fails: false)]) }
        #expect(try b.recv(ConnFailingValue.self, timeout: .seconds(5)).fails == false)
        #expect(try !b.poll(timeout: .milliseconds(20)))

        let pairs = try (0..<3).map { _ in try makePipe() }
        try a.send(contentsOf: pairs.map(\.1))
        for (index, pair) in pairs.enumerated() {
            let received = try b.recv(Connection.self, timeout: .seconds(5))
            try received.send(index)
            #expect(try pair.0.recv(Int.self, timeout: .seconds(5)) == index)
        }
    }

    @Test("async recv and recvBytes do not hold the caller's thread", .ownThread)
    func asyncReceive() async throws {
        let (a, b) = try makePipe()
        connectionTestThread {
            usleep(50_000)
            try? a.send("later")
            try? a.sendBytes([1])
        }
        let text: String = try await b.recv(timeout: .seconds(10))
        #expect(text == "later")
        #expect(try await b.recvBytes(timeout: .seconds(10)) == [1])
    }
}


/// Sends to closed peers (a socket pair, then a raw pipe) and sends back what went wrong.
struct ClosedPeerProbe: ProcessTask {
    let report: Connection
    func run() throws {
        var failures: [String] = []
        func expect(_ code: MultiprocessingError.Code, _ what: String, errno expected: Int32? = nil, _ body: () throws -> Void) {
            do {
                try body()
                failures.append("\(what): no error")
            } catch let error as MultiprocessingError {
                if error.code != code || (expected != nil && error.errno != expected) { failures.append("\(what): \(error)") }
            } catch {
                failures.append("\(what): \(error)")
            }
        }
        let (a, b) = try makePipe()
        b.close()
        expect(.system, "bytes to a closed socket peer") { try a.sendBytes([1, 2, 3]) }
        expect(.system, "a value to a closed socket peer") { try a.send("x") }

        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw MultiprocessingError.system("pipe") }
        let reader = try Connection(adopting: fds[0], readable: true, writable: false)
        let writer = try Connection(adopting: fds[1], readable: false, writable: true)
        try writer.sendBytes([5, 6])
        if try reader.recvBytes(timeout: .seconds(5)) != [5, 6] { failures.append("raw pipe lost the bytes") }
        expect(.timedOut, "an empty raw pipe") { _ = try reader.recvBytes(timeout: .milliseconds(20)) }
        reader.close()
        expect(.system, "bytes to a closed raw pipe", errno: EPIPE) { try writer.sendBytes([1]) }
        try report.send(failures)
    }
}
