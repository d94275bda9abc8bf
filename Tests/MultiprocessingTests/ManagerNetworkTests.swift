import Foundation
import Testing
@testable import Multiprocessing

/// The manager's side of the network tests: serves on `host`, inside network namespace `namespace` if given.
struct NamespacedManager: AsyncProcessTask {
    let namespace: String?
    let host: String
    let authkey: [UInt8]
    let report: Connection

    func run() async throws {
        if let namespace { try Syscall.enterNetworkNamespace("/var/run/netns/\(namespace)") }
        let server = try ManagerServer(address: .tcp(host: host, port: 0), authkey: authkey)
        try await report.send(server.address)
        try await server.run()
    }
}

/// The caller's side: from inside network namespace `namespace`, connects to the manager, counts, then
/// waits in a call and reports how it ended.
struct NamespacedCaller: AsyncProcessTask {
    let namespace: String
    let address: ConnectionAddress
    let authkey: [UInt8]
    let report: Connection

    func run() async throws {
        try Syscall.enterNetworkNamespace("/var/run/netns/\(namespace)")
        let manager = try await SharedObjectManager.connect(to: address, authkey: authkey)
        let counter = try await manager.make(TestCounter.self)
        let gate = try await manager.makeEvent()
        // A reference that comes back inside a result names the manager as this process reached it.
        let inbox = try await manager.makeQueue(of: Int.self)
        let boxes = try await manager.makeDictionary(["inbox": inbox])
        guard let sameInbox = try await boxes.value(forKey: "inbox") else { return }
        try await sameInbox.put(5)
        try await report.send("counted \(try await counter.add(2) + counter.add(3) + inbox.get(timeout: .seconds(5)))")
        do {
            _ = try await counter.addAfterRelease(gate)
            try await report.send("returned")
        } catch let error as MultiprocessingError {
            try await report.send(error.code.rawValue)
        }
    }
}

/// Runs a command; its exit status (127 when it cannot run).
@discardableResult
func runCommand(_ arguments: [String]) -> Int32 {
    let process = Foundation.Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    do { try process.run() } catch { return 127 }
    process.waitUntilExit()
    return process.terminationStatus
}

@Suite("Managers over a network", .serialized, .timeLimit(.minutes(1)))
struct ManagerNetworkTests {
    @Test("a manager listening on every interface knows its own object when a caller names it by one of the machine's addresses")
    func wildcardManagerKnowsItsOwnObjects() async throws {
        // The manager's process has another authkey than the one it serves with: had it taken the gate
        // for an object elsewhere, it would have connected to itself with the wrong key.
        let key = Array("wildcard".utf8)
        let (report, sender) = try makePipe(duplex: false)
        let manager = ChildProcess(NamespacedManager(namespace: nil, host: "0.0.0.0", authkey: key, report: sender))
        try manager.start()
        sender.close()
        defer {
            try? manager.kill()
            _ = try? manager.join(timeout: .seconds(5))
        }
        guard case .tcp(_, let port) = try await report.recv(ConnectionAddress.self, timeout: .seconds(20)) else {
            Issue.record("the manager did not report a TCP address")
            return
        }
        let remote = try await SharedObjectManager.connect(to: .tcp(host: "127.0.0.1", port: port), authkey: key)
        let counter = try await remote.make(TestCounter.self)
        let gate = try await remote.makeEvent()
        try await gate.set()
        #expect(try await counter.addAfterRelease(gate) == 1)
    }

    @Test("a manager in one network namespace serves a process in another over a veth pair; when the link drops, the pending call fails")
    func acrossNetworkNamespaces() async throws {
        let suffix = "\(getpid())"
        let (managerSide, callerSide) = ("mpm-\(suffix)", "mpc-\(suffix)")
        guard runCommand(["ip", "netns", "add", managerSide]) == 0 else {
            print("skipped: `ip netns add` is not permitted here (needs root and the ip tool)")
            return
        }
        defer {
            runCommand(["ip", "netns", "del", managerSide])
            runCommand(["ip", "netns", "del", callerSide])
        }
        let setup: [[String]] = [
            ["ip", "netns", "add", callerSide],
            ["ip", "link", "add", "vm\(suffix)", "netns", managerSide, "type", "veth", "peer", "name", "vc\(suffix)", "netns", callerSide],
            ["ip", "-n", managerSide, "addr", "add", "10.213.0.1/24", "dev", "vm\(suffix)"],
            ["ip", "-n", callerSide, "addr", "add", "10.213.0.2/24", "dev", "vc\(suffix)"],
            ["ip", "-n", managerSide, "link", "set", "vm\(suffix)", "up"],
            ["ip", "-n", callerSide, "link", "set", "vc\(suffix)", "up"],
            ["ip", "-n", managerSide, "link", "set", "lo", "up"],
            ["ip", "-n", callerSide, "link", "set", "lo", "up"],
        ]
        for command in setup { try #require(runCommand(command) == 0, "\(command.joined(separator: " ")) failed") }

        let key = Array("netns".utf8)
        let (managerReport, managerSender) = try makePipe(duplex: false)
        // The manager listens on every interface of its namespace, and is reached by its veth address.
        let manager = ChildProcess(NamespacedManager(namespace: managerSide, host: "0.0.0.0", authkey: key, report: managerSender))
        try manager.start()
        managerSender.close()
        defer {
            try? manager.kill()
            _ = try? manager.join(timeout: .seconds(5))
        }
        guard case .tcp(_, let port) = try await managerReport.recv(ConnectionAddress.self, timeout: .seconds(20)) else {
            Issue.record("the manager did not report a TCP address")
            return
        }
        let address = ConnectionAddress.tcp(host: "10.213.0.1", port: port)

        let (callerReport, callerSender) = try makePipe(duplex: false)
        let caller = ChildProcess(NamespacedCaller(namespace: callerSide, address: address, authkey: key, report: callerSender))
        try caller.start()
        callerSender.close()
        defer {
            try? caller.kill()
            _ = try? caller.join(timeout: .seconds(5))
        }
        #expect(try await callerReport.recv(String.self, timeout: .seconds(20)) == "counted 12")
        // This process cannot reach the manager: it is in neither namespace.
        await #expect(throws: MultiprocessingError.self) {
            _ = try await SharedObjectManager.connect(to: address, authkey: key).ping()
        }

        // The caller is in (or about to make) a call that waits; the network drops under it (the caller's
        // end of the link goes down). Sent or not yet, the call fails: unanswered keepalive probes or
        // unacknowledged data end the connection.
        let dropped = ContinuousClock.now
        try #require(runCommand(["ip", "-n", callerSide, "link", "set", "vc\(suffix)", "down"]) == 0)
        #expect(try await callerReport.recv(String.self, timeout: .seconds(20)) == "managerUnavailable")
        let elapsed = ContinuousClock.now - dropped
        #expect(elapsed < .seconds(10), "the pending call took \(elapsed) to fail after the network dropped")
        #expect(try await caller.join(timeout: .seconds(10)))
        #expect(caller.exitCode == 0)
    }
}
