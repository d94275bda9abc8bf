#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// The codec's defences against input that is valid in form but costly in time, stack or memory.

/// A value nested `depth` levels deep: `link(link(...(end)))`.
indirect enum LimitChain: Codable, Equatable {
    case end
    case link(LimitChain)

    init(depth: Int) {
        var chain = LimitChain.end
        for _ in 0..<depth { chain = .link(chain) }
        self = chain
    }
}

/// A dictionary at the bottom of `depth` levels of keyed containers, all open while it decodes.
indirect enum LimitTree: Codable, Equatable {
    case leaf([String: Int])
    case node(LimitTree)

    init(depth: Int, leaf: [String: Int]) {
        var tree = LimitTree.leaf(leaf)
        for _ in 0..<depth { tree = .node(tree) }
        self = tree
    }
}

/// Keeps the keyed container that a ``LimitHoarder`` decoded from, past the end of its decode call.
final class LimitHoard: @unchecked Sendable {
    var container: KeyedDecodingContainer<LimitHoarder.CodingKeys>?
    static let key = CodingUserInfoKey(rawValue: "hoard")!
}

/// Hands its keyed container to the ``LimitHoard`` in the decoder's user info.
struct LimitHoarder: Codable, Equatable {
    var a: Int
    enum CodingKeys: String, CodingKey { case a }

    init(a: Int) { self.a = a }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        a = try container.decode(Int.self, forKey: .a)
        (decoder.userInfo[LimitHoard.key] as? LimitHoard)?.container = container
    }
}

/// A ``LimitHoarder`` under `depth` levels of keyed containers.
indirect enum LimitNest: Codable, Equatable {
    case bottom(LimitHoarder)
    case node(LimitNest)

    init(depth: Int, a: Int) {
        var nest = LimitNest.bottom(LimitHoarder(a: a))
        for _ in 0..<depth { nest = .node(nest) }
        self = nest
    }
}

/// A struct of 176 bytes, whose optional takes 177 (a stride of 184): one byte of nil on the wire.
struct LimitWide: Codable, Equatable {
    var a = 0, b = 0, c = 0, d = 0, e = 0, f = 0, g = 0, h = 0, i = 0, j = 0, k = 0
    var l = 0, m = 0, n = 0, o = 0, p = 0, q = 0, r = 0, s = 0, t = 0, u = 0, v = 0
}

/// What a coding call on a thread with a given stack size did: "ok", or the code and message of the
/// error it threw.
struct StackOutcome: Codable, Equatable {
    var stackKiB: Int
    var decoded: String
    var encoded: String
}

/// Decodes and encodes a value nested 500 levels deep (within the nesting limit) on threads with
/// 256 KiB, 512 KiB and default stacks, and reports what each call did. Runs in a child, so that a
/// stack overflow kills only the child.
struct CodeDeeplyOnSmallStacks: ProcessTask {
    let report: Connection

    func run() throws {
        let depth = 500
        let bytes = try BinaryEncoder().encode(LimitChain(depth: depth))
        var outcomes: [StackOutcome] = []
        for stackKiB in [256, 512, 0] {
            let decoded = onThread(stackKiB: stackKiB) {
                describe { _ = try BinaryDecoder().decode(LimitChain.self, from: bytes) }
            }
            let encoded = onThread(stackKiB: stackKiB) {
                describe { _ = try BinaryEncoder().encode(LimitChain(depth: depth)) }
            }
            outcomes.append(StackOutcome(stackKiB: stackKiB, decoded: decoded, encoded: encoded))
        }
        try report.send(outcomes)
    }

    private func describe(_ body: () throws -> Void) -> String {
        do {
            try body()
            return "ok"
        } catch let error as MultiprocessingError {
            return "\(error.code): \(error.message)"
        } catch {
            return "other: \(error)"
        }
    }
}

/// Carries many nils of a large optional type to a child (more than the default budget allows for their
/// size) and ends with 0 when they all arrived.
struct CarryManyNils: ProcessTask {
    let values: [LimitWide?]
    let expected: Int

