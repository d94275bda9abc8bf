import CMPI
import Multiprocessing
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The one thread of this process that calls MPI: it initialises MPI, runs the pool's loop (rank 0's
/// scheduler or a worker rank's server) and finalises MPI. Blocking MPI calls never run on Swift's
/// cooperative pool, and MPI's rule that the initialising thread also finalises holds by construction.
///
/// Work reaches the thread as closures run one after another; each returns when its part is over.
final class MPIThread: @unchecked Sendable {
    static let shared = MPIThread()

    private struct Queue {
        var jobs: [@Sendable () -> Void] = []
        var started = false
    }
    private let queue = Mutex(Queue())
    private let wakeup = Gate()

    /// Runs `body` on the MPI thread and waits for its result.
    /// - Throws: what `body` throws; ``MultiprocessingError/Code/system`` when the thread cannot start.
    func run<R: Sendable>(_ body: @escaping @Sendable () throws -> R) throws -> R {
        let slot = Mutex<Result<R, any Error>?>(nil)
        let done = Gate()
        try post {
            let result = Result { try body() }
            slot.withLock { $0 = result }
            done.open()
        }
        done.wait()
        return try slot.withLock { $0! }.get()
    }

    /// Runs `body` on the MPI thread after the work posted before it, without waiting.
    /// - Throws: ``MultiprocessingError/Code/system`` when the thread cannot start.
    func post(_ body: @escaping @Sendable () -> Void) throws {
        try queue.withLock { queue in
            if !queue.started {
                try startThread()
                queue.started = true
            }
            queue.jobs.append(body)
        }
        wakeup.open()
    }

    private func startThread() throws {
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let created = pthread_create(&thread, nil, { context in
            let owner = Unmanaged<MPIThread>.fromOpaque(context!).takeRetainedValue()
            owner.loop()
            return nil
        }, box.toOpaque())
        guard created == 0 else {
            box.release()
            throw MultiprocessingError(.system, "cannot start the MPI thread", errno: created)
        }
        pthread_detach(thread)
    }

    private func loop() {
        // The pool's loops poll MPI in naps of 20-250 us: with Linux's default slack of 50 us each
        // would last up to 50 us longer.
        _ = cmpi_set_timer_slack(1_000)
        while true {
            wakeup.wait()
            while let job = queue.withLock({ $0.jobs.isEmpty ? nil : $0.jobs.removeFirst() }) {
                job()
            }
        }
    }
}

/// A flag threads wait on until another opens it; opening it again before a wait is not lost, and a
/// wait closes it again (an auto-reset event).
final class Gate: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var isOpen = false

    init() {
        initializeMonotonicWait(&mutex, &condition)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    func open() {
        pthread_mutex_lock(&mutex)
        isOpen = true
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
    }

    /// Waits until the gate is open, at most `timeout` (nil: as long as it takes); true when it opened.
    @discardableResult
    func wait(timeout: Duration? = nil) -> Bool {
        var deadline = timespec()
        if let timeout {
            clock_gettime(CLOCK_MONOTONIC, &deadline)
            let (seconds, attoseconds) = timeout.components
            var nanoseconds = Int(deadline.tv_nsec) + Int(attoseconds / 1_000_000_000)
            deadline.tv_sec += Int(seconds) + nanoseconds / 1_000_000_000
            nanoseconds %= 1_000_000_000
            deadline.tv_nsec = nanoseconds
        }
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while !isOpen {
            if timeout == nil {
                pthread_cond_wait(&condition, &mutex)
            } else if pthread_cond_timedwait(&condition, &mutex, &deadline) == ETIMEDOUT {
                break
            }
        }
        let opened = isOpen
        isOpen = false
        return opened
    }
}

/// A communicator handle (a pointer under Open MPI, an integer under MPICH), usable from the MPI thread.
struct Communicator: @unchecked Sendable {
    let raw: MPI_Comm

    static var world: Communicator { Communicator(raw: cmpi_comm_world()) }

    var size: Int32 {
        var size: Int32 = 0
        MPI_Comm_size(raw, &size)
        return size
    }

    /// The number of ranks on the other side of an intercommunicator.
    var remoteSize: Int32 {
        var size: Int32 = 0
        MPI_Comm_remote_size(raw, &size)
        return size
    }

    var rank: Int32 {
        var rank: Int32 = 0
        MPI_Comm_rank(raw, &rank)
        return rank
    }
}

/// Throws a typed error for an MPI call that did not return `MPI_SUCCESS`.
func check(_ result: Int32, _ what: @autoclosure () -> String) throws {
    guard result != MPI_SUCCESS else { return }
    var text = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING) + 1)
    var length: Int32 = 0
    MPI_Error_string(result, &text, &length)
    let words = String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    throw MultiprocessingError(.system, "\(what()) failed: \(words) (MPI error \(result))")
}

/// What MPI needs once per process: initialisation with full thread support, errors returned rather
/// than aborting the job, and the host's name. Only the MPI thread touches it.
enum MPIEnvironment {
    nonisolated(unsafe) private static var initialised = false
    nonisolated(unsafe) private static var finalised = false
    /// Whether MPI lets any thread call it at once (set before any other thread of the pool starts).
    nonisolated(unsafe) private(set) static var threadMultiple = false

    /// Initialises MPI on the calling (MPI) thread, once.
    static func initialise() throws {
        if finalised {
            throw MultiprocessingError(.invalidState, "MPI was already finalised in this process: one MPI pool per process")
        }
        if initialised { return }
        var provided: Int32 = 0
        try check(MPI_Init_thread(nil, nil, Int32(MPI_THREAD_MULTIPLE), &provided), "MPI_Init_thread")
        initialised = true
        threadMultiple = provided >= Int32(MPI_THREAD_MULTIPLE)
        MPI_Comm_set_errhandler(cmpi_comm_world(), cmpi_errors_return())
    }

    static func finalise() {
        guard initialised, !finalised else { return }
        finalised = true
        MPI_Finalize()
    }

    /// The parent intercommunicator when MPI_Comm_spawn started this process, else nil.
    static func parent() -> Communicator? {
        var parent = cmpi_comm_null()
        MPI_Comm_get_parent(&parent)
        guard let parent, cmpi_is_null_comm(parent) == 0 else { return nil }
        MPI_Comm_set_errhandler(parent, cmpi_errors_return())
        return Communicator(raw: parent)
    }

    /// This machine's name, as MPI reports it.
    static var hostName: String {
        var name = [CChar](repeating: 0, count: Int(MPI_MAX_PROCESSOR_NAME) + 1)
        var length: Int32 = 0
        MPI_Get_processor_name(&name, &length)
        return String(decoding: name.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Initialises a mutex and a condition whose timed waits count on the monotonic clock (so a change of
/// the wall clock neither shortens nor stretches them).
func initializeMonotonicWait(_ mutex: UnsafeMutablePointer<pthread_mutex_t>, _ condition: UnsafeMutablePointer<pthread_cond_t>) {
    pthread_mutex_init(mutex, nil)
    var attributes = pthread_condattr_t()
    pthread_condattr_init(&attributes)
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
    pthread_cond_init(condition, &attributes)
    pthread_condattr_destroy(&attributes)
}
