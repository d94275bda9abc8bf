#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// A socket that accepts connections from clients, with optional authentication
/// (Python's `multiprocessing.connection.Listener`).
///
/// Clients connect with ``Connection/init(connectingTo:authkey:timeout:)``, or with Python's
/// `multiprocessing.connection.Client`. When the listener has an `authkey`, every accepted client must
/// pass CPython's HMAC handshake in both directions before ``accept(timeout:)-qt6s`` returns it; a client that
/// fails, sends garbage or announces a frame longer than 256 bytes is dropped with an error, and nothing
/// is allocated for it.
///
/// ```swift
/// let listener = try Listener(address: .tcp(host: "127.0.0.1", port: 0), authkey: Array("secret".utf8))
/// let connection = try listener.accept(timeout: .seconds(10))
/// let request = try connection.recvBytes()
/// ```
///
/// Call ``accept(timeout:)-qt6s`` from one thread at a time; ``close()`` may come from any thread and wakes
/// a blocked `accept`.
public final class Listener: @unchecked Sendable, Waitable, CustomStringConvertible {
    /// The address clients connect to: for TCP port 0, the port that was picked.
    public let address: ConnectionAddress
    /// The key clients must prove they know, or nil for no authentication.
    public let authkey: [UInt8]?
    private let handshakeTimeout: Duration?
    private let state: Mutex<State>
    /// A file and directory this listener created and removes on close (Unix addresses only).
    private let ownedPath: (socket: String?, directory: String?)
    private let creator = getpid()

    private struct State {
        var fd: Int32
        var lastAccepted: ConnectionAddress?
        /// Clients in the middle of the handshake, by descriptor.
        var handshakes: [Int32: Handshaking] = [:]
        /// While the process is out of descriptors: when to try accepting again, and the next pause.
        var acceptPausedUntil: UInt64 = 0
        var acceptPause: UInt64 = Listener.firstPause
    }

    /// A client between connect and the end of its handshake. The listener delivers its challenge, then
    /// answers the client's: it reads the client's answer, the client's challenge, then the verdict.
    private struct Handshaking {
        enum Step { case answer, challenge, verdict }
        let connection: Connection
        let peer: ConnectionAddress
        let message: [UInt8]
        let deadline: Deadline
        var step = Step.answer
    }

    /// What one round of accepting found: a client ready to hand out, or what to wait for next.
    private enum AcceptRound {
        case accepted(Connection)
        case wait(descriptors: [Int32], until: Deadline)
    }

    /// The first pause after accept ran out of descriptors (EMFILE); it doubles up to `longestPause`.
    private static let firstPause: UInt64 = 10_000_000
    private static let longestPause: UInt64 = 1_000_000_000

    /// Listens on `address`, or on a fresh address of `family` when `address` is nil (a Unix socket in a
    /// private temporary directory, or TCP on 127.0.0.1 with a free port).
    ///
    /// - Parameters:
    ///   - address: where to listen; nil picks a fresh address of `family`.
    ///   - family: the kind of address to pick when `address` is nil (Unix by default).
    ///   - backlog: how many clients may wait to be accepted (Python's default is 1; ours lets a burst
    ///     of clients connect at once).
    ///   - authkey: the shared secret for CPython's handshake; nil accepts clients without one. An empty
    ///     key is a valid key.
    ///   - handshakeTimeout: the longest a client may take over the handshake before ``accept(timeout:)-qt6s``
    ///     drops it with ``MultiprocessingError/Code/timedOut``; nil waits as long as it takes.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` when `family` does not match `address`;
    ///   ``MultiprocessingError/Code/system`` when the socket cannot be bound (for example `EADDRINUSE`).
    public init(address: ConnectionAddress? = nil, family: AddressFamily? = nil, backlog: Int = 64,
                authkey: [UInt8]? = nil, handshakeTimeout: Duration? = .seconds(30)) throws {
        if let address, let family, address.family != family {
            throw MultiprocessingError(.invalidArgument, "address \(address) is not of family \(family)")
        }
        try address?.validate()
        let backlog = Int32(clamping: max(backlog, 1))
        var directory: String?
        let chosen = try address ?? Self.freshAddress(family ?? .unix, directory: &directory)
        let fd: Int32
        switch chosen {
        case .unix(let path):
            fd = path.utf8CString.withUnsafeBufferPointer { mp_unix_listen($0.baseAddress, $0.count - 1, backlog) }
            if fd < 0 {
                let error = errno
                if let directory { rmdir(directory) }
                throw MultiprocessingError(.system, "cannot listen on \(path)", errno: error)
            }
            self.address = chosen
            ownedPath = (path.hasPrefix("\0") ? nil : path, directory)
        case .tcp(let host, let port):
            var lookupError: Int32 = 0
            fd = mp_tcp_listen(host, Int32(port), backlog, &lookupError)
            try Self.checkSocket(fd, lookupError: lookupError, what: "cannot listen on \(chosen)")
            self.address = .tcp(host: host, port: UInt16(truncatingIfNeeded: mp_local_port(fd)))
            ownedPath = (nil, nil)
        }
        // Non-blocking, so that a client that vanishes between poll and accept cannot block us.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        self.authkey = authkey
        self.handshakeTimeout = handshakeTimeout
        state = Mutex(State(fd: fd, lastAccepted: nil))
    }

