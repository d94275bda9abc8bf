#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// Resource limits a child process runs under (`setrlimit`), set in the child before its task runs.
/// Python's `multiprocessing` has no such settings; a limit left nil keeps the parent's.
///
/// A child that goes over ``cpuSeconds`` ends with ``Signal/cpuTimeLimitExceeded`` (`SIGXCPU`) and
/// ``ChildProcess/exceededLimit`` is ``LimitExceeded/cpuTime``. A child whose allocation fails under
/// ``addressSpaceBytes`` or ``dataSizeBytes`` writes a line saying so to its standard error and ends with
/// the signal of the Swift runtime's trap; ``ChildProcess/exceededLimit`` is then ``LimitExceeded/memory``.
public struct ResourceLimits: Hashable, Sendable, Codable {
    /// CPU time in seconds (`RLIMIT_CPU`); at least 1.
    public var cpuSeconds: Int?
    /// The size of the address space in bytes (`RLIMIT_AS`): every mapping counts, code and stacks too.
    public var addressSpaceBytes: Int?
    /// The size of the data segment and heap in bytes (`RLIMIT_DATA`).
    public var dataSizeBytes: Int?
    /// One more than the highest descriptor number the child may open (`RLIMIT_NOFILE`).
    public var openFiles: Int?
    /// The largest core dump in bytes (`RLIMIT_CORE`); 0 turns core dumps off.
    public var coreDumpBytes: Int?

    /// Limits; each nil keeps the parent's.
    public init(
        cpuSeconds: Int? = nil, addressSpaceBytes: Int? = nil, dataSizeBytes: Int? = nil, openFiles: Int? = nil,
        coreDumpBytes: Int? = nil
    ) {
        self.cpuSeconds = cpuSeconds
        self.addressSpaceBytes = addressSpaceBytes
        self.dataSizeBytes = dataSizeBytes
        self.openFiles = openFiles
        self.coreDumpBytes = coreDumpBytes
    }

    /// The memory limit in words for messages, or nil without one.
    var memoryLimitDescription: String? {
        switch (addressSpaceBytes, dataSizeBytes) {
        case let (space?, data?): "address space \(space) bytes, data \(data) bytes"
        case let (space?, nil): "address space \(space) bytes"
        case let (nil, data?): "data \(data) bytes"
        case (nil, nil): nil
        }
    }

    func validate() throws {
        if let cpuSeconds, cpuSeconds < 1 {
            throw MultiprocessingError(.invalidArgument, "cpuSeconds must be at least 1, not \(cpuSeconds)")
        }
        for (name, value) in [("addressSpaceBytes", addressSpaceBytes), ("dataSizeBytes", dataSizeBytes),
                              ("openFiles", openFiles), ("coreDumpBytes", coreDumpBytes)] {
            if let value, value < 0 { throw MultiprocessingError(.invalidArgument, "\(name) must not be negative, not \(value)") }
        }
        if let openFiles, openFiles < 4 {
            throw MultiprocessingError(.invalidArgument, "openFiles must be at least 4 (a child needs descriptors 0-3), not \(openFiles)")
        }
    }

    /// Applies the limits to the calling process.
    func apply() throws {
        // SIGXCPU at the limit; SIGKILL a second later for a child that ignores it.
        if let cpuSeconds { try Syscall.setResourceLimit(Int32(MP_RLIMIT_CPU), soft: cpuSeconds, hard: cpuSeconds + 1) }
        if let addressSpaceBytes { try Syscall.setResourceLimit(Int32(MP_RLIMIT_AS), soft: addressSpaceBytes, hard: addressSpaceBytes) }
        if let dataSizeBytes { try Syscall.setResourceLimit(Int32(MP_RLIMIT_DATA), soft: dataSizeBytes, hard: dataSizeBytes) }
        if let openFiles { try Syscall.setResourceLimit(Int32(MP_RLIMIT_NOFILE), soft: openFiles, hard: openFiles) }
        if let coreDumpBytes { try Syscall.setResourceLimit(Int32(MP_RLIMIT_CORE), soft: coreDumpBytes, hard: coreDumpBytes) }
    }
}

