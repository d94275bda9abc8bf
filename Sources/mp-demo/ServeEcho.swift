import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// mp-demo serve-echo --address HOST:PORT [--authkey KEY]
//
// A Listener that echoes every message back (recv_bytes -> send_bytes) until the client closes, serving
// clients concurrently, one thread each, until interrupted. Try it from Python:
//
//   from multiprocessing.connection import Client
//   c = Client(('127.0.0.1', 6000), authkey=b'secret'); c.send_bytes(b'hi'); print(c.recv_bytes())

func runServeEcho(_ arguments: [String]) throws {
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
    while true {
        let connection: Connection
        do {
            connection = try listener.accept()
        } catch let error as MultiprocessingError where error.code != .closed {
            print("serve-echo: dropped a client: \(error)")  // failed handshake or garbage: keep serving
            fflush(nil)
            continue
        }
        let peer = listener.lastAccepted.map { "\($0)" } ?? "?"
        startEchoThread(connection, peer: peer)
    }
}

/// Echoes on a thread of its own until the client closes.
private func startEchoThread(_ connection: Connection, peer: String) {
    final class Job: @unchecked Sendable {
        let connection: Connection
        let peer: String
        init(_ connection: Connection, _ peer: String) { self.connection = connection; self.peer = peer }
        func run() {
            var count = 0
            do {
                while true {
                    try connection.sendBytes(connection.recvBytes())
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
    }
    var thread = pthread_t()
    let job = Unmanaged.passRetained(Job(connection, peer)).toOpaque()
    let created = pthread_create(&thread, nil, { job in
        Unmanaged<Job>.fromOpaque(job!).takeRetainedValue().run()
        return nil
    }, job)
    if created == 0 {
        pthread_detach(thread)
    } else {
        Unmanaged<Job>.fromOpaque(job).release()
        connection.close()
    }
}
