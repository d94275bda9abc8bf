import Testing
@testable import Multiprocessing

// The pickle coders keep each thread's state (buffers, stacks, container boxes) between calls: calls
// nested in one another, calls on many threads, containers that outlive their call and failed calls
// must all behave as with fresh state.

/// A list that links to another of its type, so that containers of one key type nest in one another.
private final class PickleChain: Codable, Equatable {
    let value: Int
    let name: String
    let next: PickleChain?

    init(depth: Int) {
        value = depth
        name = "link \(depth)"
        next = depth > 0 ? PickleChain(depth: depth - 1) : nil
    }

    static func == (left: PickleChain, right: PickleChain) -> Bool {
        left.value == right.value && left.name == right.name && left.next == right.next
    }
}

/// A value whose coding keeps its containers after its call.
private final class PickleHoarder: Codable {
    enum Keys: String, CodingKey { case a, b }
    nonisolated(unsafe) static var encoding: KeyedEncodingContainer<Keys>?
    nonisolated(unsafe) static var decoding: KeyedDecodingContainer<Keys>?

    init() {}

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(1, forKey: .a)
        Self.encoding = container
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Keys.self)
        _ = try container.decode(Int.self, forKey: .a)
        Self.decoding = container
    }
}

/// A value whose coding keeps every container it is given, for containers that outlive their thread.
private final class PickleThreadHoarder: Codable {
    enum Keys: String, CodingKey { case a }
    nonisolated(unsafe) static var encoding: [KeyedEncodingContainer<Keys>] = []
    nonisolated(unsafe) static var decoding: [KeyedDecodingContainer<Keys>] = []

    init() {}

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(1, forKey: .a)
        Self.encoding.append(container)
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Keys.self)
        _ = try container.decode(Int.self, forKey: .a)
        Self.decoding.append(container)
    }
}

/// A chain of one key type whose last link keeps its containers after the call: nested deeper than the
/// kept boxes, so the last link's container is one the cache has no room for.
private final class PickleHoardingChain: Codable {
    enum Keys: String, CodingKey { case value, next }
    nonisolated(unsafe) static var encoding: KeyedEncodingContainer<Keys>?
    nonisolated(unsafe) static var decoding: KeyedDecodingContainer<Keys>?
    let value: Int
    let next: PickleHoardingChain?

    init(depth: Int) {
        value = depth
        next = depth > 0 ? PickleHoardingChain(depth: depth - 1) : nil
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(value, forKey: .value)
        try container.encodeIfPresent(next, forKey: .next)
        if next == nil { Self.encoding = container }
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Keys.self)
        value = try container.decode(Int.self, forKey: .value)
        next = try container.decodeIfPresent(PickleHoardingChain.self, forKey: .next)
        if next == nil { Self.decoding = container }
    }
}

/// A value that pickles and unpickles another inside its own coding, on the same thread.
private struct PickleEnvelope: Codable, Equatable {
    let order: PickleOrder

    init(order: PickleOrder) { self.order = order }

    enum Keys: String, CodingKey { case pickle, id }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(order.id, forKey: .id)
        try container.encode(PickleEncoder().encode(order), forKey: .pickle)
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Keys.self)
        order = try PickleDecoder().decode(PickleOrder.self, from: container.decode([UInt8].self, forKey: .pickle))
        guard try container.decode(Int.self, forKey: .id) == order.id else {
            throw DecodingError.dataCorruptedError(forKey: .id, in: container, debugDescription: "a different id")
        }
    }
}

/// A value that writes part of itself, then fails.
private struct PickleHalfWritten: Encodable {
    enum Keys: String, CodingKey { case a }
    let failure: any Error

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode("written before the failure", forKey: .a)
        throw failure
    }
}

private struct PickleTestFailure: Error {}

private let reuseOrder = PickleOrder(id: 7, items: ["a", "bc"], price: 2.5, note: nil, blob: [1, 2],
                                     counts: ["x": 1], flags: [true], big: .max)

@Suite("Pickle coders' reused state")
struct PickleReuseTests {
    @Test("containers of one key type nested deeper than the kept boxes round trip, then the fast path still holds")
    func nestedDeeperThanTheBoxes() throws {
        for depth in [0, 15, 16, 17, 60] {
            let chain = PickleChain(depth: depth)
            let bytes = try PickleEncoder().encode(chain)
            #expect(try PickleDecoder().decode(PickleChain.self, from: bytes) == chain)
            #expect(try PickleDecoder().value(from: bytes) == PickleEncoder.pythonValue(of: chain))
        }
        let bytes = try PickleEncoder().encode(reuseOrder)
        #expect(try PickleDecoder().decode(PickleOrder.self, from: bytes) == reuseOrder)
    }

    @Test("a pickle encoded or decoded inside another's coding, on the same thread")
    func callsInsideACall() throws {
        let envelope = PickleEnvelope(order: reuseOrder)
        for version in 2...5 {
            let bytes = try PickleEncoder(protocolVersion: version).encode([envelope, envelope])
            #expect(try PickleDecoder().decode([PickleEnvelope].self, from: bytes) == [envelope, envelope])
        }
    }

