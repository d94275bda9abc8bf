/// Encodes `Encodable` Swift values as Python pickles that CPython loads into the natural Python types.
///
/// A struct (or a `[String: T]`) becomes a dict with string keys, an array a list, nil `None`, `[UInt8]`
/// `bytes`, integers `int`, `Double` and `Float` `float`, `String` `str`. A ``PythonValue`` inside the
/// value is written as the Python object it stands for, so tuples, sets and the other Python types are
/// available too.
public struct PickleEncoder: Sendable {
    /// The protocol CPython's `Connection.send` uses by default: `pickle.DEFAULT_PROTOCOL`, which is 4
    /// from Python 3.8 on (and readable by 3.4 and later).
    public static let defaultProtocol = 4
    /// The newest protocol written and read here.
    public static let highestProtocol = 5

    /// The pickle protocol written, 0 to 5.
    public let protocolVersion: Int

    /// Creates an encoder for a protocol.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` when `protocolVersion` is not 0 to 5.
    public init(protocolVersion: Int = PickleEncoder.defaultProtocol) throws {
        guard (0...Self.highestProtocol).contains(protocolVersion) else {
            throw MultiprocessingError(.invalidArgument, "pickle protocol \(protocolVersion) is not between 0 and \(Self.highestProtocol)")
        }
        self.protocolVersion = protocolVersion
    }

    /// Encodes a value as a pickle.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the value's `encode(to:)` throws or
    ///   encodes nothing.
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        var writer = PickleWriter(version: protocolVersion)
        writer.write(try Self.pythonValue(of: value))
        return writer.output
    }

    /// Encodes a value, appending the pickle to `output`, as ``encode(_:)`` does.
    public func encode<T: Encodable>(_ value: T, appendingTo output: inout [UInt8]) throws {
        var writer = PickleWriter(version: protocolVersion, output: output)
        output = []
        writer.write(try Self.pythonValue(of: value))
        output = writer.output
    }

    /// The Python object a value is pickled as.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the value's `encode(to:)` throws or
    ///   encodes nothing.
    public static func pythonValue<T: Encodable>(of value: T) throws -> PythonValue {
        if let value = value as? PythonValue { return value }
        do {
            return try PythonNode.encode(value, codingPath: []).value
        } catch let error as EncodingError {
            if case .invalidValue(_, let context) = error {
                throw MultiprocessingError(.transport, "cannot encode \(T.self) as a pickle: \(context.debugDescription)")
            }
            throw MultiprocessingError(.transport, "cannot encode \(T.self) as a pickle: \(error)")
        }
    }
}

/// A value under construction: containers are shared references while encode(to:) fills them.
final class PythonNode {
    enum Content {
        case unset
        case value(PythonValue)
        case list([PythonNode])
        case dict([(key: PythonValue, node: PythonNode)])
    }

    var content: Content = .unset

    static func encode<T: Encodable>(_ value: T, codingPath: [any CodingKey]) throws -> PythonNode {
        let node = PythonNode()
        if let bytes = value as? [UInt8] {
            node.content = .value(.bytes(bytes))
        } else if let python = value as? PythonValue {
            node.content = .value(python)
        } else {
            try value.encode(to: PythonValueEncoder(node: node, codingPath: codingPath))
        }
        return node
    }

    var value: PythonValue {
        get throws {
            switch content {
            case .unset:
                throw EncodingError.invalidValue((), .init(codingPath: [], debugDescription: "a value encoded nothing"))
            case .value(let value): return value
            case .list(let nodes): return .list(try nodes.map { try $0.value })
            case .dict(let items): return .dict(try items.map { PythonDictItem(key: $0.key, value: try $0.node.value) })
            }
        }
    }
}

