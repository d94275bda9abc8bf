#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// The package's one event loop: a single thread running epoll that serves every awaited wait on a
/// descriptor (connections, listeners, child exits through pidfds, a parent's death).
///
/// An awaiting task registers what it waits for and suspends; the loop thread resumes it when a
/// descriptor is ready, when its deadline passes, or when it is cancelled. No thread is held per wait:
/// any number of awaits cost this one thread. A forked child builds its own loop on first use.
///
/// Readiness is a hint, never a promise: a resumed waiter tries its non-blocking operation again and
/// waits anew if the data went elsewhere. That keeps spurious wake-ups (a descriptor number reused
/// after close, two waiters on one socket) harmless.
final class EventLoop: @unchecked Sendable {
    /// What a waiter wants from one descriptor.
    struct Interest: OptionSet, Sendable {
        let rawValue: UInt32
        static let readable = Interest(rawValue: MP_EVENT_READABLE)
        static let writable = Interest(rawValue: MP_EVENT_WRITABLE)
    }

    /// How a wait ended without an error.
    enum Outcome: Sendable { case ready, timedOut }

    private struct Waiter {
        var continuation: UnsafeContinuation<Outcome, any Error>
        var descriptors: [(fd: Int32, interest: Interest)]
        var deadline: UInt64?
    }

    private struct Watch {
        var waiters: [UInt64] = []
        /// What the kernel registration is armed for (nothing once it fired: EPOLLONESHOT).
        var armed: Interest = []
        /// Whether the kernel knows the descriptor (possibly disarmed).
        var registered = false
    }

    private struct State {
        var waiters: [UInt64: Waiter] = [:]
        var watches: [Int32: Watch] = [:]
        var timers = DeadlineHeap()
        /// Waits cancelled before they were registered.
        var cancelledEarly: Set<UInt64> = []
        var nextID: UInt64 = 1
        /// When the loop thread will wake up by itself at the latest (nil: not before an event).
        var sleepsUntil: UInt64? = nil
        /// Timer entries whose waiter ended otherwise; the heap is rebuilt when they pile up.
        var staleTimers = 0
    }

    private let epoll: Int32
    private let wakeDescriptor: Int32
    private let state = ForkSafeMutex(State())
    /// The process this loop belongs to (a forked child makes its own).
    private let owner: UInt64

    private static let current = ForkSafeMutex<EventLoop?>(nil)
    /// Whether this process (or the parent it was forked from) ever started a loop: until then
    /// ``closing(_:)`` has nothing to end and does not touch `current`, whose first use costs a fresh
    /// child the instantiation of its type (a spawned child closes its bootstrap connection).
    private static let everStarted = Atomic<Bool>(false)

    /// The loop of this process, started on first use.
    static var shared: EventLoop {
        get throws {
            try current.withLock { loop in
                if let loop, loop.owner == mp_sync_identity() { return loop }
                // A loop inherited through fork has no thread here: keep it alive (its descriptors are
                // shared with the parent's) and start a new one.
                if let inherited = loop { _ = Unmanaged.passRetained(inherited) }
                let made = try EventLoop()
                everStarted.store(true, ordering: .releasing)
                loop = made
                return made
            }
        }
    }

    private init() throws {
        epoll = mp_epoll_create()
        if epoll < 0 { throw MultiprocessingError.system("epoll_create1") }
        wakeDescriptor = mp_eventfd()
        if wakeDescriptor < 0 {
            let error = errno
            Syscall.close(epoll)
            throw MultiprocessingError.system("eventfd", errno: error)
        }
        owner = mp_sync_identity()
        guard mp_epoll_watch(epoll, wakeDescriptor, MP_EVENT_READABLE, 0) == 0 else {
            let error = errno
            Syscall.close(epoll)
            Syscall.close(wakeDescriptor)
            throw MultiprocessingError.system("epoll_ctl", errno: error)
        }
        try startThread()
    }

    private func startThread() throws {
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let created = pthread_create(&thread, nil, { context in
            mp_set_thread_name("mp-event-loop")
            Unmanaged<EventLoop>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        if created != 0 {
            Unmanaged<EventLoop>.fromOpaque(context).release()
            throw MultiprocessingError.system("pthread_create", errno: created)
        }
        pthread_detach(thread)
    }

    // MARK: Waiting

    /// Suspends until one of `descriptors` is ready for what is asked of it (or hung up), or `deadline`
    /// passes. Returns `.ready` or `.timedOut`.
    ///
    /// - Throws: `CancellationError` when the awaiting task is cancelled (at once if it already is);
    ///   ``MultiprocessingError/Code/closed`` when a descriptor is closed through ``closing(_:)`` meanwhile.
    func wait(for descriptors: [(fd: Int32, interest: Interest)], until deadline: Deadline) async throws -> Outcome {
        try Task.checkCancellation()
        if deadline.hasPassed { return .timedOut }
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                register(id, Waiter(continuation: continuation, descriptors: descriptors, deadline: deadline.nanoseconds))
            }
        } onCancel: {
            finish(id, with: .failure(CancellationError()), orRemember: true)
        }
    }

