import Distributed
import Synchronization

/// What the Swift runtime needs to run one distributed method in a manager, worked out once per method
/// (and generic arguments) instead of on every call.
///
/// `DistributedActorSystem.executeDistributedTarget` finds a method's parameter types, return type,
/// generic environment and witness tables by demangling its mangled name on every call: about a third
/// of a manager's CPU time per call went there. A plan holds those answers, made with the same runtime
/// functions the first time a method is called, and the manager runs each later call from it with the
/// runtime's own entry point for invoking a target.
final class DistributedCallPlan: @unchecked Sendable {
    /// The method's mangled name, as the runtime reads it.
    private let target: UnsafeMutableBufferPointer<UInt8>
    private let argumentTypes: UnsafeMutablePointer<Any.Type>
    private let substitutions: UnsafeMutablePointer<Any.Type>?
    private let witnessTables: UnsafeRawPointer?
    private let witnessTableCount: Int
    /// How the result is held and encoded; nil for a method that returns nothing.
    private let result: ResultSlot?

    /// Works out the plan of method `target` with the generic arguments `generics` (mangled names).
    ///
    /// - Throws: `ExecuteDistributedTargetError` (as the runtime's own path does) when the name is not a
    ///   distributed method of this program or the generic arguments do not fit it;
    ///   ``MultiprocessingError/Code/transport`` for a generic argument this program has no type for.
    init(target name: String, generics: [String]) throws {
        guard !name.isEmpty else { throw ExecuteDistributedTargetError(message: "a call names no method") }
        let target = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: name.utf8.count)
        _ = target.initialize(from: name.utf8)
        var substitutions: UnsafeMutablePointer<Any.Type>?
        var witnessTables: UnsafeRawPointer?
        var witnessTableCount = 0
        var argumentTypes: UnsafeMutablePointer<Any.Type>?
        // Whatever was made so far is freed when a step fails.
        var complete = false
        defer {
            if !complete {
                target.deallocate()
                substitutions?.deallocate()
                witnessTables?.deallocate()
                argumentTypes?.deallocate()
            }
        }
        let start = UnsafePointer(target.baseAddress!)
        let length = UInt(target.count)
        let environment = _getGenericEnvironmentOfDistributedTarget(start, length)
        if let environment {
            let types = try generics.map { name -> Any.Type in
                guard let type = TaskEnvelope.resolveType(named: name) else {
                    throw MultiprocessingError(.transport, "the manager's program has no type named \(name)")
                }
                return type
            }
            guard !types.isEmpty else {
                throw ExecuteDistributedTargetError(message: "the generic method \(name) was called without its generic arguments")
            }
            substitutions = .allocate(capacity: types.count)
            substitutions!.initialize(from: types, count: types.count)
            (witnessTables, witnessTableCount) = _getWitnessTablesFor(environment: environment, genericArguments: substitutions!)
            guard witnessTableCount >= 0 else {
                throw ExecuteDistributedTargetError(message: "the generic arguments \(generics) do not fit the requirements of \(name)")
            }
        }
        let count = __getParameterCount(start, length)
        guard count >= 0 else {
            throw ExecuteDistributedTargetError(message: "\(name) is not a distributed method of the manager's program (error \(count))")
        }
        argumentTypes = .allocate(capacity: max(Int(count), 1))
        let decoded = parameterTypes(start, length, environment, substitutions, argumentTypes!, Int(count))
        guard decoded == count else {
            throw ExecuteDistributedTargetError(message: "the parameter types of \(name) could not be found (error \(decoded))")
        }
        guard let returnType = __getReturnTypeInfo(start, length, environment, substitutions) else {
            throw ExecuteDistributedTargetError(message: "the return type of \(name) could not be found")
        }
        if returnType == Void.self {
            result = nil
        } else if let codable = returnType as? any Codable.Type {
            result = ResultSlot(codable)
        } else {
            throw ExecuteDistributedTargetError(message: "the return type \(returnType) of \(name) is not Codable")
        }
        self.target = target
        self.argumentTypes = argumentTypes!
        self.substitutions = substitutions
        self.witnessTables = witnessTables
        self.witnessTableCount = witnessTableCount
        complete = true
    }

    deinit {
        target.deallocate()
        argumentTypes.deallocate()
        substitutions?.deallocate()
        witnessTables?.deallocate()
    }

    /// Runs the method on `actor` with the arguments `decoder` holds, and returns its encoded result
    /// (empty for a method that returns nothing).
    ///
    /// - Throws: what the method throws; ``MultiprocessingError/Code/transport`` when an argument does
    ///   not decode or the result does not encode.
    func run(on actor: any DistributedActor, _ decoder: inout ManagerInvocationDecoder) async throws -> [UInt8] {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(result?.size ?? 1, 1), alignment: result?.alignment ?? 1)
        defer { buffer.deallocate() }
        try await runDistributedTarget(
            on: actor, UnsafePointer(target.baseAddress!), UInt(target.count), argumentDecoder: &decoder,
            argumentTypes: UnsafeRawPointer(argumentTypes), resultBuffer: UnsafeRawPointer(buffer),
            substitutions: UnsafeRawPointer(substitutions), witnessTables: witnessTables, numWitnessTables: UInt(witnessTableCount))
        guard let result else { return [] }
        return try result.take(buffer)
    }

    // MARK: The plans of this process

    private struct Key: Hashable {
        let target: String
        let generics: [String]
    }

    /// Plans made so far. A program has a fixed set of methods, but generic arguments come from the
    /// callers: past `limit` plans, new ones are made for each call and not kept.
    private static let plans = Mutex<[Key: DistributedCallPlan]>([:])
    private static let limit = 4096

    /// The plan for `target` with `generics`, made on its first call.
    ///
    /// - Throws: the errors of ``init(target:generics:)``.
    static func plan(target: String, generics: [String]) throws -> DistributedCallPlan {
        let key = Key(target: target, generics: generics)
        if let known = plans.withLock({ $0[key] }) { return known }
        let plan = try DistributedCallPlan(target: target, generics: generics)
        return plans.withLock { plans in
            if let raced = plans[key] { return raced }
            if plans.count < limit { plans[key] = plan }
            return plan
        }
    }
}

