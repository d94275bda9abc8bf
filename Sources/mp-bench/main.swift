import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// mp-bench [--filter TEXT] [--limits] [--swift-only]
// Measures each workload in Swift and in CPython's multiprocessing in the same run and prints
// `BENCH <workload> swift=<n> python=<n> unit=<unit> better=<ratio>`, where better > 1 means Swift wins.
// Argument parsing is by hand: this binary's own children must start as lean as possible.

let arguments = Array(CommandLine.arguments.dropFirst())
var filter: String?
/// Measures the Swift side only (for profiling it): prints `SWIFT <workload> <value> <unit>`.
var swiftOnly = false
var showLimits = false
var index = 0
while index < arguments.count {
    switch arguments[index] {
    case "--filter" where index + 1 < arguments.count:
        filter = arguments[index + 1]
        index += 2
    case "--swift-only":
        swiftOnly = true
        index += 1
    case "--limits":
        showLimits = true  // also print each workload's C limit (see Limits.swift)
        index += 1
    default:
        print("usage: mp-bench [--filter TEXT] [--limits] [--swift-only]")
        exit(arguments.contains("--help") ? 0 : 2)
    }
}

func format(_ value: Double) -> String {
    let digits = value >= 100 ? 1 : (value >= 1 ? 2 : 4)
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    return "\((value * scale).rounded() / scale)"
}

let workloads = processWorkloads + connectionWorkloads + synchronizationWorkloads + sharedMemoryWorkloads
    + asyncWorkloads + codecWorkloads
    + pickleWorkloads
    + queueWorkloads
    + queueLocalWorkloads
    + poolWorkloads
    + managerWorkloads
var failures = 0
for workload in workloads where filter.map({ workload.name.contains($0) }) ?? true {
    do {
        let swift = try workload.swift()
        if swiftOnly {
            print("SWIFT \(workload.name) \(format(swift)) \(workload.unit)")
            continue
        }
        let python = try runPython(workload.python)
        let better = workload.higherIsBetter ? swift / python : python / swift
        print("BENCH \(workload.name) swift=\(format(swift)) python=\(format(python)) unit=\(workload.unit) better=\(format(better))")
        if showLimits, let limit = limits[workload.name] {
            // Like with like: three rounds alternate the C job and the Swift workload, and each side's
            // best round counts, so a change in the machine's state between them moves both alike.
            let higher = workload.higherIsBetter
            let best = { (a: Double, b: Double) in higher ? max(a, b) : min(a, b) }
            var c = limit()
            var swiftBest = swift
            for _ in 0..<2 {
                swiftBest = best(swiftBest, try workload.swift())
                c = best(c, limit())
            }
            print("LIMIT \(workload.name) c=\(format(c)) swift=\(format(swiftBest)) unit=\(workload.unit) ratio=\(format(swiftBest / c))")
        }
    } catch {
        failures += 1
        print("BENCH \(workload.name) failed: \(error)")
    }
    fflush(nil)
}
exit(failures > 0 ? 1 : 0)
