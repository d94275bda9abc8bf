import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

/// A child that does nothing.
struct NoOp: ProcessTask {
    func run() throws {}
}

/// A child that waits until its parent closes the pipe.
struct Idle: ProcessTask {
    let until: Connection
    func run() throws { _ = try? until.recvBytes() }
}

/// Milliseconds per sequential start + join of a no-op child.
private func startJoin(_ method: StartMethod, count: Int) throws -> Double {
    let context = ProcessContext(method)
    let warm = ChildProcess(NoOp(), context: context)
    try warm.start()
    try warm.join()
    let start = now()
    for _ in 0..<count {
        let child = ChildProcess(NoOp(), context: context)
        try child.start()
        try child.join()
        guard child.exitCode == 0 else { throw BenchError("child ended with \(String(describing: child.exitCode))") }
    }
    return (now() - start) / Double(count) * 1000
}

/// Resident memory (`field` of /proc/PID/status: VmRSS, or RssAnon for the child's private part) of an
/// idle spawned child, MiB.
private func idleChildMemory(_ field: String) throws -> Double {
    let (reader, writer) = try makePipe(duplex: false)
    let child = ChildProcess(Idle(until: reader))
    try child.start()
    reader.close()
    defer {
        writer.close()
        _ = try? child.join(timeout: .seconds(10))
    }
    usleep(300_000)  // let the child finish starting up before reading its memory
    return try statusMiB(field, of: child.pid ?? 0)
}

/// A memory field of `pid`'s /proc status in MiB.
func statusMiB(_ field: String, of pid: Int32) throws -> Double {
    guard let file = fopen("/proc/\(pid)/status", "r") else { throw BenchError("no /proc/\(pid)/status") }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, 256, file) != nil {
        let text = cString(line)
        if text.hasPrefix(field + ":") {
            let kib = text.split(separator: " ").compactMap { Double($0) }.first ?? 0
            return kib / 1024
        }
    }
    throw BenchError("no \(field) for \(pid)")
}

private func pythonStartJoin(_ method: String, count: Int) -> String {
    """
    import multiprocessing as mp, time
    def noop():
        pass
    def measure(n):
        Process = mp.get_context('\(method)').Process
        p = Process(target=noop); p.start(); p.join()
        start = time.monotonic()
        for _ in range(n):
            p = Process(target=noop); p.start(); p.join()
            assert p.exitcode == 0
        return (time.monotonic() - start) / n * 1000
    if __name__ == '__main__':
        print(measure(\(count)))
    """
}

let processWorkloads: [Workload] = [
    Workload(name: "start-join-spawn", unit: "ms", higherIsBetter: false,
             swift: { try startJoin(.spawn, count: 200) }, python: pythonStartJoin("spawn", count: 20)),
    Workload(name: "start-join-forkserver", unit: "ms", higherIsBetter: false,
             swift: { try startJoin(.forkserver, count: 500) }, python: pythonStartJoin("forkserver", count: 100)),
    Workload(name: "start-join-fork", unit: "ms", higherIsBetter: false,
             swift: { try startJoin(.fork, count: 500) }, python: pythonStartJoin("fork", count: 200)),
    Workload(name: "child-rss", unit: "MiB", higherIsBetter: false,
             swift: { try idleChildMemory("VmRSS") }, python: pythonIdleChild("VmRSS")),
    Workload(name: "child-private-memory", unit: "MiB", higherIsBetter: false,
             swift: { try idleChildMemory("RssAnon") }, python: pythonIdleChild("RssAnon")),
]

/// A Python program that measures `field` of an idle spawned child.
private func pythonIdleChild(_ field: String) -> String {
    """
    import multiprocessing as mp, time
    def idle(conn):
        conn.poll(30)
    if __name__ == '__main__':
        ctx = mp.get_context('spawn')
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=idle, args=(reader,)); p.start()
        time.sleep(0.3)
        with open(f'/proc/{p.pid}/status') as f:
            kib = [int(l.split()[1]) for l in f if l.startswith('\(field):')][0]
        writer.send_bytes(b'x'); p.join()
        print(kib / 1024)
    """
}
