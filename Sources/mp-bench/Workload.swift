import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

/// One benchmark: the same job measured in Swift (in this process) and in CPython (a script run
/// with `python3` that prints the measurement as its last line).
struct Workload: Sendable {
    /// The name printed after `BENCH`.
    let name: String
    /// The unit of both measurements, e.g. "ms", "us", "MiB", "msg/s".
    let unit: String
    /// Whether larger numbers are better (throughput) or smaller (latency, memory).
    let higherIsBetter: Bool
    /// Measures the Swift side.
    let swift: @Sendable () throws -> Double
    /// A Python 3 program whose last line of output is the measurement.
    let python: String
}

/// Runs `python` with the machine's `python3` and returns the number on its last output line.
func runPython(_ source: String) throws -> Double {
    let path = "/tmp/mp-bench-\(getpid()).py"
    guard let file = fopen(path, "w") else { throw BenchError("cannot write \(path)") }
    fputs(source, file)
    fclose(file)
    defer { unlink(path) }
    guard let pipe = popen("python3 \(path)", "r") else { throw BenchError("cannot run python3") }
    var output = ""
    var line = [CChar](repeating: 0, count: 4096)
    while fgets(&line, Int32(line.count), pipe) != nil {
        output += cString(line)
    }
    let status = pclose(pipe)
    let last = output.split(separator: "\n").last.map(String.init) ?? ""
    guard status == 0, let value = Double(last.trimmingCharacters(in: " \t")) else {
        throw BenchError("python3 failed (status \(status)): \(output)")
    }
    return value
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

extension String {
    func trimmingCharacters(in set: String) -> Substring {
        var slice = Substring(self)
        while let first = slice.first, set.contains(first) { slice.removeFirst() }
        while let last = slice.last, set.contains(last) { slice.removeLast() }
        return slice
    }
}

/// The monotonic clock in seconds.
func now() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

/// The text of a NUL-terminated C buffer.
func cString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
