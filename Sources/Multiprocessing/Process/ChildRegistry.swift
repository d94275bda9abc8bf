#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The children this process started and has not reaped yet (Python's `_children`), and the exit-time
/// rule: daemon children are terminated and the others joined when the process exits normally.
enum ChildRegistry {
    private static let children = ForkSafeMutex<[ObjectIdentifier: ChildProcess]>([:])

    static func add(_ child: ChildProcess) {
        children.withLock { $0[ObjectIdentifier(child)] = child }
        ExitHooks.install()
    }

    static func remove(_ child: ChildProcess) {
        _ = children.withLock { $0.removeValue(forKey: ObjectIdentifier(child)) }
    }

    /// Started children not yet reaped.
    static var all: [ChildProcess] { children.withLock { Array($0.values) } }

    /// Reaps children that have ended, so none lingers as a zombie.
    static func reapEnded() {
        for child in all { _ = child.exitCode }
    }

    /// Descriptors that a forked child must close: its parent's ends of its siblings' connections.
    static var parentEnds: [Int32] { all.compactMap(\.parentEndDescriptor) }

    /// In a new child: the parent's children are not ours.
    static func forgetInheritedChildren() {
        children.resetAfterFork { $0 = [:] }
    }
}

/// Started children that are still running (Python's `active_children()`); ended ones are reaped.
public func activeChildren() -> [ChildProcess] {
    ChildRegistry.reapEnded()
    return ChildRegistry.all
}

/// Exit-time handling of children, installed when the first child starts.
enum ExitHooks {
    private static let installed = Atomic<Bool>(false)

    static func install() {
        guard installed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        atexit { ExitHooks.run() }
    }

    /// Set once the program has begun to exit: whoever keeps children running (a pool) stops replacing them.
    static let exiting = Atomic<Bool>(false)

    /// Terminates daemon children, then joins every child (Python's `_exit_function`).
    static func run() {
        // A process that never started a child has none to end (and need not build the registry); nothing
        // of its could be replacing children either, and not writing spares a fork server's child a copied
        // page.
        guard installed.load(ordering: .relaxed) else { return }
        exiting.store(true, ordering: .relaxed)
        let children = ChildRegistry.all
        for child in children where child.daemon { try? child.terminate() }
        for child in children { _ = try? child.join() }
    }
}