    /// Waits until `fd` is readable (or hung up): see ``wait(for:until:)``.
    func waitReadable(_ fd: Int32, until deadline: Deadline) async throws -> Outcome {
        try await wait(for: [(fd, .readable)], until: deadline)
    }

    /// Ends every wait on `fd` with ``MultiprocessingError/Code/closed`` and forgets the descriptor, before
    /// its owner closes it; does nothing when this process has no loop yet.
    static func closing(_ fd: Int32) {
        guard everStarted.load(ordering: .acquiring) else { return }
        let loop = current.withLock { loop in loop.flatMap { $0.owner == mp_sync_identity() ? $0 : nil } }
        loop?.closing(fd)
    }

    /// In a freshly forked child: forgets the parent's loop (its thread does not exist here) without
    /// touching its locks, which another thread may have held at fork time.
    static func forgetAfterFork() {
        current.resetAfterFork { loop in
            if let inherited = loop { _ = Unmanaged.passRetained(inherited) }
            loop = nil
        }
    }

    private func closing(_ fd: Int32) {
        let ended: [UnsafeContinuation<Outcome, any Error>] = state.withLock { state in
            guard let watch = state.watches.removeValue(forKey: fd) else { return [] }
            if watch.registered { _ = mp_epoll_forget(epoll, fd) }
            return watch.waiters.compactMap { removeWaiter($0, from: &state)?.continuation }
        }
        for continuation in ended {
            continuation.resume(throwing: MultiprocessingError(.closed, "descriptor \(fd) was closed while a task waited on it"))
        }
    }

    private func register(_ id: UInt64, _ waiter: Waiter) {
        var failure: (any Error)?
        var readyAtOnce = false
        state.withLock { state in
            if state.cancelledEarly.remove(id) != nil {
                failure = CancellationError()
                return
            }
            for (fd, interest) in waiter.descriptors {
                var watch = state.watches[fd] ?? Watch()
                let wanted = watch.armed.union(interest)
                if wanted != watch.armed || !watch.registered {
                    let all = watch.waiters.reduce(interest) { $0.union(interestOf($1, fd, state)) }
                    switch arm(fd, all, registered: watch.registered) {
                    case .armed:
                        watch.registered = true
                        watch.armed = all
                    case .alwaysReady:
                        readyAtOnce = true
                    case .failed(let error):
                        failure = error
                    }
                }
                if failure != nil || readyAtOnce { break }
                watch.waiters.append(id)
                state.watches[fd] = watch
            }
            if failure != nil || readyAtOnce {
                removeWaiterReferences(id, waiter.descriptors, from: &state)
                return
            }
            state.waiters[id] = waiter
            if let deadline = waiter.deadline {
                state.timers.insert(deadline, id)
                if state.sleepsUntil.map({ deadline < $0 }) ?? true { wakeLoop() }
            }
        }
        if let failure { waiter.continuation.resume(throwing: failure) }
        else if readyAtOnce { waiter.continuation.resume(returning: .ready) }
    }

    private enum Arming { case armed, alwaysReady, failed(any Error) }

    /// Registers or re-arms `fd` in the epoll set.
    private func arm(_ fd: Int32, _ interest: Interest, registered: Bool) -> Arming {
        var rearm: Int32 = registered ? 1 : 0
        for _ in 0..<2 {
            if mp_epoll_watch(epoll, fd, interest.rawValue, rearm) == 0 { return .armed }
            switch errno {
            case ENOENT where rearm == 1: rearm = 0  // the descriptor was closed and its number reused
            case EEXIST where rearm == 0: rearm = 1
            case EPERM: return .alwaysReady  // a regular file: always ready, as poll(2) says
            case EBADF: return .failed(MultiprocessingError(.invalidArgument, "descriptor \(fd) is not open", errno: EBADF))
            case let error: return .failed(MultiprocessingError.system("epoll_ctl", errno: error))
            }
        }
        return .failed(MultiprocessingError.system("epoll_ctl"))
    }

    private func interestOf(_ id: UInt64, _ fd: Int32, _ state: State) -> Interest {
        state.waiters[id]?.descriptors.first { $0.fd == fd }?.interest ?? []
    }

    /// Ends waiter `id` with `result` if it is still waiting; otherwise, when `orRemember` is set,
    /// remembers the cancellation for a registration still to come.
    private func finish(_ id: UInt64, with result: Result<Outcome, any Error>, orRemember: Bool = false) {
        let waiter = state.withLock { state in
            let found = removeWaiter(id, from: &state)
            if found == nil && orRemember { state.cancelledEarly.insert(id) }
            return found
        }
        waiter?.continuation.resume(with: result)
    }

