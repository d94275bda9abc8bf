#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// The pickle coders on their own (no Python needed): round trips at every protocol, Codable mapping,
// refusals, limits, seeded fuzzing, and pickled messages between processes over a Pipe.

/// One of every plain Python type, nested.
let pickleSample: PythonValue = .list([
    .none, .bool(true), .bool(false), .int(0), .int(-1), .int(255), .int(65_536), .int(Int.max), .int(Int.min),
    .bigInt(PythonInteger.littleEndian(fromDecimal: "-123456789012345678901234567890")!), .float(-0.0), .float(.infinity),
    .float(2.5e-300), .string(""), .string("caf\u{e9} \u{1234}\u{1F600} back\\slash\nline\r\u{0}\u{1a}"),
    .bytes([]), .bytes([0, 0x80, 0xff, 0x5c, 0x0a]), .bytearray([]), .bytearray([1, 2, 3]),
    .list([]), .tuple([]), .tuple([.int(1)]), .tuple([.int(1), .int(2), .int(3), .int(4)]),
    .dict([]), .dict([PythonDictItem(key: .string("a"), value: .list([.none])), PythonDictItem(key: .tuple([.int(1)]), value: .bytes([9]))]),
    .set([]), .set([.int(1), .string("x")]), .frozenset([]), .frozenset([.frozenset([.int(2)])]),
    .list((0..<2500).map { .int($0) }),
])

struct PickleOrder: Codable, Equatable {
    let id: Int
    let items: [String]
    let price: Double
    let note: String?
    let blob: [UInt8]
    let counts: [String: Int]
    let flags: [Bool]
    let big: UInt64
}

/// A worker that answers pickled orders with pickled totals, as a Swift worker serving Python would.
struct PickleWorker: ProcessTask {
    let connection: Connection
    func run() throws {
        let python = try connection.pickled()
        while true {
            do {
                // A generous timeout: on a busy machine the test task may wait long for a thread of its own.
                let order = try python.recv(PickleOrder.self, timeout: .seconds(300))
                try python.send(["id": order.id, "total": order.items.count * 10])
            } catch let error as MultiprocessingError where error.code == .endOfFile {
                return
            } catch {
                try python.send(["error": "\(error)"])
            }
        }
    }
}

