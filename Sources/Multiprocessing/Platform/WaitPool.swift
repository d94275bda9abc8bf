#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// A fixed set of threads that serves the `async` forms of waits the kernel cannot poll: futex
/// waits on words in shared memory (locks, semaphores, conditions, events, barriers).
///
/// At most ``threadLimit`` threads serve any number of concurrent awaits. A wait is a job that
/// advances in steps: each step tries once, and if that fails sleeps on its futex until woken or
/// until the end of its slice. A job whose step did not finish goes to the back of the queue, so
/// every job gets its turn and no job can starve the others: six tasks awaiting a six-party barrier
/// pass even with fewer threads than tasks. While no job is queued, a step sleeps until its own
/// deadline (at most ``longestSlice``); while jobs are queued it sleeps at most ``sharedSlice``, and
/// a job queued while every thread sleeps in a step wakes one of those steps so that its thread
/// turns to the queue.
///
/// The cost of the bound: with more waits than threads, the waits take turns and poll. Measured with
/// 2,000 awaits (1,000 on one event, 1,000 on one lock held by another process) in one process: 8
/// threads in the process, 4 of them the pool's, and about 20% of one CPU while they wait (10% with
/// the event waits alone). A wait the kernel wakes while its thread sleeps ends at once; a wait
/// whose word changes while it sits in the queue notices at its next turn, up to (waits / threads)
/// x ``sharedSlice`` later.
///
/// Cancelling the awaiting Swift task ends a queued job at once and wakes a running one: each step
/// sleeps on its job's interruption word beside its own (futex_waitv), and the canceller changes
/// and wakes that word, so no wake-up is lost; it also wakes the step's own word (a spurious wake-up,
/// harmless to every futex loop). The wait then throws `CancellationError`. The
/// threads start on first use and stay for the life of the process; a forked child starts a pool
/// of its own.
final class WaitPool: @unchecked Sendable {
    /// The most threads the pool runs.
    static let threadLimit = 4
    /// The longest a step sleeps while other jobs wait for a thread.
    static let sharedSlice = Duration.milliseconds(1)
    /// The longest any step sleeps: without futex_waitv (before Linux 5.16), also the bound on a
    /// cancellation whose wake-up came just before the step fell asleep.
    static let longestSlice = Duration.milliseconds(50)

    private static let current = ForkSafeMutex<WaitPool?>(nil)

    /// The pool of this process, made on first use.
    static var shared: WaitPool {
        current.withLock { pool in
            if let pool, pool.owner == mp_sync_identity() { return pool }
            // A pool inherited through fork has no threads here, and another thread may have held its
            // mutex at fork time: leave it alone and make a new one.
            if let inherited = pool { _ = Unmanaged.passRetained(inherited) }
            let made = WaitPool()
            pool = made
            return made
        }
    }

    /// In a freshly forked child: forgets the parent's pool without touching its locks.
    static func forgetAfterFork() {
        current.resetAfterFork { pool in
            if let inherited = pool { _ = Unmanaged.passRetained(inherited) }
            pool = nil
        }
    }

    /// The process the pool belongs to.
    private let owner = mp_sync_identity()

    /// How a wait ended.
    enum Ending: Sendable { case finished, timedOut, cancelled, noThread(errno: Int32) }

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wakeUp = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `mutex`.
    private var queue: [Job] = []
    private var queueHead = 0
    private var running: [Job] = []
    private var threads = 0
    private var idleThreads = 0

