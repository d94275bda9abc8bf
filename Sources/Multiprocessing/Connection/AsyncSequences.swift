/// The messages arriving on a connection, as an `AsyncSequence`: `for try await job in connection.messages(of: Job.self)`.
///
/// Each element is one ``Connection/recv(_:timeout:)-957pz`` awaited on the package's event loop. The
/// sequence ends when the peer closes its end (Python's `EOFError`); other errors (a value that does not
/// decode, a closed connection) end it by throwing. Cancelling the iterating task ends the wait with
/// `CancellationError` and leaves the connection usable.
public struct ConnectionMessages<Element: Decodable & Sendable>: AsyncSequence, Sendable {
    let connection: Connection

    /// The iterator: one receive per element.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let connection: Connection
        var finished = false

        /// The next message, or nil once the peer has closed its end.
        public mutating func next() async throws -> Element? {
            guard !finished else { return nil }
            do {
                return try await connection.recv(Element.self)
            } catch let error as MultiprocessingError where error.code == .endOfFile {
                finished = true
                return nil
            }
        }
    }

    /// Starts receiving.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(connection: connection) }
}

extension Connection {
    /// The values sent to this connection with ``send(_:)-70itn``, as an `AsyncSequence` that ends when the peer
    /// closes its end. See ``ConnectionMessages``.
    public func messages<T: Decodable & Sendable>(of type: T.Type = T.self) -> ConnectionMessages<T> {
        ConnectionMessages(connection: self)
    }
}

/// The clients of a listener, as an `AsyncSequence`: `for try await client in listener.connections { ... }`.
///
/// Each element is a connection returned by ``Listener/accept(timeout:)-qt6s``, awaited on the
/// package's event loop, after its handshake when the listener has an authkey. A client that fails the
/// handshake or does not finish it in time is dropped and the sequence goes on with the next; the
/// sequence ends when the listener is closed, and throws errors of the listener itself (for example a
/// system error other than running out of descriptors, which only pauses accepting).
public struct ListenerConnections: AsyncSequence, Sendable {
    let listener: Listener

    /// The iterator: one accept per element.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let listener: Listener

        /// The next authenticated client, or nil once the listener is closed.
        public mutating func next() async throws -> Connection? {
            while true {
                do {
                    return try await listener.accept()
                } catch let error as MultiprocessingError {
                    switch error.code {
                    case .closed: return nil
                    case .authenticationFailed, .timedOut, .endOfFile: continue  // one client's failure
                    default: throw error
                    }
                }
            }
        }
    }

    /// Starts accepting.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(listener: listener) }
}

extension Listener {
    /// The clients of this listener, as an `AsyncSequence`. See ``ListenerConnections``.
    public var connections: ListenerConnections { ListenerConnections(listener: self) }
}
