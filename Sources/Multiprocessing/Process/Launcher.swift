#if canImport(Glibc)
import Glibc
#endif

/// What a start method needs to create one child (the arguments of CPython's `Popen` classes).
struct LaunchRequest {
    /// The child's identity and settings; a launcher that sends it adds the work.
    var bootstrap: ChildBootstrap
    /// What the child runs.
    let work: ChildProcess.Work
    /// The parent's end of the bootstrap socket pair, kept by the parent while the child runs (-1 until
    /// the launcher makes the pair, or takes one the fork server made). The caller keeps or closes
    /// whatever the request holds when the launcher returns or throws.
    var parentEnd: Int32 = -1
    /// The child's end of the bootstrap socket pair, closed by the caller once the child has it.
    var childEnd: Int32 = -1
    /// Descriptors only the parent may hold (other children's bootstrap ends, capture read ends),
    /// which a forked child closes.
    let parentOnly: [Int32]
}

/// A start method: one type per method, each in its own file, as CPython splits `popen_spawn_posix`,
/// `popen_forkserver` and `popen_fork`. ``ChildProcess`` only asks its context's method for its launcher.
protocol Launcher {
    /// Creates the child and hands it its work; returns the handle that watches it.
    static func launch(_ request: inout LaunchRequest) throws -> any ChildHandle
}

extension StartMethod {
    /// The type that creates children with this method.
    var launcher: any Launcher.Type {
        switch self {
        case .spawn: SpawnLauncher.self
        case .forkserver: ForkServerLauncher.self
        case .fork: ForkLauncher.self
        }
    }
}

extension LaunchRequest {
    /// For a child that starts as a fresh program (spawn, forkserver): the task to send it and its
    /// type's mangled name. A closure cannot travel, and is refused.
    func taskForFreshProgram(_ method: StartMethod) throws -> (TaskEnvelope, typeName: String) {
        guard case .task(let task) = work else {
            throw MultiprocessingError(
                .invalidArgument,
                "a closure can only run in a child started with the fork start method: create the child with "
                    + "context: ProcessContext(.fork); under \(method) describe the work as a ProcessTask type")
        }
        return (TaskEnvelope(task), try TaskEnvelope.typeName(of: type(of: task)))
    }

    /// Makes the bootstrap socket pair, for a launcher whose child is created with its end.
    mutating func makeBootstrapPair() throws {
        (parentEnd, childEnd) = try Syscall.socketPair()
    }

    /// The bootstrap as one message, to write with ``startBootstrap(_:)``.
    func bootstrapMessage() throws -> UnsentMessage {
        try Connection.message(carrying: bootstrap)
    }

    /// Writes the bootstrap (``bootstrapMessage()``) into `parentEnd` before the child exists (or has read
    /// anything), as far as the socket takes it without waiting: the child then reads it the moment it
    /// starts instead of waiting for its parent to hear of it. Returns what is left, for
    /// ``finishBootstrap(_:for:)``.
    /// - Throws: ``MultiprocessingError/Code/system`` (errno EPIPE or ECONNRESET when the child's end is
    ///   closed).
    func startBootstrap(_ message: UnsentMessage, on parentEnd: Int32) throws -> UnsentMessage {
        // The message borrows the bootstrap's descriptors.
        try withExtendedLifetime(bootstrap) { try message.sendWithoutWaiting(on: parentEnd) }
    }

    /// Writes the rest of the bootstrap to a started child; if that fails, kills and reaps the child
    /// before throwing, so that nothing is left behind.
    func finishBootstrap(_ rest: UnsentMessage, for handle: any ChildHandle) throws {
        do {
            // The bootstrap's descriptors are borrowed from it until they are sent.
            try withExtendedLifetime(bootstrap) { try rest.sendRest(on: parentEnd) }
        } catch {
            try? handle.send(signal: SIGKILL)
            _ = try? Syscall.pollReadable([handle.sentinel], until: .after(.seconds(5)))
            _ = try? handle.exitCode()
            handle.release()
            throw error
        }
    }
}