    func run() throws {
        exit(values.count == expected && values.allSatisfy { $0 == nil } ? 0 : 3)
    }
}

/// Runs `body` on a new thread with a stack of `stackKiB` KiB (0: the default size) and returns its result.
func onThread(stackKiB: Int, _ body: @escaping () -> String) -> String {
    final class Job {
        let body: () -> String
        var result = ""
        init(_ body: @escaping () -> String) { self.body = body }
    }
    let job = Job(body)
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    if stackKiB > 0 { pthread_attr_setstacksize(&attributes, stackKiB << 10) }
    var thread = pthread_t()
    let context = Unmanaged.passRetained(job).toOpaque()
    let created = pthread_create(&thread, &attributes, { context in
        let job = Unmanaged<Job>.fromOpaque(context!).takeRetainedValue()
        job.result = job.body()
        return nil
    }, context)
    guard created == 0 else {
        Unmanaged<Job>.fromOpaque(context).release()
        return "pthread_create failed: \(created)"
    }
    pthread_join(thread, nil)
    return job.result
}

/// Resident memory of this process in bytes, from /proc/self/statm (0 when unreadable).
func residentBytes() -> Int {
    let fd = open("/proc/self/statm", O_RDONLY)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 256)
    let count = read(fd, &buffer, buffer.count)
    guard count > 0 else { return 0 }
    let fields = String(decoding: buffer[..<count], as: UTF8.self).split(separator: " ")
    guard fields.count >= 2, let pages = Int(fields[1]) else { return 0 }
    return pages * sysconf(Int32(_SC_PAGESIZE))
}

@Suite("Codec limits")
struct CodecLimitTests {
    /// An unkeyed container of `count` elements, each the single byte `element`.
    func unkeyedOfBytes(_ count: Int, element: UInt8) -> [UInt8] {
        var bytes = [BinaryFormat.unkeyedTag]
        bytes += withUnsafeBytes(of: UInt32(count).littleEndian) { Array($0) }
        bytes += withUnsafeBytes(of: UInt32(count).littleEndian) { Array($0) }
        bytes += [UInt8](repeating: element, count: count)
        return bytes
    }

    /// Runs `body` and returns the error it threw, if it was a transport error.
    func transportError(_ body: () throws -> Void) -> MultiprocessingError? {
        do {
            try body()
            return nil
        } catch let error as MultiprocessingError {
            return error.code == .transport ? error : nil
        } catch {
            return nil
        }
    }

    /// Keys of `length` bytes, distinct, each ending in its number.
    func longKeys(_ count: Int, length: Int) -> [String: Int] {
        var dictionary: [String: Int] = [:]
        dictionary.reserveCapacity(count)
        for index in 0..<count {
            let number = String(index)
            dictionary[String(repeating: "k", count: length - number.count) + number] = index
        }
        return dictionary
    }

