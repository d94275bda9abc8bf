/// The messages between a process and a manager, over one connection per (process, manager).
///
/// Requests carry an id chosen by the caller; replies carry it back, in whatever order the calls end,
/// so many calls share one connection at once. Both are written in a layout of their own (see
/// ``write(to:)``) rather than through the coder: they are made and read twice per call, and their
/// fields are a few integers and byte strings whose inner values (the arguments, the result) are
/// encoded already.
struct ManagerRequest: Sendable {
    enum Kind: UInt8, Sendable {
        /// A distributed method call: `target` names the method, `object` the actor.
        case call
        /// Make a shared object of the type whose mangled name is `target`; replies with its ID.
        case create
        /// Reply, then stop serving.
        case shutdown
        /// Reply at once (a health check).
        case ping
        /// Move this connection's messages into shared memory (a ``ManagerChannel``): the server
        /// replies, the client then sends the channel's descriptor, and the server replies again once it
        /// mapped it; from then on both sides use the channel, and the socket carries only doorbells.
        /// Only over a Unix socket (a manager on this machine). The descriptor is sent once the first
        /// reply says the server takes a channel.
        case attachChannel
    }

    var id: UInt64
    var kind: Kind
    var object: UInt64 = 0
    var target: String = ""
    var generics: [String] = []
    var arguments: [[UInt8]] = []

    /// Appends the request: kind (1 byte), id and object (8 bytes each, little-endian), then the target,
    /// a count of generic names and the names, a count of arguments and the arguments, each count and
    /// each length 4 bytes.
    func write(to bytes: inout [UInt8]) {
        bytes.append(kind.rawValue)
        WireFields.append(id, to: &bytes)
        WireFields.append(object, to: &bytes)
        WireFields.append(field: Array(target.utf8), to: &bytes)
        WireFields.append(UInt32(generics.count), to: &bytes)
        for name in generics { WireFields.append(field: Array(name.utf8), to: &bytes) }
        WireFields.append(UInt32(arguments.count), to: &bytes)
        for argument in arguments { WireFields.append(field: argument, to: &bytes) }
    }

}

extension ManagerRequest {
    /// Reads a request written by ``write(to:)``.
    ///
    /// - Throws: ``MultiprocessingError/Code/protocolViolation`` when the bytes are not such a request.
    init(reading bytes: UnsafeRawBufferPointer) throws {
        var reader = WireFieldReader(bytes, what: "a manager message")
        guard let kind = Kind(rawValue: try reader.byte()) else {
            throw MultiprocessingError(.protocolViolation, "a manager request of an unknown kind")
        }
        self.kind = kind
        id = try reader.integer(UInt64.self)
        object = try reader.integer(UInt64.self)
        target = String(decoding: try reader.field(), as: UTF8.self)
        generics = try (0..<reader.count()).map { _ in String(decoding: try reader.field(), as: UTF8.self) }
        arguments = try (0..<reader.count()).map { _ in Array(try reader.field()) }
        try reader.finish()
    }
}

/// The answer to one ``ManagerRequest``: the encoded result, or the error the call threw.
struct ManagerReply: Sendable {
    var id: UInt64
    var value: [UInt8] = []
    var failure: RemoteFailure?

    /// Appends the reply: id (8 bytes, little-endian), 0 and the encoded result, or 1 and the failure
    /// (encoded with the coder).
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the failure cannot be encoded.
    func write(to bytes: inout [UInt8]) throws {
        WireFields.append(id, to: &bytes)
        if let failure {
            bytes.append(1)
            bytes += try ManagerCoding.encode(failure)
        } else {
            bytes.append(0)
            bytes += value
        }
    }

}

extension ManagerReply {
    /// Reads a reply written by ``write(to:)``.
    ///
    /// - Throws: ``MultiprocessingError/Code/protocolViolation`` when the bytes are not such a reply;
    ///   ``MultiprocessingError/Code/transport`` when its failure does not decode.
    init(reading bytes: UnsafeRawBufferPointer) throws {
        var reader = WireFieldReader(bytes, what: "a manager message")
        id = try reader.integer(UInt64.self)
        let tag = try reader.byte()
        switch tag {
        case 0: value = Array(reader.rest())
        case 1: failure = try ManagerCoding.decode(RemoteFailure.self, from: Array(reader.rest()))
        default: throw MultiprocessingError(.protocolViolation, "a manager reply of an unknown kind \(tag)")
        }
    }
}

/// An error thrown by a shared object's method, on its way back to the caller: as itself when its type
/// is `Codable` and known to the caller's program, otherwise as a ``MultiprocessingError/Code/remote``
/// error with its type name and description.
struct RemoteFailure: Codable, Sendable {
    var typeName: String
    var encoded: [UInt8]?
    var text: String
    var carried: CarriedError?

    init(_ error: any Error) {
        typeName = String(reflecting: type(of: error))
        text = String(describing: error)
        encoded = nil
        if let error = error as? MultiprocessingError {
            carried = CarriedError(error)
        } else if let codable = error as? any Codable & Error, let name = _mangledTypeName(type(of: codable)), !name.contains("$"),
            let bytes = try? ManagerCoding.encode(codable)
        {
            typeName = name
            encoded = bytes
        }
    }

    init(code: MultiprocessingError.Code, _ message: String) {
        self.init(MultiprocessingError(code, message))
    }

    /// The error to throw in the caller.
    var error: any Error {
        if let carried { return carried.error }
        if let encoded, let type = _typeByName(typeName) as? any (Decodable & Error).Type,
            let error = try? ManagerCoding.decode(type, from: encoded)
        {
            return error
        }
        return MultiprocessingError(.remote, "\(typeName): \(text)")
    }
}

/// Encoding of arguments and results with the package's binary coder.
enum ManagerCoding {
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        do {
            return try BinaryEncoder().encode(value)
        } catch let error as MultiprocessingError {
            throw MultiprocessingError(.transport, "cannot encode \(T.self) for a shared object: \(error.message)")
        } catch {
            throw MultiprocessingError(.transport, "cannot encode \(T.self) for a shared object: \(error)")
        }
    }

    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        do {
            return try BinaryDecoder().decode(T.self, from: bytes)
        } catch let error as MultiprocessingError {
            throw error
        } catch {
            throw MultiprocessingError(.transport, "cannot decode \(T.self) from a shared object's message: \(error)")
        }
    }
}
