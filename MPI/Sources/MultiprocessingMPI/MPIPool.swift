import CMPI
import Multiprocessing
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A pool of worker processes across machines, over MPI: Python's `mpi4py.futures.MPIPoolExecutor`
/// with the local pool's calls (``map(_:_:chunkSize:timeout:progress:)``, ``mapResults(_:_:chunkSize:timeout:)``,
/// ``imap(_:_:chunkSize:timeout:progress:)``, ``imapUnordered(_:_:chunkSize:timeout:progress:)``,
/// ``apply(_:_:timeout:)``, ``submit(_:_:timeout:)``, and their `async` forms; `timeout` is, as there,
/// the longest one input may run). Tasks are ``PoolTask`` and ``AsyncPoolTask`` values, as for the local pool.
///
/// Run the program under `mpirun -n N` and create the pool with ``init(taskTimeout:limits:)``: rank 0
/// gets the pool and runs the caller's code, ranks 1 to N-1 serve tasks inside that initialiser and exit
/// when rank 0 shuts the pool down. Or start one process and let it spawn its workers with
/// ``init(spawningWorkers:taskTimeout:limits:)`` (`MPI_Comm_spawn`). Either way the code before the
/// pool is created runs in every rank, so create the pool first.
///
/// Each worker rank runs its tasks in a local child process. A task that crashes, is killed, breaks its
/// ``ResourceLimits`` or runs past the task timeout fails alone, with ``MultiprocessingError/Code/childFailed``
/// (or ``MultiprocessingError/Code/timedOut``) naming the rank, host, pid and signal; the rank starts a
/// new child and goes on. (Under mpi4py such a task ends the whole job.)
///
/// A worker rank that dies as a whole (its host lost, or killed) is another matter. By default Open
/// MPI's `mpirun` then ends every rank of the job, rank 0 included, and exits with a failure status:
/// the caller does not hang, but it does not go on either. Under `mpirun --enable-recovery` the job
/// outlives the rank: each worker rank sends rank 0 a heartbeat every second, and a rank silent for 5
/// seconds with inputs in flight is taken for lost; those inputs fail with
/// ``MultiprocessingError/Code/rankLost``, the other ranks take the rest, and ``shutdown(timeout:)``
/// still works (every rank then ends without `MPI_Finalize`, which would wait for the dead rank); and
/// when rank 0 itself dies, each worker rank that has heard nothing from it for 10 seconds ends. The
/// same holds where the MPI library returns an error for a send to the rank. Use the
/// TCP transport then (`--mca btl self,tcp`), as between hosts: when a rank on the same host dies, Open
/// MPI's shared-memory transport can stall rank 0's progress engine for good (seen about once in ten
/// runs), and nothing above MPI can end that wait.
///
/// All MPI calls run on one dedicated thread. MPI starts once per process: one pool per process. Call
/// ``shutdown(timeout:)`` when done; a program that ends by returning from its main code or calling
/// `exit` without it gets it run then (mpirun counts a rank that ends without finalising MPI as failed).
public final class MPIPool: Sendable {
    private let scheduler: Scheduler
    private let intercommunicator: Communicator?
    private let isShutDown = Mutex(false)

    /// The number of worker ranks.
    public var workerCount: Int { scheduler.workers.count }

    /// The pool over the ranks of the `mpirun` job this program runs in. On rank 0 it returns the
    /// pool; on every other rank it serves tasks until rank 0 shuts the pool down, then ends the process
    /// (exit status 0). A process that `MPI_Comm_spawn` started serves its parent the same way.
    ///
    /// - Parameters:
    ///   - taskTimeout: how long one input may run before its local child is killed and the input fails
    ///     with ``MultiprocessingError/Code/timedOut``; nil for no limit.
    ///   - limits: resource limits for the local children that run the tasks. A child runs many inputs,
    ///     so its CPU time adds up over them: the input running when a limit strikes fails (with the
    ///     signal), and a new child takes the rest.
    /// - Throws: ``MultiprocessingError/Code/invalidState`` when the job has a single rank (run it with
    ///   `mpirun -n N`, N >= 2, or use ``init(spawningWorkers:taskTimeout:limits:)``; MPI is finalised,
    ///   so no other pool can start in this process) or MPI was already finalised in this process;
    ///   ``MultiprocessingError/Code/system`` when MPI fails to start.
    public convenience init(taskTimeout: Duration? = nil, limits: ResourceLimits = ResourceLimits()) throws {
        let size = try MPIThread.shared.run { () throws -> Int32 in
            try MPIEnvironment.initialise()
            if let parent = MPIEnvironment.parent() { Self.serveAndExit(parent, master: 0) }
            let world = Communicator.world
            if world.rank != 0 { Self.serveAndExit(world, master: 0) }
            let size = world.size
            // Refused below: finalise, or mpirun reports the rank as ended abnormally.
            if size < 2 { MPIEnvironment.finalise() }
            return size
        }
        guard size >= 2 else {
            throw MultiprocessingError(
                .invalidState, "the MPI job has a single rank: run it with mpirun -n N (N >= 2), or spawn workers")
        }
        try self.init(Scheduler(workers: Array(1..<size)), communicator: .world, intercommunicator: nil,
                  settings: WorkerSettings(taskTimeout: taskTimeout, limits: limits))
    }