    @Test("dictionaries with keys of 128 bytes or more decode in linear time")
    func longKeysDecodeInLinearTime() throws {
        // Keys of 128 bytes and more once made every lookup scan from the first entry: 20,000 keys of
        // 128 bytes took 3.6 s in a release build (127 bytes: 29 ms), 40,000 of 200 bytes took 19 s.
        let clock = ContinuousClock()
        func decodeTime<T: Codable & Equatable>(_ value: T) throws -> Duration {
            let bytes = try BinaryEncoder().encode(value)
            var decoded: T?
            let elapsed = try clock.measure { decoded = try BinaryDecoder().decode(T.self, from: bytes) }
            #expect(decoded == value)
            return elapsed
        }
        let short = try decodeTime(longKeys(20_000, length: 127))
        let long = try decodeTime(longKeys(20_000, length: 128))
        #expect(long < short * 8 + .milliseconds(500), "127-byte keys: \(short), 128-byte keys: \(long)")
        let large = try decodeTime(longKeys(40_000, length: 200))
        #expect(large < .seconds(3), "40,000 keys of 200 bytes: \(large)")
        // A dictionary nested deeper than the decoder caches containers for (32) once took quadratic time too.
        let keys = longKeys(20_000, length: 8)
        let shallow = try decodeTime(LimitTree(depth: 0, leaf: keys))
        let deep = try decodeTime(LimitTree(depth: 40, leaf: keys))
        #expect(deep < shallow * 8 + .milliseconds(500), "at depth 0: \(shallow), at depth 40: \(deep)")
        // A container made that deep, kept past its call, only throws, also once another call has
        // made containers just as deep.
        let hoard = LimitHoard()
        var hoarding = BinaryDecoder()
        hoarding.userInfo[LimitHoard.key] = hoard
        let nest = LimitNest(depth: 40, a: 7)
        #expect(try hoarding.decode(LimitNest.self, from: BinaryEncoder().encode(nest)) == nest)
        let other = LimitNest(depth: 40, a: 8)
        #expect(try BinaryDecoder().decode(LimitNest.self, from: BinaryEncoder().encode(other)) == other)
        let kept = try #require(hoard.container)
        #expect(transportError { _ = try kept.decode(Int.self, forKey: .a) } != nil)
        #expect(!kept.contains(.a) && kept.allKeys.isEmpty)
        // Long keys of a struct read in the order they were written also take the direct path.
        struct LongNames: Codable, Equatable {
            var aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1: Int
            var aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2: String
        }
        let names = LongNames(
            aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1: 7,
            aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2: "x")
        #expect(try BinaryDecoder().decode(LongNames.self, from: BinaryEncoder().encode(names)) == names)
    }

    @Test("nesting on threads with small stacks throws instead of overflowing the stack")
    func smallStacks() throws {
        // Before the stack was measured, decoding 240 levels on a 256 KiB thread (460 on 512 KiB)
        // overflowed it: the child died of SIGSEGV.
        let (reader, writer) = try makePipe(duplex: false)
        let child = ChildProcess(CodeDeeplyOnSmallStacks(report: writer), daemon: true)
        try child.start()
        writer.close()
        defer { if child.exitCode == nil { try? child.kill(); _ = try? child.join(timeout: .seconds(10)) } }
        let outcomes = try? reader.recv([StackOutcome].self, timeout: .seconds(60))
        #expect(try child.join(timeout: .seconds(60)))
        #expect(child.exitCode == 0, "the child must not crash")
        guard let outcomes else {
            Issue.record("no report from the child (exit code \(String(describing: child.exitCode)))")
            return
        }
        #expect(outcomes.map(\.stackKiB) == [256, 512, 0])
        for outcome in outcomes where outcome.stackKiB == 256 {
            // 500 levels cannot fit in 256 KiB: refused with a typed error that says why.
            #expect(outcome.decoded.hasPrefix("transport:") && outcome.decoded.contains("stack"), "\(outcome.decoded)")
            #expect(outcome.encoded.hasPrefix("transport:") && outcome.encoded.contains("stack"), "\(outcome.encoded)")
        }
        for outcome in outcomes where outcome.stackKiB == 512 {
            #expect(outcome.decoded == "ok" || outcome.decoded.hasPrefix("transport:"), "\(outcome.decoded)")
            #expect(outcome.encoded == "ok" || outcome.encoded.hasPrefix("transport:"), "\(outcome.encoded)")
        }
        for outcome in outcomes where outcome.stackKiB == 0 {
            // The default stack (8 MiB) holds the whole nesting limit.
            #expect(outcome.decoded == "ok", "\(outcome.decoded)")
            #expect(outcome.encoded == "ok", "\(outcome.encoded)")
        }
    }

    @Test("a message of nils decoded into large optionals is refused before it fills memory")
    func nilsIntoLargeOptionalsAreRefused() throws {
        // 3 MiB of nils as [LimitWide?]: 3.1 million elements of 184 bytes once took the receiver from
        // 14 MB to 705 MB.
        let attack = unkeyedOfBytes(3 << 20, element: BinaryFormat.nilTag)
        let before = residentBytes()
        var decoded: [LimitWide?]?
        let error = transportError { decoded = try BinaryDecoder().decode([LimitWide?].self, from: attack) }
        let grown = residentBytes() - before
        let decodedCount = decoded?.count
        withExtendedLifetime(decoded) {}
        #expect(decodedCount == nil)
        #expect(error?.message.contains("memoryBudget") == true, "\(String(describing: error))")
        #expect(grown < 200 << 20, "resident memory grew by \(grown >> 20) MiB")
    }

