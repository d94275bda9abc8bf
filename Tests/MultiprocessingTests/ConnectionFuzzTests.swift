#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// The tests' seeded generator, so that a failing run can be repeated from its seed.
typealias FuzzGenerator = CodecTests.SplitMix

/// A stream of frames, some valid, some with bogus or huge lengths, some cut short.
func fuzzStream(_ random: inout FuzzGenerator) -> [UInt8] {
    var stream: [UInt8] = []
    for _ in 0..<Int.random(in: 1...6, using: &random) {
        let payload = (0..<Int.random(in: 0...300, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
        switch Int.random(in: 0..<7, using: &random) {
        case 0, 1:  // a valid frame of random bytes
            stream += Framing.header(forLength: payload.count) + payload
        case 2:  // a huge short-form length
            stream += Framing.header(forLength: Int.random(in: 1 << 24...Int(Int32.max), using: &random)) + payload
        case 3:  // a long-form length, sane or absurd
            stream += [0xff, 0xff, 0xff, 0xff] + withUnsafeBytes(of: UInt64.random(in: 0...UInt64.max, using: &random).bigEndian, Array.init) + payload
        case 4:  // a negative length
            stream += withUnsafeBytes(of: Int32.random(in: Int32.min ... -2, using: &random).bigEndian, Array.init) + payload
        case 5:  // a frame cut short
            let frame = Framing.header(forLength: payload.count + 10) + payload
            stream += frame.prefix(Int.random(in: 0...frame.count, using: &random))
        default:  // plain garbage
            stream += payload
        }
    }
    return stream
}

@Suite("Garbage and truncated frames give typed errors only")
struct ConnectionFuzzTests {
    @Test("recv and recvBytes on random streams: no crash, no hang, no giant allocation")
    func receiveGarbage() throws {
        let seed = UInt64.random(in: 0...UInt64.max)
        print("fuzz seed \(seed)")
        var random = FuzzGenerator(state: seed)
        for round in 0..<2000 {
            let stream = fuzzStream(&random)
            let (writer, reader) = try makePipe()
            try stream.withUnsafeBytes { try Syscall.writeAll(writer.fileno, $0) }  // small: fits the socket buffer
            writer.close()
            let mode = round % 4
            var outcome: MultiprocessingError?
            for _ in 0..<20 {
                do {
                    switch mode {
                    case 0: _ = try reader.recvBytes(timeout: .seconds(5))
                    case 1: _ = try reader.recvBytes(maxLength: 100, timeout: .seconds(5))
                    case 2: _ = try reader.recv(Point.self, timeout: .seconds(5))
                    default:
                        var buffer = [UInt8](repeating: 0, count: 64)
                        _ = try reader.recvBytes(into: &buffer, offset: 8, timeout: .seconds(5))
                    }
                } catch let error as MultiprocessingError {
                    outcome = error
                    if [.endOfFile, .protocolViolation, .closed].contains(error.code) { break }
                } catch {
                    Issue.record("untyped error \(error) (seed \(seed), round \(round))")
                    break
                }
                #expect(reader.receiveBufferCapacity <= 128 * 1024 + 2 * stream.count, "seed \(seed), round \(round)")
            }
            #expect(outcome.map { [.endOfFile, .protocolViolation, .closed, .transport, .bufferTooShort].contains($0.code) } ?? false,
                    "seed \(seed), round \(round): \(String(describing: outcome))")
            #expect(outcome?.code != .timedOut, "a closed peer never leaves a receive waiting")
        }
    }

    @Test("a Listener fed random clients drops each with a typed error and then serves a good one")
    func listenerGarbage() throws {
        let seed = UInt64.random(in: 0...UInt64.max)
        print("fuzz seed \(seed)")
        var random = FuzzGenerator(state: seed)
        let key = Array("fuzz".utf8)
        let listener = try Listener(family: .tcp, authkey: key, handshakeTimeout: .milliseconds(300))
        for round in 0..<100 {
            let stream = fuzzStream(&random)
            let keepOpen = round % 8 == 0
            let client = try Connection(connectingTo: listener.address, timeout: .seconds(5))
            try stream.withUnsafeBytes { try Syscall.writeAll(client.fileno, $0) }
            if !keepOpen { client.close() }
            do {
                let accepted = try listener.accept(timeout: .seconds(10))
                Issue.record("a random client passed the handshake (seed \(seed), round \(round)): \(accepted)")
            } catch let error as MultiprocessingError {
                let allowed: [MultiprocessingError.Code] = [.authenticationFailed, .endOfFile, .timedOut, .system]
                #expect(allowed.contains(error.code), "seed \(seed), round \(round): \(error)")
            }
            client.close()
        }
        let good = ListenerTestResult { try Connection(connectingTo: listener.address, authkey: key, timeout: .seconds(10)).send("fine") }
        #expect(try listener.accept(timeout: .seconds(10)).recv(String.self, timeout: .seconds(10)) == "fine")
        try good.get()
    }
}
