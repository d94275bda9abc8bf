// The MPI pool in one run: a map of 600 tasks across the worker ranks, one of which crashes its local
// worker; that input alone fails, with the rank, host and signal, and the rest come back.
//
//   mpirun -n 3 --oversubscribe --bind-to none .build/release/mp-mpi-demo
import Multiprocessing
import MultiprocessingMPI
#if canImport(Glibc)
import Glibc
#endif

/// Collatz steps of the input; crashes (a null pointer write, SIGSEGV) on one chosen input.
struct CollatzSteps: PoolTask {
    let crashOn: Int
    func run(_ input: Int) throws -> Int {
        if input == crashOn {
            UnsafeMutablePointer<Int>(bitPattern: 8)!.pointee = 1
        }
        var value = input + 1
        var steps = 0
        while value != 1 {
            value = value % 2 == 0 ? value / 2 : 3 * value + 1
            steps += 1
        }
        return steps
    }
}

do {
    let pool = try MPIPool()
    print("rank 0: a pool of \(pool.workerCount) worker ranks")
    let results = Array(try pool.imap(CollatzSteps(crashOn: 321), 0..<600, chunkSize: 20))
    var total = 0
    for (input, result) in results.enumerated() {
        switch result {
        case .success(let steps):
            total += steps
        case .failure(let error):
            print("input \(input) failed alone: \(error)")
        }
    }
    let succeeded = results.filter { (try? $0.get()) != nil }.count
    print("\(succeeded) of \(results.count) inputs succeeded; \(total) Collatz steps in all")
    let again = try pool.map(CollatzSteps(crashOn: -1), [26, 27, 97], timeout: .seconds(60))
    print("the ranks keep serving: steps of 27, 28, 98 = \(again)")
    try pool.shutdown()
} catch {
    print("the MPI demo failed: \(error)")
    exit(1)
}
