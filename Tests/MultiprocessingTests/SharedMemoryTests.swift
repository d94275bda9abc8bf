#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// Attaches to `name` and writes `text` at the start.
struct ShmWriteByName: ProcessTask {
    let name: String
    let text: [UInt8]
    func run() throws {
        let block = try SharedMemory(attachingTo: name)
        try syncCheck(!block.isOwner, "an attached block is not owned")
        try block.withUnsafeMutableBytes { bytes in for (index, byte) in text.enumerated() { bytes[index] = byte } }
        block.close()
    }
}

/// Writes `text` through a block that arrived with the task.
struct ShmWriteHandle: ProcessTask {
    let block: SharedMemory
    let text: [UInt8]
    func run() throws {
        try block.withUnsafeMutableBytes { bytes in for (index, byte) in text.enumerated() { bytes[index] = byte } }
    }
}

/// Creates `name`, says so, waits to be released (or killed), then: 1 returns without unlinking, 2 has
/// handed ownership away and returns.
struct ShmCreator: ProcessTask {
    let name: String
    let created: ProcessEvent
    let release: ProcessEvent
    let mode: Int
    func run() throws {
        let block = try SharedMemory(size: 4096, name: name)
        if mode == 2 { block.releaseOwnership() }
        created.set()
        _ = release.wait(timeout: .seconds(60))
    }
}

@Suite("Shared memory: SharedMemory")
struct SharedMemoryTests {
    @Test("create by name, attach, typed views, unlink once (SHM-01, SHM-02, SHM-05)")
    func basics() throws {
        let name = shmTestName("basics")
        let block = try SharedMemory(size: 512, name: name)
        defer { try? SharedMemory.unlink(name: name) }
        #expect(block.name == name && block.size == 512 && block.isOwner)
        #expect(block.description == "SharedMemory(name: \"\(name)\", size: 512)")
        try block.withUnsafeMutableBytes { $0[0] = 42 }
        let other = try SharedMemory(attachingTo: "/" + name)
        #expect(other.name == name && other.size == 512 && !other.isOwner)
        #expect(try other.withUnsafeMutableBytes { $0[0] } == 42)
        try other.withUnsafeMutableBufferPointer(of: UInt64.self, byteOffset: 8, count: 2) { $0[1] = 0xDEAD_BEEF }
        #expect(try block.withUnsafeMutableBytes { $0.load(fromByteOffset: 16, as: UInt64.self) } == 0xDEAD_BEEF)
        #expect(try block.withUnsafeMutableBufferPointer(of: Int32.self) { $0.count } == 128)
        #expect(throws: MultiprocessingError.self) { try block.withUnsafeMutableBufferPointer(of: UInt64.self, byteOffset: 4) { _ in } }
        #expect(throws: MultiprocessingError.self) { try block.withUnsafeMutableBufferPointer(of: UInt64.self, count: 65) { _ in } }
        try block.unlink()
        #expect(!shmExists(name) && !block.isOwner)
        // Mappings stay usable after unlink; the name is gone.
        #expect(try other.withUnsafeMutableBytes { $0[0] } == 42)
        #expect(throws: MultiprocessingError(.notFound, "no shared memory block is named \(name)", errno: ENOENT)) { try block.unlink() }
        other.close()
        other.close()
        #expect { try other.withUnsafeMutableBytes { _ in } } throws: { ($0 as? MultiprocessingError)?.code == .closed }
    }

    @Test("a random name, zero-filled")
    func randomName() throws {
        let block = try SharedMemory(size: 10_000)
        defer { try? block.unlink() }
        #expect(block.name.hasPrefix("msm_") && shmExists(block.name))
        #expect(try block.withUnsafeMutableBytes { $0.allSatisfy { $0 == 0 } })
    }

