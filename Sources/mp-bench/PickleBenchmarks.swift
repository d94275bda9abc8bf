import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// Pickle workloads: our pickle coders against CPython's C pickle module, and a CPython Client's round
// trip through a Swift echo against the same client through a CPython echo.

/// The small record: Python's `{'id': 12345, 'name': 'piao', 'value': 2.5, 'tags': ['a', 'b'], 'ok': True}`.
struct SmallRecord: Codable {
    let id: Int
    let name: String
    let value: Double
    let tags: [String]
    let ok: Bool
}

/// `pickle.dumps` of the small record's dict by CPython 3.11 (protocol 4, with its frame and memo opcodes).
private let cpythonSmallPickle: [UInt8] = [
    128, 4, 149, 69, 0, 0, 0, 0, 0, 0, 0, 125, 148, 40, 140, 2, 105, 100, 148, 77, 57, 48, 140, 4, 110, 97, 109, 101,
    148, 140, 4, 112, 105, 97, 111, 148, 140, 5, 118, 97, 108, 117, 101, 148, 71, 64, 4, 0, 0, 0, 0, 0, 0, 140, 4, 116,
    97, 103, 115, 148, 93, 148, 40, 140, 1, 97, 148, 140, 1, 98, 148, 101, 140, 2, 111, 107, 148, 136, 117, 46,
]

/// Pickles of the small record decoded into the struct per second.
private func pickleLoads() throws -> Double {
    let decoder = PickleDecoder()
    let count = 300_000
    var checksum = 0
    let start = now()
    for _ in 0..<count { checksum &+= try decoder.decode(SmallRecord.self, from: cpythonSmallPickle).id }
    let elapsed = now() - start
    guard checksum == 12345 &* count else { throw BenchError("decoded the wrong record") }
    return Double(count) / elapsed
}

/// The small record encoded as a pickle (CPython's default protocol) per second.
private func pickleDumps() throws -> Double {
    let encoder = try PickleEncoder()
    let record = SmallRecord(id: 12345, name: "piao", value: 2.5, tags: ["a", "b"], ok: true)
    let count = 300_000
    var total = 0
    let start = now()
    for _ in 0..<count { total &+= try encoder.encode(record).count }
    let elapsed = now() - start
    guard total > count else { throw BenchError("encoded nothing") }
    return Double(count) / elapsed
}

private let pythonPickleTimer = """
    import pickle, time
    def measure(n):
        record = {'id': 12345, 'name': 'piao', 'value': 2.5, 'tags': ['a', 'b'], 'ok': True}
        data = pickle.dumps(record)
        dumps, loads = pickle.dumps, pickle.loads
        start = time.perf_counter()
        for _ in range(n):
            OPERATION
        return n / (time.perf_counter() - start)
    print(measure(300000))
    """

/// A Swift echo server for Python clients: each message is unpickled to a ``PythonValue`` and pickled back.
struct PickleEchoServer: ProcessTask {
    let path: String
    let ready: Connection
    func run() throws {
        let listener = try Listener(address: .unix(path), authkey: Array("bench".utf8))
        try ready.sendBytes(Array("ready".utf8))
        let connection = try listener.accept(timeout: .seconds(60)).pickled()
        while let message = try? connection.recv(PythonValue.self) {
            try connection.send(message)
        }
        listener.close()
    }
}

/// The CPython client of python-client-roundtrip: microseconds per `send` + `recv` of the small dict.
private func pythonClient(address: String) -> String {
    """
    import time
    from multiprocessing.connection import Client
    def measure(address, warmup, n):
        conn = Client(address, authkey=b'bench')
        record = {'id': 12345, 'name': 'piao', 'value': 2.5, 'tags': ['a', 'b'], 'ok': True}
        send, recv = conn.send, conn.recv
        for _ in range(warmup):
            send(record); recv()
        start = time.perf_counter()
        for _ in range(n):
            send(record); recv()
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed / n * 1e6
    """ + "\nprint(measure(\(address), 2000, 30000))\n"
}

/// Microseconds per round trip of a CPython client through the Swift echo server.
private func pythonClientRoundTrip() throws -> Double {
    let path = "/tmp/mp-bench-echo-\(getpid())"
    unlink(path)
    let (mine, theirs) = try makePipe()
    let server = ChildProcess(PickleEchoServer(path: path, ready: theirs))
    try server.start()
    theirs.close()
    _ = try mine.recvBytes(timeout: .seconds(30))
    defer { unlink(path) }
    let result = try runPython(pythonClient(address: "'\(path)'"))
    guard try server.join(timeout: .seconds(30)), server.exitCode == 0 else {
        throw BenchError("echo server ended with \(String(describing: server.exitCode))")
    }
    return result
}

let pickleWorkloads: [Workload] = [
    Workload(name: "pickle-loads-small", unit: "msg/s", higherIsBetter: true, swift: pickleLoads,
             python: pythonPickleTimer.replacing("OPERATION", with: "loads(data)")),
    Workload(name: "pickle-dumps-small", unit: "msg/s", higherIsBetter: true, swift: pickleDumps,
             python: pythonPickleTimer.replacing("OPERATION", with: "dumps(record)")),
    Workload(name: "python-client-roundtrip", unit: "us", higherIsBetter: false, swift: pythonClientRoundTrip, python: """
        import multiprocessing as mp, os
        from multiprocessing.connection import Listener
        def echo(address, ready):
            with Listener(address, authkey=b'bench') as listener:
                ready.send_bytes(b'ready')
                with listener.accept() as conn:
                    try:
                        while True:
                            conn.send(conn.recv())
                    except EOFError:
                        pass
        if __name__ == '__main__':
            address = '/tmp/mp-bench-pyecho-%d' % os.getpid()
            mine, theirs = mp.Pipe()
            server = mp.Process(target=echo, args=(address, theirs)); server.start()
            mine.recv_bytes()

        """ + pythonClient(address: "address").split(separator: "\n").map { "    " + $0 }.joined(separator: "\n") + "\n    server.join()\n"),
]
