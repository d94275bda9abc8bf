// MPI pool workloads beside mpi4py.futures (Debian's python3-mpi4py), each run in the same invocation:
// `mp-mpi-bench [--filter NAME]` launches both sides with `mpirun -n 3` and prints
// `BENCH <workload> swift=... python=... unit=... better=...` (`better` > 1: Swift wins). Release builds only.
import Multiprocessing
import MultiprocessingMPI
#if canImport(Glibc)
import Glibc
#endif

struct Square: PoolTask {
    func run(_ input: Int) throws -> Int { input * input }
}

/// A 1 MiB input in, its length and first byte out.
struct Checksum: PoolTask {
    func run(_ input: [UInt8]) throws -> Int { input.count + Int(input.first ?? 0) }
}

/// One workload: the Swift side runs as `mp-mpi-bench --rank-side NAME` under mpirun, the Python side as
/// a script under `mpirun ... python3 -m mpi4py.futures`; each prints its measurement as its last line.
struct Workload {
    let name: String
    let unit: String
    let higherIsBetter: Bool
    /// The Swift side, on rank 0 (the other ranks serve inside `MPIPool()`).
    let swift: () throws -> Double
    let python: String
}

func now() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

let smallCount = 10_000
let smallChunk = 1_250  // 10,000 inputs over 2 workers in 8 batches, the same on both sides
/// Each side's best of this many maps counts: one map takes well under a millisecond in Swift, so a
/// single wake-up that comes late moves a figure by half; the best of 5 still varied 4.4-9.9x between runs.
let smallRounds = 20
let bigCount = 64

let workloads = [
    Workload(
        name: "mpi-map-small", unit: "tasks/s", higherIsBetter: true,
        swift: {
            let pool = try MPIPool()
            _ = try pool.map(Square(), 0..<1000, chunkSize: 125)  // local workers started
            var best = 0.0
            for _ in 0..<smallRounds {
                let start = now()
                let results = try pool.map(Square(), 0..<smallCount, chunkSize: smallChunk)
                best = max(best, Double(results.count) / (now() - start))
            }
            try pool.shutdown()
            return best
        },
        python: """
            import time
            from mpi4py.futures import MPIPoolExecutor

            def square(x):
                return x * x

            def main():
                with MPIPoolExecutor() as executor:
                    list(executor.map(square, range(1000), chunksize=125))
                    best = 0.0
                    inputs = range(\(smallCount))
                    clock = time.perf_counter
                    for _ in range(\(smallRounds)):
                        start = clock()
                        results = list(executor.map(square, inputs, chunksize=\(smallChunk)))
                        best = max(best, len(results) / (clock() - start))
                print(best)

            if __name__ == "__main__":
                main()
            """),
    Workload(
        name: "mpi-map-1mib", unit: "MB/s", higherIsBetter: true,
        swift: {
            let pool = try MPIPool()
            let input = [UInt8](repeating: 7, count: 1 << 20)
            let inputs = Array(repeating: input, count: bigCount)
            _ = try pool.map(Checksum(), inputs.prefix(4), chunkSize: 1)
            var best = 0.0
            for _ in 0..<3 {
                let start = now()
                let results = try pool.map(Checksum(), inputs, chunkSize: 1)
                best = max(best, Double(results.count << 20) / 1e6 / (now() - start))
            }
            try pool.shutdown()
            return best
        },
        python: """
            import time
            from mpi4py.futures import MPIPoolExecutor

            def checksum(data):
                return len(data) + data[0]

            def main():
                data = bytes([7]) * (1 << 20)
                inputs = [data] * \(bigCount)
                with MPIPoolExecutor() as executor:
                    list(executor.map(checksum, inputs[:4]))
                    best = 0.0
                    clock = time.perf_counter
                    for _ in range(3):
                        start = clock()
                        results = list(executor.map(checksum, inputs))
                        best = max(best, len(results) * (1 << 20) / 1e6 / (clock() - start))
                print(best)

            if __name__ == "__main__":
                main()
            """),
    Workload(
        name: "mpi-startup", unit: "ms", higherIsBetter: false,
        swift: {
            // From mpirun's launch (its start time is passed in the environment) to the first result.
            let pool = try MPIPool()
            let result = try pool.apply(Square(), 3)
            let elapsed = (wallClock() - (Double(String(cString: getenv("MP_BENCH_LAUNCH") ?? strdup("0")!)) ?? 0)) * 1000
            precondition(result == 9)
            try pool.shutdown()
            return elapsed
        },
        python: """
            import os, time
            from mpi4py.futures import MPIPoolExecutor

            def square(x):
                return x * x

            def main():
                with MPIPoolExecutor() as executor:
                    assert executor.submit(square, 3).result() == 9
                    elapsed = (time.time() - float(os.environ["MP_BENCH_LAUNCH"])) * 1000
                print(elapsed)

            if __name__ == "__main__":
                main()
            """),
]

/// The real-time clock in seconds (comparable across processes).
func wallClock() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_REALTIME, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

let mpirunSettings = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
    + "OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl_tcp_if_include=lo"

/// Runs `command` with the shell and returns the number on its last output line.
func measure(_ command: String) throws -> Double {
    guard let pipe = popen("\(mpirunSettings) MP_BENCH_LAUNCH=$(date +%s.%N) \(command) 2>&1", "r") else {
        throw MultiprocessingError(.system, "cannot run \(command)")
    }
    var output = ""
    var line = [CChar](repeating: 0, count: 4096)
    while fgets(&line, Int32(line.count), pipe) != nil {
        output += String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    let status = pclose(pipe)
    let last = output.split(separator: "\n").last.map(String.init) ?? ""
    guard status == 0, let value = Double(last) else {
        throw MultiprocessingError(.childFailed, "\(command) failed (status \(status)): \(output)")
    }
    return value
}

func programPath() -> String {
    var path = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &path, path.count - 1)
    return String(decoding: path.prefix(max(0, length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "--rank-side", arguments.count == 2, let workload = workloads.first(where: { $0.name == arguments[1] }) {
    do {
        print(try workload.swift())
    } catch {
        print("error: \(error)")
        exit(1)
    }
    exit(0)
}
var filter: String?
if let index = arguments.firstIndex(of: "--filter"), index + 1 < arguments.count { filter = arguments[index + 1] }
for workload in workloads where filter.map({ workload.name.contains($0) }) ?? true {
    do {
        let swift = try measure("mpirun -n 3 \(programPath()) --rank-side \(workload.name)")
        let path = "/tmp/mp-mpi-bench-\(getpid()).py"
        guard let file = fopen(path, "w") else { throw MultiprocessingError(.system, "cannot write \(path)") }
        fputs(workload.python, file)
        fclose(file)
        defer { unlink(path) }
        let python = try measure("mpirun -n 3 /usr/bin/python3 -m mpi4py.futures \(path)")
        let better = workload.higherIsBetter ? swift / python : python / swift
        print("BENCH \(workload.name) swift=\(swift) python=\(python) unit=\(workload.unit) better=\(better)")
    } catch {
        print("BENCH \(workload.name) failed: \(error)")
    }
}