@Suite("Pickles of plain data")
struct PickleTests {
    @Test("every plain type round trips at every protocol", arguments: 0...5)
    func roundTrip(protocolVersion: Int) throws {
        let encoded = try PickleEncoder(protocolVersion: protocolVersion).encode(pickleSample)
        #expect(try PickleDecoder().value(from: encoded) == pickleSample)
        // Typed decoding (the fast path at protocols 2 to 5) sees the same objects.
        #expect(try PickleDecoder().decode([PythonValue].self, from: encoded) == pickleSample.listItems)
        let pair: PythonValue = .list([.int(1), .int(2)])
        let shared: [PythonValue] = [pair, pair, .dict([PythonDictItem(key: .string("k"), value: pair)])]
        #expect(try PickleDecoder().decode([PythonValue].self, from: PythonLikePickles.shared(protocolVersion)) == shared)
        if protocolVersion >= 2 { #expect(Array(encoded.prefix(2)) == [0x80, UInt8(protocolVersion)]) }
    }

    @Test("Codable structs map to dicts with string keys and back")
    func codable() throws {
        let order = PickleOrder(id: 7, items: ["a", "b"], price: 2.5, note: nil, blob: [0, 255], counts: ["x": 1],
                                flags: [true, false], big: UInt64.max)
        for version in 0...5 {
            let pickle = try PickleEncoder(protocolVersion: version).encode(order)
            #expect(try PickleDecoder().decode(PickleOrder.self, from: pickle) == order)
            let value = try PickleDecoder().value(from: pickle)
            #expect(value["note"] == PythonValue.none)
            #expect(value["blob"] == .bytes([0, 255]))
            #expect(value["big"] == .bigInt([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]))
        }
    }

    @Test("values that do not fit the Swift type are typed errors")
    func mismatches() throws {
        let big = try PickleEncoder().encode(PythonValue.bigInt(PythonInteger.littleEndian(fromDecimal: "1180591620717411303424")!))
        let tooBig = expectCode(.transport) { try PickleDecoder().decode(Int.self, from: big) }
        #expect(tooBig?.message.contains("does not fit in Int") == true)
        expectCode(.transport) { try PickleDecoder().decode(UInt8.self, from: PickleEncoder().encode(256)) }
        expectCode(.transport) { try PickleDecoder().decode(Int.self, from: PickleEncoder().encode(-1 as Int).dropLast() + [0x2e, 0x2e]) }
        let missing = expectCode(.transport) { try PickleDecoder().decode(PickleOrder.self, from: PickleEncoder().encode(["id": 1])) }
        #expect(missing?.message.contains("items") == true)
        expectCode(.invalidArgument) { try PickleEncoder(protocolVersion: 6) }
    }

    @Test("fields read directly (strings, numbers, arrays of them) give typed errors with their coding path")
    func directFieldErrors() throws {
        struct Fields: Codable { let name: String; let tags: [String]; let counts: [Int]; let ratios: [Double]; let blob: [UInt8] }
        func pickle(_ items: [(String, PythonValue)]) throws -> [UInt8] {
            try PickleEncoder().encode(PythonValue.dict(items.map { PythonDictItem(key: .string($0.0), value: $0.1) }))
        }
        let good: [(String, PythonValue)] = [("name", .string("x")), ("tags", .list([.string("a")])), ("counts", .tuple([.int(1)])),
                                              ("ratios", .list([.int(2), .float(0.5)])), ("blob", .list([.int(255)]))]
        let fields = try PickleDecoder().decode(Fields.self, from: pickle(good))
        #expect(fields.tags == ["a"] && fields.counts == [1] && fields.ratios == [2, 0.5] && fields.blob == [255])
        let cases: [(String, PythonValue, String)] = [
            ("name", .int(1), "at .name: expected String, found a Python int"),
            ("tags", .list([.string("a"), .int(3)]), "at .tags[1]: expected String, found a Python int"),
            ("tags", .string("ab"), "at .tags: expected a list or tuple, found a Python str"),
            ("counts", .list([.float(1.5)]), "at .counts[0]: expected Int, found a Python float"),
            ("ratios", .list([.int(1 << 60 + 1)]), "at .ratios[0]: the int 1152921504606846977 has no exact Double"),
            ("blob", .list([.int(256)]), "at .blob[0]: the int 256 does not fit in UInt8"),
        ]
        for (key, value, message) in cases {
            let bad = try pickle(good.map { $0.0 == key ? (key, value) : $0 })
            let error = expectCode(.transport) { try PickleDecoder().decode(Fields.self, from: bad) }
            #expect(error?.message.contains(message) == true, "\(key): \(String(describing: error))")
        }
        // A message of its own per field: an invalid UTF-8 str names its path too.
        var invalid = try pickle(good)
        let at = invalid.firstIndex(of: UInt8(ascii: "x"))!
        invalid[at] = 0xff
        let utf8 = expectCode(.transport) { try PickleDecoder().decode(Fields.self, from: invalid) }
        #expect(utf8?.message.contains("at .name: a str is not valid UTF-8") == true, "\(String(describing: utf8))")
    }

    @Test("globals, instances, reduce calls and persistent ids are refused, naming what they ask for")
    func refusals() throws {
        let cases: [(String, [UInt8])] = [
            ("os.system", Array("cos\nsystem\n(S'touch /tmp/x'\ntR.".utf8)),
            ("posix.system", [0x80, 0x04, 0x8c, 5] + Array("posix".utf8) + [0x8c, 6] + Array("system".utf8) + [0x93, 0x8c, 1, 0x78, 0x85, 0x52, 0x2e]),
            ("__main__.Point", Array("ccopy_reg\n_reconstructor\n(c__main__\nPoint\nc__builtin__\nobject\nNtR.".utf8)),
            ("mod.Klass", Array("(imod\nKlass\n.".utf8)),
            ("persistent", Array("Pid\n.".utf8)),
            ("instance", [0x80, 0x02, 0x29, 0x29, 0x81, 0x2e]),
        ]
        for (name, pickle) in cases {
            let error = expectCode(.refused) { try PickleDecoder().value(from: pickle) }
            #expect(error?.message.contains(name) == true, "\(name): \(String(describing: error))")
        }
    }

    @Test("limits: depth, shared-object expansion, recursion, lengths beyond the input")
    func limits() throws {
        let deep = [UInt8](repeating: 0x5d, count: 1) + [UInt8](repeating: 0x28, count: 5000) + [0x2e]
        #expect(expectCode(.transport) { try PickleDecoder().value(from: deep) }?.message.contains("deeper") == true)
        var nested: [UInt8] = [0x80, 0x04]
        for _ in 0..<300 { nested.append(0x5d) }  // 300 empty lists, each appended into the one below
        for _ in 0..<299 { nested.append(0x61) }
        nested.append(0x2e)
        #expect(expectCode(.transport) { try PickleDecoder().value(from: nested) }?.message.contains("deeper") == true)
        // A billion laughs: each level is a list of ten references to the level below.
        var laughs: [UInt8] = [0x80, 0x04, 0x5d, 0x94]
        for level in 0..<9 {
            laughs += [0x5d, 0x94, 0x28]
            for _ in 0..<10 { laughs += [0x68, UInt8(level)] }
            laughs.append(0x65)
        }
        laughs.append(0x2e)
        let expansion = expectCode(.transport) { try PickleDecoder().value(from: laughs) }
        #expect(expansion?.message.contains("more than") == true, "\(String(describing: expansion))")
        // A list that contains itself.
        expectCode(.transport) { try PickleDecoder().value(from: [0x80, 0x04, 0x5d, 0x94, 0x68, 0x00, 0x61, 0x2e]) }
        // Lengths far beyond what arrived are refused before anything is allocated.
        for opcode: UInt8 in [0x8e, 0x8d, 0x96] {
            let claim = [opcode] + withUnsafeBytes(of: UInt64(1 << 60).littleEndian, Array.init) + [0x2e]
            expectCode(.transport) { try PickleDecoder().value(from: claim) }
        }
        expectCode(.transport) { try PickleDecoder().value(from: [0x80, 0x02, 0x8b, 0xff, 0xff, 0xff, 0x7f, 0x2e]) }
        expectCode(.transport) { try PickleDecoder().value(from: Array(("L" + String(repeating: "9", count: 5000) + "L\n.").utf8)) }
        // Memo indices far beyond the input are refused instead of growing the memo.
        expectCode(.transport) { try PickleDecoder().value(from: [0x4e, 0x72, 0xff, 0xff, 0xff, 0x7f, 0x2e]) }
        // Out-of-band buffers are not carried by a connection.
        expectCode(.unsupported) { try PickleDecoder().value(from: [0x80, 0x05, 0x97, 0x2e]) }
    }

    @Test("unhashable dict keys and set items are refused as Python refuses them, by every decoding path")
    func unhashableKeysAndItems() throws {
        let pickles: [[UInt8]] = [
            [0x80, 0x04, 0x7d, 0x5d, 0x4b, 0x02, 0x73, 0x2e],  // {[]: 2}
            [0x80, 0x04, 0x8f, 0x28, 0x5d, 0x90, 0x2e],  // {[]}
            [0x80, 0x04, 0x7d, 0x5d, 0x85, 0x4b, 0x02, 0x73, 0x2e],  // {([],): 2}
        ]
        for pickle in pickles {
            expectCode(.transport) { try PickleDecoder().value(from: pickle) }
            expectCode(.transport) { try PickleDecoder().decode(PythonValue.self, from: pickle) }
            expectCode(.transport) { try PickleDecoder().decode([PythonValue].self, from: [0x80, 0x04, 0x5d] + pickle.dropFirst(2).dropLast() + [0x61, 0x2e]) }
        }
        // The same shapes with hashable keys and items load.
        #expect(try PickleDecoder().decode(PythonValue.self, from: [0x80, 0x04, 0x7d, 0x29, 0x4b, 0x02, 0x73, 0x2e])
            == .dict([PythonDictItem(key: .tuple([]), value: .int(2))]))
    }

