import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

/// Multiplies, in place, the float64 values of a numpy array that Python made in a shared block.
struct NumpyScaler: ProcessTask {
    let name: String
    let count: Int
    let factor: Double
    func run() throws {
        let block = try SharedMemory(attachingTo: name)
        try block.withUnsafeMutableBufferPointer(of: Double.self, count: count) { values in
            for index in values.indices { values[index] *= factor }
        }
    }
}

/// The Python side of the tour: makes a numpy array in shared memory, prints the block's name, waits
/// for a line, then prints what the array holds and destroys the block.
private let numpyProgram = """
import numpy as np
from multiprocessing import shared_memory
block = shared_memory.SharedMemory(create=True, size=8 * 8)
values = np.ndarray((8,), dtype=np.float64, buffer=block.buf)
values[:] = np.arange(8)
print(block.name, flush=True)
input()
print("python sees", values.tolist(), flush=True)
del values
block.close()
block.unlink()
"""

func runSharedMemoryTour() throws {
    section("Tour 6: a numpy array made by Python, changed in place by a Swift child")
    guard let python = try? LinePeer(["python3", "-c", "import numpy, sys; sys.exit(0)"]), try python.finish() == 0 else {
        print("  skipped: python3 with numpy is not installed")
        return
    }
    let peer = try LinePeer(["python3", "-c", numpyProgram])
    guard let name = try peer.readLine() else {
        print("  python3 ended early: status \(try peer.finish())")
        return
    }
    print("  python made block \(name) holding 0.0 ... 7.0")
    let child = ChildProcess(NumpyScaler(name: name, count: 8, factor: 10))
    try child.start()
    try child.join(timeout: .seconds(30))
    print("  swift child \(child.pid ?? 0) multiplied it by 10 (exit code \(child.exitCode.map(String.init) ?? "none"))")
    try peer.writeLine("go")
    while let line = try peer.readLine() { print("  " + line) }
    _ = try peer.finish()
}

/// A program run with its standard input and output connected to this process, line by line.
final class LinePeer {
    private let pid: pid_t
    private let input: UnsafeMutablePointer<FILE>
    private let output: UnsafeMutablePointer<FILE>

    init(_ arguments: [String]) throws {
        var toChild: [Int32] = [-1, -1], fromChild: [Int32] = [-1, -1]
        guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else {
            throw MultiprocessingError(.system, "pipe", errno: errno)
        }
        // Only the program gets these ends (as its 0 and 1); no other child inherits them.
        for fd in toChild + fromChild { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let status = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
        close(toChild[0])
        close(fromChild[1])
        guard status == 0 else {
            close(toChild[1])
            close(fromChild[0])
            throw MultiprocessingError(.system, "cannot run \(arguments[0])", errno: status)
        }
        self.pid = pid
        input = fdopen(toChild[1], "w")
        output = fdopen(fromChild[0], "r")
    }

    /// The next line, or nil at the end of the output.
    func readLine() throws -> String? {
        var line = [CChar](repeating: 0, count: 4096)
        guard fgets(&line, Int32(line.count), output) != nil else { return nil }
        return String(decoding: line.prefix { $0 != 0 && $0 != 10 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func writeLine(_ line: String) throws {
        fputs(line + "\n", input)
        fflush(input)
    }

    /// Waits for the program to end; returns its exit status.
    func finish() throws -> Int32 {
        fclose(input)
        fclose(output)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return (status >> 8) & 0xff
    }
}