struct PythonValueEncoder: Encoder, SingleValueEncodingContainer {
    let node: PythonNode
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if case .dict = node.content {} else { node.content = .dict([]) }
        return KeyedEncodingContainer(PythonKeyedEncoder<Key>(node: node, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if case .list = node.content {} else { node.content = .list([]) }
        return PythonUnkeyedEncoder(node: node, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { self }

    private func set(_ value: PythonValue) { node.content = .value(value) }

    func encodeNil() { set(.none) }
    func encode(_ value: Bool) { set(.bool(value)) }
    func encode(_ value: String) { set(.string(value)) }
    func encode(_ value: Double) { set(.float(value)) }
    func encode(_ value: Float) { set(.float(Double(value))) }
    func encode(_ value: Int) { set(.int(value)) }
    func encode(_ value: Int8) { set(.int(Int(value))) }
    func encode(_ value: Int16) { set(.int(Int(value))) }
    func encode(_ value: Int32) { set(.int(Int(value))) }
    func encode(_ value: Int64) { set(.int(Int(value))) }
    func encode(_ value: UInt) { encode(UInt64(value)) }
    func encode(_ value: UInt8) { set(.int(Int(value))) }
    func encode(_ value: UInt16) { set(.int(Int(value))) }
    func encode(_ value: UInt32) { set(.int(Int(value))) }
    func encode(_ value: UInt64) {
        if let small = Int(exactly: value) { return set(.int(small)) }
        var bytes: [UInt8] = (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
        bytes.append(0)
        set(.bigInt(bytes))
    }

    func encode<T: Encodable>(_ value: T) throws {
        let encoded = try PythonNode.encode(value, codingPath: codingPath)
        node.content = encoded.content
    }
}

struct PythonKeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let node: PythonNode
    let codingPath: [any CodingKey]

    private func add(_ key: Key) -> PythonNode {
        let child = PythonNode()
        guard case .dict(var items) = node.content else { return child }
        node.content = .unset
        let pythonKey: PythonValue = key.intValue.map { .int($0) } ?? .string(key.stringValue)
        items.append((pythonKey, child))
        node.content = .dict(items)
        return child
    }

    private func add(_ value: PythonValue, for key: Key) {
        add(key).content = .value(value)
    }

    mutating func encodeNil(forKey key: Key) { add(.none, for: key) }
    mutating func encode(_ value: Bool, forKey key: Key) { add(.bool(value), for: key) }
    mutating func encode(_ value: String, forKey key: Key) { add(.string(value), for: key) }
    mutating func encode(_ value: Double, forKey key: Key) { add(.float(value), for: key) }
    mutating func encode(_ value: Int, forKey key: Key) { add(.int(value), for: key) }

    // A nil optional is written as None rather than left out, so that a Python peer finds every key.
    mutating func encodeIfPresent(_ value: Bool?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: String?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Double?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Float?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Int?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Int8?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Int16?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Int32?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Int64?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: UInt?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: UInt8?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: UInt16?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: UInt32?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: UInt64?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent<T: Encodable>(_ value: T?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }

    private mutating func encodeOptional<T: Encodable>(_ value: T?, forKey key: Key) throws {
        if let value { try encode(value, forKey: key) } else { add(.none, for: key) }
    }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        let child = add(key)
        child.content = try PythonNode.encode(value, codingPath: codingPath + [key]).content
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        PythonValueEncoder(node: add(key), codingPath: codingPath + [key]).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        PythonValueEncoder(node: add(key), codingPath: codingPath + [key]).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        PythonValueEncoder(node: add(Key(stringValue: "super")!), codingPath: codingPath)
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        PythonValueEncoder(node: add(key), codingPath: codingPath + [key])
    }
}

struct PythonUnkeyedEncoder: UnkeyedEncodingContainer {
    let node: PythonNode
    let codingPath: [any CodingKey]
    var count: Int {
        if case .list(let nodes) = node.content { return nodes.count }
        return 0
    }

    private func add() -> PythonNode {
        let child = PythonNode()
        guard case .list(var nodes) = node.content else { return child }
        node.content = .unset
        nodes.append(child)
        node.content = .list(nodes)
        return child
    }

    private func add(_ value: PythonValue) { add().content = .value(value) }

    mutating func encodeNil() { add(.none) }
    mutating func encode(_ value: Bool) { add(.bool(value)) }
    mutating func encode(_ value: String) { add(.string(value)) }
    mutating func encode(_ value: Double) { add(.float(value)) }
    mutating func encode(_ value: Int) { add(.int(value)) }

    mutating func encode<T: Encodable>(_ value: T) throws {
        let child = add()
        child.content = try PythonNode.encode(value, codingPath: codingPath + [PythonCodingKey(intValue: count - 1)]).content
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        PythonValueEncoder(node: add(), codingPath: codingPath).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        PythonValueEncoder(node: add(), codingPath: codingPath).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder { PythonValueEncoder(node: add(), codingPath: codingPath) }
}