    /// A pool whose workers this process starts with `MPI_Comm_spawn`: `count` more processes running
    /// this program with its arguments, as `mpi4py.futures` does. Works in a single process and under
    /// `mpirun -n 1`. In a spawned process the initialiser serves its parent and ends the process.
    ///
    /// - Parameters:
    ///   - count: the number of worker processes, at least 1; more than the machine's slots are allowed.
    ///   - taskTimeout: how long one input may run before its local child is killed; nil for no limit.
    ///   - limits: resource limits for the local children that run the tasks.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` when `count` < 1;
    ///   ``MultiprocessingError/Code/invalidState`` when MPI was already finalised in this process;
    ///   ``MultiprocessingError/Code/system`` when MPI fails to start or to spawn.
    public convenience init(spawningWorkers count: Int, taskTimeout: Duration? = nil, limits: ResourceLimits = ResourceLimits()) throws {
        guard count >= 1, count <= Int(Int32.max) else {
            throw MultiprocessingError(.invalidArgument, "an MPI pool needs at least one worker, not \(count)")
        }
        let inter = try MPIThread.shared.run { () throws -> Communicator in
            try MPIEnvironment.initialise()
            if let parent = MPIEnvironment.parent() { Self.serveAndExit(parent, master: 0) }
            return try Self.spawn(count)
        }
        try self.init(Scheduler(workers: Array(0..<Int32(count))), communicator: inter, intercommunicator: inter,
                  settings: WorkerSettings(taskTimeout: taskTimeout, limits: limits))
    }

    private init(_ scheduler: Scheduler, communicator: Communicator, intercommunicator: Communicator?, settings: WorkerSettings) throws {
        self.scheduler = scheduler
        self.intercommunicator = intercommunicator
        try MPIThread.shared.post { scheduler.run(Mailbox(communicator, recycling: scheduler.buffers), settings: settings) }
        Self.openPool.withLock { pool in
            pool = self
            if !Self.exitHookInstalled {
                Self.exitHookInstalled = true
                atexit { try? MPIPool.openPool.withLock { $0 }?.shutdown(timeout: .seconds(60)) }
            }
        }
    }

    /// The pool not yet shut down, which the program's exit shuts down (finishing its work, stopping
    /// the workers, finalising MPI) when the caller did not.
    private static let openPool = Mutex<MPIPool?>(nil)
    nonisolated(unsafe) private static var exitHookInstalled = false

    /// Serves rank `master` of `communicator` and ends the process. Runs on the MPI thread.
    private static func serveAndExit(_ communicator: Communicator, master: Int32) -> Never {
        var status: Int32 = 0
        do {
            if try !WorkerRank.serve(communicator, master: master) { exit(0) }
        } catch {
            writeError("MPI worker rank failed: \(error)\n")
            status = 1
        }
        if communicator.raw != cmpi_comm_world() {
            var raw: MPI_Comm? = communicator.raw
            MPI_Comm_disconnect(&raw)
        }
        MPIEnvironment.finalise()
        exit(status)
    }