    deinit { close() }

    /// Waits for a client and returns the connection to it, after the handshake when the listener has
    /// an authkey (Python's `accept`). Signals do not cut the wait short.
    ///
    /// Handshakes run side by side: clients that connect and stall hold only their own descriptor, and a
    /// client that completes its handshake is returned whatever the others do. Each client has
    /// `handshakeTimeout` to finish. When the process runs out of descriptors (`EMFILE`), accepting pauses
    /// (10 ms, doubling up to 1 s) and resumes as descriptors free up; handshakes in progress go on.
    ///
    /// Errors about one client (``MultiprocessingError/Code/authenticationFailed``, or
    /// ``MultiprocessingError/Code/timedOut`` with "did not finish the handshake") drop that client only:
    /// call `accept` again. ``MultiprocessingError/Code/closed`` and ``MultiprocessingError/Code/system``
    /// are about the listener itself.
    ///
    /// - Parameter timeout: how long to wait for a client that has finished its handshake; nil waits
    ///   without limit.
    /// - Throws: ``MultiprocessingError/Code/timedOut`` when no client came in time, or when a client did
    ///   not finish its handshake within `handshakeTimeout`; ``MultiprocessingError/Code/authenticationFailed``
    ///   when a client failed the handshake; ``MultiprocessingError/Code/closed`` once the listener is closed.
    public func accept(timeout: Duration? = nil) throws -> Connection {
        let deadline = Deadline.after(timeout)
        var ready: Set<Int32>? = nil
        while true {
            switch try acceptRound(ready: ready) {
            case .accepted(let connection):
                return connection
            case .wait(let descriptors, let wake):
                let found: [Int]
                do {
                    found = try Syscall.pollReadable(descriptors, until: deadline.earlier(than: wake))
                } catch {
                    // close() from another thread makes the descriptor invalid under poll.
                    throw closed ? MultiprocessingError(.closed, "the listener is closed") : error
                }
                if found.isEmpty && deadline.hasPassed {
                    throw MultiprocessingError(.timedOut, "no client connected before the timeout")
                }
                ready = Set(found.map { descriptors[$0] })
            }
        }
    }

    /// Waits for a client as ``accept(timeout:)`` does, on the package's event loop: no thread is held
    /// while it waits.
    ///
    /// Cancellation ends the wait with `CancellationError`; clients in the middle of their handshake stay
    /// with the listener for the next call.
    public func accept(timeout: Duration? = nil) async throws -> Connection {
        let deadline = Deadline.after(timeout)
        var ready: Set<Int32>? = nil
        while true {
            switch try acceptRound(ready: ready) {
            case .accepted(let connection):
                return connection
            case .wait(let descriptors, let wake):
                let outcome = try await EventLoop.shared.wait(
                    for: descriptors.map { ($0, .readable) }, until: deadline.earlier(than: wake))
                if outcome == .timedOut && deadline.hasPassed {
                    throw MultiprocessingError(.timedOut, "no client connected before the timeout")
                }
                ready = Set(try Syscall.pollReadable(descriptors, until: .now).map { descriptors[$0] })
            }
        }
    }