/// Which of its ``ResourceLimits`` ended a child (``ChildProcess/exceededLimit``).
public enum LimitExceeded: Hashable, Sendable, CustomStringConvertible {
    /// The child used up ``ResourceLimits/cpuSeconds`` (it ended with `SIGXCPU`).
    case cpuTime
    /// An allocation failed under ``ResourceLimits/addressSpaceBytes`` or ``ResourceLimits/dataSizeBytes``.
    case memory

    /// `cpuTime` or `memory`.
    public var description: String {
        switch self {
        case .cpuTime: "cpuTime"
        case .memory: "memory"
        }
    }
}

/// Where a child's standard input comes from.
public enum ChildInput: Hashable, Sendable {
    /// The parent's standard input.
    case inherit
    /// `/dev/null`: the child reads end-of-file at once.
    case null
    /// The file at this path, opened for reading by the parent when the child starts.
    case file(String)
}

/// Where a child's standard output or standard error goes.
public enum ChildOutput: Hashable, Sendable {
    /// The parent's own stream.
    case inherit
    /// `/dev/null`.
    case null
    /// The file at this path, created if needed (mode 0644) by the parent when the child starts;
    /// truncated unless `append`.
    case file(String, append: Bool = false)
    /// A pipe the parent drains as the child writes, however much it writes; read the bytes with
    /// ``ChildProcess/capturedOutput(timeout:)-9qq4v`` or ``ChildProcess/capturedErrorOutput(timeout:)-958kb``.
    case capture
}

/// Per-child settings that Python's `multiprocessing` lacks: resource limits, environment, working
/// directory and the three standard streams. A child applies them itself, before its task runs, under
/// every start method.
///
/// ```swift
/// var settings = ChildSettings(limits: ResourceLimits(cpuSeconds: 10, addressSpaceBytes: 1 << 30))
/// settings.standardOutput = .capture
/// settings.environment["MODE"] = "batch"
/// let child = ChildProcess(Crunch(), settings: settings)
/// ```
public struct ChildSettings: Hashable, Sendable {
    /// Resource limits; nil fields keep the parent's.
    public var limits: ResourceLimits
    /// Variables to set in the child's environment, beside those it inherits. The child applies them
    /// with `setenv` before its task runs, so the task and the programs it starts see them.
    public var environment: [String: String]
    /// Inherited variables to remove from the child's environment (applied before ``environment``).
    public var removedEnvironment: Set<String>
    /// The child's working directory, or nil for the parent's.
    public var workingDirectory: String?
    /// Where standard input comes from.
    public var standardInput: ChildInput
    /// Where standard output goes.
    public var standardOutput: ChildOutput
    /// Where standard error goes.
    public var standardError: ChildOutput

    /// Settings; by default the child inherits everything from its parent.
    public init(
        limits: ResourceLimits = ResourceLimits(), environment: [String: String] = [:],
        removedEnvironment: Set<String> = [], workingDirectory: String? = nil,
        standardInput: ChildInput = .inherit, standardOutput: ChildOutput = .inherit, standardError: ChildOutput = .inherit
    ) {
        self.limits = limits
        self.environment = environment
        self.removedEnvironment = removedEnvironment
        self.workingDirectory = workingDirectory
        self.standardInput = standardInput
        self.standardOutput = standardOutput
        self.standardError = standardError
    }
}

// MARK: Crossing to the child

/// A descriptor inside a child's bootstrap: sent beside the message (spawn, forkserver) or inherited
/// by number (fork).
struct PassedDescriptor: Codable {
    var fd: Int32

    init(_ fd: Int32) { self.fd = fd }

    init(from decoder: any Decoder) throws {
        let transfer = try DescriptorTransfer.from(decoder.userInfo, for: "a child's stream")
        fd = try transfer.take(decoder.singleValueContainer().decode(Int.self))
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(DescriptorTransfer.from(encoder.userInfo, for: "a child's stream").add(fd))
    }
}

/// What a child needs to apply its ``ChildSettings``: the values, and descriptors the parent opened.
struct ChildSettingsWire: Codable {
    struct EnvironmentChange {
        var name: String
        var value: String?
    }

