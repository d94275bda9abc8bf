import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

/// Prints a few lines, as a worker's log would.
struct Chatter: ProcessTask {
    let lines: Int
    func run() throws {
        for line in 1...lines { print("line \(line) from pid \(getpid()) in \(getenv("TOUR_STAGE").map { String(cString: $0) } ?? "?")") }
    }
}

/// Spins until its CPU-time limit stops it.
struct Spinner: ProcessTask {
    func run() throws {
        // An endless loop whose result may be printed, so an optimizer can neither drop nor end it.
        var x: UInt64 = 1
        while true {
            for _ in 0..<1_000_000 { x = x &* 6364136223846793005 &+ 1442695040888963407 }
            if x == 0 { print("x reached 0") }
        }
    }
}

func runChildSettingsTour() throws {
    section("Tour 5b: per-child settings Python lacks: captured output, environment, resource limits")
    var settings = ChildSettings(standardOutput: .capture)
    settings.environment["TOUR_STAGE"] = "the tour"
    let chatty = ChildProcess(Chatter(lines: 3), settings: settings)
    try chatty.start()
    try chatty.join(timeout: .seconds(30))
    let output = String(decoding: try chatty.capturedOutput(timeout: .seconds(10)), as: UTF8.self)
    print("  the parent captured \(output.utf8.count) bytes:")
    for line in output.split(separator: "\n") { print("    | \(line)") }

    let limited = ChildProcess(Spinner(), settings: ChildSettings(limits: ResourceLimits(cpuSeconds: 1), standardError: .capture))
    try limited.start()
    try limited.join(timeout: .seconds(30))
    print("  a spinning child limited to 1 s of CPU: \(limited.terminationStatus.map { "\($0)" } ?? "running"), "
        + "exceeded \(limited.exceededLimit.map { "\($0)" } ?? "nothing"), exit code \(limited.exitCode ?? 0) in Python's view")
    let said = String(decoding: try limited.capturedErrorOutput(timeout: .seconds(10)), as: UTF8.self)
    print("  it said: \(said.split(separator: "\n").joined(separator: " / "))")
}
