#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// Doubles every float64 of a numpy array that Python made in the block `name`.
struct NumpyDoubler: ProcessTask {
    let name: String
    let count: Int
    func run() throws {
        let block = try SharedMemory(attachingTo: name)
        try block.withUnsafeMutableBufferPointer(of: Double.self, count: count) { values in
            for index in values.indices { values[index] *= 2 }
        }
    }
}

private let python3Present = pythonHas("multiprocessing.shared_memory")

/// `python3` and each pyenv CPython from 3.8, where `multiprocessing.shared_memory` first appeared.
let sharedMemoryInterpreters = Interpreter.all.filter { $0.label == "python3" || Int($0.label.dropFirst(2)).map { $0 >= 8 } == true }

/// The same from 3.9: 3.8 laid a ShareableList out differently (item sizes where later versions keep offsets).
let shareableListInterpreters = sharedMemoryInterpreters.filter { $0.label != "3.8" }

/// The interpreter's path, or nil with a note when it is not installed.
private func installed(_ interpreter: Interpreter) -> String? {
    if interpreter.path == nil { print("skipping CPython \(interpreter.label): not installed on this machine") }
    return interpreter.path
}
private let numpyPresent = python3Present && pythonHas("numpy")

// Live interop with CPython's multiprocessing.shared_memory (python3 on PATH): blocks and ShareableLists
// made on either side are read and changed by the other; a numpy array is changed in place by a Swift child.
@Suite("Shared memory: CPython interop", .enabled(if: python3Present, "python3 with multiprocessing.shared_memory is not installed"))
struct SharedMemoryInteropTests {
    @Test("Python attaches to our block, reads and writes it, and does not unlink it", arguments: sharedMemoryInterpreters)
    func pythonAttachesOurs(interpreter: Interpreter) throws {
        guard let python3 = installed(interpreter) else { return }
        let block = try SharedMemory(size: 64)
        defer { try? block.unlink() }
        try block.withUnsafeMutableBytes { bytes in for (index, byte) in "howdy".utf8.enumerated() { bytes[index] = byte } }
        let python = try PythonScript(pythonUntrackedAttach + """
            import sys
            shm = attach(sys.argv[1])
            print(bytes(shm.buf[:5]).decode(), shm.size >= 64)
            shm.buf[8:13] = b"HELLO"
            shm.close()
            """, [block.name], interpreter: python3)
        let result = try python.finish()
        #expect(result.status == 0 && result.output == "howdy True\n", "\(result.output)")
        #expect(try block.withUnsafeMutableBytes { Array($0[8..<13]) } == Array("HELLO".utf8))
        #expect(shmExists(block.name))
    }

    @Test("we attach to Python's block, read and write it, and leave it to Python to unlink", arguments: sharedMemoryInterpreters)
    func weAttachPythons(interpreter: Interpreter) throws {
        guard let python3 = installed(interpreter) else { return }
        let python = try PythonScript("""
            from multiprocessing import shared_memory
            shm = shared_memory.SharedMemory(create=True, size=100)
            shm.buf[:6] = b"python"
            print(shm.name)
            input()
            print(bytes(shm.buf[:6]).decode())
            shm.close()
            shm.unlink()
            """, interpreter: python3)
        let name = try python.readLine()
        let block = try SharedMemory(attachingTo: name)
        #expect(block.size == 100 && !block.isOwner)
        #expect(try block.withUnsafeMutableBytes { Array($0[0..<6]) } == Array("python".utf8))
        try block.withUnsafeMutableBytes { bytes in for (index, byte) in "swift!".utf8.enumerated() { bytes[index] = byte } }
        block.close()
        try python.writeLine("go")
        let result = try python.finish()
        #expect(result.status == 0 && result.output == "swift!\n", "\(result.output)")
        #expect(!shmExists(name))
    }

    @Test("Python's ShareableList reads and changes a list made here", arguments: shareableListInterpreters)
    func pythonReadsOurList(interpreter: Interpreter) throws {
        guard let python3 = installed(interpreter) else { return }
        let list = try ShareableList(ShareableListTests.sample)
        defer { try? list.memory.unlink() }
        let python = try PythonScript(pythonUntrackedAttach + """
            import sys
            sl = attach_list(sys.argv[1])
            print(list(sl))
            sl[0] = "bye"
            sl[3] = -7
            sl[4] = 2.5
            sl[5] = False
            sl[6] = b"abc"
            sl.shm.close()
            """, [list.memory.name], interpreter: python3)
        let result = try python.finish()
        #expect(result.status == 0 && result.output == "['howdy', b'HoWdY', -273.154, 100, None, True, 42]\n", "\(result.output)")
        #expect(try list.items == ["bye", .bytes(Array("HoWdY".utf8)), -273.154, -7, 2.5, false, .bytes(Array("abc".utf8))])
    }

    @Test("a list made by Python's ShareableList is read and changed here", arguments: shareableListInterpreters)
    func weReadPythonsList(interpreter: Interpreter) throws {
        guard let python3 = installed(interpreter) else { return }
        let python = try PythonScript("""
            from multiprocessing import shared_memory
            sl = shared_memory.ShareableList([1, 2.5, True, None, "héllo wörld", b"\\x01\\x02", -9])
            print(sl.shm.name)
            input()
            print(list(sl))
            sl.shm.close()
            sl.shm.unlink()
            """, interpreter: python3)
        let list = try ShareableList(attachingTo: python.readLine())
        #expect(try list.items == [1, 2.5, true, nil, "héllo wörld", .bytes([1, 2]), -9])
        try list.set("zz", at: 0)
        try list.set(nil, at: 1)
        try list.set(3, at: 3)
        try list.set("ça va", at: 4)
        try list.set(true, at: 6)
        try python.writeLine("go")
        let result = try python.finish()
        #expect(result.status == 0 && result.output == "['zz', None, True, 3, 'ça va', b'\\x01\\x02', True]\n", "\(result.output)")
    }

    @Test("a numpy array Python made in shared memory is changed in place by a Swift child", .enabled(if: numpyPresent, "numpy is not installed"))
    func numpyInPlace() throws {
        let python = try PythonScript("""
            import numpy as np
            from multiprocessing import shared_memory
            shm = shared_memory.SharedMemory(create=True, size=1000 * 8)
            a = np.ndarray((1000,), dtype=np.float64, buffer=shm.buf)
            a[:] = np.arange(1000) * 0.5
            print(shm.name)
            input()
            print(bool((a == np.arange(1000) * 1.0).all()), a[999])
            del a
            shm.close()
            shm.unlink()
            """)
        let name = try python.readLine()
        try syncExpectEnded(syncStart(NumpyDoubler(name: name, count: 1000)))
        try python.writeLine("go")
        let result = try python.finish()
        #expect(result.status == 0 && result.output == "True 999.0\n", "\(result.output)")
    }
}
