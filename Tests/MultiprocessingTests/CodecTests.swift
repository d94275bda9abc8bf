import Testing
@testable import Multiprocessing

/// Tests of `BinaryEncoder` / `BinaryDecoder`, the coder for every message between processes.
@Suite struct CodecTests {
    // MARK: Fixtures

    struct Small: Codable, Equatable {
        var id: Int
        var name: String
        var score: Double
        var tags: [String]
    }

    struct Numbers: Codable, Equatable {
        var i: Int, i8: Int8, i16: Int16, i32: Int32, i64: Int64
        var u: UInt, u8: UInt8, u16: UInt16, u32: UInt32, u64: UInt64
        var f: Float, d: Double, b: Bool

        static let minimum = Numbers(
            i: .min, i8: .min, i16: .min, i32: .min, i64: .min, u: .min, u8: .min, u16: .min, u32: .min,
            u64: .min, f: -.greatestFiniteMagnitude, d: -.greatestFiniteMagnitude, b: false)
        static let maximum = Numbers(
            i: .max, i8: .max, i16: .max, i32: .max, i64: .max, u: .max, u8: .max, u16: .max, u32: .max,
            u64: .max, f: .greatestFiniteMagnitude, d: .greatestFiniteMagnitude, b: true)
        static let mixed = Numbers(
            i: -1, i8: -100, i16: 300, i32: -70_000, i64: 1 << 40, u: 127, u8: 128, u16: 65_535, u32: 1 << 31,
            u64: 1 << 63, f: 1.5, d: -0.0, b: true)
    }

    struct Wide: Codable, Equatable {
        var signed: Int128
        var unsigned: UInt128
    }

    struct Optionals: Codable, Equatable {
        var a: Int?
        var b: String?
        var c: [Int]?
        var d: Small?
        var e: Bool?
        var f: Double?
    }

    enum Plain: Codable, Equatable, CaseIterable { case north, south, east, west }
    enum Named: String, Codable, Equatable { case alpha = "a", beta = "b" }
    enum Numbered: Int, Codable, Equatable { case one = 1, two = 2, big = 1_000_000 }

    indirect enum Shape: Codable, Equatable {
        case point
        case circle(radius: Double)
        case rect(Double, Double)
        case labeled(name: String, Shape?, tags: [String: Int])
        case group([Shape])
    }

    indirect enum Chain: Codable, Equatable {
        case end
        case link(Chain)

        init(depth: Int) {
            var chain = Chain.end
            for _ in 0..<depth { chain = .link(chain) }
            self = chain
        }
    }

    class Animal: Codable {
        var name: String
        var legs: Int
        init(name: String, legs: Int) {
            self.name = name
            self.legs = legs
        }
    }

    /// A subclass written the usual way: the superclass's fields under the `super` key.
    final class Dog: Animal {
        var breed: String
        var good: Bool
        enum CodingKeys: String, CodingKey { case breed, good }

        init(name: String, breed: String) {
            self.breed = breed
            self.good = true
            super.init(name: name, legs: 4)
        }

        required init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            breed = try container.decode(String.self, forKey: .breed)
            good = try container.decode(Bool.self, forKey: .good)
            try super.init(from: container.superDecoder())
        }

