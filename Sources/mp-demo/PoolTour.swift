import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

/// A unit of tour work: most inputs are a short computation; one segfaults and one runs too long.
struct TourJob: PoolTask {
    static let segfaulting = 137
    static let sleepy = 211
    func run(_ input: Int) throws -> Int {
        if input == Self.segfaulting {
            UnsafeMutablePointer<Int>(bitPattern: 16)!.pointee = input  // a real segfault
        }
        if input == Self.sleepy { sleep(30) }
        usleep(2_000)
        return input * input
    }
}

func runPoolTour() throws {
    section("Tour 9: a pool map that survives a segfault and a runaway task")
    let pool = try ProcessPool(workers: 4, workerSettings: ChildSettings(standardError: .null))
    defer {
        pool.close()
        _ = try? pool.join(timeout: .seconds(10))
    }
    let inputs = Array(0..<400)
    let outcomes = try pool.mapResults(TourJob(), inputs, chunkSize: 4, timeout: .seconds(1)) { done, total in
        print("\r  progress: \(done)/\(total)", terminator: "")
        fflush(nil)
    }
    print()
    var good = 0
    for (input, outcome) in outcomes.enumerated() {
        switch outcome {
        case .success(let square) where square == input * input: good += 1
        case .success(let square): print("  input \(input): wrong output \(square)")
        case .failure(let error): print("  input \(input) failed: \(error)")
        }
    }
    print("  \(good) of \(inputs.count) outputs arrived; the pool still has \(pool.workerIdentifiers.count) workers")
}