    @Test("typed errors: name in use, missing name, bad sizes, bad names (SHM-03, SHM-08)")
    func typedErrors() throws {
        let name = shmTestName("errors")
        let block = try SharedMemory(size: 64, name: name)
        defer { try? block.unlink() }
        func code(_ body: () throws -> Void) -> MultiprocessingError.Code? {
            do { try body() } catch let error as MultiprocessingError { return error.code } catch { return nil }
            return nil
        }
        #expect(code { _ = try SharedMemory(size: 64, name: name) } == .alreadyExists)
        #expect(code { _ = try SharedMemory(attachingTo: name + "_missing") } == .notFound)
        #expect(code { try SharedMemory.unlink(name: name + "_missing") } == .notFound)
        for size in [0, -1, -2] { #expect(code { _ = try SharedMemory(size: size) } == .invalidArgument) }
        // A size the system refuses fails with its errno, and leaves no name behind.
        let huge = shmTestName("huge")
        #expect(code { _ = try SharedMemory(size: .max, name: huge) } == .system)
        #expect(!shmExists(huge))
        let bad = ["", "/", "a/b", "/a/b", "a\0b", ".", "..", String(repeating: "n", count: 256)]
        for name in bad {
            #expect(code { _ = try SharedMemory(size: 64, name: name) } == .invalidArgument, "\(name.debugDescription)")
            #expect(code { _ = try SharedMemory(attachingTo: name) } == .invalidArgument, "\(name.debugDescription)")
            #expect(code { try SharedMemory.unlink(name: name) } == .invalidArgument, "\(name.debugDescription)")
        }
        // The longest name the system takes works.
        let longest = String(repeating: "m", count: SharedMemory.maximumNameLength - 12) + String(UInt32.random(in: 0 ... .max), radix: 16).padding(12)
        let long = try SharedMemory(size: 8, name: longest)
        try long.unlink()
    }

    @Test("a child attaches by name, or gets the block in its task, and writes (SHM-09, SHM-10)", arguments: StartMethod.allCases)
    func acrossProcesses(method: StartMethod) throws {
        let block = try SharedMemory(size: 64)
        defer { try? block.unlink() }
        try syncExpectEnded(syncStart(ShmWriteByName(name: block.name, text: Array("howdy".utf8)), method))
        #expect(try block.withUnsafeMutableBytes { Array($0[0..<5]) } == Array("howdy".utf8))
        try syncExpectEnded(syncStart(ShmWriteHandle(block: block, text: Array("HELLO".utf8)), method))
        #expect(try block.withUnsafeMutableBytes { Array($0[0..<5]) } == Array("HELLO".utf8))
        #expect(shmExists(block.name), "attaching children never unlink")
    }

    @Test("a block sent over a Connection maps the same memory, even after its name is gone")
    func overConnection() throws {
        let (a, b) = try makePipe()
        let block = try SharedMemory(size: 4096)
        try b.send(block)
        try block.unlink()
        let received = try a.recv(SharedMemory.self, timeout: .seconds(10))
        #expect(received.name == block.name && received.size == 4096 && !received.isOwner)
        try received.withUnsafeMutableBytes { $0[100] = 7 }
        #expect(try block.withUnsafeMutableBytes { $0[100] } == 7)
    }

    @Test("outside a task or message a block encodes its name, and decoding attaches by name")
    func byName() throws {
        let block = try SharedMemory(size: 32)
        defer { try? block.unlink() }
        try block.withUnsafeMutableBytes { $0[3] = 33 }
        let attached = try BinaryDecoder().decode(SharedMemory.self, from: BinaryEncoder().encode(block))
        #expect(attached.name == block.name && !attached.isOwner)
        #expect(try attached.withUnsafeMutableBytes { $0[3] } == 33)
        block.close()
        #expect { _ = try BinaryEncoder().encode(block) } throws: { ($0 as? MultiprocessingError)?.code == .closed }
    }

    @Test("a SIGKILLed creator's block is unlinked within 2 s; a normal exit cleans up too; a released block stays",
          arguments: StartMethod.allCases)
    func creatorDeath(method: StartMethod) throws {
        // This process has a tracker of its own, which a forked creator must neither share nor keep alive.
        try SharedMemory(size: 1).unlink()
        for mode in [0, 1, 2] {
            let name = shmTestName("death\(mode)")
            let created = try ProcessEvent(), release = try ProcessEvent()
            let child = try syncStart(ShmCreator(name: name, created: created, release: release, mode: mode), method)
            #expect(created.wait(timeout: .seconds(30)))
            #expect(shmExists(name))
            if mode == 0 {
                try syncKill(child)
            } else {
                release.set()
                try syncExpectEnded(child)
            }
            if mode == 2 {
                // Ownership was handed away: the block outlives its creator until someone unlinks it.
                let attached = try SharedMemory(attachingTo: name)
                try attached.takeOwnership()
                #expect(attached.isOwner)
                try attached.unlink()
                #expect(!shmExists(name))
            } else {
                #expect(shmGone(name, within: .seconds(2)), "mode \(mode): \(name) still in /dev/shm")
            }
        }
    }

    @Test("10,000 create/attach/close/unlink cycles leave /dev/shm and the descriptor count as they were")
    func noLeaks() throws {
        // In a child of its own, so that other tests' descriptors do not blur the count.
        try syncExpectEnded(syncStart(ShmCycles(cycles: 10_000)))
    }
}

/// Runs create/attach/close/unlink cycles and fails unless /dev/shm and the descriptor count end as they began.
struct ShmCycles: ProcessTask {
    let cycles: Int
    func run() throws {
        try SharedMemory(size: 1).unlink()  // the tracker's socket is open before counting
        let prefix = "mp_test_cycle_\(getpid())_"
        let descriptors = shmDirectoryEntries("/proc/self/fd").count
        for index in 0..<cycles {
            let block = try SharedMemory(size: 4096, name: prefix + String(index))
            let other = try SharedMemory(attachingTo: block.name)
            try other.withUnsafeMutableBytes { $0[0] = 1 }
            other.close()
            block.close()
            try block.unlink()
        }
        let left = shmDirectoryEntries("/dev/shm").filter { $0.hasPrefix(prefix) }
        try syncCheck(left.isEmpty, "left in /dev/shm: \(left)")
        let after = shmDirectoryEntries("/proc/self/fd").count
        try syncCheck(after == descriptors, "descriptors went from \(descriptors) to \(after)")
    }
}

extension String {
    /// The string left-padded with zeros to `width` characters.
    func padding(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
