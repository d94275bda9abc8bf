#if canImport(Glibc)
import Glibc
#endif
import Testing

/// Runs an async test's tasks on a thread of its own instead of Swift's cooperative pool.
///
/// Synchronous tests run on the cooperative pool too and block it in waits of many seconds; on a 2-CPU
/// machine two of them hold the whole pool, and an async test whose wait ended could not run its next
/// line until they finish. Its latency would measure the other tests, not the package.
struct OwnThread: TestTrait, SuiteTrait, TestScoping {
    var isRecursive: Bool { true }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        guard testCase != nil else { return try await function() }
        let executor = ThreadExecutor()
        defer { executor.stop() }
        try await ThreadExecutor.$current.withValue(executor) {
            try await withTaskExecutorPreference(executor) { try await function() }
        }
    }
}

extension Trait where Self == OwnThread {
    /// Runs the test's tasks on a thread of its own (see ``OwnThread``).
    static var ownThread: OwnThread { OwnThread() }
}

/// A task executor with one thread that runs jobs in order.
final class ThreadExecutor: TaskExecutor, @unchecked Sendable {
    /// The executor of the running test, for the unstructured tasks it starts.
    @TaskLocal static var current: ThreadExecutor?

    private var mutex = pthread_mutex_t()
    private var ready = pthread_cond_t()
    private var jobs: [UnownedJob] = []
    private var stopping = false

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&ready, nil)
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        precondition(pthread_create(&thread, nil, { context in
            Unmanaged<ThreadExecutor>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context) == 0)
        pthread_detach(thread)
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        pthread_mutex_lock(&mutex)
        jobs.append(job)
        pthread_cond_signal(&ready)
        pthread_mutex_unlock(&mutex)
    }

    /// Lets the thread end once the jobs queued so far have run.
    func stop() {
        pthread_mutex_lock(&mutex)
        stopping = true
        pthread_cond_signal(&ready)
        pthread_mutex_unlock(&mutex)
    }

    private func run() {
        while true {
            pthread_mutex_lock(&mutex)
            while jobs.isEmpty && !stopping { pthread_cond_wait(&ready, &mutex) }
            if jobs.isEmpty {
                pthread_mutex_unlock(&mutex)
                return
            }
            let batch = jobs
            jobs = []
            pthread_mutex_unlock(&mutex)
            for job in batch { job.runSynchronously(on: asUnownedTaskExecutor()) }
        }
    }
}
