#if canImport(Glibc)
import Glibc
#endif

/// Runs a blocking call on a thread of its own and resumes the caller when it returns, so the `async`
/// forms of blocking operations (join, acquire, wait) never tie up Swift's cooperative thread pool.
func withBlockingThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        do {
            try startThread {
                do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            }
        } catch {
            continuation.resume(throwing: error)
        }
    }
}

/// Starts `body` on a detached thread of its own at once, whatever Swift's threads are doing: for a
/// loop that must run even while every thread of the cooperative pool is blocked (a manager link's
/// reader, which the blocked callers wait for).
///
/// - Throws: ``MultiprocessingError/Code/system`` when the thread cannot be created.
func startThread(_ body: @escaping @Sendable () -> Void) throws {
    let context = Unmanaged.passRetained(BlockingJob(body)).toOpaque()
    var thread = pthread_t()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    let created = pthread_create(&thread, &attributes, { context in
        Unmanaged<BlockingJob>.fromOpaque(context!).takeRetainedValue().run()
        return nil
    }, context)
    pthread_attr_destroy(&attributes)
    if created != 0 {
        Unmanaged<BlockingJob>.fromOpaque(context).release()
        throw MultiprocessingError.system("pthread_create", errno: created)
    }
}

private final class BlockingJob: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
