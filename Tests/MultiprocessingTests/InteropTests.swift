#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// Live wire compatibility with CPython's multiprocessing.connection: our Listener with Python's Client and
// Python's Listener with our client, with and without authentication, for every CPython on the machine.

/// A CPython interpreter to test against: the `python3` on PATH, and each pyenv version 3.7 to 3.13
/// (3.12+ challenge with {sha256}; 3.11 and older with legacy HMAC-MD5; 3.7 has the oldest framing).
struct Interpreter: CustomTestStringConvertible, Sendable {
    let label: String
    /// The program to run, or nil when this version is not installed.
    let path: String?
    var testDescription: String { label }

    static let all: [Interpreter] = {
        let root = getenv("PYENV_ROOT").map { String(cString: $0) }
            ?? (getenv("HOME").map { String(cString: $0) + "/.pyenv" } ?? "")
        let installed = directoryEntries("\(root)/versions")
        let versions = (7...13).map { minor -> Interpreter in
            let match = installed.filter { $0.hasPrefix("3.\(minor).") }.sorted().last
            return Interpreter(label: "3.\(minor)", path: match.map { "\(root)/versions/\($0)/bin/python3" })
        }
        return [Interpreter(label: "python3", path: "python3")] + versions
    }()
}

private func directoryEntries(_ path: String) -> [String] {
    guard let directory = opendir(path) else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if !name.hasPrefix(".") { names.append(name) }
    }
    return names
}

/// A running Python interop peer (`interopPeerScript`) whose output is collected.
final class PythonPeer {
    let pid: pid_t
    private let output: Int32
    private var collected: [UInt8] = []

    init(_ interpreter: String, _ arguments: [String], script: String? = nil) throws {
        // A close-on-exec socket pair, made atomically, so that no other test's child inherits it.
        let pair = try Syscall.socketPair()
        let fds = [pair.0, pair.1]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        let argv = ([interpreter, "-u", "-c", script ?? interopPeerScript] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let status = posix_spawnp(&pid, interpreter, &actions, nil, argv, environ)
        Glibc.close(fds[1])
        guard status == 0 else {
            Glibc.close(fds[0])
            throw MultiprocessingError(.system, "cannot run \(interpreter)", errno: status)
        }
        self.pid = pid
        output = fds[0]
    }

    deinit {
        Glibc.kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        Glibc.close(output)
    }

    /// Reads output until it holds a whole line, and returns that line.
    func readLine(timeout: Duration) throws -> String {
        let deadline = Deadline.after(timeout)
        while true {
            if let newline = collected.firstIndex(of: 10) {
                defer { collected.removeSubrange(...newline) }
                return String(decoding: collected[..<newline], as: UTF8.self)
            }
            guard try read(until: deadline) else { throw MultiprocessingError(.endOfFile, "python ended: \(text)") }
        }
    }

    /// Waits for the peer to end; returns its exit status and everything it printed.
    func finish(timeout: Duration) throws -> (status: Int32, output: String) {
        let deadline = Deadline.after(timeout)
        while try read(until: deadline) {}
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            guard !deadline.hasPassed else { throw MultiprocessingError(.timedOut, "python did not end: \(text)") }
            usleep(1000)
        }
        return (status, text)
    }

    private var text: String { String(decoding: collected, as: UTF8.self) }

    /// Reads what is there; false at end of output.
    private func read(until deadline: Deadline) throws -> Bool {
        guard try !Syscall.pollReadable([output], until: deadline).isEmpty else {
            throw MultiprocessingError(.timedOut, "python printed nothing in time: \(text)")
        }
        var chunk = [UInt8](repeating: 0, count: 4096)
        let count = Glibc.read(output, &chunk, chunk.count)
        guard count > 0 else { return false }
        collected += chunk[..<count]
        return true
    }
}

/// The messages the Python client sends; our side echoes them.
private let interopMessages: [[UInt8]] = [
    Array("hello".utf8), [], (0..<256).map { UInt8($0) }, [], [UInt8](repeating: 0x78, count: 100_000),
    [UInt8](repeating: 0, count: 1 << 20), Array("bye".utf8),
]

private let interopKey = "interop key"

@Suite("Interoperability with CPython's multiprocessing.connection")
struct InteropTests {
    /// The interpreter's path, or nil with a note when it is not installed.
    private func available(_ interpreter: Interpreter) -> String? {
        guard let path = interpreter.path else {
            print("skipping CPython \(interpreter.label): not installed on this machine")
            return nil
        }
        return path
    }

    @Test("our Listener serves Python's Client (echo of every frame)", arguments: Interpreter.all, AddressFamily.allCases)
    func pythonClient(interpreter: Interpreter, family: AddressFamily) throws {
        guard let python = available(interpreter) else { return }
        for key in [nil, interopKey] {
            let listener = try Listener(family: family, authkey: key.map { Array($0.utf8) })
            let peer = try PythonPeer(python, ["client", listener.address.description, key ?? "-"])
            let connection = try listener.accept(timeout: .seconds(30))
            var echoed = 0
            while true {
                let message: [UInt8]
                do {
                    message = try connection.recvBytes(timeout: .seconds(30))
                } catch let error as MultiprocessingError where error.code == .endOfFile {
                    break
                }
                try connection.sendBytes(message)
                echoed += 1
            }
            let (status, output) = try peer.finish(timeout: .seconds(30))
            #expect(status == 0 && output.hasSuffix("OK\n"), "\(interpreter.label) \(family) key \(key ?? "-"): \(output)")
            #expect(echoed == interopMessages.count + 1)
        }
    }

