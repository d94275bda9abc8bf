import Distributed
import Testing
@testable import Multiprocessing

/// A shared object with a generic method: the manager keeps one call plan per method and set of
/// generic arguments.
distributed actor TestEcho: SharedObject {
    distributed func twice<Value: Codable & Sendable>(_ value: Value) -> [Value] { [value, value] }
}

@Suite("Manager calls", .timeLimit(.minutes(2)))
struct ManagerCallTests {
    @Test("a generic method and objects of one generic type with different arguments each run with their own types, in any order")
    func genericArgumentsInAnyOrder() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let echo = try await manager.make(TestEcho.self)
        let byName = try await manager.makeDictionary([String: Int].self)
        let byNumber = try await manager.makeDictionary([Int: String].self)
        for round in 0..<3 {
            #expect(try await echo.twice(round) == [round, round])
            #expect(try await echo.twice("r\(round)") == ["r\(round)", "r\(round)"])
            #expect(try await echo.twice([round, 7]) == [[round, 7], [round, 7]])
            #expect(try await echo.twice(Double(round) + 0.5) == [Double(round) + 0.5, Double(round) + 0.5])
            try await byName.setValue(round, forKey: "k\(round)")
            try await byNumber.setValue("v\(round)", forKey: round)
        }
        #expect(try await byName.snapshot() == ["k0": 0, "k1": 1, "k2": 2])
        #expect(try await byNumber.snapshot() == [0: "v0", 1: "v1", 2: "v2"])
        try await manager.shutdown()
    }

    @Test("a call naming no method of the manager's program, or a type it lacks, fails that call only")
    func unknownTargets() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let counter = try await manager.make(TestCounter.self)
        let echo = try await manager.make(TestEcho.self)
        #expect(try await echo.twice(1) == [1, 1])
        let calls: [(object: UInt64, target: String, generics: [String])] = [
            (counter.id.number, "", []),
            (counter.id.number, "not a mangled name", []),
            (counter.id.number, "$s4Nope7MissingC3fooyyYaKFTE", []),
            (echo.id.number, Self.twiceTarget, ["$s4Nope7MissingVD"]),
            (echo.id.number, Self.twiceTarget, []),
        ]
        // The name is right: with a generic argument the manager knows, the call runs.
        let good = ManagerRequest(
            id: 0, kind: .call, object: echo.id.number, target: Self.twiceTarget, generics: [try TaskEnvelope.typeName(of: Int.self)],
            arguments: [try ManagerCoding.encode(5)])
        let reply = try await ManagerActorSystem.shared.request(good, to: counter.id.manager)
        #expect(try ManagerCoding.decode([Int].self, from: reply.value) == [5, 5])
        for call in calls {
            let request = ManagerRequest(id: 0, kind: .call, object: call.object, target: call.target, generics: call.generics)
            do {
                _ = try await ManagerActorSystem.shared.request(request, to: counter.id.manager)
                Issue.record("the call to \(call.target) did not fail")
            } catch let error as MultiprocessingError {
                #expect(error.code == .remote || error.code == .transport, "\(error)")
            }
        }
        #expect(try await counter.add(3) == 3)
        #expect(try await echo.twice("a") == ["a", "a"])
        try await manager.shutdown()
    }

    /// The name a call of `TestEcho.twice` gives its target (the mangled name of its distributed thunk).
    private static let twiceTarget = "$s20MultiprocessingTests8TestEchoC5twiceySayxGxYaKSeRzSERzlFTE"

    @Test("requests and replies read back as written; a cut or altered message is a protocol violation")
    func wireLayout() throws {
        let request = ManagerRequest(
            id: 42, kind: .call, object: 7, target: "$sTarget", generics: ["$sSi", "$sSS"], arguments: [[1, 2, 3], [], [9]])
        var bytes: [UInt8] = []
        request.write(to: &bytes)
        let read = try bytes.withUnsafeBytes { try ManagerRequest(reading: $0) }
        #expect(read.id == 42 && read.kind == .call && read.object == 7 && read.target == "$sTarget")
        #expect(read.generics == ["$sSi", "$sSS"] && read.arguments == [[1, 2, 3], [], [9]])
        for cut in [0, 1, 9, 17, 20, bytes.count - 1] {
            #expect(throws: MultiprocessingError.self) { try bytes.prefix(cut).withUnsafeBytes { try ManagerRequest(reading: $0) } }
        }
        #expect(throws: MultiprocessingError.self) { try (bytes + [0]).withUnsafeBytes { try ManagerRequest(reading: $0) } }
        var hugeCount = bytes
        hugeCount.replaceSubrange(17..<21, with: [0xFF, 0xFF, 0xFF, 0xFF])  // the target's length
        #expect(throws: MultiprocessingError.self) { try hugeCount.withUnsafeBytes { try ManagerRequest(reading: $0) } }
        var unknownKind = bytes
        unknownKind[0] = 200
        #expect(throws: MultiprocessingError.self) { try unknownKind.withUnsafeBytes { try ManagerRequest(reading: $0) } }

        for reply in [ManagerReply(id: 5, value: [4, 5, 6]), ManagerReply(id: 6, failure: RemoteFailure(code: .notFound, "gone"))] {
            var bytes: [UInt8] = []
            try reply.write(to: &bytes)
            let read = try bytes.withUnsafeBytes { try ManagerReply(reading: $0) }
            #expect(read.id == reply.id && read.value == reply.value)
            #expect((read.failure?.error as? MultiprocessingError)?.code == (reply.failure == nil ? nil : .notFound))
            #expect(throws: MultiprocessingError.self) { try bytes.prefix(8).withUnsafeBytes { try ManagerReply(reading: $0) } }
        }
        let badTag: [UInt8] = [1, 0, 0, 0, 0, 0, 0, 0, 9]
        #expect(throws: MultiprocessingError.self) { try badTag.withUnsafeBytes { try ManagerReply(reading: $0) } }
    }

    @Test("a connection that sends the manager garbage is dropped; the manager serves the others on")
    func garbageRequest() async throws {
        let manager = try SharedObjectManager()
        defer { try? manager.process?.kill() }
        let counter = try await manager.make(TestCounter.self)
        let rogue = try Connection(connectingTo: counter.id.manager, authkey: currentProcess().authkey, timeout: .seconds(10))
        defer { rogue.close() }
        try await rogue.sendBytes([200, 1, 2, 3])
        await #expect(throws: MultiprocessingError.self) { _ = try await rogue.recvBytes(timeout: .seconds(10)) }
        #expect(try await counter.add(4) == 4)
        try await manager.shutdown()
    }
}