    var limits: ResourceLimits
    var environment: [EnvironmentChange]
    var workingDirectory: String?
    var standardInput: PassedDescriptor?
    var standardOutput: PassedDescriptor?
    var standardError: PassedDescriptor?
    /// Receives one byte when an allocation fails under a memory limit.
    var memoryReport: PassedDescriptor?

    /// Settings that change nothing: no limits, no environment changes, no directory, no streams.
    static var none: ChildSettingsWire {
        ChildSettingsWire(
            limits: ResourceLimits(), environment: [], workingDirectory: nil, standardInput: nil, standardOutput: nil,
            standardError: nil, memoryReport: nil)
    }

    /// Whether these settings change nothing.
    var isEmpty: Bool {
        limits == ResourceLimits() && environment.isEmpty && workingDirectory == nil && standardInput == nil
            && standardOutput == nil && standardError == nil && memoryReport == nil
    }

    /// In the child, before its task: the streams, the directory, the environment, then the limits
    /// (last, so that a low `openFiles` does not stop the steps before it).
    func apply() throws {
        fflush(nil)
        if standardInput != nil || standardOutput != nil || standardError != nil { try moveStreams() }
        if let workingDirectory {
            try Syscall.retrying("chdir(\(workingDirectory))") { chdir(workingDirectory) }
        }
        for change in environment {
            if let value = change.value {
                try Syscall.retrying("setenv(\(change.name))") { setenv(change.name, value, 1) }
            } else {
                try Syscall.retrying("unsetenv(\(change.name))") { unsetenv(change.name) }
            }
        }
        try limits.apply()
    }

    /// Puts the passed streams in place of the standard ones.
    private func moveStreams() throws {
        var moved: [(from: Int32, to: Int32)] = []
        for (passed, target) in [(standardInput, Int32(0)), (standardOutput, 1), (standardError, 2)] {
            guard let passed else { continue }
            // A copy above the standard numbers first, so that no dup2 overwrites a source still needed.
            moved.append((try Syscall.duplicate(passed.fd, atLeast: 3), target))
        }
        for (passed, _) in [(standardInput, 0), (standardOutput, 1), (standardError, 2)] {
            if let passed, passed.fd > 2 { Syscall.close(passed.fd) }
        }
        for move in moved {
            try Syscall.duplicate(move.from, onto: move.to)
            Syscall.close(move.from)
        }
    }
}

/// A list, as ``ChildBootstrap`` is (keyed containers cost a fresh child conformance scans).
extension ChildSettingsWire {
    func encode(to encoder: any Encoder) throws {
        var list = encoder.unkeyedContainer()
        for limit in [limits.cpuSeconds, limits.addressSpaceBytes, limits.dataSizeBytes, limits.openFiles, limits.coreDumpBytes] {
            try list.encodeOptional(limit)
        }
        try list.encode(environment.count)
        for change in environment {
            try list.encode(change.name)
            try list.encodeOptional(change.value)
        }
        try list.encodeOptional(workingDirectory)
        for passed in [standardInput, standardOutput, standardError, memoryReport] { try list.encodeOptional(passed) }
    }

    init(from decoder: any Decoder) throws {
        var list = try decoder.unkeyedContainer()
        limits = ResourceLimits(
            cpuSeconds: try list.decodeOptional(Int.self), addressSpaceBytes: try list.decodeOptional(Int.self),
            dataSizeBytes: try list.decodeOptional(Int.self), openFiles: try list.decodeOptional(Int.self),
            coreDumpBytes: try list.decodeOptional(Int.self))
        let count = try list.decode(Int.self)
        // A count beyond what arrived ends with the decoder's error at the end of the list.
        guard count >= 0 else {
            throw MultiprocessingError(.transport, "a child's settings name \(count) environment changes")
        }
        environment = []
        for _ in 0..<count {
            environment.append(EnvironmentChange(name: try list.decode(String.self), value: try list.decodeOptional(String.self)))
        }
        workingDirectory = try list.decodeOptional(String.self)
        standardInput = try list.decodeOptional(PassedDescriptor.self)
        standardOutput = try list.decodeOptional(PassedDescriptor.self)
        standardError = try list.decodeOptional(PassedDescriptor.self)
        memoryReport = try list.decodeOptional(PassedDescriptor.self)
    }
}

