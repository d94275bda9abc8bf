/// The fast path of typed decoding: the binary opcodes CPython writes for plain data at protocols 2 to 5
/// are read into a flat tape of nodes that point into the pickle (no strings or arrays are made until a
/// `Decodable` type asks for them), and the Decoder walks the tape. Anything else (protocols 0 and 1,
/// globals, any malformed byte) returns nil, and the full ``PickleReader`` decides, with its errors.
struct PickleTape {
    enum Kind: UInt8 { case none, bool, int, bigInt, float, string, bytes, bytearray, list, tuple, dict, set, frozenset, alias }

    struct Node {
        var kind: Kind
        /// The int, the float's bits, the alias target, or the offset of text or bytes in the pickle.
        var payload: Int = 0
        /// The byte count of text or bytes, the item count of a container.
        var count: Int32 = 0
        var first: Int32 = -1
        var last: Int32 = -1
        var next: Int32 = -1
        /// Objects in the value, counting what aliases expand to.
        var size = 1
    }

    var nodes: [Node] = []
    let input: UnsafeRawBufferPointer

    /// Reads the pickle, or returns nil when it needs the full reader.
    static func read(_ input: UnsafeRawBufferPointer, limits: PickleDecoder.Limits) -> PickleTape? {
        var tape = PickleTape(input: input)
        guard let root = tape.parse(maxObjects: limits.maxObjects) else { return nil }
        tape.nodes.append(Node(kind: .alias, payload: Int(root)))  // the root, last
        return tape
    }

    private init(input: UnsafeRawBufferPointer) {
        self.input = input
        nodes.reserveCapacity(32)
    }

    private mutating func add(_ node: Node) -> Int32 {
        nodes.append(node)
        return Int32(nodes.count - 1)
    }

    private mutating func link(_ child: Int32, to parent: Int32) {
        nodes[Int(parent)].size += nodes[Int(child)].size
        if nodes[Int(parent)].last < 0 {
            nodes[Int(parent)].first = child
        } else {
            nodes[Int(nodes[Int(parent)].last)].next = child
        }
        nodes[Int(parent)].last = child
        nodes[Int(parent)].count += 1
    }