    @Test("containers kept after their call do nothing to later calls; a decoding one throws")
    func containersThatOutliveTheirCall() throws {
        let expected = try PickleEncoder().encode(reuseOrder)
        let hoarded = try PickleEncoder().encode(PickleHoarder())
        #expect(try PickleDecoder().value(from: hoarded) == .dict([PythonDictItem(key: .string("a"), value: .int(1))]))
        #expect(try PickleEncoder().encode(reuseOrder) == expected)
        var keyed = try #require(PickleHoarder.encoding)
        try keyed.encode(2, forKey: .b)  // after its call: written nowhere
        #expect(try PickleEncoder().encode(reuseOrder) == expected)
        #expect(try PickleEncoder().encode(PickleHoarder()) == hoarded)

        _ = try PickleDecoder().decode(PickleHoarder.self, from: hoarded)
        #expect(try PickleDecoder().decode(PickleOrder.self, from: expected) == reuseOrder)
        let decoding = try #require(PickleHoarder.decoding)
        #expect(throws: DecodingError.self) { _ = try decoding.decode(Int.self, forKey: .a) }
        #expect(!decoding.contains(.a) && decoding.allKeys.isEmpty)
        #expect(try PickleDecoder().decode(PickleOrder.self, from: expected) == reuseOrder)
        PickleHoarder.encoding = nil
        PickleHoarder.decoding = nil
    }

    @Test("containers kept past their call from deeper than the kept boxes are detached too")
    func containersBeyondTheCacheOutliveTheirCall() throws {
        let expected = try PickleEncoder().encode(reuseOrder)
        let chain = try PickleEncoder().encode(PickleHoardingChain(depth: 20))
        var keyed = try #require(PickleHoardingChain.encoding)
        try keyed.encode(2, forKey: .value)  // after its call: written nowhere
        #expect(try PickleEncoder().encode(reuseOrder) == expected)

        _ = try PickleDecoder().decode(PickleHoardingChain.self, from: chain)
        #expect(try PickleDecoder().decode(PickleOrder.self, from: expected) == reuseOrder)
        let decoding = try #require(PickleHoardingChain.decoding)
        #expect(throws: DecodingError.self) { _ = try decoding.decode(Int.self, forKey: .value) }
        PickleHoardingChain.encoding = nil
        PickleHoardingChain.decoding = nil
    }

    @Test("containers kept past their call, cached ones and those beyond the cache, still only throw or write nowhere once their thread has ended")
    func containersOutliveTheirThread() throws {
        // 20 containers held at once in one call: 16 fill the kept boxes, the others are beyond them.
        let items = (0..<20).map { _ in PickleThreadHoarder() }
        let bytes = try SyncThread {
            let bytes = try PickleEncoder().encode(items)
            _ = try PickleDecoder().decode([PickleThreadHoarder].self, from: bytes)
            return bytes
        }.join()
        #expect(PickleThreadHoarder.encoding.count == 20 && PickleThreadHoarder.decoding.count == 20)
        for container in PickleThreadHoarder.decoding {
            #expect(throws: DecodingError.self) { _ = try container.decode(Int.self, forKey: .a) }
            #expect(!container.contains(.a) && container.allKeys.isEmpty)
        }
        for var container in PickleThreadHoarder.encoding { try container.encode(2, forKey: .a) }  // written nowhere
        PickleThreadHoarder.encoding = []
        PickleThreadHoarder.decoding = []
        #expect(try PickleEncoder().encode(items) == bytes)
        #expect(try PickleDecoder().decode([PickleThreadHoarder].self, from: bytes).count == 20)
        PickleThreadHoarder.encoding = []
        PickleThreadHoarder.decoding = []
    }

    @Test("a failed encode leaves an appended-to buffer as it was, and the next encode is whole")
    func failedAppendLeavesTheBuffer() throws {
        let encoder = try PickleEncoder()
        let expected = try encoder.encode(reuseOrder)
        for failure: any Error in [PickleTestFailure(), EncodingError.invalidValue(0, .init(codingPath: [], debugDescription: "refused"))] {
            var buffer: [UInt8] = [0xEE, 0xFF]
            #expect(throws: (any Error).self) { try encoder.encode(PickleHalfWritten(failure: failure), appendingTo: &buffer) }
            #expect(buffer == [0xEE, 0xFF])
            try encoder.encode(reuseOrder, appendingTo: &buffer)
            #expect(buffer == [0xEE, 0xFF] + expected)
            #expect(try encoder.encode(reuseOrder) == expected)
        }
    }

    @Test("calls on many threads at once each get their own state")
    func manyThreads() async throws {
        let failures = await withTaskGroup(of: Int.self) { group in
            for task in 0..<8 {
                group.addTask {
                    var failures = 0
                    for index in 0..<1_000 {
                        let order = PickleOrder(id: task * 10_000 + index, items: ["\(index)", "t\(task)"], price: Double(index),
                                                note: index % 2 == 0 ? nil : "n", blob: [UInt8(task)], counts: ["k": index],
                                                flags: [index % 3 == 0], big: UInt64(index))
                        do {
                            let bytes = try PickleEncoder().encode(order)
                            if try PickleDecoder().decode(PickleOrder.self, from: bytes) != order { failures += 1 }
                            let value = try PickleDecoder().decode(PythonValue.self, from: bytes)
                            if try PickleDecoder().decode(PickleOrder.self, from: PickleEncoder().encode(value)) != order { failures += 1 }
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
}
