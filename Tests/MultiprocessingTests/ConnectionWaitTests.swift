#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

@Suite("wait() over connections, listeners and sentinels")
struct ConnectionWaitTests {
    @Test("idle pipes time out with nothing ready; the end with data is returned")
    func waitTimeout() throws {
        let (a, peerA) = try makePipe()
        let (b, peerB) = try makePipe()
        var start = ContinuousClock.now
        #expect(try wait([a, b], timeout: .milliseconds(300)).isEmpty)
        #expect(secondsSince(start) >= 0.2 && secondsSince(start) < 10)
        try peerB.send(Int?.none)
        start = ContinuousClock.now
        let ready = try wait([a, b], timeout: .seconds(20))
        #expect(ready.count == 1 && ready.first === b)
        #expect(secondsSince(start) < 5)
        #expect(try b.recv(Int?.self, timeout: .zero) == nil)
        _ = peerA
    }

    @Test("a negative or zero timeout returns at once")
    func negativeTimeout() throws {
        let (a, peer) = try makePipe()
        let start = ContinuousClock.now
        #expect(try wait([a], timeout: .seconds(-1)).isEmpty)
        #expect(try wait([a], timeout: .zero).isEmpty)
        #expect(secondsSince(start) < 1)
        peer.close()
        #expect(try wait([a], timeout: .zero).count == 1, "end of file counts as ready")
    }

    @Test("process sentinels mixed with connections", arguments: [StartMethod.spawn, .forkserver])
    func sentinels(method: StartMethod) throws {
        let (a, peerA) = try makePipe()
        let (b, peerB) = try makePipe()
        let (go, childGo) = try makePipe()
        let child = ChildProcess(ConnNapAfterGo(go: childGo, milliseconds: 300), context: ProcessContext(method))
        try child.start()
        childGo.close()
        let objects: [any Waitable] = [a, child, b]
        #expect(try wait(objects, timeout: .zero).isEmpty, "the child is still running")
        try go.sendBytes([1])
        let start = ContinuousClock.now
        var ready = try wait(objects, timeout: .seconds(20))
        #expect(secondsSince(start) >= 0.2 && secondsSince(start) < 10)
        #expect(ready.count == 1 && ready.first as? ChildProcess === child)
        try peerA.send(1)
        ready = try wait(objects, timeout: .seconds(20))
        #expect(ready.count == 2 && ready.first as? Connection === a && ready.last as? ChildProcess === child)
        try peerB.send(2)
        ready = try wait(objects, timeout: .seconds(20))
        #expect(ready.count == 3)
        #expect(try child.join(timeout: .seconds(10)))
        #expect(try wait([try child.sentinel], timeout: .zero).count == 1, "a raw sentinel works too")
    }

    @Test("a message already buffered inside a connection counts as ready")
    func bufferedData() throws {
        let (a, b) = try makePipe()
        try a.send(contentsOf: [1, 2])
        #expect(try wait([b], timeout: .seconds(5)).count == 1)
        #expect(try b.recv(Int.self, timeout: .seconds(5)) == 1)
        // The second message sits in b's buffer; the socket itself has nothing left.
        #expect(try wait([b], timeout: .zero).count == 1)
        #expect(try b.poll())
        #expect(try b.recv(Int.self, timeout: .zero) == 2)
        #expect(try wait([b], timeout: .zero).isEmpty)
    }

    @Test("raw descriptors and a listener with a waiting client")
    func rawDescriptorsAndListeners() throws {
        let listener = try Listener()
        #expect(try wait([listener], timeout: .zero).isEmpty)
        let client = try Connection(connectingTo: listener.address, timeout: .seconds(10))
        #expect(try wait([listener], timeout: .seconds(10)).count == 1)
        let accepted = try listener.accept(timeout: .seconds(10))
        let fds = try [client.fileno, accepted.fileno]
        #expect(try wait(fds, timeout: .zero).isEmpty)
        for digit in 0..<10 { try client.sendBytes(Array("\(digit)\n".utf8)) }
        #expect(try wait(fds, timeout: .seconds(10)) == [try accepted.fileno])
        var text = ""
        for _ in 0..<10 { text += String(decoding: try accepted.recvBytes(timeout: .seconds(5)), as: UTF8.self) }
        #expect(text == "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n")
    }

    @Test("closed or invalid objects are errors")
    func invalidObjects() throws {
        let (a, _) = try makePipe()
        a.close()
        expectCode(.closed) { try wait([a], timeout: .zero) }
        expectCode(.invalidArgument) { try wait([Int32(44_977_608)], timeout: .zero) }
    }

    @Test("async wait", .ownThread)
    func asyncWait() async throws {
        let (a, b) = try makePipe()
        connectionTestThread {
            usleep(50_000)
            try? a.send(1)
        }
        let ready = try await wait([b], timeout: .seconds(10))
        #expect(ready.count == 1)
        let mixed: [any Waitable & Sendable] = [b, Int32(0)]
        #expect(try await wait(mixed, timeout: .zero).count >= 1)
    }
}