    @Test("seeded fuzzing: mutated and truncated pickles give typed errors only")
    func fuzz() throws {
        let seed = UInt64.random(in: 0...UInt64.max)
        print("pickle fuzz seed \(seed)")
        var random = FuzzGenerator(state: seed)
        let small: PythonValue = .list(Array(pickleSample.listItems.prefix(29)) + [.dict([PythonDictItem(key: .string("k"), value: .set([.int(3)]))])])
        let originals = try (0...5).map { try PickleEncoder(protocolVersion: $0).encode(small) }
        var typed = 0, decoded = 0
        for original in originals {
            for cut in 0..<original.count {  // every truncation
                do { _ = try PickleDecoder().value(from: Array(original.prefix(cut))) } catch is MultiprocessingError { typed += 1 }
            }
        }
        for round in 0..<12_000 {
            var bytes = originals[round % originals.count]
            for _ in 0..<Int.random(in: 1...4, using: &random) {
                let at = Int.random(in: 0..<bytes.count, using: &random)
                switch Int.random(in: 0..<4, using: &random) {
                case 0: bytes[at] = UInt8.random(in: 0...255, using: &random)
                case 1: bytes.insert(UInt8.random(in: 0...255, using: &random), at: at)
                case 2: bytes.remove(at: at)
                default: bytes[at] ^= 1 << UInt8.random(in: 0...7, using: &random)
                }
                if bytes.isEmpty { bytes = [0] }
            }
            // Typed decoding of the same bytes (its own fast path) gives typed errors only.
            do { _ = try PickleDecoder().decode(PickleOrder.self, from: bytes) } catch is MultiprocessingError {}
            do { _ = try PickleDecoder().decode([PythonValue].self, from: bytes) } catch is MultiprocessingError {}
            do {
                let value = try PickleDecoder().value(from: bytes)
                decoded += 1
                // Whatever decoded must also meet typed decoding with typed errors only.
                _ = try? PickleDecoder().decode([PythonValue].self, from: value)
                do { _ = try PickleDecoder().decode(PickleOrder.self, from: value) } catch is MultiprocessingError {}
                _ = try PickleEncoder(protocolVersion: round % 6).encode(value)
            } catch is MultiprocessingError {
                typed += 1
            }
        }
        #expect(typed > 6_000 && decoded > 0, "typed \(typed), decoded \(decoded)")
    }

