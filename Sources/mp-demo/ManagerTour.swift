import Distributed
import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// Tour: shared objects behind a manager process, as distributed actors.

/// A shared object of the program's own: a counter that any process holding a reference can call.
distributed actor TourCounter: SharedObject {
    var total = 0

    distributed func add(_ amount: Int) -> Int {
        total += amount
        return total
    }
}

/// Adds to the shared counter and records itself in the shared dictionary.
struct TourWorker: AsyncProcessTask {
    let number: Int
    let counter: TourCounter
    let workers: SharedDictionary<String, Int>

    func run() async throws {
        for _ in 0..<100 { _ = try await counter.add(1) }
        try await workers.setValue(Int(getpid()), forKey: "worker-\(number)")
    }
}

/// Reaches a manager on the network by address and key alone, as a process on another host would.
struct TourRemoteUser: AsyncProcessTask {
    let address: ConnectionAddress
    let authkey: [UInt8]
    let notes: SharedList<String>

    func run() async throws {
        _ = try await SharedObjectManager.connect(to: address, authkey: authkey)
        try await notes.append("hello from pid \(getpid()), started with \(ProcessContext(.forkserver))")
    }
}

func runManagerTour() async throws {
    section("Tour: shared objects behind a manager process (distributed actors)")
    let manager = try SharedObjectManager()
    let counter = try await manager.make(TourCounter.self)
    let workers = try await manager.makeDictionary([String: Int].self)
    let children = (1...3).map { ChildProcess(TourWorker(number: $0, counter: counter, workers: workers)) }
    for child in children { try child.start() }
    for child in children { _ = try await child.join(timeout: .seconds(30)) }
    print("  3 children added 100 each: the counter says \(try await counter.add(0))")
    for (name, pid) in try await workers.snapshot().sorted(by: { $0.key < $1.key }) { print("  \(name) was pid \(pid)") }
    try await manager.shutdown()

    section("Tour: a manager on 127.0.0.1 reached by address and authkey from a forkserver child")
    let key = Array("tour-secret".utf8)
    let remote = try SharedObjectManager(address: .tcp(host: "127.0.0.1", port: 0), authkey: key, context: ProcessContext(.spawn))
    let notes = try await remote.makeList([String]())
    let visitor = ChildProcess(TourRemoteUser(address: remote.address, authkey: key, notes: notes), context: ProcessContext(.forkserver))
    try visitor.start()
    _ = try await visitor.join(timeout: .seconds(30))
    print("  manager at \(remote.address) (spawned) holds: \(try await notes.snapshot())")
    do {
        _ = try await SharedObjectManager.connect(to: remote.address, authkey: Array("wrong".utf8))
    } catch let error as MultiprocessingError {
        print("  a wrong key fails at connect: \(error.code)")
    }
    try await remote.shutdown()
    do {
        _ = try await notes.count()
    } catch let error as MultiprocessingError {
        print("  after shutdown, a call fails at once: \(error.code)")
    }
}
