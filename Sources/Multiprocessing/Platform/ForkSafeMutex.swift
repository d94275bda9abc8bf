#if canImport(Glibc)
import Glibc
#endif

/// A mutex-protected value that a forked child can take over.
///
/// After `fork`, only the forking thread exists in the child; a lock some other thread held at that
/// moment would stay held forever (with `Synchronization.Mutex` the child even traps, since the owner's
/// thread id is gone). The process-wide state the child must update right after fork lives in these,
/// and the child re-initialises them with ``resetAfterFork(_:)`` before touching them.
final class ForkSafeMutex<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// In a freshly forked child (one thread, nobody else to hold the lock): re-initialises the lock,
    /// then lets `body` change the value.
    func resetAfterFork(_ body: (inout Value) -> Void) {
        pthread_mutex_init(mutex, nil)
        body(&value)
    }
}
