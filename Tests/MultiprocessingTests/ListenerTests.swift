#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import Multiprocessing

/// Connects to `address`, sends "hello", waits for a reply, and returns.
struct ListenerHelloClient: ProcessTask {
    let address: ConnectionAddress
    let authkey: [UInt8]?
    func run() throws {
        let connection = try Connection(connectingTo: address, authkey: authkey, timeout: .seconds(30))
        try connection.send("hello")
        _ = try connection.recvBytes(timeout: .seconds(30))
    }
}

/// Runs `body` on a thread and hands back its result or error.
final class ListenerTestResult<T: Sendable>: Sendable {
    private let value = Mutex<Result<T, any Error>?>(nil)

    init(_ body: @escaping @Sendable () throws -> T) {
        connectionTestThread { [self] in
            let result = Result { try body() }
            self.value.withLock { $0 = result }
        }
    }

    /// Waits up to 30 s for the result.
    func get() throws -> T {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if let result = value.withLock({ $0 }) { return try result.get() }
            usleep(1000)
        }
        throw MultiprocessingError(.timedOut, "the thread did not finish")
    }
}

/// A raw socket connected to `listener`, for speaking bad protocol at it.
func rawClient(_ listener: Listener) throws -> Connection {
    try Connection(connectingTo: listener.address, timeout: .seconds(10))
}

let testKey = Array("a secret key".utf8)

@Suite("Listener, Client and authentication")
struct ListenerTests {
    @Test("a child's client says hello to the listener, per family, with and without a key",
          arguments: [AddressFamily.unix, .tcp], [nil, testKey])
    func helloFromChild(family: AddressFamily, authkey: [UInt8]?) throws {
        let listener = try Listener(family: family, authkey: authkey)
        let child = ChildProcess(ListenerHelloClient(address: listener.address, authkey: authkey))
        try child.start()
        let connection = try listener.accept(timeout: .seconds(30))
        #expect(try connection.recv(String.self, timeout: .seconds(30)) == "hello")
        try connection.sendBytes([])
        #expect(try child.join(timeout: .seconds(30)))
        #expect(child.exitCode == 0)
        if family == .tcp {
            #expect(listener.lastAccepted?.description.hasPrefix("127.0.0.1:") == true)
        }
    }

    @Test("fresh addresses: a private Unix path that close removes, a free TCP port")
    func freshAddresses() throws {
        let unix = try Listener()
        guard case .unix(let path) = unix.address else { Issue.record("not unix"); return }
        #expect(access(path, F_OK) == 0)
        unix.close()
        #expect(access(path, F_OK) != 0)
        let tcp = try Listener(family: .tcp)
        guard case .tcp(let host, let port) = tcp.address else { Issue.record("not tcp"); return }
        #expect(host == "127.0.0.1" && port != 0)
        expectCode(.invalidArgument) { try Listener(address: .unix("/tmp/x"), family: .tcp) }
        expectCode(.system) { try Listener(address: tcp.address) }
    }

    @Test("the abstract Unix namespace works and leaves no file")
    func abstractNamespace() throws {
        let listener = try Listener(address: .unix("\0mp-test-\(getpid())"))
        let client = ListenerTestResult { try Connection(connectingTo: listener.address, timeout: .seconds(10)).send(1729) }
        #expect(try listener.accept(timeout: .seconds(10)).recv(Int.self, timeout: .seconds(10)) == 1729)
        try client.get()
    }

    @Test("a client that sends and closes before accept is still delivered; poll sees a reply", arguments: AddressFamily.allCases)
    func earlyClient(family: AddressFamily) throws {
        let listener = try Listener(family: family, authkey: nil)
        let client = try Connection(connectingTo: listener.address, timeout: .seconds(10))
        try client.send(1729)
        let accepted = try listener.accept(timeout: .seconds(10))
        #expect(try accepted.recv(Int.self, timeout: .seconds(10)) == 1729)
        try accepted.sendBytes(Array("hello".utf8))
        #expect(try client.poll(timeout: .seconds(1)))
        client.close()
        expectCode(.endOfFile) { try accepted.recvBytes(timeout: .seconds(10)) }
    }

