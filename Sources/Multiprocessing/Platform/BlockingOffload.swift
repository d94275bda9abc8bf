#if canImport(Glibc)
import Glibc
#endif

/// Runs a blocking call on a thread of its own and resumes the caller when it returns, so the `async`
/// forms of blocking operations (join, acquire, wait) never tie up Swift's cooperative thread pool.
func withBlockingThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let job = BlockingJob {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
        let context = Unmanaged.passRetained(job).toOpaque()
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
            continuation.resume(throwing: MultiprocessingError.system("pthread_create", errno: created))
        }
    }
}

private final class BlockingJob: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