    private init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wakeUp, nil)
    }

    /// Waits, on the pool's threads, until `step` reports success, `deadline` passes, or the
    /// calling task is cancelled.
    ///
    /// - Parameters:
    ///   - deadline: when to give up.
    ///   - cancellable: whether cancelling the calling task ends the wait (`false` for waits that must
    ///     complete, such as taking a condition's lock back).
    ///   - interrupt: wakes a step asleep in its futex wait (a FUTEX_WAKE on the word it sleeps on).
    ///   - step: tries once, sleeping at most until the deadline it is given; returns a value when the
    ///     wait is over, nil to be called again. Its second argument counts the calls (0 the first
    ///     time, when it may spin before sleeping).
    /// - Returns: the step's value, or nil when `deadline` passed first.
    /// - Throws: `CancellationError` when the calling task was cancelled before the wait ended;
    ///   ``MultiprocessingError/Code/system`` when no thread could be started to serve it.
    func wait<T: Sendable>(
        until deadline: Deadline, cancellable: Bool = true, interrupt: @escaping @Sendable () -> Void,
        step: @escaping @Sendable (_ sliceEnd: Deadline, _ index: Int) -> T?
    ) async throws -> T? {
        if cancellable && Task.isCancelled { throw CancellationError() }
        let box = ResultBox<T>()
        let job = Job(deadline: deadline, cancellable: cancellable, interrupt: interrupt) { sliceEnd, index in
            guard let value = step(sliceEnd, index) else { return false }
            box.result.withLock { $0 = value }
            return true
        }
        let ending = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Ending, Never>) in
                submit(job, continuation)
            }
        } onCancel: {
            if cancellable { cancel(job) }
        }
        switch ending {
        case .finished: return box.result.withLock { $0 }
        case .timedOut: return nil
        case .cancelled: throw CancellationError()
        case .noThread(let error): throw MultiprocessingError.system("pthread_create", errno: error)
        }
    }

    /// How many waits the pool serves now (queued or in a step), and how many threads it runs.
    var load: (waits: Int, threads: Int) {
        locked { (queue[queueHead...].filter { $0.state == .queued }.count + running.count, threads) }
    }

    // MARK: Jobs

    private final class ResultBox<T: Sendable>: Sendable {
        let result = Mutex<T?>(nil)
    }

    private final class Job: @unchecked Sendable {
        enum State { case new, queued, running, ended }
        let deadline: Deadline
        let cancellable: Bool
        let interrupt: @Sendable () -> Void
        let attempt: (Deadline, Int) -> Bool
        let cancelled = Atomic<Bool>(false)
        /// Bumped (and woken) to interrupt a step asleep in a futex wait; see ``mp_futex_interrupt_on``.
        let interruption = UnsafeMutablePointer<Atomic<UInt32>>.allocate(capacity: 1)
        // Guarded by the pool's mutex.
        var state = State.new
        var continuation: CheckedContinuation<Ending, Never>?
        var steps = 0
        var shortSlice = false
        var interrupted = false

        init(
            deadline: Deadline, cancellable: Bool, interrupt: @escaping @Sendable () -> Void,
            attempt: @escaping (Deadline, Int) -> Bool
        ) {
            self.deadline = deadline
            self.cancellable = cancellable
            self.interrupt = interrupt
            self.attempt = attempt
            interruption.initialize(to: Atomic(0))
        }

        deinit { interruption.deallocate() }

        /// Ends the step asleep in a futex wait: through the interruption word, which the step also
        /// waits on, and (for kernels without futex_waitv) by a spurious wake-up on its own word.
        func wakeStep() {
            interruption.pointee.add(1, ordering: .sequentiallyConsistent)
            mp_futex_wake(UnsafeMutableRawPointer(interruption).assumingMemoryBound(to: UInt32.self), .max)
            interrupt()
        }

        var isCancelled: Bool { cancellable && cancelled.load(ordering: .sequentiallyConsistent) }
    }

    private func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    private func submit(_ job: Job, _ continuation: CheckedContinuation<Ending, Never>) {
        var toInterrupt: Job?
        var startThread = false
        let ended = locked { () -> Bool in
            job.continuation = continuation
            if job.state == .ended { return true }  // cancelled before it was queued
            job.state = .queued
            queue.append(job)
            if idleThreads > 0 {
                pthread_cond_signal(wakeUp)
            } else if threads < Self.threadLimit {
                threads += 1
                startThread = true
            } else if let sleeper = running.first(where: { !$0.shortSlice && !$0.interrupted }) {
                sleeper.interrupted = true
                toInterrupt = sleeper
            }
            return false
        }
        if ended { finish(job, .cancelled) }
        if startThread, case let error = spawnThread(), error != 0 {
            // Without any thread to serve it, the job would wait forever: end it with the error.
            let stranded = locked { () -> Bool in
                threads -= 1
                guard threads == 0, job.state == .queued else { return false }
                job.state = .ended
                return true
            }
            if stranded { finish(job, .noThread(errno: error)) }
        }
        toInterrupt?.wakeStep()
    }

    private func cancel(_ job: Job) {
        job.cancelled.store(true, ordering: .sequentiallyConsistent)
        let state = locked { () -> Job.State in
            let state = job.state
            if state == .queued || state == .new { job.state = .ended }
            return state
        }
        switch state {
        case .queued: finish(job, .cancelled)
        case .running: job.wakeStep()
        case .new, .ended: break  // `submit` or the thread that ended it resumes the task
        }
    }

    /// Resumes the awaiting task (exactly once: only the caller that set `.ended` gets here).
    private func finish(_ job: Job, _ ending: Ending) {
        let continuation = locked { () -> CheckedContinuation<Ending, Never>? in
            defer { job.continuation = nil }
            return job.continuation
        }
        continuation?.resume(returning: ending)
    }

    // MARK: Threads

    /// Starts a thread; returns 0 or pthread_create's error.
    private func spawnThread() -> Int32 {
        var thread = pthread_t()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        pthread_attr_setstacksize(&attributes, 256 * 1024)
        let context = Unmanaged.passUnretained(self).toOpaque()
        let created = pthread_create(&thread, &attributes, { context in
            mp_set_thread_name("mp-wait-pool")
            Unmanaged<WaitPool>.fromOpaque(context!).takeUnretainedValue().serve()
        }, context)
        pthread_attr_destroy(&attributes)
        return created
    }

    /// A thread's life: take the oldest job, run one step, end it or queue it again.
    private func serve() -> Never {
        pthread_mutex_lock(mutex)
        while true {
            while queueHead == queue.count {
                idleThreads += 1
                pthread_cond_wait(wakeUp, mutex)
                idleThreads -= 1
            }
            let job = queue[queueHead]
            queueHead += 1
            if queueHead > 64 && queueHead * 2 > queue.count {
                queue.removeFirst(queueHead)
                queueHead = 0
            }
            guard job.state == .queued else { continue }
            job.state = .running
            job.shortSlice = queueHead < queue.count
            job.interrupted = false
            let index = job.steps
            job.steps += 1
            running.append(job)
            pthread_mutex_unlock(mutex)

            let ending = runStep(job, index: index)

            pthread_mutex_lock(mutex)
            running.removeAll { $0 === job }
            if let ending {
                job.state = .ended
                let continuation = job.continuation
                job.continuation = nil
                pthread_mutex_unlock(mutex)
                continuation?.resume(returning: ending)
                pthread_mutex_lock(mutex)
            } else {
                job.state = .queued
                queue.append(job)
            }
        }
    }

    private func runStep(_ job: Job, index: Int) -> Ending? {
        // Read the interruption word before looking at the flag: a cancellation after this read
        // changes the word, so the step's futex wait ends at once instead of missing the wake-up.
        let interruption = UnsafeMutableRawPointer(job.interruption).assumingMemoryBound(to: UInt32.self)
        mp_futex_interrupt_on(interruption, job.interruption.pointee.load(ordering: .sequentiallyConsistent))
        defer { mp_futex_interrupt_on(nil, 0) }
        if job.isCancelled { return .cancelled }
        let slice = Deadline.after(job.shortSlice ? Self.sharedSlice : Self.longestSlice)
        if job.attempt(job.deadline.earlier(slice), index) { return .finished }
        if job.deadline.hasPassed { return .timedOut }
        if job.isCancelled { return .cancelled }
        return nil
    }
}
