#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// Attaches to a ShareableList by name, checks an item, and changes two.
struct ListChanger: ProcessTask {
    let name: String
    func run() throws {
        let list = try ShareableList(attachingTo: name)
        try syncCheck(list.count == 7 && list[0] == "howdy", "attached list: \(list)")
        try list.set(880, at: 3)
        try list.set("bye", at: 4)
    }
}

/// Changes item 0 of a list that arrived with the task.
struct ListHandleChanger: ProcessTask {
    let list: ShareableList
    func run() throws { try list.set(.bytes([9, 9]), at: 0) }
}

@Suite("Shared memory: ShareableList")
struct ShareableListTests {
    static let sample: [ShareableList.Item] = ["howdy", .bytes(Array("HoWdY".utf8)), -273.154, 100, nil, true, 42]

    @Test("items read back; assignment rules and room per slot (SHM-18, SHM-19, SHM-20)")
    func basics() throws {
        let list = try ShareableList(Self.sample)
        defer { try? list.memory.unlink() }
        #expect(list.count == 7)
        #expect(try list.items == Self.sample)
        #expect(try list[5] == true && list[4] == nil && list[2] == .double(-273.154))
        #expect(list.description == "ShareableList(['howdy', b'HoWdY', -273.154, 100, None, True, 42], name: \"\(list.memory.name)\")")
        #expect { _ = try list[7] } throws: { ($0 as? MultiprocessingError)?.code == .invalidArgument }
        #expect { try list.set(1, at: 7) } throws: { ($0 as? MultiprocessingError)?.code == .invalidArgument }
        #expect { _ = try list[-1] } throws: { ($0 as? MultiprocessingError)?.code == .invalidArgument }
        try list.set(42, at: 3)
        try list.set("some", at: 4)  // nil -> string fits in its 8 bytes
        #expect(try list[4] == "some")
        for tooLong: ShareableList.Item in ["far too many", "encodées", .bytes(Array("123456789".utf8))] {
            #expect { try list.set(tooLong, at: 0) } throws: { ($0 as? MultiprocessingError)?.code == .invalidArgument }
            #expect(try list[0] == "howdy", "the old value stays")
        }
        try list.set("encodés", at: 0)  // exactly 8 UTF-8 bytes
        #expect(try list[0] == "encodés" && list[1] == .bytes(Array("HoWdY".utf8)), "nothing spills into the next slot")
        #expect(try list.firstIndex(of: 42) == 3 && list.firstIndex(of: "100") == nil)
        #expect(try list.count(of: 42) == 2 && list.count(of: .bytes(Array("HoWdY".utf8))) == 1 && list.count(of: .bytes([1])) == 0)
        try list.set(.double(1.5), at: 0)  // a string slot may hold a number
        #expect(try list[0] == 1.5)
    }

    @Test("an empty list; attaching; an independent copy (SHM-21, SHM-22)")
    func emptyAndCopies() throws {
        let empty = try ShareableList([])
        defer { try? empty.memory.unlink() }
        #expect(try empty.count == 0 && empty.count(of: "any") == 0 && empty.firstIndex(of: nil) == nil)
        let list = try ShareableList(Self.sample)
        defer { try? list.memory.unlink() }
        let same = try ShareableList(attachingTo: list.memory.name)
        try same.set(880, at: 3)
        #expect(try list[3] == 880)
        let copy = try ShareableList(list.items, name: shmTestName("copy"))
        defer { try? copy.memory.unlink() }
        try copy.set(77, at: 3)
        #expect(try list[3] == 880 && copy[3] == 77)
        let plain = try SharedMemory(size: 64)
        defer { try? plain.unlink() }
        try plain.withUnsafeMutableBytes { $0.storeBytes(of: Int64(1_000), as: Int64.self) }
        #expect { _ = try ShareableList(attachingTo: plain.name) } throws: { ($0 as? MultiprocessingError)?.code == .invalidArgument }
    }

    @Test("a child attaches by name or gets the list in its task, and its changes show here", arguments: [StartMethod.spawn, .fork])
    func acrossProcesses(method: StartMethod) throws {
        let list = try ShareableList(Self.sample)
        defer { try? list.memory.unlink() }
        try syncExpectEnded(syncStart(ListChanger(name: list.memory.name), method))
        #expect(try list[3] == 880 && list[4] == "bye")
        try syncExpectEnded(syncStart(ListHandleChanger(list: list), method))
        #expect(try list[0] == .bytes([9, 9]))
    }
}