        override func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(breed, forKey: .breed)
            try container.encode(good, forKey: .good)
            try super.encode(to: container.superEncoder())
        }
    }

    /// A subclass that shares its encoder with the superclass (one keyed container, two key types).
    final class Cat: Animal {
        var indoor: Bool
        enum CodingKeys: String, CodingKey { case indoor }

        init(name: String, indoor: Bool) {
            self.indoor = indoor
            super.init(name: name, legs: 4)
        }

        required init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            indoor = try container.decode(Bool.self, forKey: .indoor)
            try super.init(from: decoder)
        }

        override func encode(to encoder: any Encoder) throws {
            try super.encode(to: encoder)
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(indoor, forKey: .indoor)
        }
    }

    struct Empty: Codable, Equatable {}

    /// Encodes nothing at all and decodes from anything empty.
    struct Nothing: Codable, Equatable {
        struct NotEmpty: Error {}
        init() {}
        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: BinaryCodingKey.self)
            if !container.allKeys.isEmpty { throw NotEmpty() }
        }
        func encode(to encoder: any Encoder) throws {}
    }

    struct HoldsNothing: Codable, Equatable {
        var before: Int
        var nothing: Nothing
        var after: [Nothing]
    }

    /// Writes its keys in one order and reads them in another, through nested containers.
    struct Reordered: Codable, Equatable {
        var first: Int
        var inner: [String: Double]
        var list: [Int]
        var last: String

        enum Keys: String, CodingKey { case first, nested, list, last, extra }
        enum NestedKeys: String, CodingKey { case values, count }

        init(first: Int, inner: [String: Double], list: [Int], last: String) {
            self.first = first
            self.inner = inner
            self.list = list
            self.last = last
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode(first, forKey: .first)
            var nested = container.nestedContainer(keyedBy: NestedKeys.self, forKey: .nested)
            try nested.encode(inner, forKey: .values)
            try nested.encode(inner.count, forKey: .count)
            var unkeyed = container.nestedUnkeyedContainer(forKey: .list)
            for value in list { try unkeyed.encode(value) }
            var deeper = unkeyed.nestedUnkeyedContainer()
            try deeper.encode("end of list")
            try container.encode(last, forKey: .last)
        }

        /// Thrown when the decoder does not behave; the round-trip tests would see it.
        struct Broken: Error { var what: String }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: Keys.self)
            func check(_ condition: Bool, _ what: String) throws {
                if !condition { throw Broken(what: what) }
            }
            try check(container.allKeys.map(\.stringValue) == ["first", "nested", "list", "last"], "allKeys")
            try check(container.contains(.last), "contains(.last)")
            try check(!container.contains(.extra), "!contains(.extra)")
            try check(try container.decodeIfPresent(Int.self, forKey: .extra) == nil, "absent key")
            last = try container.decode(String.self, forKey: .last)
            var unkeyed = try container.nestedUnkeyedContainer(forKey: .list)
            let count = unkeyed.count ?? -1
            var values: [Int] = []
            for _ in 0..<max(count - 1, 0) { values.append(try unkeyed.decode(Int.self)) }
            try check(unkeyed.currentIndex == count - 1, "currentIndex")
            var deeper = try unkeyed.nestedUnkeyedContainer()
            try check(try deeper.decode(String.self) == "end of list", "deeper")
            try check(deeper.isAtEnd && unkeyed.isAtEnd, "isAtEnd")
            list = values
            let nested = try container.nestedContainer(keyedBy: NestedKeys.self, forKey: .nested)
            inner = try nested.decode([String: Double].self, forKey: .values)
            try check(try nested.decode(Int.self, forKey: .count) == inner.count, "count")
            first = try container.decode(Int.self, forKey: .first)
        }
    }

    /// Uses the less common container calls: super encoders in keyed and unkeyed containers (one of
    /// them left unused), nil elements, counts, and a missing `superDecoder(forKey:)`.
    struct Unusual: Codable, Equatable {
        var head: Small
        var values: [Int?]
        var counts: [Int]

        enum Keys: String, CodingKey { case head, list, unused, missing }

        init(head: Small, values: [Int?]) {
            self.head = head
            self.values = values
            counts = []
        }

        struct Broken: Error {}

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try head.encode(to: container.superEncoder(forKey: .head))
            var list = container.nestedUnkeyedContainer(forKey: .list)
            var counts: [Int] = []
            for value in values {
                if let value {
                    var single = list.superEncoder().singleValueContainer()
                    try single.encode(value)
                } else {
                    try list.encodeNil()
                }
                counts.append(list.count)
            }
            _ = container.superEncoder(forKey: .unused)
            if counts != Array(stride(from: 1, through: values.count, by: 1)) { throw Broken() }
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: Keys.self)
            head = try Small(from: container.superDecoder(forKey: .head))
            var list = try container.nestedUnkeyedContainer(forKey: .list)
            var values: [Int?] = []
            while !list.isAtEnd {
                if try list.decodeNil() {
                    values.append(nil)
                } else {
                    values.append(try list.superDecoder().singleValueContainer().decode(Int.self))
                }
            }
            self.values = values
            counts = []
            // An unused super encoder left an empty value; a missing key gives an empty decoder.
            let unused = try container.superDecoder(forKey: .unused)
            if try !unused.container(keyedBy: Keys.self).allKeys.isEmpty { throw Broken() }
            let missing = try container.superDecoder(forKey: .missing)
            if try !missing.singleValueContainer().decodeNil() { throw Broken() }
            if try !missing.container(keyedBy: Keys.self).allKeys.isEmpty { throw Broken() }
            if try missing.unkeyedContainer().count != 0 { throw Broken() }
        }
    }

    /// A single-value wrapper around a keyed type, as newtypes are written.
    struct Wrapper: Codable, Equatable {
        var inner: Small
        init(inner: Small) { self.inner = inner }
        init(from decoder: any Decoder) throws {
            inner = try decoder.singleValueContainer().decode(Small.self)
        }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(inner)
        }
    }

    struct Matrix: Codable, Equatable {
        var rows: [[Double]]
        var bytes: [[UInt8]]
        var words: [[String]]
        var flags: [Bool]
        var maybe: [Int?]
        var small: [Int8]
        var halves: [UInt16]
        var floats: [Float]
        var longs: [UInt64]
        var ints32: [Int32]
    }

    struct Point: Codable, Hashable { var x: Int, y: Int }

    struct Collections: Codable, Equatable {
        var byName: [String: Int]
        var byNumber: [Int: String]
        var byPoint: [Point: [String]]
        var byDouble: [Double: Bool]
        var names: Set<String>
        var numbers: Set<Int>
        var contiguous: ContiguousArray<Point>
        var emptyArray: [Small]
        var emptyDict: [String: Small]
    }

    struct Outer: Codable, Equatable {
        struct Inner: Codable, Equatable { var values: [Int] }
        var inner: Inner
    }

    struct Text: Codable, Equatable { var values: [String] }

    /// Records the coding path it was decoded at.
    struct PathProbe: Codable, Equatable {
        var path: String = ""
        init() {}
        init(from decoder: any Decoder) throws {
            path = decoder.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: "/")
            _ = try decoder.singleValueContainer().decode(Int.self)
        }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(encoder.codingPath.count)
        }
    }

    struct UserInfoProbe: Codable, Equatable {
        static let key = CodingUserInfoKey(rawValue: "codec.test")!
        var seen: String
        init(seen: String) { self.seen = seen }
        init(from decoder: any Decoder) throws {
            seen = decoder.userInfo[UserInfoProbe.key] as? String ?? "none"
        }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(encoder.userInfo[UserInfoProbe.key] as? String ?? "none")
        }
    }

    /// Misuses containers: writes a nested container after its parent moved on.
    struct OutOfOrder: Encodable {
        enum Keys: String, CodingKey { case a, b }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            var nested = container.nestedUnkeyedContainer(forKey: .a)
            try container.encode(1, forKey: .b)
            try nested.encode(2)
        }
    }

    /// Writes one single value twice.
    struct TwoValues: Encodable {
        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(1)
            try container.encode(2)
        }
    }

    struct Thrower: Codable {
        struct Oops: Error {}
        init() {}
        init(from decoder: any Decoder) throws { throw Oops() }
        func encode(to encoder: any Encoder) throws { throw Oops() }
    }

    /// Nests `depth` keyed containers, each with a key type of its own (`Tower<[Tag]>.Key` inside
    /// `Tower<Tag>.Key`), which is more key types and more open containers than the coders keep boxes for.
    struct Tower<Tag>: Codable, Equatable {
        var depth: Int

        struct Key: CodingKey {
            var stringValue: String
            init(stringValue: String) { self.stringValue = stringValue }
            var intValue: Int? { nil }
            init?(intValue: Int) { nil }
        }

        struct Broken: Error {}

        init(depth: Int) { self.depth = depth }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(depth, forKey: Key(stringValue: "depth"))
            if depth > 0 { try container.encode(Tower<[Tag]>(depth: depth - 1), forKey: Key(stringValue: "next")) }
            try container.encode("top \(depth)", forKey: Key(stringValue: "name"))
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: Key.self)
            depth = try container.decode(Int.self, forKey: Key(stringValue: "depth"))
            if depth > 0, try container.decode(Tower<[Tag]>.self, forKey: Key(stringValue: "next")).depth != depth - 1 {
                throw Broken()
            }
            if try container.decode(String.self, forKey: Key(stringValue: "name")) != "top \(depth)" { throw Broken() }
        }
    }

    /// Carries another value as the bytes of its own encoding: encodes and decodes inside a call.
    struct Envelope: Codable, Equatable {
        var inner: Small
        init(inner: Small) { self.inner = inner }
        init(from decoder: any Decoder) throws {
            var container = try decoder.unkeyedContainer()
            let bytes = try container.decode([UInt8].self)
            inner = try BinaryDecoder().decode(Small.self, from: bytes)
            let again = try container.decode(Small.self)
            if again != inner { throw Thrower.Oops() }
        }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.unkeyedContainer()
            try container.encode(BinaryEncoder().encode(inner))
            try container.encode(inner)
        }
    }

    /// Keeps the encoder and containers it was given, to be used after the call (which must fail).
    final class Hoarder: Codable {
        enum Keys: String, CodingKey { case a }
        var encoder: (any Encoder)?
        var keyed: KeyedEncodingContainer<Keys>?
        var unkeyed: (any UnkeyedEncodingContainer)?
        var decoder: (any Decoder)?
        var decoding: KeyedDecodingContainer<Keys>?

        init() {}

        func encode(to encoder: any Encoder) throws {
            self.encoder = encoder
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode(1, forKey: .a)
            keyed = container
            unkeyed = container.nestedUnkeyedContainer(forKey: .a)
        }

        init(from decoder: any Decoder) throws {
            self.decoder = decoder
            decoding = try decoder.container(keyedBy: Keys.self)
            _ = try decoding?.decode(Int.self, forKey: .a)
        }
    }

    /// A deterministic random number generator (SplitMix64) so failures reproduce.
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    // MARK: Helpers

    let encoder = BinaryEncoder()
    let decoder = BinaryDecoder()

    func roundTrip<T: Codable>(_ value: T) throws -> T {
        let bytes = try encoder.encode(value)
        let fromArray = try decoder.decode(T.self, from: bytes)
        let fromPointer = try bytes.withUnsafeBytes { try decoder.decode(T.self, from: $0) }
        _ = fromPointer
        return fromArray
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

    /// Decoding `bytes` must either succeed or throw a transport error; anything else fails the test.
    func decodeOrTransportError<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) -> Bool {
        do {
            _ = try decoder.decode(T.self, from: bytes)
            return true
        } catch let error as MultiprocessingError {
            return error.code == .transport
        } catch {
            return false
        }
    }

    var sampleSmall: Small { Small(id: 42, name: "alice", score: 3.5, tags: ["x", "yy", "zzz"]) }

    var sampleMatrix: Matrix {
        Matrix(
            rows: [[1, 2.5], [], [-3, .infinity]], bytes: [[0, 255], [], [7]], words: [["a"], [], ["b", "c"]],
            flags: [true, false, true], maybe: [1, nil, -3], small: [-128, 0, 127], halves: [0, 65_535],
            floats: [1.25, -0.5], longs: [.max, 0], ints32: [.min, .max])
    }

    var sampleShapes: [Shape] {
        [.point, .circle(radius: 2), .rect(3, 4), .labeled(name: "n", .circle(radius: 1), tags: ["k": 1]),
         .labeled(name: "", nil, tags: [:]), .group([.point, .group([])])]
    }

    // MARK: Round trips

    @Test func smallStruct() throws {
        #expect(try roundTrip(sampleSmall) == sampleSmall)
        #expect(try roundTrip(Small(id: -1, name: "", score: -0.0, tags: [])) == Small(id: -1, name: "", score: 0, tags: []))
    }

    @Test func integerWidthsAndFloats() throws {
        for value in [Numbers.minimum, .maximum, .mixed] {
            #expect(try roundTrip(value) == value)
        }
        for value in [Int.min, -129, -128, -1, 0, 1, 127, 128, 255, 256, 32_767, 32_768, 1 << 31, .max] {
            #expect(try roundTrip(value) == value)
            #expect(try roundTrip(Int64(value)) == Int64(value))
        }
        for value in [UInt64.min, 127, 128, 255, 256, 65_535, 65_536, 1 << 32, .max] {
            #expect(try roundTrip(value) == value)
        }
        let wide = Wide(signed: .min, unsigned: .max)
        #expect(try roundTrip(wide) == wide)
        #expect(try roundTrip(Wide(signed: -5, unsigned: 5)) == Wide(signed: -5, unsigned: 5))
        #expect(try roundTrip([Int128.max, 0, -1]) == [Int128.max, 0, -1])
        #expect(try roundTrip(Double.nan).isNaN)
        #expect(try roundTrip(Float.nan).isNaN)
        #expect(try roundTrip(-Double.infinity) == -.infinity)
        #expect(try roundTrip(Double.leastNonzeroMagnitude) == .leastNonzeroMagnitude)
        #expect(try roundTrip(-0.0 as Double).sign == .minus)
        #expect(try roundTrip(true) == true)
        #expect(try roundTrip(false) == false)
    }

    @Test func integersDecodeIntoAnyWidthThatHoldsThem() throws {
        #expect(try decoder.decode(UInt8.self, from: encoder.encode(200 as Int)) == 200)
        #expect(try decoder.decode(Int64.self, from: encoder.encode(UInt8(7))) == 7)
        #expect(try decoder.decode(Int128.self, from: encoder.encode(Int64.min)) == Int128(Int64.min))
        #expect(try decoder.decode(Double.self, from: encoder.encode(Float(0.5))) == 0.5)
        #expect(try decoder.decode(Float.self, from: encoder.encode(0.25 as Double)) == 0.25)
        #expect(try decoder.decode([Int].self, from: encoder.encode([UInt8]([1, 2, 3]))) == [1, 2, 3])
        #expect(try decoder.decode([Int?].self, from: encoder.encode([4, 5])) == [4, 5])
        #expect(try decoder.decode([Double].self, from: encoder.encode([Float(1.5)])) == [1.5])
        #expect(try decoder.decode(ContiguousArray<UInt8>.self, from: encoder.encode([UInt8]([9, 8]))) == [9, 8])
        #expect(try decoder.decode([UInt8].self, from: encoder.encode(ContiguousArray<UInt8>([1, 2]))) == [1, 2])
        #expect(try decoder.decode([Named].self, from: encoder.encode(["a", "b"])) == [.alpha, .beta])
        #expect(try decoder.decode([Numbered].self, from: encoder.encode([1, 2])) == [.one, .two])

        for (bytes, type) in [
            (try encoder.encode(300 as Int), "UInt8"), (try encoder.encode(-1 as Int), "UInt"),
            (try encoder.encode(UInt64.max), "Int64"), (try encoder.encode(Double.greatestFiniteMagnitude), "Float"),
        ] {
            let error = transportError {
                switch type {
                case "UInt8": _ = try decoder.decode(UInt8.self, from: bytes)
                case "UInt": _ = try decoder.decode(UInt.self, from: bytes)
                case "Int64": _ = try decoder.decode(Int64.self, from: bytes)
                default: _ = try decoder.decode(Float.self, from: bytes)
                }
            }
            #expect(error?.message.contains("does not fit") == true, "\(type): \(String(describing: error))")
        }
        let packed = try encoder.encode([UInt16]([1, 300]))
        #expect(transportError { _ = try decoder.decode([UInt8].self, from: packed) } != nil)
    }

    @Test func strings() throws {
        let long = String(repeating: "é∑😀x", count: 5_000)
        for value in ["", "a", String(repeating: "b", count: 63), String(repeating: "c", count: 64),
                      String(repeating: "d", count: 200), "naïve café", "日本語", "😀 emoji", long, "nul\u{0}inside"] {
            #expect(try roundTrip(value) == value)
        }
        #expect(try roundTrip(Text(values: ["é", "", long])) == Text(values: ["é", "", long]))
        // Bad UTF-8 is rejected, not repaired.
        let bad: [UInt8] = [BinaryFormat.smallStringBase + 2, 0xC3, 0x28]
        #expect(transportError { _ = try decoder.decode(String.self, from: bad) }?.message.contains("UTF-8") == true)
    }

    /// A decoding thread hands out the short string it read last again when the same bytes come back:
    /// strings that differ from the one before in one byte, in length, or past 15 bytes decode as
    /// themselves, alone, as fields and within one message.
    @Test func repeatedShortStrings() throws {
        let values = ["item", "item", "itex", "item", "ite", "item", "", "", "a", "b", "abcdefghijklmno",
                      "abcdefghijklmnp", "abcdefghijklmnop", "abcdefghijklmnoq", "abcdefghijklmnop", "é", "e",
                      "item\u{0}", "item"]
        for value in values {
            #expect(try roundTrip(value) == value)
            let small = Small(id: 1, name: value, score: 0.5, tags: [])
            #expect(try roundTrip(small) == small)
        }
        let pairs = zip(values, values.dropFirst()).map { Small(id: 2, name: $0, score: 1, tags: [$1]) }
        #expect(try roundTrip(pairs) == pairs)
    }

    @Test func optionalsOmitKeys() throws {
        let none = Optionals()
        let all = Optionals(a: 1, b: "b", c: [1, 2], d: sampleSmall, e: false, f: 0.5)
        let some = Optionals(a: nil, b: "x", c: nil, d: nil, e: true, f: nil)
        for value in [none, all, some] {
            #expect(try roundTrip(value) == value)
        }
        // Nil properties are left out: an all-nil struct is an empty keyed container.
        #expect(try encoder.encode(none) == [BinaryFormat.keyedTag, 0, 0, 0, 0])
        #expect(try roundTrip([1, nil, 3] as [Int?]) == [1, nil, 3])
        #expect(try roundTrip(nil as Int?) == nil)
        #expect(try roundTrip(Optional(Optional(5))) == 5)
        // A struct whose optional key is missing decodes it as nil.
        struct Required: Codable { var a: Int; var e: Bool }
        let decoded = try decoder.decode(Optionals.self, from: encoder.encode(Required(a: 3, e: true)))
        #expect(decoded == Optionals(a: 3, e: true))
        #expect(transportError { _ = try decoder.decode(Required.self, from: encoder.encode(none)) }?
            .message.contains("key 'a' not found") == true)
    }

    @Test func enums() throws {
        for value in Plain.allCases { #expect(try roundTrip(value) == value) }
        #expect(try roundTrip([Named.alpha, .beta]) == [.alpha, .beta])
        #expect(try roundTrip([Numbered.one, .big]) == [.one, .big])
        #expect(try roundTrip(sampleShapes) == sampleShapes)
        // An unknown raw value is a transport error that carries the enum's own error.
        let error = transportError { _ = try decoder.decode(Named.self, from: encoder.encode("zzz")) }
        #expect(error?.message.contains("Named") == true)
    }

    @Test func classesAndSuperEncoders() throws {
        let dog = try roundTrip(Dog(name: "Rex", breed: "collie"))
        #expect(dog.name == "Rex" && dog.legs == 4 && dog.breed == "collie" && dog.good)
        let cat = try roundTrip(Cat(name: "Tom", indoor: false))
        #expect(cat.name == "Tom" && cat.legs == 4 && !cat.indoor)
        let animal = try roundTrip(Animal(name: "ant", legs: 6))
        #expect(animal.name == "ant" && animal.legs == 6)
        // The shared-encoder subclass produced a single keyed container.
        let bytes = try encoder.encode(Cat(name: "c", indoor: true))
        #expect(bytes.first == BinaryFormat.keyedTag)
        struct ThreeKeys: Codable { var name: String; var legs: Int; var indoor: Bool }
        let flat = try decoder.decode(ThreeKeys.self, from: bytes)
        #expect(flat.name == "c" && flat.legs == 4 && flat.indoor)
    }

    @Test func emptyValues() throws {
        #expect(try roundTrip(Empty()) == Empty())
        #expect(try roundTrip(Nothing()) == Nothing())
        #expect(try encoder.encode(Nothing()) == [BinaryFormat.emptyTag])
        let holder = HoldsNothing(before: 1, nothing: Nothing(), after: [Nothing(), Nothing()])
        #expect(try roundTrip(holder) == holder)
        #expect(try roundTrip([Int]()) == [])
        #expect(try roundTrip([String]()) == [])
        #expect(try roundTrip([String: Int]()) == [:])
        #expect(try roundTrip([[Int]]()) == [])
        #expect(try roundTrip(Set<Int>()) == [])
    }

    @Test func nestedContainersInAnyOrder() throws {
        let value = Reordered(first: 7, inner: ["x": 1.5, "y": -2], list: [3, 1, 2], last: "done")
        #expect(try roundTrip(value) == value)
        #expect(try roundTrip([value, value]) == [value, value])
    }

    @Test func lessCommonContainerCalls() throws {
        let value = Unusual(head: sampleSmall, values: [1, nil, 300, nil])
        #expect(try roundTrip(value) == value)
        let wrapped = [Wrapper(inner: sampleSmall)]
        #expect(try roundTrip(wrapped) == wrapped)
        // The wrapper adds nothing to the bytes.
        #expect(try encoder.encode(Wrapper(inner: sampleSmall)) == encoder.encode(sampleSmall))
    }

    @Test func arraysAndPackedFastPaths() throws {
        #expect(try roundTrip(sampleMatrix) == sampleMatrix)
        let bytes = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(try roundTrip(bytes) == bytes)
        let doubles = (0..<10_000).map { Double($0) * 0.5 - 100 }
        #expect(try roundTrip(doubles) == doubles)
        let ints = (0..<10_000).map { $0 &* 0x1234_5678_9ABC }
        #expect(try roundTrip(ints) == ints)
        #expect(try roundTrip([UInt]([0, .max])) == [0, .max])
        #expect(try roundTrip([Int16]([.min, -1, .max])) == [.min, -1, .max])
        #expect(try roundTrip([UInt32]([0, .max])) == [0, .max])
        #expect(try roundTrip([Int64]([.min, .max])) == [.min, .max])

        // [UInt8] travels as raw memory: tag, kind, varint count, the bytes.
        let encoded = try encoder.encode([UInt8]([1, 2, 3]))
        #expect(encoded == [BinaryFormat.packedTag, BinaryPackedKind.uint8.rawValue, 3, 1, 2, 3])
        let encodedDoubles = try encoder.encode([1.0])
        #expect(encodedDoubles.count == 3 + 8 && encodedDoubles[1] == BinaryPackedKind.float64.rawValue)
    }

    @Test func collections() throws {
        let value = Collections(
            byName: ["one": 1, "two": 2, "": 0], byNumber: [1: "a", -5: "b", .max: "c"],
            byPoint: [Point(x: 1, y: 2): ["p"], Point(x: -1, y: 0): []], byDouble: [0.5: true, -1: false],
            names: ["a", "b"], numbers: [1, 2, 3], contiguous: [Point(x: 0, y: 0)], emptyArray: [], emptyDict: [:])
        #expect(try roundTrip(value) == value)
        let big = Dictionary(uniqueKeysWithValues: (0..<2_000).map { ("key\($0)", $0) })
        #expect(try roundTrip(big) == big)
        let nested = ["a": ["b": ["c": [1, 2]]]]
        #expect(try roundTrip(nested) == nested)
    }

    /// A tree whose children are a dictionary keyed by strings.
    struct Tree: Codable, Equatable {
        var children: [String: Tree]
    }

    @Test func stringKeyedDictionariesAreReadStraightFromTheirEntries() throws {
        // The fast path (BinaryKind.stringKeyedDictionary) gives what Dictionary.init(from:) gives.
        let unicode = ["é": 1, "日本": 2, "a\u{0}b": 3, "": 4, String(repeating: "k", count: 300): 5]
        #expect(try roundTrip(unicode) == unicode)
        let nested: [String: [String: Double]] = ["x": ["y": 1.5, "z": -2], "empty": [:]]
        #expect(try roundTrip(nested) == nested)
        struct Holder: Codable, Equatable {
            var table: [String: [Int]]
            var list: [[String: String]]
            var tree: Tree
        }
        let holder = Holder(
            table: ["a": [1, 2], "b": []], list: [["k": "v"], [:]],
            tree: Tree(children: ["left": Tree(children: [:]), "right": Tree(children: ["leaf": Tree(children: [:])])]))
        #expect(try roundTrip(holder) == holder)
        // An entry whose key is not UTF-8 is skipped, as the general path's allKeys skips it.
        let badKey = [BinaryFormat.keyedTag] + withUnsafeBytes(of: UInt32(6).littleEndian) { Array($0) }
            + [1, 0xFF, 0x81, 1, 0x61, 0x82]
        #expect(try decoder.decode([String: Int].self, from: badKey) == ["a": 2])
        // Every truncation throws.
        let bytes = try encoder.encode(nested)
        for length in 0..<bytes.count {
            let error = transportError { _ = try decoder.decode([String: [String: Double]].self, from: Array(bytes[..<length])) }
            #expect(error != nil, "cut to \(length) of \(bytes.count) bytes")
        }
        // A value that is not a keyed container is refused as before.
        #expect(transportError { _ = try decoder.decode([String: Int].self, from: encoder.encode([1, 2])) } != nil)
        // Hostile input nesting dictionaries deeper than the limit is refused without exhausting the stack.
        var hostile = keyed([("children", keyed([]))])
        for _ in 0..<(BinaryFormat.maxDepth + 10) {
            hostile = keyed([("children", keyed([("c", hostile)]))])
        }
        #expect(transportError { _ = try decoder.decode(Tree.self, from: hostile) }?.message.contains("nest") == true)
    }

    @Test func deepNesting() throws {
        let chain = Chain(depth: 200)
        #expect(try roundTrip(chain) == chain)
        var shape = Shape.point
        for _ in 0..<100 { shape = .group([shape]) }
        #expect(try roundTrip(shape) == shape)

        // Deeper than the limit: refused when encoding...
        let tooDeep = Chain(depth: BinaryFormat.maxDepth + 10)
        #expect(transportError { _ = try encoder.encode(tooDeep) }?.message.contains("nest") == true)
        // ...and hostile input that nests deeper is refused when decoding, without exhausting the stack.
        var hostile = keyed([("end", keyed([]))])
        for _ in 0..<(BinaryFormat.maxDepth + 10) {
            hostile = keyed([("link", keyed([("_0", hostile)]))])
        }
        #expect(transportError { _ = try decoder.decode(Chain.self, from: hostile) }?.message.contains("nest") == true)
    }

    @Test func codingPathsAndUserInfo() throws {
        struct Holder: Codable, Equatable { var items: [Item] }
        struct Item: Codable, Equatable { var probe: PathProbe }
        let holder = Holder(items: [Item(probe: PathProbe()), Item(probe: PathProbe())])
        let decoded = try roundTrip(holder)
        #expect(decoded.items.map(\.probe.path) == ["items/[0]/probe", "items/[1]/probe"])
        // The encoder knew the same paths (it wrote their lengths).
        struct Counts: Codable { var items: [[String: Int]] }
        #expect(try decoder.decode(Counts.self, from: encoder.encode(holder)).items.map { $0["probe"] } == [3, 3])

        var encoder = BinaryEncoder()
        encoder.userInfo[UserInfoProbe.key] = "from encoder"
        var decoder = BinaryDecoder()
        decoder.userInfo[UserInfoProbe.key] = "from decoder"
        let bytes = try encoder.encode([UserInfoProbe(seen: "")])
        #expect(try BinaryDecoder().decode([String].self, from: bytes) == ["from encoder"])
        #expect(try decoder.decode([UserInfoProbe].self, from: bytes) == [UserInfoProbe(seen: "from decoder")])
    }

    @Test func errorsNameTheirPlace() throws {
        let bytes = try encoder.encode(Outer(inner: .init(values: [1, 2, -3])))
        struct Unsigned: Codable { struct Inner: Codable { var values: [UInt] }; var inner: Inner }
        let error = transportError { _ = try decoder.decode(Unsigned.self, from: bytes) }
        #expect(error?.message.contains("inner.values[2]") == true, "\(String(describing: error))")

        let mismatch = transportError { _ = try decoder.decode(Small.self, from: encoder.encode([1, 2])) }
        #expect(mismatch?.message.contains("expected a keyed container") == true)

        struct Words: Codable { var inner: [String: [String]] }
        let wrongType = transportError { _ = try decoder.decode(Words.self, from: bytes) }
        #expect(wrongType?.message.contains("inner") == true)
    }

    @Test func encoderMisuseIsATransportError() throws {
        #expect(transportError { _ = try encoder.encode(OutOfOrder()) }?.message.contains("order") == true)
        #expect(transportError { _ = try encoder.encode(TwoValues()) } != nil)
        let wrapped = transportError { _ = try encoder.encode(Thrower()) }
        #expect(wrapped?.message.contains("Oops") == true)
        #expect(transportError { _ = try decoder.decode(Thrower.self, from: [0x80]) }?.message.contains("Oops") == true)
    }

    @Test func appendingToABuffer() throws {
        var buffer: [UInt8] = [0xAA, 0xBB, 0xCC, 0xDD]
        try encoder.encode(sampleSmall, appendingTo: &buffer)
        #expect(Array(buffer[..<4]) == [0xAA, 0xBB, 0xCC, 0xDD])
        #expect(try Array(buffer[4...]) == encoder.encode(sampleSmall))
        #expect(try decoder.decode(Small.self, from: Array(buffer[4...])) == sampleSmall)

        // A reused buffer with capacity to spare keeps working.
        buffer.removeAll(keepingCapacity: true)
        buffer.reserveCapacity(4_096)
        try encoder.encode(sampleMatrix, appendingTo: &buffer)
        #expect(try decoder.decode(Matrix.self, from: buffer) == sampleMatrix)

        // Large payloads (copied without the zero-filled spare room) after a prefix, then more fields.
        struct Payload: Codable, Equatable { var data: [UInt8]; var text: String; var after: Int }
        let payload = Payload(data: (0..<50_000).map { UInt8(truncatingIfNeeded: $0) },
                              text: String(repeating: "t", count: 9_000), after: 99)
        var framed: [UInt8] = [1, 2, 3, 4]
        try encoder.encode(payload, appendingTo: &framed)
        #expect(Array(framed[..<4]) == [1, 2, 3, 4])
        #expect(try decoder.decode(Payload.self, from: Array(framed[4...])) == payload)

        // On failure the buffer is left as it was.
        let before = buffer
        #expect(transportError { try encoder.encode(OutOfOrder(), appendingTo: &buffer) } != nil)
        #expect(buffer == before)
    }

    @Test func largeContainers() throws {
        let strings = (0..<70_000).map { "s\($0)" }
        #expect(try roundTrip(strings) == strings)
        let points = (0..<20_000).map { Point(x: $0, y: -$0) }
        #expect(try roundTrip(points) == points)
        let long = String(repeating: "z", count: 300_000)
        #expect(try roundTrip(["a": long]) == ["a": long])
    }

    // MARK: Reused state

    @Test func appendingManyValuesToOneBufferTakesTimeInProportion() throws {
        // Each append costs time in proportion to the value, not to the buffer (4,000 appends once took 40 s).
        let count = 20_000
        var buffer: [UInt8] = [0xEE]
        var ends: [Int] = []
        ends.reserveCapacity(count)
        let clock = ContinuousClock()
        let elapsed = try clock.measure {
            for index in 0..<count {
                try encoder.encode(Small(id: index, name: "n\(index)", score: Double(index), tags: ["t"]), appendingTo: &buffer)
                ends.append(buffer.count)
            }
        }
        #expect(elapsed < .seconds(5), "\(elapsed)")
        var start = 1
        var wrong: [Int] = []
        for (index, end) in ends.enumerated() {
            let value = try buffer[start..<end].withUnsafeBytes { try decoder.decode(Small.self, from: $0) }
            if value != Small(id: index, name: "n\(index)", score: Double(index), tags: ["t"]) { wrong.append(index) }
            start = end
        }
        #expect(wrong.isEmpty && buffer[0] == 0xEE)
    }

    @Test func manyKeyTypesNestedDeeperThanTheBoxCache() throws {
        for depth in [0, 5, 31, 32, 33, 80] {
            let tower = Tower<Int>(depth: depth)
            #expect(try roundTrip(tower) == tower)
            #expect(try roundTrip([tower, tower, tower]) == [tower, tower, tower])
        }
        // The small types still take their fast path afterwards.
        #expect(try roundTrip(sampleSmall) == sampleSmall)
    }

    @Test func codingInsideACallOnTheSameThread() throws {
        let envelope = Envelope(inner: sampleSmall)
        #expect(try roundTrip(envelope) == envelope)
        #expect(try roundTrip([envelope, envelope]) == [envelope, envelope])
    }

    @Test func concurrentCallsOnManyThreads() async throws {
        let encoder = self.encoder
        let decoder = self.decoder
        let failures = await withTaskGroup(of: Int.self) { group in
            for task in 0..<8 {
                group.addTask {
                    var failures = 0
                    for index in 0..<2_000 {
                        let value = Small(id: task * 10_000 + index, name: "task \(task)", score: Double(index), tags: ["\(index)"])
                        let nested = Reordered(first: index, inner: ["k": Double(task)], list: [index, task], last: "l")
                        do {
                            if try decoder.decode(Small.self, from: encoder.encode(value)) != value { failures += 1 }
                            if try decoder.decode(Reordered.self, from: encoder.encode(nested)) != nested { failures += 1 }
                        } catch {
                            failures += 1
                        }
                    }
                    return failures
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failures == 0)
    }

    @Test func encodersAndDecodersThatOutliveTheirCallOnlyThrow() throws {
        let hoarder = Hoarder()
        let bytes = try encoder.encode(hoarder)
        _ = try encoder.encode(sampleSmall)  // the state is in use by another call meanwhile, then idle
        var keyed = try #require(hoarder.keyed)
        #expect(transportError { try keyed.encode(2, forKey: .a) } != nil)
        var unkeyed = try #require(hoarder.unkeyed)
        #expect(transportError { try unkeyed.encode(3) } != nil)
        var single = try #require(hoarder.encoder).singleValueContainer()
        #expect(transportError { try single.encode(4) } != nil)
        var late = try #require(hoarder.encoder).container(keyedBy: Hoarder.Keys.self)
        #expect(transportError { try late.encode(5, forKey: .a) } != nil)
        #expect(try decoder.decode(Small.self, from: encoder.encode(sampleSmall)) == sampleSmall)

        let decoded = try decoder.decode(Hoarder.self, from: bytes)
        _ = try decoder.decode(Small.self, from: encoder.encode(sampleSmall))
        let decoding = try #require(decoded.decoding)
        #expect(transportError { _ = try decoding.decode(Int.self, forKey: .a) } != nil)
        #expect(!decoding.contains(.a) && decoding.allKeys.isEmpty)
        let leaked = try #require(decoded.decoder)
        #expect(transportError { _ = try leaked.container(keyedBy: Hoarder.Keys.self) } != nil)
        #expect(transportError { _ = try leaked.unkeyedContainer() } != nil)
        #expect(transportError { _ = try leaked.singleValueContainer().decode(Int.self) } != nil)
    }

    // MARK: Hostile input

    @Test func emptyAndTrailingInput() {
        #expect(transportError { _ = try decoder.decode(Int.self, from: []) } != nil)
        #expect(transportError { _ = try decoder.decode(Int.self, from: [0x81, 0x00]) }?.message.contains("trailing") == true)
        #expect(transportError { _ = try decoder.decode(Int.self, from: [0x3F]) } != nil)
        #expect(transportError { _ = try decoder.decode(String.self, from: [0x81]) }?.message.contains("expected String") == true)
    }

    @Test func everyTruncationFails() throws {
        let samples: [(String, [UInt8], ([UInt8]) throws -> Void)] = [
            ("small", try encoder.encode(sampleSmall), { _ = try decoder.decode(Small.self, from: $0) }),
            ("matrix", try encoder.encode(sampleMatrix), { _ = try decoder.decode(Matrix.self, from: $0) }),
            ("shapes", try encoder.encode(sampleShapes), { _ = try decoder.decode([Shape].self, from: $0) }),
            ("dog", try encoder.encode(Dog(name: "d", breed: "b")), { _ = try decoder.decode(Dog.self, from: $0) }),
            ("reordered", try encoder.encode(Reordered(first: 1, inner: ["k": 2], list: [5], last: "l")),
             { _ = try decoder.decode(Reordered.self, from: $0) }),
            ("strings", try encoder.encode(["a", String(repeating: "b", count: 100)]),
             { _ = try decoder.decode([String].self, from: $0) }),
            ("wide", try encoder.encode(Wide(signed: .min, unsigned: .max)), { _ = try decoder.decode(Wide.self, from: $0) }),
        ]
        for (name, bytes, decode) in samples {
            try decode(bytes)
            for length in 0..<bytes.count {
                let error = transportError { try decode(Array(bytes[..<length])) }
                #expect(error != nil, "\(name) cut to \(length) of \(bytes.count) bytes")
            }
        }
    }

    @Test func hostileLengthsAreCheckedBeforeAllocating() {
        // A string that claims 2^62 bytes.
        let hugeString: [UInt8] = [BinaryFormat.stringTag, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0x61]
        #expect(transportError { _ = try decoder.decode(String.self, from: hugeString) } != nil)
        // A packed array that claims 2^56 doubles.
        let hugePacked: [UInt8] = [BinaryFormat.packedTag, BinaryPackedKind.float64.rawValue,
                                   0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]
        #expect(transportError { _ = try decoder.decode([Double].self, from: hugePacked) } != nil)
        #expect(transportError { _ = try decoder.decode([Float].self, from: hugePacked) } != nil)
        // An unkeyed container that claims 4 billion elements in 4 bytes.
        let hugeCount: [UInt8] = [BinaryFormat.unkeyedTag, 4, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x81, 0x82, 0x83, 0x84]
        #expect(transportError { _ = try decoder.decode([Int].self, from: hugeCount) } != nil)
        // A container whose length runs past the end, and a nested one that runs past its parent.
        let overlong: [UInt8] = [BinaryFormat.unkeyedTag, 0xFF, 0xFF, 0xFF, 0x7F, 1, 0, 0, 0, 0x81]
        #expect(transportError { _ = try decoder.decode([Int].self, from: overlong) } != nil)
        let escaping: [UInt8] = [BinaryFormat.unkeyedTag, 10, 0, 0, 0, 1, 0, 0, 0,
                                 BinaryFormat.unkeyedTag, 20, 0, 0, 0, 1, 0, 0, 0, 0x81]
        #expect(transportError { _ = try decoder.decode([[Int]].self, from: escaping) } != nil)
        // A varint longer than 64 bits.
        let longVarint: [UInt8] = [BinaryFormat.stringTag] + [UInt8](repeating: 0xFF, count: 11) + [0x01]
        #expect(transportError { _ = try decoder.decode(String.self, from: longVarint) } != nil)
    }

    @Test func randomGarbageOnlyEverThrowsTransportErrors() {
        var random = SplitMix(state: 0x5EED)
        var decodedSomething = 0
        for round in 0..<4_000 {
            let length = Int(random.next() % 64)
            var bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            // Bias some buffers toward well-formed prefixes so the decoders get further in.
            if round % 2 == 1, !bytes.isEmpty {
                bytes[0] = [BinaryFormat.keyedTag, BinaryFormat.unkeyedTag, BinaryFormat.packedTag, BinaryFormat.stringTag][round / 2 % 4]
            }
            var ok = true
            ok = ok && decodeOrTransportError(Small.self, bytes)
            ok = ok && decodeOrTransportError([Shape].self, bytes)
            ok = ok && decodeOrTransportError([String: [Int]].self, bytes)
            ok = ok && decodeOrTransportError(Optionals.self, bytes)
            ok = ok && decodeOrTransportError(Chain.self, bytes)
            ok = ok && decodeOrTransportError([Double].self, bytes)
            ok = ok && decodeOrTransportError(String.self, bytes)
            ok = ok && decodeOrTransportError(Numbers.self, bytes)
            ok = ok && decodeOrTransportError(Set<Int8>.self, bytes)
            if (try? decoder.decode(Int?.self, from: bytes)) != nil { decodedSomething += 1 }
            #expect(ok, "round \(round): \(bytes)")
            if !ok { break }
        }
        #expect(decodedSomething > 0)
    }

    @Test func mutatedEncodingsOnlyEverThrowTransportErrors() throws {
        var random = SplitMix(state: 0xBAD5EED)
        let samples: [[UInt8]] = [
            try encoder.encode(sampleSmall), try encoder.encode(sampleMatrix), try encoder.encode(sampleShapes),
            try encoder.encode(Reordered(first: 1, inner: ["k": 2], list: [5, 6], last: "l")),
            try encoder.encode(Collections(
                byName: ["a": 1], byNumber: [2: "b"], byPoint: [Point(x: 1, y: 1): ["c"]], byDouble: [1: true],
                names: ["d"], numbers: [3], contiguous: [Point(x: 2, y: 2)], emptyArray: [], emptyDict: [:])),
        ]
        for round in 0..<3_000 {
            var bytes = samples[round % samples.count]
            for _ in 0...(random.next() % 3) {
                let index = Int(random.next() % UInt64(bytes.count))
                switch random.next() % 3 {
                case 0: bytes[index] ^= UInt8(1 << (random.next() % 8))
                case 1: bytes[index] = UInt8(truncatingIfNeeded: random.next())
                default: bytes.remove(at: index)
                }
                if bytes.isEmpty { break }
            }
            var ok = true
            ok = ok && decodeOrTransportError(Small.self, bytes)
            ok = ok && decodeOrTransportError(Matrix.self, bytes)
            ok = ok && decodeOrTransportError([Shape].self, bytes)
            ok = ok && decodeOrTransportError(Reordered.self, bytes)
            ok = ok && decodeOrTransportError(Collections.self, bytes)
            #expect(ok, "round \(round): \(bytes)")
            if !ok { break }
        }
    }

    // MARK: Byte builders

    /// A keyed container with the given entries, as the encoder writes one.
    func keyed(_ entries: [(String, [UInt8])]) -> [UInt8] {
        var content: [UInt8] = []
        for (key, value) in entries {
            content.append(UInt8(key.utf8.count))
            content += Array(key.utf8)
            content += value
        }
        let length = UInt32(content.count)
        return [BinaryFormat.keyedTag] + withUnsafeBytes(of: length.littleEndian) { Array($0) } + content
    }
}