/// The parent's side of a child's settings: the descriptors it opened for the child, the capture
/// readers, and the memory-limit report.
final class ChildSettingsLink: @unchecked Sendable {
    let wire: ChildSettingsWire
    let output: OutputCapture?
    let errorOutput: OutputCapture?
    let limits: ResourceLimits
    /// The read end of the memory-limit report, or -1.
    private(set) var memoryReport: Int32 = -1
    /// The parent's copies of what the child receives, closed once the child has them.
    private var forChild: [Int32] = []

    /// Opens what `settings` needs, or throws (closing what it opened) with a typed error: a file that
    /// cannot be opened is ``MultiprocessingError/Code/notFound`` or ``MultiprocessingError/Code/system``.
    init(_ settings: ChildSettings) throws {
        try settings.limits.validate()
        limits = settings.limits
        var opened: [Int32] = []
        var captures: [OutputCapture] = []
        func open(_ path: String, _ flags: Int32) throws -> PassedDescriptor {
            let fd = try Syscall.open(path, flags | O_CLOEXEC, mode: 0o644)
            opened.append(fd)
            return PassedDescriptor(fd)
        }
        func destination(_ destination: ChildOutput) throws -> (PassedDescriptor?, OutputCapture?) {
            switch destination {
            case .inherit: return (nil, nil)
            case .null: return (try open("/dev/null", O_WRONLY), nil)
            case .file(let path, let append): return (try open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC)), nil)
            case .capture:
                let (read, write) = try Syscall.pipe()
                opened.append(write)
                let capture = OutputCapture(reading: read)
                captures.append(capture)
                return (PassedDescriptor(write), capture)
            }
        }
        do {
            if let directory = settings.workingDirectory {
                var info = stat()
                guard stat(directory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
                    throw MultiprocessingError(
                        errno == ENOENT ? .notFound : .invalidArgument,
                        "working directory \(directory) is not a directory", errno: errno)
                }
            }
            var input: PassedDescriptor?
            switch settings.standardInput {
            case .inherit: input = nil
            case .null: input = try open("/dev/null", O_RDONLY)
            case .file(let path): input = try open(path, O_RDONLY)
            }
            let (out, outCapture) = try destination(settings.standardOutput)
            let (err, errCapture) = try destination(settings.standardError)
            var report: PassedDescriptor?
            if settings.limits.memoryLimitDescription != nil {
                let (read, write) = try Syscall.pipe()
                memoryReport = read
                opened.append(write)
                report = PassedDescriptor(write)
            }
            for name in Set(settings.environment.keys).union(settings.removedEnvironment) where name.isEmpty || name.contains("=") {
                throw MultiprocessingError(.invalidArgument, "environment variable name '\(name)' is empty or contains '='")
            }
            wire = ChildSettingsWire(
                limits: settings.limits,
                environment: settings.removedEnvironment.sorted().map { .init(name: $0, value: nil) }
                    + settings.environment.sorted { $0.key < $1.key }.map { .init(name: $0.key, value: $0.value) },
                workingDirectory: settings.workingDirectory, standardInput: input, standardOutput: out,
                standardError: err, memoryReport: report)
            output = outCapture
            errorOutput = errCapture
            forChild = opened
            // The readers start now: they see end of file once the parent's copies of the write ends
            // are closed (after the child has its own, or when it does not start).
            try outCapture?.start()
            try errCapture?.start()
        } catch {
            opened.forEach(Syscall.close)
            captures.forEach { $0.abandon() }
            Syscall.close(memoryReport)
            throw error
        }
    }

    /// Descriptors a forked child must close: the parent's read ends.
    var parentOnly: [Int32] {
        [output?.descriptor, errorOutput?.descriptor, memoryReport >= 0 ? memoryReport : nil].compactMap { $0 }
    }

    /// The child has its copies (it was forked, or its bootstrap was sent): close the parent's.
    func childStarted() {
        forChild.forEach(Syscall.close)
        forChild = []
    }

    /// The child did not start: close everything (the capture readers then see end of file and end).
    func abandon() {
        forChild.forEach(Syscall.close)
        forChild = []
        Syscall.close(memoryReport)
        memoryReport = -1
    }

    /// Which limit ended the child, given how it ended.
    func exceededLimit(_ status: TerminationStatus) -> LimitExceeded? {
        if status == .signaled(.cpuTimeLimitExceeded) && limits.cpuSeconds != nil { return .cpuTime }
        if memoryReport >= 0, (try? Syscall.pollReadable([memoryReport], until: .now))?.isEmpty == false {
            var mark: UInt8 = 0
            if read(memoryReport, &mark, 1) == 1 && mark == UInt8(ascii: "m") {
                Syscall.close(memoryReport)
                memoryReport = -1
                memoryExceeded = true
            }
        }
        return memoryExceeded ? .memory : nil
    }

    private var memoryExceeded = false

    deinit {
        forChild.forEach(Syscall.close)
        Syscall.close(memoryReport)
    }
}