    private mutating func parse(maxObjects: Int) -> Int32? {
        var expanded = 0
        var stack: [Int32] = []
        var marks: [Int] = []
        var memo: [Int32] = []
        stack.reserveCapacity(16)
        marks.reserveCapacity(8)
        memo.reserveCapacity(16)
        var position = 0
        let count = input.count
        @inline(__always) func unsigned(_ width: Int) -> Int? {
            guard count - position >= width else { return nil }
            var value = 0
            for index in (0..<width).reversed() { value = value << 8 | Int(input[position + index]) }
            position += width
            return value
        }
        @inline(__always) func span(_ width: Int) -> (offset: Int, length: Int)? {
            guard let length = unsigned(width), length >= 0, length <= count - position else { return nil }
            defer { position += length }
            return (position, length)
        }
        @inline(__always) func memoIndex(_ index: Int) -> Bool {
            guard let top = stack.last, stack.count > (marks.last ?? 0), index <= memo.count else { return false }
            if index == memo.count { memo.append(top) } else { memo[index] = top }
            return true
        }
        guard count >= 2, input[0] == 0x80, input[1] >= 2, input[1] <= 5 else { return nil }
        position = 2
        while position < count {
            let opcode = input[position]
            position += 1
            var pushed: Node?
            switch opcode {
            case 0x95: guard unsigned(8) != nil else { return nil }
            case 0x94: guard memoIndex(memo.count) else { return nil }
            case 0x71: guard let index = unsigned(1), memoIndex(index) else { return nil }
            case 0x72: guard let index = unsigned(4), memoIndex(index) else { return nil }
            case 0x68, 0x6A:  // BINGET, LONG_BINGET
                guard let index = unsigned(opcode == 0x68 ? 1 : 4), index < memo.count else { return nil }
                let size = nodes[Int(memo[index])].size
                expanded += size
                pushed = Node(kind: .alias, payload: Int(memo[index]), size: size)
            case 0x4E: pushed = Node(kind: .none)
            case 0x88, 0x89: pushed = Node(kind: .bool, payload: opcode == 0x88 ? 1 : 0)
            case 0x4B: guard let value = unsigned(1) else { return nil }; pushed = Node(kind: .int, payload: value)
            case 0x4D: guard let value = unsigned(2) else { return nil }; pushed = Node(kind: .int, payload: value)
            case 0x4A: guard let value = unsigned(4) else { return nil }; pushed = Node(kind: .int, payload: Int(Int32(truncatingIfNeeded: value)))
            case 0x8A:
                guard let (offset, length) = span(1) else { return nil }
                if length <= 8 {
                    var value = 0
                    for index in (0..<length).reversed() { value = value << 8 | Int(input[offset + index]) }
                    let shift = 64 - 8 * length
                    pushed = Node(kind: .int, payload: length == 0 ? 0 : (shift == 0 ? value : (value << shift) >> shift))
                } else {
                    pushed = Node(kind: .bigInt, payload: offset, count: Int32(length))
                }
            case 0x47: guard let bits = unsigned(8) else { return nil }; pushed = Node(kind: .float, payload: Int(bitPattern: UInt(bitPattern: bits).byteSwapped))
            case 0x8C, 0x58, 0x8D:
                guard let (offset, length) = span(opcode == 0x8C ? 1 : (opcode == 0x58 ? 4 : 8)), length <= Int32.max else { return nil }
                pushed = Node(kind: .string, payload: offset, count: Int32(length))
            case 0x43, 0x42, 0x8E, 0x96:
                guard let (offset, length) = span(opcode == 0x43 ? 1 : (opcode == 0x42 ? 4 : 8)), length <= Int32.max else { return nil }
                pushed = Node(kind: opcode == 0x96 ? .bytearray : .bytes, payload: offset, count: Int32(length))
            case 0x7D: pushed = Node(kind: .dict)
            case 0x5D: pushed = Node(kind: .list)
            case 0x29: pushed = Node(kind: .tuple)
            case 0x8F: pushed = Node(kind: .set)
            case 0x28: marks.append(stack.count)
            case 0x85, 0x86, 0x87, 0x74, 0x91:  // TUPLE1-3, TUPLE, FROZENSET
                let start: Int
                if opcode >= 0x85 && opcode <= 0x87 {
                    start = stack.count - Int(opcode - 0x84)
                    guard start >= (marks.last ?? 0) else { return nil }
                } else {
                    guard let mark = marks.popLast() else { return nil }
                    start = mark
                }
                let container = add(Node(kind: opcode == 0x91 ? .frozenset : .tuple))
                for index in start..<stack.count { link(stack[index], to: container) }
                stack.removeSubrange(start...)
                stack.append(container)
            case 0x61, 0x73, 0x65, 0x75, 0x90:  // APPEND, SETITEM, APPENDS, SETITEMS, ADDITEMS
                let start: Int
                switch opcode {
                case 0x61: start = stack.count - 1
                case 0x73: start = stack.count - 2
                default:
                    guard let mark = marks.popLast() else { return nil }
                    start = mark
                }
                guard start >= 1, start - 1 >= (marks.last ?? 0) else { return nil }
                let target = stack[start - 1]
                let kind = nodes[Int(target)].kind
                let keyed = opcode == 0x73 || opcode == 0x75
                guard (kind == .dict && keyed) || (kind == .list && (opcode == 0x61 || opcode == 0x65)) || (kind == .set && opcode == 0x90),
                      !keyed || (stack.count - start) % 2 == 0 else { return nil }
                for index in start..<stack.count { link(stack[index], to: target) }
                stack.removeSubrange(start...)
            case 0x2E:  // STOP
                guard position == count, stack.count == 1, marks.isEmpty else { return nil }
                return stack[0]
            default:
                return nil
            }
            if let pushed {
                expanded += 1
                guard expanded <= maxObjects else { return nil }
                stack.append(add(pushed))
            }
        }
        return nil
    }
}