    @Test("many clients per listener, each authenticated, served concurrently", arguments: AddressFamily.allCases)
    func manyClients(family: AddressFamily) throws {
        let listener = try Listener(family: family, authkey: testKey)
        let clients = (0..<8).map { index in
            ListenerTestResult { () throws -> Int in
                let connection = try Connection(connectingTo: listener.address, authkey: testKey, timeout: .seconds(20))
                try connection.send(index)
                return try connection.recv(Int.self, timeout: .seconds(20))
            }
        }
        for _ in 0..<8 {
            let connection = try listener.accept(timeout: .seconds(20))
            let index = try connection.recv(Int.self, timeout: .seconds(20))
            try connection.send(index * 10)
        }
        for (index, client) in clients.enumerated() { #expect(try client.get() == index * 10) }
    }

    @Test("an empty key is a key: the handshake completes")
    func emptyKey() throws {
        let listener = try Listener(authkey: [])
        let client = ListenerTestResult { try Connection(connectingTo: listener.address, authkey: [], timeout: .seconds(10)).send(1729) }
        #expect(try listener.accept(timeout: .seconds(10)).recv(Int.self, timeout: .seconds(10)) == 1729)
        try client.get()
    }

    @Test("different keys: the listener sees 'digest received was wrong', the client 'digest sent was rejected'")
    func wrongKey() throws {
        let listener = try Listener(family: .tcp, authkey: testKey)
        let client = ListenerTestResult { try Connection(connectingTo: listener.address, authkey: Array("other".utf8), timeout: .seconds(10)) }
        let serverError = expectCode(.authenticationFailed) { try listener.accept(timeout: .seconds(10)) }
        #expect(serverError?.message == "digest received was wrong")
        let clientError = expectCode(.authenticationFailed) { try client.get() }
        #expect(clientError?.message == "digest sent was rejected")
        // A client with a key against a listener without one fails too, without hanging.
        let open = try Listener(authkey: nil)
        let keyed = ListenerTestResult { try Connection(connectingTo: open.address, authkey: testKey, timeout: .seconds(2)) }
        let accepted = try open.accept(timeout: .seconds(10))
        expectCode(.timedOut) { try keyed.get() }
        accepted.close()
    }

    @Test("HMAC digests match RFC 2202 and RFC 4231 test vectors")
    func digests() throws {
        let key = [UInt8](repeating: 0x0b, count: 16)
        #expect(hex(HandshakeDigest.md5.authenticationCode(Array("Hi There".utf8), key: key)) == "9294727a3638bb1c13f48ef8158bfc9d")
        let key20 = [UInt8](repeating: 0x0b, count: 20)
        #expect(hex(HandshakeDigest.sha256.authenticationCode(Array("Hi There".utf8), key: key20))
                == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        #expect(constantTimeEqual([1, 2], [1, 2]) && !constantTimeEqual([1, 2], [1, 3]) && !constantTimeEqual([1], [1, 2]))
    }

    @Test("the listener's challenge is {sha256} + 40 random bytes; a legacy raw MD5 answer is accepted")
    func deliverToLegacyClient() throws {
        let (server, client) = try makePipe()
        let delivered = ListenerTestResult { try deliverChallenge(server, authkey: testKey, deadline: .after(.seconds(10))) }
        let challenge = try client.recvBytes(timeout: .seconds(10))
        #expect(challenge.starts(with: Array("#CHALLENGE#{sha256}".utf8)))
        #expect(challenge.count == 11 + 8 + 40)
        let message = Array(challenge.dropFirst(11))
        try client.sendBytes(HandshakeDigest.md5.authenticationCode(message, key: testKey))  // what Python 3.11 answers
        #expect(try client.recvBytes(timeout: .seconds(10)) == Array("#WELCOME#".utf8))
        try delivered.get()
    }

    @Test("a legacy 20-byte challenge gets a raw 16-byte HMAC-MD5 answer")
    func answerLegacyServer() throws {
        let (server, client) = try makePipe()
        let answered = ListenerTestResult { try answerChallenge(client, authkey: testKey, deadline: .after(.seconds(10))) }
        let message = (0..<20).map { UInt8($0 * 7) }
        try server.sendBytes(Array("#CHALLENGE#".utf8) + message)
        let answer = try server.recvBytes(timeout: .seconds(10))
        #expect(answer == HandshakeDigest.md5.authenticationCode(message, key: testKey))
        try server.sendBytes(Array("#WELCOME#".utf8))
        try answered.get()
    }

    @Test("bogus answers and verdicts are authentication failures on both sides")
    func bogusHandshakes() throws {
        // The listener side with a bogus answer (Python's test_deliver_challenge_auth_failure).
        for answer in [Array("{sha256}".utf8) + [UInt8](repeating: 0, count: 32), [UInt8](repeating: 1, count: 16),
                       Array("bogus".utf8), Array("{sha3_256}".utf8) + [UInt8](repeating: 0, count: 32)] {
            let (server, client) = try makePipe()
            try client.sendBytes(answer)
            expectCode(.authenticationFailed) { try deliverChallenge(server, authkey: Array("abc".utf8), deadline: .after(.seconds(5))) }
            _ = try client.recvBytes(timeout: .seconds(5))
            #expect(try client.recvBytes(timeout: .seconds(5)) == Array("#FAILURE#".utf8))
        }
        // The client side with a bogus verdict (Python's test_answer_challenge_auth_failure).
        let (server, client) = try makePipe()
        try server.sendBytes(Array("#CHALLENGE#".utf8) + [UInt8](repeating: 3, count: 20))
        try server.sendBytes(Array("something bogus".utf8))
        expectCode(.authenticationFailed) { try answerChallenge(client, authkey: Array("abc".utf8), deadline: .after(.seconds(5))) }
        // A non-challenge, and a too-short challenge.
        for frame in [Array("hello".utf8), Array("#CHALLENGE#short".utf8)] {
            let (server, client) = try makePipe()
            try server.sendBytes(frame)
            expectCode(.authenticationFailed) { try answerChallenge(client, authkey: testKey, deadline: .after(.seconds(5))) }
        }
    }

    @Test("a client sending garbage or a huge length before authenticating is dropped; the next one is served")
    func garbageClientsAreDropped() throws {
        let listener = try Listener(family: .tcp, authkey: testKey)
        for garbage: [UInt8] in [[0x7f, 0xff, 0xff, 0xff], [0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0],
                                 [0x80, 0, 0, 0], [0, 0, 1, 1] + [UInt8](repeating: 0x41, count: 257)] {
            let raw = try rawClient(listener)
            try garbage.withUnsafeBytes { try Syscall.writeAll(raw.fileno, $0) }
            let start = ContinuousClock.now
            let error = expectCode(.authenticationFailed) { try listener.accept(timeout: .seconds(10)) }
            #expect(error?.message.contains("length") == true)
            #expect(secondsSince(start) < 5)
        }
        let good = ListenerTestResult { try Connection(connectingTo: listener.address, authkey: testKey, timeout: .seconds(10)).send(1) }
        #expect(try listener.accept(timeout: .seconds(10)).recv(Int.self, timeout: .seconds(10)) == 1)
        try good.get()
    }

    @Test("a silent client is dropped after the handshake timeout")
    func handshakeTimeout() throws {
        let listener = try Listener(authkey: testKey, handshakeTimeout: .milliseconds(200))
        let silent = try rawClient(listener)
        let start = ContinuousClock.now
        expectCode(.timedOut) { try listener.accept(timeout: .seconds(20)) }
        #expect(secondsSince(start) >= 0.1 && secondsSince(start) < 10)
        silent.close()
    }

    @Test("accept: timeout, close from another thread wakes it, calls after close throw .closed")
    func acceptTimeoutAndClose() throws {
        let listener = try Listener()
        let start = ContinuousClock.now
        expectCode(.timedOut) { try listener.accept(timeout: .milliseconds(100)) }
        #expect(secondsSince(start) >= 0.09 && secondsSince(start) < 5)
        let blocked = ListenerTestResult { try listener.accept(timeout: .seconds(20)) }
        usleep(50_000)
        listener.close()
        expectCode(.closed) { try blocked.get() }
        expectCode(.closed) { try listener.accept(timeout: .zero) }
        expectCode(.closed) { try listener.waitDescriptor }
        #expect(listener.closed)
        listener.close()
    }

    @Test("a handled signal does not break accept")
    func signalDuringAccept() throws {
        ignoreTestSignal()
        let listener = try Listener(authkey: testKey)
        let me = pthread_self()
        let client = ListenerTestResult { () throws -> String in
            for _ in 0..<3 {
                usleep(20_000)
                pthread_kill(me, testSignal)
            }
            return try Connection(connectingTo: listener.address, authkey: testKey, timeout: .seconds(10)).recv(String.self, timeout: .seconds(10))
        }
        try listener.accept().send("welcome")
        #expect(try client.get() == "welcome")
    }

    @Test("connecting where nothing listens fails with the system's reason")
    func nothingListens() throws {
        let missing = expectCode(.system) { try Connection(connectingTo: .unix("/tmp/no-such-listener-\(getpid())")) }
        #expect(missing?.errno == ENOENT)
        let tcp = try Listener(family: .tcp)
        let address = tcp.address
        tcp.close()
        let refused = expectCode(.system) { try Connection(connectingTo: address, timeout: .seconds(5)) }
        #expect(refused?.errno == ECONNREFUSED)
        expectCode(.system) { try Connection(connectingTo: .tcp(host: "no-such-host.invalid", port: 1), timeout: .seconds(5)) }
    }

    @Test("addresses parse and print")
    func addresses() throws {
        #expect(try ConnectionAddress(parsing: "127.0.0.1:8000") == .tcp(host: "127.0.0.1", port: 8000))
        #expect(try ConnectionAddress(parsing: "[::1]:80") == .tcp(host: "::1", port: 80))
        #expect(try ConnectionAddress(parsing: "/tmp/socket") == .unix("/tmp/socket"))
        #expect(try ConnectionAddress(parsing: "relative") == .unix("relative"))
        expectCode(.invalidArgument) { try ConnectionAddress(parsing: "host:http") }
        expectCode(.invalidArgument) { try ConnectionAddress(parsing: "") }
        #expect(ConnectionAddress.tcp(host: "::1", port: 80).description == "[::1]:80")
        #expect(AddressFamily.allCases.map(\.rawValue) == ["AF_UNIX", "AF_INET"])
    }

    @Test("IPv6 loopback, when the machine has it")
    func ipv6() throws {
        guard let listener = try? Listener(address: .tcp(host: "::1", port: 0), authkey: testKey) else { return }
        let client = ListenerTestResult { try Connection(connectingTo: listener.address, authkey: testKey, timeout: .seconds(10)).send(6) }
        #expect(try listener.accept(timeout: .seconds(10)).recv(Int.self, timeout: .seconds(10)) == 6)
        try client.get()
    }

    @Test("async accept", .ownThread)
    func asyncAccept() async throws {
        let listener = try Listener(authkey: testKey)
        let client = ListenerTestResult { try Connection(connectingTo: listener.address, authkey: testKey, timeout: .seconds(10)).send(8) }
        let connection = try await listener.accept(timeout: .seconds(10))
        #expect(try await connection.recv(Int.self, timeout: .seconds(10)) == 8)
        try client.get()
    }
}

func hex(_ bytes: [UInt8]) -> String {
    bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}
