/// The messages between a process and a manager, over one connection per (process, manager).
///
/// Requests carry an id chosen by the caller; replies carry it back, in whatever order the calls end,
/// so many calls share one connection at once.
struct ManagerRequest: Codable, Sendable {
    enum Kind: UInt8, Codable, Sendable {
        /// A distributed method call: `target` names the method, `object` the actor.
        case call
        /// Make a shared object of the type whose mangled name is `target`; replies with its ID.
        case create
        /// Reply, then stop serving.
        case shutdown
        /// Reply at once (a health check).
        case ping
    }

    var id: UInt64
    var kind: Kind
    var object: UInt64 = 0
    var target: String = ""
    var generics: [String] = []
    var arguments: [[UInt8]] = []
}

/// The answer to one ``ManagerRequest``: the encoded result, or the error the call threw.
struct ManagerReply: Codable, Sendable {
    var id: UInt64
    var value: [UInt8] = []
    var failure: RemoteFailure?
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
