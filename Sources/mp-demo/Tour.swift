import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// A short tour of why a Swift program reaches for processes.

/// Ends in a chosen way, to show how each end is reported.
struct Ending: ProcessTask {
    enum Way: String, Codable { case returns, exits3, throwsError, crashes, hangs }
    let way: Way
    func run() throws {
        switch way {
        case .returns: return
        case .exits3: exit(3)
        case .throwsError: throw MultiprocessingError(.invalidArgument, "this task failed on purpose")
        case .crashes:
            let numbers: [Int] = []
            print(numbers[1])  // out of bounds: the Swift runtime traps, and only this child dies
        case .hangs: while true { pause() }
        }
    }
}

/// Squares numbers received over a connection until it closes: message passing between processes.
struct Squarer: ProcessTask {
    let connection: Connection
    func run() throws {
        while true {
            guard let number = try? connection.recv(Int.self, timeout: .seconds(30)) else { return }
            try connection.send(number * number)
        }
    }
}

/// Starts a daemon, reports its pid, and waits to be killed.
struct DaemonOwner: ProcessTask {
    let report: Connection
    func run() throws {
        let daemon = ChildProcess(Ending(way: .hangs), daemon: true)
        try daemon.start()
        try report.send(daemon.pid ?? -1)
        while true { pause() }
    }
}

func runTour() throws {
    section("Tour 1: a crash kills only the child, and is reported with its signal")
    for way in [Ending.Way.returns, .exits3, .throwsError, .crashes] {
        let child = ChildProcess(Ending(way: way))
        try child.start()
        try child.join(timeout: .seconds(30))
        print("  task that \(way.rawValue): exit code \(child.exitCode.map(String.init) ?? "none")")
        fflush(nil)
    }

    section("Tour 2: a runaway task is stopped after its time limit")
    let runaway = ChildProcess(Ending(way: .hangs))
    try runaway.start()
    let finished = try runaway.join(timeout: .milliseconds(300))
    print("  finished within 300 ms: \(finished); terminating it")
    try runaway.terminate()
    try runaway.join(timeout: .seconds(10))
    print("  exit code \(runaway.exitCode.map(String.init) ?? "none") (-15 is SIGTERM)")

    section("Tour 3: message passing over a Pipe")
    let (mine, theirs) = try makePipe()
    let squarer = ChildProcess(Squarer(connection: theirs))
    try squarer.start()
    theirs.close()
    var squares: [Int] = []
    for n in 1...5 {
        try mine.send(n)
        squares.append(try mine.recv(Int.self, timeout: .seconds(10)))
    }
    mine.close()
    try squarer.join(timeout: .seconds(10))
    print("  squares from pid \(squarer.pid ?? 0): \(squares)")

    section("Tour 4: start methods (sequential start + join of a no-op child)")
    for method in StartMethod.allCases {
        let context = ProcessContext(method)
        let warm = ChildProcess(Ending(way: .returns), context: context)
        try warm.start()
        try warm.join(timeout: .seconds(30))
        let count = 50
        let start = monotonicSeconds()
        for _ in 0..<count {
            let child = ChildProcess(Ending(way: .returns), context: context)
            try child.start()
            try child.join(timeout: .seconds(30))
        }
        let perChild = (monotonicSeconds() - start) / Double(count) * 1000
        print("  \(method): \(Double(Int(perChild * 100)) / 100) ms per child")
    }

    section("Tour 5: no orphans: a daemon dies with its SIGKILLed parent")
    let (reader, writer) = try makePipe(duplex: false)
    let owner = ChildProcess(DaemonOwner(report: writer))
    try owner.start()
    let daemonPid = try reader.recv(Int32.self, timeout: .seconds(30))
    print("  parent \(owner.pid ?? 0) started daemon \(daemonPid); killing the parent with SIGKILL")
    try owner.kill()
    try owner.join(timeout: .seconds(10))
    var gone = false
    for _ in 0..<200 where !gone {
        gone = kill(daemonPid, 0) != 0 || isZombie(daemonPid)
        if !gone { usleep(10_000) }
    }
    print("  daemon \(daemonPid) gone: \(gone)")

    try runChildSettingsTour()
    try runSharedMemoryTour()
    try runPythonPickleTour()
    try runQueueTour()
    try runPoolTour()
}

func monotonicSeconds() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

func isZombie(_ pid: Int32) -> Bool {
    guard let file = fopen("/proc/\(pid)/stat", "r") else { return true }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 256)
    guard fgets(&line, 256, file) != nil else { return true }
    return String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).contains(") Z ")
}