/// How a method's result is held while the runtime writes it, and how it is encoded for the caller.
private struct ResultSlot {
    let size: Int
    let alignment: Int
    /// Moves the result out of the buffer and encodes it.
    let take: (UnsafeMutableRawPointer) throws -> [UInt8]

    init<Result: Codable>(_ type: Result.Type) {
        size = MemoryLayout<Result>.size
        alignment = MemoryLayout<Result>.alignment
        take = { buffer in try ManagerCoding.encode(buffer.assumingMemoryBound(to: Result.self).move()) }
    }
}

// The runtime's entry points that `executeDistributedTarget` uses, declared with raw pointers where the
// Distributed module's declarations take `Builtin.RawPointer` (the same machine type).
// The module does not publish these two: a toolchain that changed their signatures would break this file
// without a compile error, so the manager tests call generic and plain methods through them on every run.

/// Writes the parameter types of the mangled method `name` into `types`; returns how many, or a
/// negative number when the name cannot be read.
@_silgen_name("swift_func_getParameterTypeInfo")
private func parameterTypes(
    _ name: UnsafePointer<UInt8>, _ length: UInt, _ genericEnvironment: UnsafeRawPointer?,
    _ genericArguments: UnsafeRawPointer?, _ types: UnsafeMutablePointer<Any.Type>, _ typesLength: Int
) -> Int32

/// Finds the distributed method by its mangled name and runs it on `actor`, decoding its arguments with
/// `argumentDecoder` into slots of the given types and writing its result into `resultBuffer`.
@_silgen_name("swift_distributed_execute_target")
private func runDistributedTarget<Decoder: DistributedTargetInvocationDecoder>(
    on actor: AnyObject, _ targetName: UnsafePointer<UInt8>, _ targetNameLength: UInt, argumentDecoder: inout Decoder,
    argumentTypes: UnsafeRawPointer, resultBuffer: UnsafeRawPointer, substitutions: UnsafeRawPointer?,
    witnessTables: UnsafeRawPointer?, numWitnessTables: UInt
) async throws
