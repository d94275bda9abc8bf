import Foundation
import Testing

/// What a launched job printed and how it ended.
struct JobOutcome {
    var status: Int32
    var output: String
    var timedOut: Bool { status == 124 || status == 137 && output.isEmpty }
}

/// Runs `command` under coreutils' `timeout`, so a job that hangs fails the test instead of hanging it:
/// SIGTERM after `seconds`, SIGKILL 5 s later.
func runBounded(_ command: [String], seconds: Int, environment extra: [String: String] = [:]) throws -> JobOutcome {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
    process.arguments = ["--kill-after=5", String(seconds)] + command
    var environment = ProcessInfo.processInfo.environment
    for (key, value) in extra { environment[key] = value }
    process.environment = environment
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return JobOutcome(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self))
}

/// The directory of the built products (the test bundle's own).
let productsDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
let jobsProgram = productsDirectory.appendingPathComponent("mpi-test-jobs").path
/// The two-hosts launcher, beside this package's manifest.
let twoHostsScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("Scripts/two-hosts.sh").path

/// mpirun as root, ranks beyond the cores, no binding (ranks on one core would busy-poll each other),
/// traffic on loopback.
let mpirunEnvironment = [
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_hwloc_base_binding_policy": "none",
    "OMPI_MCA_oob_tcp_if_include": "lo", "OMPI_MCA_btl_tcp_if_include": "lo",
]

func mpirun(ranks: Int, _ arguments: [String], seconds: Int = 90) throws -> JobOutcome {
    try runBounded(["mpirun", "-n", String(ranks), jobsProgram] + arguments, seconds: seconds, environment: mpirunEnvironment)
}

@Suite("MPI pool jobs", .serialized)
struct MPIJobTests {
    @Test("a 1,000-task map over 3 ranks gives exact results; async, submit, apply, imap, 1 MiB inputs and bad input too")
    func mapOverThreeRanks() throws {
        let outcome = try mpirun(ranks: 3, ["map", "1000"])
        #expect(outcome.status == 0, "\(outcome.output)")
        #expect(outcome.output.contains("OK map 1000 workers 2"), "\(outcome.output)")
        #expect(!outcome.output.contains("FAIL"), "\(outcome.output)")
    }

    @Test("a program that ends without shutdown() still stops its workers and finalises MPI: the job succeeds")
    func exitWithoutShutdown() throws {
        let outcome = try mpirun(ranks: 3, ["noshutdown"], seconds: 60)
        #expect(outcome.status == 0, "\(outcome.output)")
        #expect(outcome.output.contains("OK noshutdown"), "\(outcome.output)")
    }

    @Test("a pool in a single-rank job is refused with invalidState, not a hang")
    func singleRank() throws {
        let outcome = try mpirun(ranks: 1, ["single"], seconds: 60)
        #expect(outcome.status == 0, "\(outcome.output)")
        #expect(outcome.output.contains("OK single"), "\(outcome.output)")
    }

    @Test("a task that segfaults fails alone, with rank, host and signal; the ranks go on serving")
    func crashFailsAlone() throws {
        let outcome = try mpirun(ranks: 3, ["crash"])
        #expect(outcome.status == 0, "\(outcome.output)")
        #expect(outcome.output.contains("OK crash childFailed: input 150 crashed its local worker on rank"), "\(outcome.output)")
        #expect(outcome.output.contains("SIGSEGV"), "\(outcome.output)")
        #expect(outcome.output.contains("OK thrown"), "\(outcome.output)")
    }

    @Test("a task past its CPU-time limit and a task killed with SIGKILL each fail alone with their signal")
    func limitsAndKills() throws {
        let outcome = try mpirun(ranks: 3, ["limits"])
        #expect(outcome.status == 0, "\(outcome.output)")
        #expect(outcome.output.contains("OK limits"), "\(outcome.output)")
    }

    @Test("a task past the task timeout is killed and fails alone with timedOut")
    func taskTimeout() throws {
        let outcome = try mpirun(ranks: 3, ["timeout"])
        #expect(outcome.status == 0, "\(outcome.output)")
        #expect(outcome.output.contains("OK timeout timedOut: input 4"), "\(outcome.output)")
    }

    @Test("a killed worker rank ends the whole job promptly with a failure status (Open MPI 4.1 has no fault tolerance): no hang")
    func killedRankEndsJob() throws {
        let started = ContinuousClock.now
        let outcome = try mpirun(ranks: 3, ["killrank"], seconds: 60)
        #expect(outcome.output.contains("STARTED"), "\(outcome.output)")
        #expect(!outcome.output.contains("UNEXPECTED"), "\(outcome.output)")
        #expect(outcome.status != 0 && outcome.status != 124, "status \(outcome.status): \(outcome.output)")
        #expect(ContinuousClock.now - started < .seconds(50))
    }

    @Test("under mpirun --enable-recovery (TCP transport) a killed worker rank fails only its inputs with rankLost; the pool goes on and shuts down")
    func killedRankFailsItsInputs() throws {
        // The TCP transport: with shared memory, Open MPI's progress engine can stall for good in the
        // rank polling a peer that died.
        let outcome = try runBounded(
            ["mpirun", "--enable-recovery", "--mca", "btl", "self,tcp", "-n", "3", jobsProgram, "killrank-recover"], seconds: 60,
            environment: mpirunEnvironment)
        #expect(outcome.status == 0, "\(outcome.output)")
        #expect(outcome.output.contains("OK recovered"), "\(outcome.output)")
        #expect(outcome.output.contains("OK shut down"), "\(outcome.output)")
    }

    @Test("under mpirun --enable-recovery the worker ranks end by themselves when rank 0 dies: the job ends, no orphans")
    func deadMasterEndsWorkers() throws {
        let started = ContinuousClock.now
        let outcome = try runBounded(
            ["mpirun", "--enable-recovery", "--mca", "btl", "self,tcp", "-n", "3", jobsProgram, "killmaster"], seconds: 60,
            environment: mpirunEnvironment)
        #expect(outcome.output.contains("STARTED"), "\(outcome.output)")
        #expect(outcome.status != 124 && outcome.status != 137, "status \(outcome.status): \(outcome.output)")
        #expect(ContinuousClock.now - started < .seconds(45))
    }

    @Test("a single process spawns its workers (MPI_Comm_spawn) and maps across them, a crash failing alone")
    func spawnMode() throws {
        let outcome = try runBounded([jobsProgram, "spawn", "3"], seconds: 90, environment: mpirunEnvironment)
        #expect(outcome.status == 0, "\(outcome.output)")
        #expect(outcome.output.contains("OK spawn 3"), "\(outcome.output)")
    }

    @Test("one map across two emulated hosts (network namespaces joined by a veth pair, mpirun across them)")
    func twoHosts() throws {
        let outcome = try runBounded([twoHostsScript, "3", jobsProgram, "hosts"], seconds: 90)
        if outcome.status == 77 {
            print("skipped: \(outcome.output)")
            return
        }
        #expect(outcome.status == 0, "\(outcome.output)")
        let line = outcome.output.split(separator: "\n").first { $0.hasPrefix("OK hosts ") } ?? ""
        let hosts = line.dropFirst("OK hosts ".count).split(separator: ",")
        #expect(hosts.count == 2, "\(outcome.output)")
        #expect(hosts.allSatisfy { $0.hasPrefix("mpa") || $0.hasPrefix("mpb") }, "\(outcome.output)")
    }
}
