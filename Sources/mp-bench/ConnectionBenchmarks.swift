import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// Connection workloads: a child process at the other end of a Pipe, the measurement in the parent.

/// Echoes `count` messages' bytes back to the parent.
struct BenchEcho: ProcessTask {
    let connection: Connection
    let count: Int
    func run() throws {
        for _ in 0..<count { try connection.sendBytes(connection.recvBytes()) }
    }
}

/// Receives `count` messages, as bytes or as values, then says "done".
struct BenchSink: ProcessTask {
    let connection: Connection
    let count: Int
    let values: Bool
    func run() throws {
        for _ in 0..<count {
            if values { _ = try connection.recv(SmallMessage.self) } else { _ = try connection.recvBytes() }
        }
        try connection.sendBytes(Array("done".utf8))
    }
}

/// The small Codable message: Python sends the tuple `(i, 'piao', 2.5)`.
struct SmallMessage: Codable {
    let id: Int
    let name: String
    let value: Double
}

/// Starts `task` in a child with the other end of a fresh pipe, runs `body` with our end, and joins.
private func withChild(_ task: (Connection) -> any ProcessTask, _ body: (Connection) throws -> Double) throws -> Double {
    let (mine, theirs) = try makePipe()
    let child = ChildProcess(task(theirs))
    try child.start()
    theirs.close()
    let result = try body(mine)
    guard try child.join(timeout: .seconds(60)), child.exitCode == 0 else {
        throw BenchError("child ended with \(String(describing: child.exitCode))")
    }
    return result
}

/// Microseconds per round trip of a 16-byte message.
private func pipeRoundTrip() throws -> Double {
    let warmup = 2_000, count = 100_000
    return try withChild({ BenchEcho(connection: $0, count: warmup + count) }) { connection in
        let message = [UInt8](repeating: 0x78, count: 16)
        for _ in 0..<warmup { try connection.sendBytes(message); _ = try connection.recvBytes() }
        let start = now()
        for _ in 0..<count { try connection.sendBytes(message); _ = try connection.recvBytes() }
        return (now() - start) / Double(count) * 1e6
    }
}

/// Megabytes (10^6 bytes) per second of 1 MiB messages, one way.
private func pipeBytes() throws -> Double {
    let count = 2_000
    return try withChild({ BenchSink(connection: $0, count: count, values: false) }) { connection in
        let message = [UInt8](repeating: 0x78, count: 1 << 20)
        let start = now()
        for _ in 0..<count { try connection.sendBytes(message) }
        _ = try connection.recvBytes()
        return Double(count << 20) / 1e6 / (now() - start)
    }
}

/// Small Codable messages per second, one way, written in batches with `send(contentsOf:)`.
private func smallMessages() throws -> Double {
    let count = 2_000_000, batch = 1_000
    return try withChild({ BenchSink(connection: $0, count: count, values: true) }) { connection in
        let start = now()
        var messages: [SmallMessage] = []
        messages.reserveCapacity(batch)
        for first in stride(from: 0, to: count, by: batch) {
            messages.removeAll(keepingCapacity: true)
            for id in first..<first + batch { messages.append(SmallMessage(id: id, name: "piao", value: 2.5)) }
            try connection.send(contentsOf: messages)
        }
        _ = try connection.recvBytes()
        return Double(count) / (now() - start)
    }
}

/// Small Codable messages per second, one way, one `send` call each.
private func smallMessagesEach() throws -> Double {
    let count = 500_000
    return try withChild({ BenchSink(connection: $0, count: count, values: true) }) { connection in
        let start = now()
        for id in 0..<count { try connection.send(SmallMessage(id: id, name: "piao", value: 2.5)) }
        _ = try connection.recvBytes()
        return Double(count) / (now() - start)
    }
}

/// CPython's side of a one-way workload: a child receives `count` messages with `receive`, then says
/// "done"; the parent sends them with `send` (which may use `i`) and prints `count / seconds * scale`.
private func pythonOneWay(count: Int, receive: String, setup: String = "", send: String, scale: String = "1") -> String {
    """
    import multiprocessing as mp, time
    def sink(conn, n):
        receive = conn.\(receive)
        for _ in range(n):
            receive()
        conn.send_bytes(b'done')
    def measure(n):
        a, b = mp.Pipe()
        p = mp.Process(target=sink, args=(b, n)); p.start()
        \(setup)
        send_bytes, send = a.send_bytes, a.send
        start = time.monotonic()
        for i in range(n):
            \(send)
        a.recv_bytes()
        elapsed = time.monotonic() - start
        p.join()
        return n * \(scale) / elapsed
    if __name__ == '__main__':
        print(measure(\(count)))
    """
}

/// CPython's 16-byte round trip over a Pipe with an echoing child, microseconds.
let pythonPipeRoundTrip = """
    import multiprocessing as mp, time
    def echo(conn, n):
        recv, send = conn.recv_bytes, conn.send_bytes
        for _ in range(n):
            send(recv())
    def measure(warmup, n):
        a, b = mp.Pipe()
        p = mp.Process(target=echo, args=(b, warmup + n)); p.start()
        message = b'x' * 16
        recv, send = a.recv_bytes, a.send_bytes
        for _ in range(warmup):
            send(message); recv()
        start = time.monotonic()
        for _ in range(n):
            send(message); recv()
        elapsed = time.monotonic() - start
        p.join()
        return elapsed / n * 1e6
    if __name__ == '__main__':
        print(measure(2000, 30000))
    """

private let pythonSmallMessages = pythonOneWay(count: 200_000, receive: "recv", send: "send((i, 'piao', 2.5))")

let connectionWorkloads: [Workload] = [
    Workload(name: "pipe-roundtrip", unit: "us", higherIsBetter: false, swift: pipeRoundTrip, python: pythonPipeRoundTrip),
    Workload(name: "pipe-bytes-1mib", unit: "MB/s", higherIsBetter: true, swift: pipeBytes,
             python: pythonOneWay(count: 1000, receive: "recv_bytes", setup: "message = b'x' * (1 << 20)",
                                  send: "send_bytes(message)", scale: "(1 << 20) / 1e6")),
    Workload(name: "connection-small-msgs", unit: "msg/s", higherIsBetter: true, swift: smallMessages, python: pythonSmallMessages),
    Workload(name: "connection-small-msgs-each", unit: "msg/s", higherIsBetter: true, swift: smallMessagesEach, python: pythonSmallMessages),
]