    @Test("a typed recv of a Python pickle says so and names recvPickle")
    func typedReceiveOfPickle() throws {
        let (a, b) = try makePipe()
        for version in [0, 1, 2, 4, 5] {
            try a.sendPickle(["job": 3], protocolVersion: version)
            let error = expectCode(.transport) { try b.recv([String: Int].self, timeout: .seconds(5)) }
            #expect(error?.message.contains("Python pickle") == true && error?.message.contains("recvPickle") == true,
                    "\(String(describing: error))")
        }
        try a.send(["job": 3])
        #expect(try b.recv([String: Int].self, timeout: .seconds(5)) == ["job": 3])
    }

    @Test("a Swift worker in another process answers pickled orders over a Pipe, sync and async", .ownThread)
    func pipeWorker() async throws {
        let (mine, theirs) = try makePipe()
        let worker = ChildProcess(PickleWorker(connection: theirs))
        try worker.start()
        theirs.close()
        let python = try mine.pickled(protocolVersion: 2)
        for id in 0..<3 {
            let order = PickleOrder(id: id, items: Array(repeating: "x", count: id), price: 1, note: "n", blob: [],
                                    counts: [:], flags: [], big: 1)
            try await python.send(order)
            let answer = try await python.recv(PythonValue.self, timeout: .seconds(30))
            #expect(answer["id"] == .int(id) && answer["total"] == .int(id * 10), "\(answer)")
        }
        try await mine.sendPickle(PickleOrder(id: 9, items: ["a"], price: 1, note: nil, blob: [1], counts: ["c": 2], flags: [true], big: 5))
        let answer: [String: Int] = try await mine.recvPickle(timeout: .seconds(30))
        #expect(answer == ["id": 9, "total": 10])
        mine.close()
        #expect(try await worker.join(timeout: .seconds(30)))
        #expect(worker.exitCode == 0)
    }
}

extension PythonValue {
    var listItems: [PythonValue] {
        if case .list(let items) = self { return items }
        return []
    }
}

/// Pickles as CPython writes them, with memo references: `[a, a, {'k': a}]` where `a = [1, 2]`.
enum PythonLikePickles {
    static func shared(_ version: Int) -> [UInt8] {
        guard version >= 2 else { return Array("(lp0\n(lp1\nI1\naI2\naag1\na(dp2\nVk\np3\ng1\nsa.".utf8) }
        // PROTO, EMPTY_LIST, MEMOIZE, MARK, EMPTY_LIST, MEMOIZE, K 1, K 2, APPENDS, BINGET 1, EMPTY_DICT,
        // MEMOIZE, SHORT_BINUNICODE 'k', MEMOIZE, BINGET 1, SETITEM, APPENDS, STOP
        return [0x80, UInt8(version), 0x5d, 0x94, 0x28, 0x5d, 0x94, 0x28, 0x4b, 1, 0x4b, 2, 0x65, 0x68, 1,
                0x7d, 0x94, 0x8c, 1, 0x6b, 0x94, 0x68, 1, 0x73, 0x65, 0x2e]
    }
}