    /// Takes a waiter out of every table. A descriptor left without waiters is dropped from the epoll
    /// set, so that no armed registration outlives our knowledge of it; only `fired`, whose one-shot
    /// registration is disarmed already, stays known to the kernel, to be re-armed cheaply.
    private func removeWaiter(_ id: UInt64, fired: Int32? = nil, from state: inout State) -> Waiter? {
        guard let waiter = state.waiters.removeValue(forKey: id) else { return nil }
        if waiter.deadline != nil { state.staleTimers += 1 }
        removeWaiterReferences(id, waiter.descriptors, fired: fired, from: &state)
        return waiter
    }

    private func removeWaiterReferences(
        _ id: UInt64, _ descriptors: [(fd: Int32, interest: Interest)], fired: Int32? = nil, from state: inout State
    ) {
        for (fd, _) in descriptors {
            guard var watch = state.watches[fd] else { continue }
            watch.waiters.removeAll { $0 == id }
            if watch.waiters.isEmpty && fd != fired {
                if watch.registered { _ = mp_epoll_forget(epoll, fd) }
                state.watches[fd] = nil
            } else {
                state.watches[fd] = watch
            }
        }
    }

    private func wakeLoop() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeDescriptor, &one, 8)
    }

    // MARK: The loop thread

    private func run() {
        let capacity = 256
        let fds = UnsafeMutablePointer<Int32>.allocate(capacity: capacity)
        let events = UnsafeMutablePointer<UInt32>.allocate(capacity: capacity)
        var timeout: Int32 = -1
        while true {
            let count = mp_epoll_wait(epoll, fds, events, Int32(capacity), timeout)
            var resumed: [(UnsafeContinuation<Outcome, any Error>, Outcome)] = []
            timeout = state.withLock { state in
                for index in 0..<max(Int(count), 0) {
                    let fd = fds[index]
                    if fd == wakeDescriptor {
                        var drained: UInt64 = 0
                        _ = Glibc.read(wakeDescriptor, &drained, 8)
                        _ = mp_epoll_watch(epoll, wakeDescriptor, MP_EVENT_READABLE, 1)
                        continue
                    }
                    guard var watch = state.watches[fd] else { continue }
                    let got = Interest(rawValue: events[index] & (MP_EVENT_READABLE | MP_EVENT_WRITABLE))
                    let hungUp = events[index] & MP_EVENT_HANGUP != 0
                    watch.armed = []
                    state.watches[fd] = watch
                    var remaining: Interest = []
                    for id in watch.waiters {
                        let wanted = interestOf(id, fd, state)
                        if hungUp || !wanted.isDisjoint(with: got) {
                            if let waiter = removeWaiter(id, fired: fd, from: &state) { resumed.append((waiter.continuation, .ready)) }
                        } else {
                            remaining.formUnion(wanted)
                        }
                    }
                    if !remaining.isEmpty, var left = state.watches[fd] {
                        if case .armed = arm(fd, remaining, registered: true) { left.armed = remaining }
                        state.watches[fd] = left
                    }
                }
                let now = Deadline.monotonicNow()
                while let (deadline, id) = state.timers.first, deadline <= now {
                    state.timers.removeFirst()
                    guard state.waiters[id]?.deadline == deadline, let waiter = removeWaiter(id, from: &state) else {
                        state.staleTimers = max(0, state.staleTimers - 1)
                        continue
                    }
                    state.staleTimers -= 1  // removeWaiter counted it, but it came up as itself
                    resumed.append((waiter.continuation, .timedOut))
                }
                // Timers of waiters that ended otherwise are dropped when they come up, or all at once
                // when they outnumber the live ones (a hot loop of receives with a long timeout).
                if state.staleTimers > 1024 && state.staleTimers > state.waiters.count {
                    state.timers = DeadlineHeap()
                    for (id, waiter) in state.waiters { if let deadline = waiter.deadline { state.timers.insert(deadline, id) } }
                    state.staleTimers = 0
                }
                while let (_, id) = state.timers.first, state.waiters[id] == nil {
                    state.timers.removeFirst()
                    state.staleTimers = max(0, state.staleTimers - 1)
                }
                state.sleepsUntil = state.timers.first?.deadline
                guard let next = state.sleepsUntil else { return -1 }
                return Int32(min((next - min(next, now) + 999_999) / 1_000_000, UInt64(Int32.max)))
            }
            for (continuation, outcome) in resumed { continuation.resume(returning: outcome) }
        }
    }
}

/// A binary min-heap of (deadline, waiter) pairs.
struct DeadlineHeap {
    private var items: [(deadline: UInt64, id: UInt64)] = []

    var first: (deadline: UInt64, id: UInt64)? { items.first }

    mutating func insert(_ deadline: UInt64, _ id: UInt64) {
        items.append((deadline, id))
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child].deadline < items[parent].deadline else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func removeFirst() {
        items.swapAt(0, items.count - 1)
        items.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < items.count && items[left].deadline < items[smallest].deadline { smallest = left }
            if right < items.count && items[right].deadline < items[smallest].deadline { smallest = right }
            if smallest == parent { return }
            items.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
