import Distributed

/// Records a distributed method call's arguments for ``ManagerActorSystem``: each argument is encoded
/// with the package's binary coder on its own, so an argument that cannot be encoded fails that call
/// only, before anything is sent.
public struct ManagerInvocationEncoder: DistributedTargetInvocationEncoder {
    /// Arguments and results are `Codable`.
    public typealias SerializationRequirement = Codable

    var generics: [String] = []
    var arguments: [[UInt8]] = []

    /// Records a generic parameter of the called method by its mangled name.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` for a type another process cannot find by name
    ///   (private, fileprivate or declared inside a function).
    public mutating func recordGenericSubstitution<T>(_ type: T.Type) throws {
        do {
            generics.append(try TaskEnvelope.typeName(of: type))
        } catch let error as MultiprocessingError {
            throw MultiprocessingError(.transport, error.message)
        }
    }

    /// Encodes one argument.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the value cannot be encoded.
    public mutating func recordArgument<Value: Codable>(_ argument: RemoteCallArgument<Value>) throws {
        arguments.append(try ManagerCoding.encode(argument.value))
    }

    /// Nothing to record: a thrown error travels with its own type name.
    public mutating func recordErrorType<E: Error>(_ type: E.Type) throws {}

    /// Nothing to record: the caller knows the type it expects.
    public mutating func recordReturnType<R: Codable>(_ type: R.Type) throws {}

    /// Ends the recording.
    public mutating func doneRecording() throws {}
}

/// Hands a received call's arguments to the method that the manager runs.
public struct ManagerInvocationDecoder: DistributedTargetInvocationDecoder {
    /// Arguments and results are `Codable`.
    public typealias SerializationRequirement = Codable

    let generics: [String]
    let arguments: [[UInt8]]
    var next = 0

    init(_ request: ManagerRequest) {
        generics = request.generics
        arguments = request.arguments
    }

    /// The called method's generic parameters, found by their mangled names.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` for a name this program has no type for.
    public mutating func decodeGenericSubstitutions() throws -> [Any.Type] {
        try generics.map { name in
            guard let type = TaskEnvelope.resolveType(named: name) else {
                throw MultiprocessingError(.transport, "the manager's program has no type named \(name)")
            }
            return type
        }
    }

    /// Decodes the next argument.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when arguments are missing or do not decode.
    public mutating func decodeNextArgument<Argument: Codable>() throws -> Argument {
        guard next < arguments.count else {
            throw MultiprocessingError(.transport, "the call carries \(arguments.count) arguments, fewer than the method takes")
        }
        defer { next += 1 }
        return try ManagerCoding.decode(Argument.self, from: arguments[next])
    }

    /// Not recorded (nil).
    public mutating func decodeErrorType() throws -> Any.Type? { nil }

    /// Not recorded (nil).
    public mutating func decodeReturnType() throws -> Any.Type? { nil }
}

/// Sends a call's outcome back to the caller, for calls run through
/// `DistributedActorSystem.executeDistributedTarget` (a manager runs the calls it receives from a plan
/// of the method made on its first call, and replies itself).
public struct ManagerResultHandler: DistributedTargetInvocationResultHandler {
    /// Arguments and results are `Codable`.
    public typealias SerializationRequirement = Codable

    let reply: @Sendable (ManagerReply) -> Void
    let id: UInt64

    /// Sends the encoded result; a result that cannot be encoded fails this call only, with
    /// ``MultiprocessingError/Code/transport``.
    public func onReturn<Success: Codable>(value: Success) async throws {
        do {
            reply(ManagerReply(id: id, value: try ManagerCoding.encode(value)))
        } catch {
            reply(ManagerReply(id: id, failure: RemoteFailure(error)))
        }
    }

    /// Sends an empty result.
    public func onReturnVoid() async throws { reply(ManagerReply(id: id)) }

    /// Sends the error the method threw.
    public func onThrow<Err: Error>(error: Err) async throws { reply(ManagerReply(id: id, failure: RemoteFailure(error))) }
}