    /// Accepts the clients that wait and advances the handshakes whose descriptors are `ready` (all of
    /// them when nil), without blocking.
    private func acceptRound(ready: Set<Int32>?) throws -> AcceptRound {
        try state.withLock { state in
            guard state.fd >= 0 else { throw MultiprocessingError(.closed, "the listener is closed") }
            // Handshakes first: a client that finished is served before new ones are let in.
            for (fd, handshake) in state.handshakes where ready?.contains(fd) ?? true || handshake.deadline.hasPassed {
                if let done = try advance(handshake, in: &state) {
                    state.lastAccepted = handshake.peer
                    return .accepted(done)
                }
            }
            let now = Deadline.monotonicNow()
            if now >= state.acceptPausedUntil && ready?.contains(state.fd) ?? true {
                for _ in 0..<64 {
                    guard let (connection, peer) = try acceptOne(&state) else { break }
                    guard authkey != nil else {
                        state.lastAccepted = peer
                        return .accepted(connection)
                    }
                    let (frame, message) = makeChallenge()
                    connection.acceptsDescriptors = false
                    do {
                        try connection.sendBytes(frame)
                    } catch {
                        connection.close()
                        continue
                    }
                    state.handshakes[try connection.fileno] = Handshaking(
                        connection: connection, peer: peer, message: message,
                        deadline: Deadline.after(handshakeTimeout))
                }
            }
            var descriptors = Array(state.handshakes.keys)
            var wake = state.handshakes.values.map(\.deadline).reduce(Deadline.never) { $0.earlier(than: $1) }
            if state.acceptPausedUntil > Deadline.monotonicNow() {
                wake = wake.earlier(than: Deadline(nanoseconds: state.acceptPausedUntil))
            } else {
                descriptors.append(state.fd)
            }
            return .wait(descriptors: descriptors, until: wake)
        }
    }

    /// Accepts one waiting client without blocking: nil when none waits, or when the process is out of
    /// descriptors (accepting then pauses, see ``accept(timeout:)``).
    private func acceptOne(_ state: inout State) throws -> (Connection, ConnectionAddress)? {
        var host = [CChar](repeating: 0, count: 256)
        var port: Int32 = 0
        while true {
            let accepted = mp_accept(state.fd, &host, host.count, &port)
            if accepted >= 0 {
                state.acceptPause = Self.firstPause
                let peer: ConnectionAddress = switch address {
                case .unix: .unix("")
                case .tcp: .tcp(host: String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
                                  port: UInt16(truncatingIfNeeded: port))
                }
                return (try Connection(adopting: accepted), peer)
            }
            switch errno {
            case EINTR, ECONNABORTED, EPROTO: continue
            case EAGAIN: return nil
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                let error = errno
                diagnostics.warning("listener \(address): accept paused for \(state.acceptPause / 1_000_000) ms: \(String(cString: strerror(error)))")
                state.acceptPausedUntil = Deadline.monotonicNow() + state.acceptPause
                state.acceptPause = min(state.acceptPause * 2, Self.longestPause)
                return nil
            case EINVAL, EBADF: throw MultiprocessingError(.closed, "the listener is closed")
            case let error: throw MultiprocessingError.system("accept", errno: error)
            }
        }
    }

    /// Reads what a handshaking client sent and takes the handshake a step further. Returns the
    /// connection once authenticated; throws (and drops the client) when it fails or runs out of time.
    private func advance(_ handshake: Handshaking, in state: inout State) throws -> Connection? {
        var handshake = handshake
        let connection = handshake.connection
        let fd = try connection.fileno
        do {
            while let frame = try connection.receiveBytesIfReady(maxLength: Handshake.frameLimit) {
                let authkey = authkey ?? []
                switch handshake.step {
                case .answer:
                    try judgeAnswer(frame, to: handshake.message, on: connection, authkey: authkey)
                    handshake.step = .challenge
                case .challenge:
                    try connection.sendBytes(answer(toChallenge: frame, authkey: authkey))
                    handshake.step = .verdict
                case .verdict:
                    try checkVerdict(frame)
                    state.handshakes[fd] = nil
                    connection.acceptsDescriptors = true
                    return connection
                }
            }
            if handshake.deadline.hasPassed {
                throw MultiprocessingError(.timedOut, "a client did not finish the handshake within \(handshakeTimeout.map { "\($0)" } ?? "its time")")
            }
            state.handshakes[fd] = handshake
            return nil
        } catch let error as MultiprocessingError {
            state.handshakes[fd] = nil
            connection.close()
            diagnostics.debug("listener \(address): dropped a client during the handshake: \(error)")
            switch error.code {
            case .protocolViolation: throw MultiprocessingError(.authenticationFailed, "handshake failed: \(error.message)")
            case .endOfFile, .closed: return nil  // the client left: nothing to report
            default: throw error
            }
        }
    }

    /// The address of the last client accepted (Python's `last_accepted`): its host and port for TCP,
    /// an empty path for Unix clients, which have no address of their own.
    public var lastAccepted: ConnectionAddress? { state.withLock { $0.lastAccepted } }

    /// Whether ``close()`` was called.
    public var closed: Bool { state.withLock { $0.fd < 0 } }