    @Test("the memory budget can be lowered and raised, on a decoder and on a connection")
    func budgetIsConfigurable() throws {
        let nils = [LimitWide?](repeating: nil, count: 100_000)
        let bytes = try BinaryEncoder().encode(nils)
        // Within the default budget (at least 64 MiB): 100,000 x 184 bytes.
        #expect(try BinaryDecoder().decode([LimitWide?].self, from: bytes) == nils)

        var strict = BinaryDecoder()
        strict.memoryBudget = .init(bytesPerInputByte: 8, minimumBytes: 1 << 20)
        let refused = transportError { _ = try strict.decode([LimitWide?].self, from: bytes) }
        #expect(refused?.message.contains("8 bytes per input byte, at least 1 MiB") == true, "\(String(describing: refused))")
        strict.memoryBudget = .unlimited
        #expect(try strict.decode([LimitWide?].self, from: bytes) == nils)

        // Dictionary keys count too, and too many of them fail the decode instead of dropping entries.
        var keys: [String: Int?] = [:]
        for index in 0..<50_000 { keys["\(index)"] = nil as Int? }
        let keyBytes = try BinaryEncoder().encode(keys)
        strict.memoryBudget = .init(bytesPerInputByte: 4, minimumBytes: 0)
        #expect(transportError { _ = try strict.decode([String: Int?].self, from: keyBytes) }?.message.contains("memoryBudget") == true)
        #expect(try BinaryDecoder().decode([String: Int?].self, from: keyBytes) == keys)

        // Packed arrays and strings count their bytes: ordinary data fits a budget of its own size.
        strict.memoryBudget = .init(bytesPerInputByte: 2, minimumBytes: 0)
        let numbers = Array(0..<10_000)
        #expect(try strict.decode([Int].self, from: BinaryEncoder().encode(numbers)) == numbers)

        // A connection's budget.
        let (receiver, sender) = try makePipe()
        try sender.send(nils)
        receiver.decodingBudget = .init(bytesPerInputByte: 8, minimumBytes: 1 << 20)
        #expect(transportError { _ = try receiver.recv([LimitWide?].self, timeout: .seconds(10)) }?.message.contains("decodingBudget") == true)
        try sender.send(nils)
        receiver.decodingBudget = .default
        #expect(try receiver.recv([LimitWide?].self, timeout: .seconds(10)) == nils)
        #expect(BinaryDecoder.MemoryBudget.default.limit(forInputBytes: 1 << 30) == 32 << 30)
        #expect(BinaryDecoder.MemoryBudget.default.limit(forInputBytes: 10) == 64 << 20)
        #expect(BinaryDecoder.MemoryBudget.unlimited.limit(forInputBytes: 0) == .max)
        #expect(BinaryDecoder.MemoryBudget.unlimited.limit(forInputBytes: .max) == .max)
    }

    @Test("a child takes its task from its parent whatever memory the task needs")
    func tasksAreNotHeldToTheBudget() throws {
        // 600,000 nils of 184 bytes: 110 MB from a message of 600 KB, over the default budget (83 MB).
        let count = 600_000
        let values = [LimitWide?](repeating: nil, count: count)
        #expect(transportError { _ = try BinaryDecoder().decode([LimitWide?].self, from: BinaryEncoder().encode(values)) } != nil)
        let child = ChildProcess(CarryManyNils(values: values, expected: count))
        try child.start()
        defer { if child.exitCode == nil { try? child.kill(); _ = try? child.join(timeout: .seconds(10)) } }
        #expect(try child.join(timeout: .seconds(60)))
        #expect(child.exitCode == 0)
    }
}