/// Decoding state shared by the containers of one tape.
final class PickleTapeDecoding {
    let tape: PickleTape
    let limits: PickleDecoder.Limits
    /// Nodes visited so far, bounded by the limits' object count (shared references count each time).
    @exclusivity(unchecked) var visited = 0

    init(tape: PickleTape, limits: PickleDecoder.Limits) {
        self.tape = tape
        self.limits = limits
    }

    /// The node an alias stands for.
    @inline(__always)
    func resolve(_ index: Int32) -> PickleTape.Node {
        var node = tape.nodes[Int(index)]
        while node.kind == .alias { node = tape.nodes[node.payload] }
        return node
    }

    func text(_ node: PickleTape.Node) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: tape.input[node.payload..<node.payload + Int(node.count)])
    }

    func visit(_ path: () -> [any CodingKey]) throws {
        visited += 1
        guard visited <= limits.maxObjects else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(), debugDescription: "pickle expands to more than \(limits.maxObjects) objects"))
        }
    }

    /// The ``PythonValue`` of a node, for `PythonValue` fields inside typed values.
    func value(_ index: Int32, depth: Int) throws -> PythonValue {
        try visit { [] }
        guard depth < limits.maxDepth else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "pickle nests containers deeper than \(limits.maxDepth)"))
        }
        let node = resolve(index)
        func children() throws -> [PythonValue] {
            var items: [PythonValue] = []
            var child = node.first
            while child >= 0 {
                items.append(try value(child, depth: depth + 1))
                child = tape.nodes[Int(child)].next
            }
            return items
        }
        switch node.kind {
        case .none, .alias: return .none
        case .bool: return .bool(node.payload != 0)
        case .int: return .int(node.payload)
        case .bigInt: return PythonInteger.value(fromLittleEndian: Array(text(node)))
        case .float: return .float(Double(bitPattern: UInt64(UInt(bitPattern: node.payload))))
        case .string:
            guard let string = String(validating: text(node), as: UTF8.self) else {
                throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "a str is not valid UTF-8"))
            }
            return .string(string)
        case .bytes: return .bytes(Array(text(node)))
        case .bytearray: return .bytearray(Array(text(node)))
        case .list: return .list(try children())
        case .tuple: return .tuple(try children())
        case .set: return .set(try children())
        case .frozenset: return .frozenset(try children())
        case .dict:
            let items = try children()
            return .dict(stride(from: 0, to: items.count - 1, by: 2).map { PythonDictItem(key: items[$0], value: items[$0 + 1]) })
        }
    }
}

struct PickleTapeDecoder: Decoder, SingleValueDecodingContainer {
    let state: PickleTapeDecoding
    let index: Int32
    let node: PickleTape.Node
    let depth: Int
    let parentPath: [any CodingKey]
    let key: (any CodingKey)?
    var codingPath: [any CodingKey] { key.map { parentPath + [$0] } ?? parentPath }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(state: PickleTapeDecoding, index: Int32, depth: Int, parentPath: [any CodingKey], key: (any CodingKey)?) throws {
        self.state = state
        self.index = index
        self.node = state.resolve(index)
        self.depth = depth
        self.parentPath = parentPath
        self.key = key
    }

    var typeName: String {
        switch node.kind {
        case .none, .alias: "NoneType"
        case .bool: "bool"
        case .int, .bigInt: "int"
        case .float: "float"
        case .string: "str"
        case .bytes: "bytes"
        case .bytearray: "bytearray"
        case .list: "list"
        case .tuple: "tuple"
        case .dict: "dict"
        case .set: "set"
        case .frozenset: "frozenset"
        }
    }

    func mismatch(_ type: Any.Type, _ detail: String? = nil) -> DecodingError {
        .typeMismatch(type, .init(codingPath: codingPath, debugDescription: detail ?? "expected \(type), found a Python \(typeName)"))
    }

