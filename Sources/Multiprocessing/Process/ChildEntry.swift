#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// What a parent tells a new child: its work and its identity.
struct ChildBootstrap: Codable, Sendable {
    var work: TaskEnvelope?
    var name: String
    var identity: [Int]
    var authkey: [UInt8]
    var daemon: Bool
    var parentPid: Int32
    var parentName: String
    var startMethod: String?
}

/// The entry of a spawned or forkserver child, called before `main` by the C shim's constructor with
/// the descriptor of its bootstrap connection. Never returns.
@_cdecl("multiprocessing_child_main")
func multiprocessingChildMain(_ fd: Int32) {
    let bootstrap: ChildBootstrap
    do {
        try Syscall.setCloseOnExec(fd)
        let connection = try Connection(adopting: fd)
        // The task comes from the parent, whose values the child takes however much memory they need.
        connection.decodingBudget = .unlimited
        bootstrap = try connection.recv(ChildBootstrap.self, timeout: .seconds(120))
        // The connection object is dropped here, but `fd` must stay open for the child's whole life:
        // it is how the child sees its parent die. Keep it by duplicating before the drop.
        let kept = try Syscall.duplicate(fd)
        withExtendedLifetime(connection) {}
        becomeChild(bootstrap, parentSentinel: kept)
    } catch {
        writeToStandardError("multiprocessing: child could not start: \(error)\n")
        exit(1)
    }
    guard let work = bootstrap.work else { exit(0) }
    runChild { try work.task.run() }
}

/// Installs a child's identity, and for a daemon a watcher that ends it when the parent dies.
func becomeChild(_ bootstrap: ChildBootstrap, parentSentinel: Int32) {
    ProcessState.shared.resetAfterFork { state in
        state = ProcessState(
            name: bootstrap.name, identity: bootstrap.identity, authkey: bootstrap.authkey, daemon: bootstrap.daemon,
            parent: ParentProcess(pid: bootstrap.parentPid, name: bootstrap.parentName, sentinel: parentSentinel))
    }
    ChildRegistry.forgetInheritedChildren()
    ForkServerLauncher.forgetInheritedServer()
    EventLoop.forgetAfterFork()
    WaitPool.forgetAfterFork()
    defaultStartMethod.resetAfterFork { $0 = bootstrap.startMethod.flatMap(StartMethod.init(rawValue:)) }
    if bootstrap.daemon { watchParent(parentSentinel) }
}

/// Runs a child's work and ends the process: 0 on return, 1 (with the error on standard error) on throw.
/// A forked child ends with `_exit` after flushing, as Python's fork children do: the exit handlers it
/// inherited belong to its parent. Other children end with `exit`, so their own exit handlers run.
func runChild(forked: Bool = false, _ body: () throws -> Void) -> Never {
    var code: Int32 = 0
    do {
        try body()
    } catch {
        let name = ProcessState.shared.withLock { $0.name }
        writeToStandardError("Process \(name):\n\(type(of: error)): \(error)\n")
        code = 1
    }
    ExitHooks.run()
    fflush(nil)
    if forked { _exit(code) }
    exit(code)
}

func writeToStandardError(_ text: String) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(2, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 { if errno == EINTR { continue } else { return } }
            offset += written
        }
    }
}

/// Ends this (daemon) process as soon as its parent dies, however the parent ended: a thread of its
/// own waits for the bootstrap connection to hang up.
private func watchParent(_ sentinel: Int32) {
    var thread = pthread_t()
    let context = UnsafeMutableRawPointer(bitPattern: Int(sentinel) + 1)
    pthread_create(&thread, nil, { context in
        let fd = Int32(Int(bitPattern: context) - 1)
        mp_set_thread_name("mp-parent-watch")
        _ = try? Syscall.pollReadable([fd], until: .never)
        kill(getpid(), SIGKILL)
        return nil
    }, context)
    pthread_detach(thread)
}