    /// The listening socket, readable when a client waits to be accepted.
    public var waitDescriptor: Int32 {
        get throws {
            try state.withLock { state in
                guard state.fd >= 0 else { throw MultiprocessingError(.closed, "the listener is closed") }
                return state.fd
            }
        }
    }

    /// Stops listening, wakes a blocked ``accept(timeout:)-qt6s``, and removes the socket file this listener
    /// created. Closing twice is harmless; connections already accepted stay open.
    public func close() {
        let fd = state.withLock { state in
            defer { state.fd = -1 }
            return state.fd
        }
        guard fd >= 0 else { return }
        let pending = state.withLock { state in
            defer { state.handshakes = [:] }
            return state.handshakes.values.map(\.connection)
        }
        for connection in pending { connection.close() }
        EventLoop.closing(fd)
        shutdown(fd, Int32(SHUT_RDWR))
        Syscall.close(fd)
        guard getpid() == creator else { return }
        if let path = ownedPath.socket { unlink(path) }
        if let directory = ownedPath.directory { rmdir(directory) }
    }

    /// The kind and address of the listener.
    public var description: String { "Listener(\(address.family): \(address))" }

    /// A new address nobody uses: a socket path in a private temporary directory, or a free TCP port.
    private static func freshAddress(_ family: AddressFamily, directory: inout String?) throws -> ConnectionAddress {
        switch family {
        case .tcp:
            return .tcp(host: "127.0.0.1", port: 0)
        case .unix:
            let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
            var template = Array("\(base)/mp-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else {
                throw MultiprocessingError.system("cannot create a directory for the listener in \(base)")
            }
            directory = String(cString: made)
            var generator = SystemRandomNumberGenerator()
            return .unix("\(directory!)/listener-\(String(generator.next() as UInt64, radix: 36))")
        }
    }

    /// Throws for a failed socket call of the C shim: -2 is a name lookup failure, -1 a system error.
    static func checkSocket(_ fd: Int32, lookupError: Int32, what: String) throws {
        if fd == -2 {
            throw MultiprocessingError(.system, "\(what): \(String(cString: gai_strerror(lookupError)))")
        }
        if fd < 0 { throw MultiprocessingError.system(what) }
    }
}

extension Connection {
    /// Connects to a ``Listener`` at `address`, or to a Python `multiprocessing.connection.Listener`
    /// (Python's `Client`), and with an `authkey` proves it knows the key and checks that the listener
    /// does too.
    ///
    /// - Parameters:
    ///   - address: the listener's address.
    ///   - authkey: the listener's key, or nil when the listener does not authenticate.
    ///   - timeout: how long connecting and the handshake may take together; nil waits without limit.
    /// - Throws: ``MultiprocessingError/Code/system`` when nothing listens there (`ECONNREFUSED`,
    ///   `ENOENT`); ``MultiprocessingError/Code/authenticationFailed`` when the keys differ;
    ///   ``MultiprocessingError/Code/timedOut``.
    public convenience init(connectingTo address: ConnectionAddress, authkey: [UInt8]? = nil, timeout: Duration? = nil) throws {
        try address.validate()
        let deadline = Deadline.after(timeout)
        let milliseconds = deadline.nanoseconds == nil ? -1 : deadline.pollMilliseconds
        let fd: Int32
        switch address {
        case .unix(let path):
            fd = path.utf8CString.withUnsafeBufferPointer { mp_unix_connect($0.baseAddress, $0.count - 1, milliseconds) }
        case .tcp(let host, let port):
            var lookupError: Int32 = 0
            fd = mp_tcp_connect(host, Int32(port), milliseconds, &lookupError)
            try Listener.checkSocket(fd, lookupError: lookupError, what: "cannot connect to \(address)")
        }
        if fd < 0 {
            let error = errno
            if error == ETIMEDOUT { throw MultiprocessingError(.timedOut, "cannot connect to \(address) before the timeout") }
            throw MultiprocessingError(.system, "cannot connect to \(address)", errno: error)
        }
        try self.init(adopting: fd)
        if let authkey {
            try answerChallenge(self, authkey: authkey, deadline: deadline)
            try deliverChallenge(self, authkey: authkey, deadline: deadline)
        }
    }
}

extension Deadline {
    /// Whichever of the two deadlines comes first.
    func earlier(than other: Deadline) -> Deadline {
        guard let mine = nanoseconds else { return other }
        guard let theirs = other.nanoseconds else { return self }
        return Deadline(nanoseconds: min(mine, theirs))
    }
}