    /// The decoder of an item of this container; `path` is this decoder's coding path, made once per container.
    func child(_ index: Int32, key: any CodingKey, path: [any CodingKey]) throws -> PickleTapeDecoder {
        try state.visit { path + [key] }
        return try PickleTapeDecoder(state: state, index: index, depth: depth + 1, parentPath: path, key: key)
    }

    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        if T.self == [UInt8].self, node.kind == .bytes || node.kind == .bytearray {
            return unsafeBitCast(Array(state.text(node)), to: T.self)
        }
        if T.self == PythonValue.self { return unsafeBitCast(try state.value(index, depth: depth), to: T.self) }
        return try T(from: self)
    }

    private func nested() throws {
        guard depth < state.limits.maxDepth else {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "pickle nests containers deeper than \(state.limits.maxDepth)"))
        }
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard node.kind == .dict else { throw mismatch([String: Any].self, "expected a dict, found a Python \(typeName)") }
        try nested()
        return KeyedDecodingContainer(PickleTapeKeyedDecoder<Key>(decoder: self))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        switch node.kind {
        case .list, .tuple, .set, .frozenset:
            try nested()
            return PickleTapeUnkeyedDecoder(decoder: self, cursor: node.first, count: Int(node.count))
        case .bytes, .bytearray:
            return PythonUnkeyedDecoder(items: state.text(node).map { .int(Int($0)) }, codingPath: codingPath)
        default:
            throw mismatch([Any].self, "expected a list or tuple, found a Python \(typeName)")
        }
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }

    func decodeNil() -> Bool { node.kind == .none }

    func decode(_ type: Bool.Type) throws -> Bool {
        guard node.kind == .bool else { throw mismatch(type) }
        return node.payload != 0
    }

    func decode(_ type: String.Type) throws -> String {
        guard node.kind == .string else { throw mismatch(type) }
        let bytes = state.text(node)
        if bytes.allSatisfy({ $0 < 0x80 }) { return String(decoding: bytes, as: UTF8.self) }
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "a str is not valid UTF-8"))
        }
        return string
    }

    func decode(_ type: Double.Type) throws -> Double {
        switch node.kind {
        case .float: return Double(bitPattern: UInt64(UInt(bitPattern: node.payload)))
        case .int:
            guard let exact = Double(exactly: node.payload) else { throw mismatch(type, "the int \(node.payload) has no exact Double") }
            return exact
        default: throw mismatch(type)
        }
    }

    func decode(_ type: Float.Type) throws -> Float { Float(try decode(Double.self)) }

    func integer<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        switch node.kind {
        case .int:
            guard let exact = T(exactly: node.payload) else { throw mismatch(type, "the int \(node.payload) does not fit in \(T.self)") }
            return exact
        case .bigInt:
            let bytes = state.text(node)
            if T.bitWidth >= 64, !T.isSigned, bytes.count == 9, bytes[8] == 0 {
                var result: UInt64 = 0
                for byte in bytes[..<8].reversed() { result = result << 8 | UInt64(byte) }
                if let exact = T(exactly: result) { return exact }
            }
            let text = PythonInteger.decimal(fromLittleEndian: Array(bytes))
            throw mismatch(type, "the int \(text) does not fit in \(T.self)")
        default:
            throw mismatch(type)
        }
    }

    func decode(_ type: Int.Type) throws -> Int { try integer(type) }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer(type) }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer(type) }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer(type) }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer(type) }
    func decode(_ type: UInt.Type) throws -> UInt { try integer(type) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(type) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(type) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(type) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(type) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decodeValue(type) }
}

