#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// Helpers shared by the shared-memory tests (SharedMemory*Tests.swift).

/// A name no other test uses, for segments created by name.
func shmTestName(_ label: String) -> String { "mp_test_\(label)_\(getpid())_\(UInt32.random(in: 0 ... .max))" }

/// Whether a segment of this name exists in /dev/shm.
func shmExists(_ name: String) -> Bool { access("/dev/shm/\(name)", F_OK) == 0 }

/// Entries of a directory, without . and ..
func shmDirectoryEntries(_ path: String) -> Set<String> {
    guard let directory = opendir(path) else { return [] }
    defer { closedir(directory) }
    var names: Set<String> = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { names.insert(name) }
    }
    return names
}

/// Waits (checking every 10 ms, at most `timeout`) until the segment `name` is gone; returns whether it went.
/// There is nothing to wait on for another process's unlink, so this polls with a bound.
func shmGone(_ name: String, within timeout: Duration) -> Bool {
    let deadline = Deadline.after(timeout)
    while shmExists(name) {
        if deadline.hasPassed { return false }
        usleep(10_000)
    }
    return true
}

/// Whether `python3` runs here and imports `modules`.
func pythonHas(_ modules: String) -> Bool {
    (try? PythonScript("import \(modules)").finish(timeout: .seconds(30))).map { $0.status == 0 } ?? false
}

/// A Python program run with `python3 -u -c`, with its standard input and output (stderr joined) as pipes.
final class PythonScript {
    let pid: pid_t
    private let input: Int32
    private let output: Int32
    private var collected: [UInt8] = []
    private var reaped: Int32?

    init(_ source: String, _ arguments: [String] = [], interpreter: String = "python3") throws {
        let toChild = try Syscall.socketPair(), fromChild = try Syscall.socketPair()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild.1, 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild.1, 1)
        posix_spawn_file_actions_adddup2(&actions, fromChild.1, 2)
        let argv = ([interpreter, "-u", "-c", source] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let status = posix_spawnp(&pid, interpreter, &actions, nil, argv, environ)
        Glibc.close(toChild.1)
        Glibc.close(fromChild.1)
        guard status == 0 else {
            Glibc.close(toChild.0)
            Glibc.close(fromChild.0)
            throw MultiprocessingError(.system, "cannot run \(interpreter)", errno: status)
        }
        self.pid = pid
        input = toChild.0
        output = fromChild.0
    }

    deinit {
        if reaped == nil {
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        Glibc.close(input)
        Glibc.close(output)
    }

    /// Reads until a whole line arrived (or throws after `timeout`, with what arrived so far).
    func readLine(timeout: Duration = .seconds(30)) throws -> String {
        let deadline = Deadline.after(timeout)
        while true {
            if let newline = collected.firstIndex(of: 10) {
                defer { collected.removeSubrange(...newline) }
                return String(decoding: collected[..<newline], as: UTF8.self)
            }
            guard try readMore(until: deadline) else {
                throw MultiprocessingError(.endOfFile, "python3 ended without a line; it wrote: \(String(decoding: collected, as: UTF8.self))")
            }
        }
    }

    /// Sends one line to the program's standard input.
    func writeLine(_ line: String) throws {
        try Array((line + "\n").utf8).withUnsafeBytes { try Syscall.writeAll(input, $0) }
    }

    /// Waits at most `timeout` for the program to end (killing it after); returns its exit status and the rest of its output.
    func finish(timeout: Duration = .seconds(30)) throws -> (status: Int32, output: String) {
        let deadline = Deadline.after(timeout)
        while try readMore(until: deadline) {}
        if deadline.hasPassed { Glibc.kill(pid, SIGKILL) }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        reaped = status
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : -(status & 0x7f)
        return (code, String(decoding: collected, as: UTF8.self))
    }

    /// Reads what is there; false at EOF or when the deadline passed.
    private func readMore(until deadline: Deadline) throws -> Bool {
        guard try !Syscall.pollReadable([output], until: deadline).isEmpty else { return false }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = read(output, &buffer, buffer.count)
        if count <= 0 { return false }
        collected += buffer[..<count]
        return true
    }
}

/// Python lines that attach without letting Python's resource tracker unlink the segment at exit
/// (the `track` parameter exists from 3.13; older versions are untracked by hand).
let pythonUntrackedAttach = """
from multiprocessing import shared_memory, resource_tracker
def attach(name):
    try:
        return shared_memory.SharedMemory(name, track=False)
    except TypeError:
        shm = shared_memory.SharedMemory(name)
        resource_tracker.unregister(shm._name, "shared_memory")
        return shm
def attach_list(name):
    sl = shared_memory.ShareableList(name=name)
    try:
        resource_tracker.unregister(sl.shm._name, "shared_memory")
    except Exception:
        pass
    return sl

"""