    private static func spawn(_ count: Int) throws -> Communicator {
        var info = cmpi_info_null()
        MPI_Info_create(&info)
        defer { MPI_Info_free(&info) }
        MPI_Info_set(info, "map_by", ":OVERSUBSCRIBE")
        var path = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &path, path.count - 1)
        guard length > 0 else { throw MultiprocessingError(.system, "cannot read /proc/self/exe", errno: errno) }
        let arguments = CommandLine.arguments.dropFirst().map { strdup($0) }
        defer { arguments.forEach { free($0) } }
        var argv: [UnsafeMutablePointer<CChar>?] = arguments + [nil]
        var inter = cmpi_comm_null()
        MPI_Comm_set_errhandler(cmpi_comm_self(), cmpi_errors_return())
        let result = argv.withUnsafeMutableBufferPointer { argv in
            MPI_Comm_spawn(
                path, arguments.isEmpty ? cmpi_argv_null() : argv.baseAddress, Int32(count), info, 0, cmpi_comm_self(), &inter,
                cmpi_errcodes_ignore())
        }
        try check(result, "MPI_Comm_spawn of \(count) workers")
        guard let inter else { throw MultiprocessingError(.system, "MPI_Comm_spawn gave no intercommunicator") }
        MPI_Comm_set_errhandler(inter, cmpi_errors_return())
        return Communicator(raw: inter)
    }

    /// Finishes the work already submitted, stops the worker ranks (which then end) and finalises MPI.
    /// Python's `shutdown(wait=True)`. Calling it again does nothing.
    /// - Throws: ``MultiprocessingError/Code/timedOut`` when the work and the workers' stop take longer
    ///   than `timeout` (nil: as long as it takes).
    public func shutdown(timeout: Duration? = .seconds(300)) throws {
        let first = isShutDown.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        Self.openPool.withLock { if $0 === self { $0 = nil } }
        scheduler.close()
        guard scheduler.stopped.wait(timeout: timeout) else {
            throw MultiprocessingError(.timedOut, "the MPI pool did not finish its work and stop its workers in time")
        }
        if scheduler.lostAny { return }
        let inter = intercommunicator
        try MPIThread.shared.run {
            if let inter {
                var raw: MPI_Comm? = inter.raw
                MPI_Comm_disconnect(&raw)
            }
            MPIEnvironment.finalise()
        }
    }

    // MARK: Submitting

    /// Encodes `inputs` in batches of `chunkSize` and queues them as one job.
    func start<Task: Codable, Input: Codable, Output: Decodable & Sendable>(
        _ task: Task, _ inputs: [Input], chunkSize: Int?, timeout: Duration?, progress: (@Sendable (Int, Int) -> Void)?, as: Output.Type
    ) throws -> MPIJob<Output> {
        if let chunkSize, chunkSize < 1 {
            throw MultiprocessingError(.invalidArgument, "the chunk size must be at least 1, not \(chunkSize)")
        }
        let name = try Self.typeName(of: Task.self)
        let size = chunkSize ?? max(1, (inputs.count + workerCount * 4 - 1) / (workerCount * 4))
        let job = MPIJob<Output>(count: inputs.count, progress: progress)
        try scheduler.submit(job, count: inputs.count) { number, enqueue in
            for first in stride(from: 0, to: inputs.count, by: size) {
                let count = min(size, inputs.count - first)
                var message = MessageWriter(bytes: scheduler.buffers.take())
                message.append(number)
                message.append(UInt32(first))
                message.append(UInt32(count))
                message.append(UInt64(timeout.map { max(1, Self.nanoseconds($0)) } ?? 0))
                message.append(string: name)
                do {
                    try BinaryEncoder().encode(BatchBody(task: task, inputs: Array(inputs[first..<first + count])), appendingTo: &message.bytes)
                } catch {
                    throw MultiprocessingError(.transport, "the task or an input of \(first)..<\(first + count) could not be encoded: \(error)")
                }
                guard message.bytes.count <= Mailbox.sizeLimit else {
                    throw MultiprocessingError(
                        .invalidArgument,
                        "inputs \(first)..<\(first + count) encode to \(message.bytes.count) bytes, past MPI's limit of \(Mailbox.sizeLimit) for one message: use a smaller chunk size")
                }
                enqueue(Scheduler.Batch(job: number, first: first, count: count, message: message.bytes))
            }
        }
        return job
    }

    static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0 else { return 0 }
        return UInt64(clamping: seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
    }

    private static func typeName(of type: Any.Type) throws -> String {
        guard let name = _mangledTypeName(type), !name.contains("$"), _typeByName(name) == type else {
            throw MultiprocessingError(
                .invalidArgument,
                "\(type) cannot be found by name in another process: declare it at file scope or nested in a type (internal or public), not private, fileprivate or inside a function")
        }
        return name
    }
}

/// Writes `text` to standard error.
func writeError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}