struct PickleTapeKeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let decoder: PickleTapeDecoder
    let codingPath: [any CodingKey]

    init(decoder: PickleTapeDecoder) {
        self.decoder = decoder
        self.codingPath = decoder.codingPath
    }

    /// The value node for `key`, or nil.
    private func find(_ key: Key) -> Int32? {
        let state = decoder.state
        let wanted = key.stringValue
        var child = decoder.node.first
        while child >= 0 {
            let value = state.tape.nodes[Int(child)].next
            guard value >= 0 else { return nil }
            let keyNode = state.resolve(child)
            switch keyNode.kind {
            case .string:
                let bytes = state.text(keyNode)
                let utf8 = wanted.utf8
                let same = utf8.withContiguousStorageIfAvailable { $0.elementsEqual(bytes) } ?? utf8.elementsEqual(bytes)
                if same { return value }
            case .int:
                if key.intValue == keyNode.payload { return value }
            default:
                break
            }
            child = state.tape.nodes[Int(value)].next
        }
        return nil
    }

    var allKeys: [Key] {
        var keys: [Key] = []
        var child = decoder.node.first
        while child >= 0 {
            let keyNode = decoder.state.resolve(child)
            switch keyNode.kind {
            case .string:
                if let text = String(validating: decoder.state.text(keyNode), as: UTF8.self), let key = Key(stringValue: text) { keys.append(key) }
            case .int:
                if let key = Key(intValue: keyNode.payload) ?? Key(stringValue: String(keyNode.payload)) { keys.append(key) }
            default: break
            }
            let value = decoder.state.tape.nodes[Int(child)].next
            guard value >= 0 else { break }
            child = decoder.state.tape.nodes[Int(value)].next
        }
        return keys
    }

    func contains(_ key: Key) -> Bool { find(key) != nil }

    private func child(_ key: Key) throws -> PickleTapeDecoder {
        guard let index = find(key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "the dict has no key '\(key.stringValue)'"))
        }
        return try decoder.child(index, key: key, path: codingPath)
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        guard let index = find(key) else { return true }
        return decoder.state.resolve(index).kind == .none
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try child(key).decode(type) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try child(key).decode(type) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try child(key).decode(type) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try child(key).decode(type) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try child(key).decode(type) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try child(key).decode(type) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try child(key).decodeValue(type) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try child(key).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer { try child(key).unkeyedContainer() }
    func superDecoder() throws -> any Decoder { try child(Key(stringValue: "super")!) }
    func superDecoder(forKey key: Key) throws -> any Decoder { try child(key) }
}

struct PickleTapeUnkeyedDecoder: UnkeyedDecodingContainer {
    let decoder: PickleTapeDecoder
    var cursor: Int32
    let total: Int
    var currentIndex = 0
    let codingPath: [any CodingKey]
    var count: Int? { total }
    var isAtEnd: Bool { cursor < 0 }

    init(decoder: PickleTapeDecoder, cursor: Int32, count: Int) {
        self.decoder = decoder
        self.cursor = cursor
        self.total = count
        self.codingPath = decoder.codingPath
    }

    private mutating func next() throws -> PickleTapeDecoder {
        guard cursor >= 0 else {
            throw DecodingError.valueNotFound(Any.self, .init(codingPath: codingPath, debugDescription: "the sequence has only \(total) items"))
        }
        let child = try decoder.child(cursor, key: PythonCodingKey(intValue: currentIndex), path: codingPath)
        cursor = decoder.state.tape.nodes[Int(cursor)].next
        currentIndex += 1
        return child
    }

    mutating func decodeNil() throws -> Bool {
        guard cursor >= 0, decoder.state.resolve(cursor).kind == .none else { return false }
        cursor = decoder.state.tape.nodes[Int(cursor)].next
        currentIndex += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try next().decode(type) }
    mutating func decode(_ type: String.Type) throws -> String { try next().decode(type) }
    mutating func decode(_ type: Double.Type) throws -> Double { try next().decode(type) }
    mutating func decode(_ type: Int.Type) throws -> Int { try next().decode(type) }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decodeValue(type) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try next().container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next().unkeyedContainer() }
    mutating func superDecoder() throws -> any Decoder { try next() }
}