/// A pipe the parent drains on a thread of its own while a child writes to it, so that a child never
/// blocks on a full pipe however much it writes; the bytes wait here until asked for.
final class OutputCapture: @unchecked Sendable {
    private(set) var descriptor: Int32
    private var bytes: [UInt8] = []
    private var lock = pthread_mutex_t()
    /// Closed by the reader at end of file, so that its read end polls readable (hung up).
    private let finished: (read: Int32, write: Int32)
    private var started = false

    init(reading fd: Int32) {
        descriptor = fd
        pthread_mutex_init(&lock, nil)
        finished = (try? Syscall.pipe()) ?? (-1, -1)
    }

    func start() throws {
        guard finished.read >= 0 else { throw MultiprocessingError.system("pipe") }
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { context in
            let capture = Unmanaged<OutputCapture>.fromOpaque(context!).takeRetainedValue()
            mp_set_thread_name("mp-capture")
            capture.drain()
            return nil
        }, context)
        guard result == 0 else {
            Unmanaged<OutputCapture>.fromOpaque(context).release()
            throw MultiprocessingError.system("pthread_create", errno: result)
        }
        pthread_detach(thread)
        started = true
    }

    private func drain() {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { buffer in
                (try? Syscall.retrying("read") { read(descriptor, buffer.baseAddress, buffer.count) }) ?? 0
            }
            if count <= 0 { break }
            pthread_mutex_lock(&lock)
            bytes.append(contentsOf: chunk[..<count])
            pthread_mutex_unlock(&lock)
        }
        Syscall.close(descriptor)
        Syscall.close(finished.write)
    }

    /// Everything written, once every writer has closed the pipe (the child and whatever it left
    /// running), waiting at most until `deadline`.
    func collect(until deadline: Deadline, timeout: Duration?, pid: Int32?) throws -> [UInt8] {
        guard started else { throw MultiprocessingError(.invalidState, "the child has not started") }
        return try collected(complete: !Syscall.pollReadable([finished.read], until: deadline).isEmpty, timeout: timeout, pid: pid)
    }

    /// Everything written, as ``collect(until:timeout:pid:)`` gives it, waiting on the event loop.
    func collect(until deadline: Deadline, timeout: Duration?, pid: Int32?) async throws -> [UInt8] {
        guard started else { throw MultiprocessingError(.invalidState, "the child has not started") }
        let outcome = try await EventLoop.shared.waitReadable(finished.read, until: deadline)
        return try collected(complete: outcome == .ready, timeout: timeout, pid: pid)
    }

    /// The bytes once the reader has finished, or the timeout error.
    private func collected(complete: Bool, timeout: Duration?, pid: Int32?) throws -> [UInt8] {
        guard complete else {
            throw MultiprocessingError(
                .timedOut, "the child's output is not complete: a process still holds the pipe open"
            ).with(pid: pid, timeout: timeout)
        }
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return bytes
    }

    /// Closes the pipe without reading (the child never started).
    func abandon() {
        guard !started else { return }
        Syscall.close(descriptor)
        descriptor = -1
    }

    deinit {
        // A started capture is kept alive by its reader until end of file, which closes these two.
        if !started {
            Syscall.close(descriptor)
            Syscall.close(finished.write)
        }
        Syscall.close(finished.read)
        pthread_mutex_destroy(&lock)
    }
}
