import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// mp-demo serve-echo --address HOST:PORT [--authkey KEY]
//
// A Listener that echoes every message back (recv_bytes -> send_bytes) until the client closes, serving
// clients concurrently as tasks on the package's event loop, until interrupted. Try it from Python:
//
//   from multiprocessing.connection import Client
//   c = Client(('127.0.0.1', 6000), authkey=b'secret'); c.send_bytes(b'hi'); print(c.recv_bytes())

func runServeEcho(_ arguments: [String]) async throws {
    var options: [String: String] = [:]
    var index = 0
    while index < arguments.count {
        guard ["--address", "--authkey"].contains(arguments[index]), index + 1 < arguments.count else {
            throw MultiprocessingError(.invalidArgument, "usage: mp-demo serve-echo --address HOST:PORT [--authkey KEY]")
        }
        options[arguments[index]] = arguments[index + 1]
        index += 2
    }
    guard let address = options["--address"] else {
        throw MultiprocessingError(.invalidArgument, "usage: mp-demo serve-echo --address HOST:PORT [--authkey KEY]")
    }
    let listener = try Listener(address: try ConnectionAddress(parsing: address), authkey: options["--authkey"].map { Array($0.utf8) })
    print("serve-echo: listening on \(listener.address)\(listener.authkey == nil ? "" : " with an authkey"); Ctrl-C stops")
    fflush(nil)
    // Clients are served side by side by tasks awaiting on the package's event loop: no thread per client.
    // accept pauses by itself when descriptors run out and goes on when they free up.
    var dropped = 0
    while true {
        let connection: Connection
        do {
            connection = try await listener.accept()
        } catch let error as MultiprocessingError where [.authenticationFailed, .timedOut, .endOfFile].contains(error.code) {
            dropped += 1  // one client's failed or abandoned handshake: keep serving
            if dropped <= 10 || dropped % 1000 == 0 { print("serve-echo: dropped client \(dropped): \(error)") }
            fflush(nil)
            continue
        }
        let peer = listener.lastAccepted.map { "\($0)" } ?? "?"
        Task { await echo(connection, peer: peer) }
    }
}

/// Echoes until the client closes.
private func echo(_ connection: Connection, peer: String) async {
    var count = 0
    do {
        while true {
            try await connection.sendBytes(connection.recvBytes())
            count += 1
        }
    } catch let error as MultiprocessingError where error.code == .endOfFile {
        print("serve-echo: \(peer.isEmpty ? "a client" : peer) closed after \(count) messages")
    } catch {
        print("serve-echo: \(peer.isEmpty ? "a client" : peer): \(error)")
    }
    fflush(nil)
    connection.close()
}
