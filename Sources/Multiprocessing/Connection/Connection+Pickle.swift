// Python objects on a connection: pickles of plain data, so that a Python peer's `send`/`recv` and ours
// exchange objects (the package's binary codec, used by send(_:)/recv(_:timeout:), is for Swift peers).

extension Connection {
    /// Sends a value as one pickled message, as Python's `Connection.send` does, so that a Python peer's
    /// `recv()` returns the natural Python object (a struct arrives as a dict, an array as a list).
    ///
    /// - Parameters:
    ///   - value: the value to send.
    ///   - protocolVersion: the pickle protocol, 0 to 5; by default the one CPython's
    ///     `Connection.send` uses (``PickleEncoder/defaultProtocol``).
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a protocol outside 0 to 5,
    ///   ``MultiprocessingError/Code/transport`` when the value cannot be encoded, and the errors of
    ///   ``sendBytes(_:offset:size:)-5s2jq``.
    public func sendPickle<T: Encodable>(_ value: T, protocolVersion: Int = PickleEncoder.defaultProtocol) throws {
        try sendBytes(PickleEncoder(protocolVersion: protocolVersion).encode(value))
    }

    /// Receives one pickled message, as sent by a Python peer's `send` or by ``sendPickle(_:protocolVersion:)-95iw1``,
    /// and decodes it into `type` (use ``PythonValue`` for shapes not known in advance). Nothing in the
    /// message is imported or run.
    ///
    /// - Throws: ``MultiprocessingError/Code/refused`` when the pickle names a class, global or call
    ///   (a class instance, a `__reduce__` payload); ``MultiprocessingError/Code/transport`` when it is
    ///   malformed, beyond `limits`, or does not fit `type`; and the errors of
    ///   ``recvBytes(maxLength:timeout:)-7rggb``.
    public func recvPickle<T: Decodable>(_ type: T.Type = T.self, timeout: Duration? = nil,
                                         limits: PickleDecoder.Limits = .init()) throws -> T {
        try PickleDecoder(limits: limits).decode(type, from: recvBytes(timeout: timeout))
    }

    /// Sends a value as one pickled message, as ``sendPickle(_:protocolVersion:)`` does, without
    /// blocking a thread while the peer is slow to read.
    public func sendPickle<T: Encodable>(_ value: T, protocolVersion: Int = PickleEncoder.defaultProtocol) async throws {
        try await sendBytes(PickleEncoder(protocolVersion: protocolVersion).encode(value))
    }

    /// Receives one pickled message, as ``recvPickle(_:timeout:limits:)-64rr6`` does, waiting on the package's
    /// event loop, so that no thread is held; cancelling the task ends the wait with `CancellationError`.
    public func recvPickle<T: Decodable>(_ type: T.Type = T.self, timeout: Duration? = nil,
                                         limits: PickleDecoder.Limits = .init()) async throws -> T {
        let message: [UInt8] = try await recvBytes(timeout: timeout)
        return try PickleDecoder(limits: limits).decode(type, from: message)
    }

    /// This connection with pickles as its message format, for a peer that is a Python program.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a protocol outside 0 to 5.
    public func pickled(protocolVersion: Int = PickleEncoder.defaultProtocol, limits: PickleDecoder.Limits = .init()) throws -> PickledConnection {
        PickledConnection(connection: self, encoder: try PickleEncoder(protocolVersion: protocolVersion),
                          decoder: PickleDecoder(limits: limits))
    }

    /// The error of a typed ``recv(_:timeout:)`` that got a Python pickle.
    static func pickleArrived(_ payload: UnsafeRawBufferPointer) -> MultiprocessingError {
        let version = payload.count > 1 && payload[0] == 0x80 ? "protocol \(payload[1]) " : ""
        return MultiprocessingError(
            .transport,
            "the peer sent a Python pickle (\(version)of \(payload.count) bytes), not a value of this package's format: "
                + "receive it with recvPickle(_:timeout:limits:) (or as a PythonValue), and answer a Python peer with sendPickle(_:protocolVersion:)")
    }
}

/// A connection whose messages are pickles: `send` and `recv` speak Python objects, for a peer that is a
/// Python program using `multiprocessing.connection` (made by ``Connection/pickled(protocolVersion:limits:)``).
public struct PickledConnection: Sendable {
    /// The connection underneath, for bytes, polling and closing.
    public let connection: Connection
    /// How values are written.
    public let encoder: PickleEncoder
    /// How messages are read.
    public let decoder: PickleDecoder

    /// Sends a value as one pickled message.
    ///
    /// - Throws: the errors of ``Connection/sendPickle(_:protocolVersion:)-95iw1``.
    public func send<T: Encodable>(_ value: T) throws {
        try connection.sendBytes(encoder.encode(value))
    }

    /// Receives one pickled message as `type`.
    ///
    /// - Throws: the errors of ``Connection/recvPickle(_:timeout:limits:)-64rr6``.
    public func recv<T: Decodable>(_ type: T.Type = T.self, timeout: Duration? = nil) throws -> T {
        try decoder.decode(type, from: connection.recvBytes(timeout: timeout))
    }

    /// Sends a value as one pickled message without blocking a thread while the peer is slow to read.
    ///
    /// - Throws: the errors of ``Connection/sendPickle(_:protocolVersion:)-95iw1``.
    public func send<T: Encodable>(_ value: T) async throws {
        try await connection.sendBytes(encoder.encode(value))
    }

    /// Receives one pickled message as `type`, waiting on the package's event loop (no thread is held;
    /// cancelling the task ends the wait with `CancellationError`).
    ///
    /// - Throws: the errors of ``Connection/recvPickle(_:timeout:limits:)-64rr6``.
    public func recv<T: Decodable>(_ type: T.Type = T.self, timeout: Duration? = nil) async throws -> T {
        let message: [UInt8] = try await connection.recvBytes(timeout: timeout)
        return try decoder.decode(type, from: message)
    }

    /// Closes the connection.
    public func close() { connection.close() }
}