    @Test("our client talks to Python's Listener", arguments: Interpreter.all, AddressFamily.allCases)
    func pythonListener(interpreter: Interpreter, family: AddressFamily) throws {
        guard let python = available(interpreter) else { return }
        for key in [nil, interopKey] {
            let address = family == .tcp ? "127.0.0.1:0" : "/tmp/mp-interop-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            let peer = try PythonPeer(python, ["server", address, key ?? "-"])
            let bound = try ConnectionAddress(parsing: peer.readLine(timeout: .seconds(30)))
            let connection = try Connection(connectingTo: bound, authkey: key.map { Array($0.utf8) }, timeout: .seconds(30))
            for message in interopMessages {
                try connection.sendBytes(message)
                #expect(try connection.recvBytes(timeout: .seconds(30)) == message)
            }
            try connection.sendBytes(Array("abcdefghij".utf8), offset: 2, size: 5)
            var buffer = [UInt8](repeating: 0, count: 10)
            #expect(try connection.recvBytes(into: &buffer, offset: 3, timeout: .seconds(30)) == 5)
            #expect(Array(buffer[3..<8]) == Array("cdefg".utf8))
            connection.close()
            let (status, output) = try peer.finish(timeout: .seconds(30))
            #expect(status == 0 && output.hasSuffix("OK \(interopMessages.count + 1)\n"), "\(interpreter.label) \(family): \(output)")
            if case .unix(let path) = bound { unlink(path) }
        }
    }

    @Test("different keys fail on both sides, whoever listens", arguments: Interpreter.all)
    func wrongKeys(interpreter: Interpreter) throws {
        guard let python = available(interpreter) else { return }
        // Our listener, Python's client.
        let listener = try Listener(family: .tcp, authkey: Array("ours".utf8))
        let client = try PythonPeer(python, ["client", listener.address.description, "theirs"])
        let accepted = expectCode(.authenticationFailed) { try listener.accept(timeout: .seconds(30)) }
        #expect(accepted?.message == "digest received was wrong")
        var (status, output) = try client.finish(timeout: .seconds(30))
        #expect(status == 0 && output.contains("AUTHFAIL digest sent was rejected"), "\(output)")

        // Python's listener, our client.
        let server = try PythonPeer(python, ["server", "127.0.0.1:0", "theirs"])
        let address = try ConnectionAddress(parsing: server.readLine(timeout: .seconds(30)))
        let connecting = expectCode(.authenticationFailed) {
            try Connection(connectingTo: address, authkey: Array("ours".utf8), timeout: .seconds(30))
        }
        #expect(connecting?.message == "digest sent was rejected")
        (status, output) = try server.finish(timeout: .seconds(30))
        #expect(status == 0 && output.contains("AUTHFAIL digest received was wrong"), "\(output)")
    }
}

/// The Python side, run with `python3 -c` (kept here rather than in a .py file, which SwiftPM would warn
/// about as an unhandled resource of the test target).
private let interopPeerScript = #"""
# The Python side of the interoperability tests.

# Speaks multiprocessing.connection with a Swift peer, as a client or as a listener, and prints a
# verdict on its last line: OK, or AUTHFAIL <message> when the handshake failed on this side.
#
#     python3 -c SCRIPT client ADDRESS KEY     connect, send MESSAGES, expect each echoed back
#     python3 -c SCRIPT server ADDRESS KEY     listen (print the address), echo every message until EOF
#
# ADDRESS is HOST:PORT for TCP or a Unix socket path; KEY '-' means no authentication.
# Works with Python 3.7 and later.
import signal
import sys
from multiprocessing.connection import AuthenticationError, Client, Listener

MESSAGES = [b'hello', b'', bytes(range(256)), b'', b'x' * 100000, bytes(1 << 20), b'bye']


def parse_address(text):
    if '/' not in text and ':' in text:
        host, port = text.rsplit(':', 1)
        return (host, int(port))
    return text


def format_address(address):
    if isinstance(address, tuple):
        return '%s:%d' % (address[0], address[1])
    return address


def run_client(address, key):
    try:
        connection = Client(address, authkey=key)
    except AuthenticationError as error:
        print('AUTHFAIL', error)
        return
    for message in MESSAGES:
        connection.send_bytes(message)
        echoed = connection.recv_bytes()
        assert echoed == message, 'echo of %d bytes came back as %d bytes' % (len(message), len(echoed))
    # send_bytes with offset and size, and recv_bytes_into at an offset.
    connection.send_bytes(b'abcdefghij', 2, 5)
    buffer = bytearray(10)
    assert connection.recv_bytes_into(buffer, 3) == 5 and bytes(buffer[3:8]) == b'cdefg'
    assert not connection.poll(0)
    connection.close()
    print('OK')


def run_server(address, key):
    listener = Listener(address, authkey=key)
    print(format_address(listener.address))
    sys.stdout.flush()
    try:
        connection = listener.accept()
    except AuthenticationError as error:
        print('AUTHFAIL', error)
        return
    count = 0
    while True:
        try:
            message = connection.recv_bytes()
        except EOFError:
            break
        connection.send_bytes(message)
        count += 1
    listener.close()
    print('OK', count)


def main():
    signal.alarm(60)  # never outlive a stuck test
    mode, address, key = sys.argv[1:4]
    key = None if key == '-' else key.encode()
    if mode == 'client':
        run_client(parse_address(address), key)
    else:
        run_server(parse_address(address), key)


if __name__ == '__main__':
    main()
"""#
