#if canImport(Glibc)
import Glibc
#endif

/// The fast path of typed decoding: the binary opcodes CPython writes for plain data at protocols 2 to 5
/// are read into a flat tape of nodes that point into the pickle (no strings or arrays are made until a
/// `Decodable` type asks for them), and the Decoder walks the tape. Anything else (protocols 0 and 1,
/// globals, any malformed byte) returns nil, and the full ``PickleReader`` decides, with its errors.
///
/// One tape is one allocation for its object and one for its nodes; the decoders that walk it are three
/// words each (so that passing one as `any Decoder` allocates nothing), and coding paths are kept as a
/// chain of entries in the tape, turned into `[any CodingKey]` only for an error or when asked for.
final class PickleTape {
    enum Kind: UInt8 { case none, bool, int, bigInt, float, string, bytes, bytearray, list, tuple, dict, set, frozenset, alias }

    struct Node {
        var kind: Kind
        /// The byte count of text or bytes, the item count of a container.
        var count: Int32 = 0
        var first: Int32 = -1
        var last: Int32 = -1
        var next: Int32 = -1
        /// The int, the float's bits, the alias target, or the offset of text or bytes in the pickle.
        var payload: Int = 0
        /// Objects in the value, counting what aliases expand to.
        var size = 1

        init(kind: Kind, payload: Int = 0, count: Int32 = 0, size: Int = 1) {
            self.kind = kind
            self.payload = payload
            self.count = count
            self.size = size
        }
    }

    /// A step of a coding path: the entry of the container and the key in it.
    struct PathEntry {
        let parent: Int32
        let key: any CodingKey
    }

    private(set) var nodes: UnsafeMutablePointer<Node>
    private var capacity: Int
    private(set) var nodeCount = 0
    private(set) var input = UnsafeRawBufferPointer(start: nil, count: 0)
    /// Whether the tape is in a call (between ``parsed(_:limits:)`` and ``recycle(_:)``).
    var inCall: Bool { input.baseAddress != nil }
    private(set) var limits = PickleDecoder.Limits()
    /// The root node (resolved).
    private(set) var root: Int32 = -1
    /// Nodes visited so far, bounded by the limits' object count (shared references count each time).
    @exclusivity(unchecked) var visited = 0
    /// The coding path entries of the decoders made so far.
    @exclusivity(unchecked) var paths: [PathEntry] = []
    /// The dict last searched by key, and the key slot after the one found: structs read their fields
    /// in the order Python wrote them, so the next search usually starts at its key.
    @exclusivity(unchecked) var hintDict: Int32 = -1
    @exclusivity(unchecked) var hintKey: Int32 = -1
    /// The boxes of keyed containers, kept for the next call (see ``PickleBoxCache``).
    @exclusivity(unchecked) var boxes = PickleBoxCache<PickleDecodingFrame>()

    static let initialCapacity = 256
    /// Past this many nodes, a kept tape's node buffer shrinks back when its call ends.
    static let keptCapacity = 16 * 1024

    private init() {
        capacity = Self.initialCapacity
        nodes = .allocate(capacity: capacity)
    }

    deinit {
        nodes.deallocate()
        boxes.deallocate()
    }

    /// Each thread's tape kept from its last decode (see ``PickleThreadSlot``).
    private static let kept = PickleThreadSlot<PickleTape>()

    /// This thread's kept tape (or a new one) with the pickle read into it, or nil when the pickle needs
    /// the full reader. The caller hands the tape back with ``recycle(_:)`` when its call ends; the tape
    /// is good only until then. (No closure and no generic result here, so a decode of `T` asks for no
    /// `Optional<T>` metadata.)
    @inline(__always)
    static func parsed(_ input: UnsafeRawBufferPointer, limits: PickleDecoder.Limits) -> PickleTape? {
        guard input.count >= 3, input.count < Int32.max, input[0] == 0x80, input[1] >= 2, input[1] <= 5 else { return nil }
        var tape = kept.take() ?? PickleTape()
        tape.input = input
        tape.limits = limits
        guard let root = tape.parse() else {
            recycle(&tape)
            return nil
        }
        tape.root = tape.resolve(root)
        return tape
    }

    /// Ends the call of a tape from ``parsed(_:limits:)`` and keeps it for this thread's next call.
    @inline(__always)
    static func recycle(_ tape: inout PickleTape) {
        tape.finish()
        kept.keep(&tape)
    }

    /// Ends a call: forgets the pickle and detaches the cached containers, so that the tape is
    /// referenced only by whoever still holds one of its decoders.
    private func finish() {
        input = UnsafeRawBufferPointer(start: nil, count: 0)
        nodeCount = 0
        root = -1
        visited = 0
        hintDict = -1
        hintKey = -1
        if !paths.isEmpty { paths.removeAll(keepingCapacity: paths.count < 4096) }
        boxes.detachFrames { $0.detach() }
        if capacity > Self.keptCapacity {
            nodes.deallocate()
            capacity = Self.initialCapacity
            nodes = .allocate(capacity: capacity)
        }
    }

    /// The keyed container of the dict `decoder` is on, in a reused box when one is free.
    @inline(__always)
    func keyedContainer<Key: CodingKey>(_: Key.Type, _ decoder: PickleTapeDecoder) -> KeyedDecodingContainer<Key> {
        if let box = boxes.reuse(Key.self, { $0.attach(decoder) }) {
            return reusedContainer(box, as: KeyedDecodingContainer<Key>.self)
        }
        let frame = PickleDecodingFrame(decoder: decoder)
        let container = KeyedDecodingContainer(PickleTapeKeyedDecoder<Key>(frame: frame))
        boxes.keep(unsafeBitCast(container, to: AnyObject.self), frame: frame, of: Key.self)
        return container
    }

    @inline(__always)
    private func add(_ node: Node) -> Int32 {
        if nodeCount == capacity {
            let grown = UnsafeMutablePointer<Node>.allocate(capacity: capacity * 2)
            grown.moveInitialize(from: nodes, count: nodeCount)
            nodes.deallocate()
            nodes = grown
            capacity *= 2
        }
        (nodes + nodeCount).initialize(to: node)
        // (No overflow checks: a pickle is shorter than Int32.max bytes and makes at most a node per byte.)
        nodeCount &+= 1
        return Int32(truncatingIfNeeded: nodeCount &- 1)
    }

    @inline(__always)
    private func link(_ child: Int32, to parent: Int32) {
        nodes[Int(parent)].size += nodes[Int(child)].size
        let last = nodes[Int(parent)].last
        if last < 0 { nodes[Int(parent)].first = child } else { nodes[Int(last)].next = child }
        nodes[Int(parent)].last = child
        nodes[Int(parent)].count &+= 1  // (at most a node per byte of the pickle, which is shorter than Int32.max)
    }

    /// The little-endian unsigned integer of `width` bytes at `position`, which moves past it.
    @inline(__always)
    private static func unsigned(_ input: UnsafeRawBufferPointer, _ position: inout Int, _ width: Int) -> Int? {
        guard input.count - position >= width else { return nil }
        let value: Int
        switch width {
        case 1: value = Int(input[position])
        case 2: value = Int(UInt16(littleEndian: input.loadUnaligned(fromByteOffset: position, as: UInt16.self)))
        case 4: value = Int(UInt32(littleEndian: input.loadUnaligned(fromByteOffset: position, as: UInt32.self)))
        default: value = Int(bitPattern: UInt(UInt64(littleEndian: input.loadUnaligned(fromByteOffset: position, as: UInt64.self))))
        }
        position += width
        return value
    }

    private func parse() -> Int32? {
        // The parser's stack, marks and memo start on the thread's stack and move to the heap if they grow.
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: 3 * ScratchStack.initialCapacity) { scratch in
            var stack = ScratchStack(scratch.baseAddress!)
            var marks = ScratchStack(scratch.baseAddress! + ScratchStack.initialCapacity)
            var memo = ScratchStack(scratch.baseAddress! + 2 * ScratchStack.initialCapacity)
            defer { stack.release(); marks.release(); memo.release() }
            return parse(stack: &stack, marks: &marks, memo: &memo)
        }
    }

    private func parse(stack: inout ScratchStack, marks: inout ScratchStack, memo: inout ScratchStack) -> Int32? {
        let input = self.input
        let count = input.count
        let maxObjects = limits.maxObjects
        var expanded = 0
        var position = 2
        while position < count {
            let opcode = input[position]
            position &+= 1
            // The two most common opcodes of protocol 4 first: MEMOIZE and SHORT_BINUNICODE.
            if opcode == 0x94 {
                guard stack.count > Int(marks.last ?? 0) else { return nil }
                memo.append(stack[stack.count &- 1])
                continue
            }
            if opcode == 0x8C {
                guard position < count else { return nil }
                let length = Int(input[position])
                position &+= 1
                guard length <= count &- position else { return nil }
                expanded += 1
                guard expanded <= maxObjects else { return nil }
                stack.append(add(Node(kind: .string, payload: position, count: Int32(truncatingIfNeeded: length))))
                position &+= length
                continue
            }
            var pushed: Node
            switch opcode {
            case 0x95:  // FRAME: a length hint only
                guard Self.unsigned(input, &position, 8) != nil else { return nil }
                continue
            case 0x94, 0x71, 0x72:  // MEMOIZE, BINPUT, LONG_BINPUT
                let index: Int
                if opcode == 0x94 {
                    index = memo.count
                } else {
                    guard let value = Self.unsigned(input, &position, opcode == 0x71 ? 1 : 4) else { return nil }
                    index = value
                }
                guard let top = stack.last, stack.count > Int(marks.last ?? 0), index <= memo.count else { return nil }
                if index == memo.count { memo.append(top) } else { memo[index] = top }
                continue
            case 0x68, 0x6A:  // BINGET, LONG_BINGET
                guard let index = Self.unsigned(input, &position, opcode == 0x68 ? 1 : 4), index < memo.count else { return nil }
                let size = nodes[Int(memo[index])].size
                expanded += size
                pushed = Node(kind: .alias, payload: Int(memo[index]), size: size)
            case 0x4E: pushed = Node(kind: .none)
            case 0x88, 0x89: pushed = Node(kind: .bool, payload: opcode == 0x88 ? 1 : 0)
            case 0x4B:
                guard let value = Self.unsigned(input, &position, 1) else { return nil }
                pushed = Node(kind: .int, payload: value)
            case 0x4D:
                guard let value = Self.unsigned(input, &position, 2) else { return nil }
                pushed = Node(kind: .int, payload: value)
            case 0x4A:
                guard let value = Self.unsigned(input, &position, 4) else { return nil }
                pushed = Node(kind: .int, payload: Int(Int32(truncatingIfNeeded: value)))
            case 0x8A:  // LONG1
                guard let length = Self.unsigned(input, &position, 1), length <= count - position else { return nil }
                let offset = position
                position += length
                if length <= 8 {
                    var value = 0
                    for index in (0..<length).reversed() { value = value << 8 | Int(input[offset + index]) }
                    let shift = 64 - 8 * length
                    pushed = Node(kind: .int, payload: length == 0 ? 0 : (shift == 0 ? value : (value << shift) >> shift))
                } else {
                    pushed = Node(kind: .bigInt, payload: offset, count: Int32(length))
                }
            case 0x47:  // BINFLOAT, big-endian
                guard count - position >= 8 else { return nil }
                let bits = UInt64(bigEndian: input.loadUnaligned(fromByteOffset: position, as: UInt64.self))
                position += 8
                pushed = Node(kind: .float, payload: Int(bitPattern: UInt(bits)))
            case 0x8C, 0x58, 0x8D, 0x43, 0x42, 0x8E, 0x96:  // text and bytes
                let width = opcode == 0x8C || opcode == 0x43 ? 1 : (opcode == 0x58 || opcode == 0x42 ? 4 : 8)
                guard let length = Self.unsigned(input, &position, width), length >= 0, length <= count - position,
                      length <= Int32.max else { return nil }
                let kind: Kind = opcode == 0x8C || opcode == 0x58 || opcode == 0x8D ? .string : (opcode == 0x96 ? .bytearray : .bytes)
                pushed = Node(kind: kind, payload: position, count: Int32(length))
                position += length
            case 0x7D: pushed = Node(kind: .dict)
            case 0x5D: pushed = Node(kind: .list)
            case 0x29: pushed = Node(kind: .tuple)
            case 0x8F: pushed = Node(kind: .set)
            case 0x28:
                marks.append(Int32(stack.count))
                continue
            case 0x85, 0x86, 0x87, 0x74, 0x91:  // TUPLE1-3, TUPLE, FROZENSET
                let start: Int
                if opcode >= 0x85 && opcode <= 0x87 {
                    start = stack.count - Int(opcode - 0x84)
                    guard start >= Int(marks.last ?? 0) else { return nil }
                } else {
                    guard let mark = marks.popLast() else { return nil }
                    start = Int(mark)
                }
                let container = add(Node(kind: opcode == 0x91 ? .frozenset : .tuple))
                for index in start..<stack.count { link(stack[index], to: container) }
                stack.removeLast(from: start)
                stack.append(container)
                continue
            case 0x61, 0x73, 0x65, 0x75, 0x90:  // APPEND, SETITEM, APPENDS, SETITEMS, ADDITEMS
                let start: Int
                switch opcode {
                case 0x61: start = stack.count - 1
                case 0x73: start = stack.count - 2
                default:
                    guard let mark = marks.popLast() else { return nil }
                    start = Int(mark)
                }
                guard start >= 1, start - 1 >= Int(marks.last ?? 0) else { return nil }
                let target = stack[start - 1]
                let kind = nodes[Int(target)].kind
                let keyed = opcode == 0x73 || opcode == 0x75
                guard (kind == .dict && keyed) || (kind == .list && (opcode == 0x61 || opcode == 0x65)) || (kind == .set && opcode == 0x90),
                      !keyed || (stack.count - start) % 2 == 0 else { return nil }
                for index in start..<stack.count { link(stack[index], to: target) }
                stack.removeLast(from: start)
                continue
            case 0x2E:  // STOP
                guard position == count, stack.count == 1, marks.count == 0 else { return nil }
                return stack[0]
            default:
                return nil
            }
            expanded += 1
            guard expanded <= maxObjects else { return nil }
            stack.append(add(pushed))
        }
        return nil
    }

    /// The node an alias stands for.
    @inline(__always)
    func resolve(_ index: Int32) -> Int32 {
        var index = index
        while nodes[Int(index)].kind == .alias { index = Int32(nodes[Int(index)].payload) }
        return index
    }

    @inline(__always)
    func text(_ node: Int32) -> UnsafeRawBufferPointer {
        let node = nodes[Int(node)]
        return UnsafeRawBufferPointer(rebasing: input[node.payload..<node.payload + Int(node.count)])
    }

    /// Adds a coding path step and returns its entry.
    func path(_ parent: Int32, _ key: any CodingKey) -> Int32 {
        paths.append(PathEntry(parent: parent, key: key))
        return Int32(paths.count - 1)
    }

    /// The coding path of an entry (-1 is the root's, empty).
    func codingPath(_ entry: Int32) -> [any CodingKey] {
        var keys: [any CodingKey] = []
        var entry = entry
        while entry >= 0 {
            keys.append(paths[Int(entry)].key)
            entry = paths[Int(entry)].parent
        }
        return keys.reversed()
    }

    @inline(__always)
    func visit(_ path: @autoclosure () -> [any CodingKey]) throws {
        visited += 1
        guard visited <= limits.maxObjects else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(), debugDescription: "pickle expands to more than \(limits.maxObjects) objects"))
        }
    }

    func typeName(_ node: Int32) -> String {
        switch nodes[Int(node)].kind {
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

    // MARK: Scalars, shared by the decoders and the containers' direct paths

    /// A scalar's value, or nil when the node is of another Python type; `fail` makes the error.
    @inline(__always)
    func string(_ node: Int32, _ path: @autoclosure () -> [any CodingKey]) throws -> String? {
        guard nodes[Int(node)].kind == .string else { return nil }
        let bytes = text(node)
        var ascii = true
        for byte in bytes where byte >= 0x80 { ascii = false; break }
        if ascii {
            // Copied without a second validation: a short ASCII string is made in place (as a small
            // string), which String(decoding:as:) would validate again first.
            return String(unsafeUninitializedCapacity: bytes.count) { buffer in
                if !bytes.isEmpty { UnsafeMutableRawBufferPointer(buffer).copyMemory(from: bytes) }
                return bytes.count
            }
        }
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(), debugDescription: "a str is not valid UTF-8"))
        }
        return string
    }

    @inline(__always)
    func double(_ node: Int32, _ path: @autoclosure () -> [any CodingKey]) throws -> Double? {
        let node = nodes[Int(node)]
        switch node.kind {
        case .float: return Double(bitPattern: UInt64(UInt(bitPattern: node.payload)))
        case .int:
            guard let exact = Double(exactly: node.payload) else {
                throw DecodingError.typeMismatch(Double.self, .init(codingPath: path(), debugDescription: "the int \(node.payload) has no exact Double"))
            }
            return exact
        default: return nil
        }
    }

    @inline(__always)
    func integer<T: FixedWidthInteger>(_ type: T.Type, _ node: Int32, _ path: @autoclosure () -> [any CodingKey]) throws -> T? {
        let value = nodes[Int(node)]
        switch value.kind {
        case .int:
            if let exact = T(exactly: value.payload) { return exact }
            throw DecodingError.typeMismatch(type, .init(codingPath: path(), debugDescription: "the int \(value.payload) does not fit in \(T.self)"))
        case .bigInt:
            let bytes = text(node)
            if T.bitWidth >= 64, !T.isSigned, bytes.count == 9, bytes[8] == 0 {
                var result: UInt64 = 0
                for byte in bytes[..<8].reversed() { result = result << 8 | UInt64(byte) }
                if let exact = T(exactly: result) { return exact }
            }
            let text = PythonInteger.decimal(fromLittleEndian: Array(bytes))
            throw DecodingError.typeMismatch(type, .init(codingPath: path(), debugDescription: "the int \(text) does not fit in \(T.self)"))
        default:
            return nil
        }
    }

    @inline(__always)
    func bool(_ node: Int32) -> Bool? {
        let node = nodes[Int(node)]
        return node.kind == .bool ? node.payload != 0 : nil
    }

    func mismatch(_ type: Any.Type, _ node: Int32, _ path: [any CodingKey]) -> DecodingError {
        .typeMismatch(type, .init(codingPath: path, debugDescription: "expected \(type), found a Python \(typeName(node))"))
    }

    /// The items of the list, tuple, set or frozenset `node`, each decoded by `item` from its node and
    /// position (nil when the node is of another Python type); coding paths are made from `path` only for
    /// an error.
    @inline(__always)
    func array<E>(_ node: Int32, depth: Int32, path: () -> [any CodingKey], _ item: (Int32, Int) throws -> E?) throws -> [E] {
        let value = nodes[Int(node)]
        switch value.kind {
        case .list, .tuple, .set, .frozenset: break
        default:
            throw DecodingError.typeMismatch([Any].self, .init(codingPath: path(), debugDescription: "expected a list or tuple, found a Python \(typeName(node))"))
        }
        guard Int(depth) < limits.maxDepth else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(), debugDescription: "pickle nests containers deeper than \(limits.maxDepth)"))
        }
        // (No closure is made per call or per item here: one that captures the path would be allocated.)
        var items: [E] = []
        items.reserveCapacity(Int(value.count))
        var cursor = value.first
        while cursor >= 0 {
            let position = items.count
            try visit(path() + [PythonCodingKey(intValue: position)])
            let element = resolve(cursor)
            guard let decoded = try item(element, position) else {
                throw mismatch(E.self, element, path() + [PythonCodingKey(intValue: position)])
            }
            items.append(decoded)
            cursor = nodes[Int(cursor)].next
        }
        return items
    }

    /// Whether `T` is one of the types decoded directly by ``direct(_:_:depth:path:)``: strings, numbers,
    /// booleans, arrays of them, bytes and ``PythonValue``. (A check of the type alone, so that unspecialized
    /// generic code asks for no `Optional<T>` metadata.)
    @inline(__always)
    static func decodesDirectly<T>(_ type: T.Type) -> Bool {
        T.self == String.self || T.self == Int.self || T.self == Double.self || T.self == Bool.self
            || T.self == [String].self || T.self == [Int].self || T.self == [Double].self || T.self == [UInt8].self
            || T.self == PythonValue.self
    }

    /// `node` decoded as `T`, one of the types for which ``decodesDirectly(_:)`` is true.
    @inline(__always)
    func direct<T>(_ type: T.Type, _ node: Int32, depth: Int32, path: () -> [any CodingKey]) throws -> T {
        func scalar<S>(_ value: S?) throws -> T {
            guard let value else { throw mismatch(S.self, node, path()) }
            return unsafeBitCast(value, to: T.self)
        }
        if T.self == String.self { return try scalar(string(node, path())) }
        if T.self == Int.self { return try scalar(integer(Int.self, node, path())) }
        if T.self == Double.self { return try scalar(double(node, path())) }
        if T.self == Bool.self { return try scalar(bool(node)) }
        if T.self == [String].self { return unsafeBitCast(try array(node, depth: depth, path: path) { try string($0, path() + [PythonCodingKey(intValue: $1)]) }, to: T.self) }
        if T.self == [Int].self { return unsafeBitCast(try array(node, depth: depth, path: path) { try integer(Int.self, $0, path() + [PythonCodingKey(intValue: $1)]) }, to: T.self) }
        if T.self == [Double].self { return unsafeBitCast(try array(node, depth: depth, path: path) { try double($0, path() + [PythonCodingKey(intValue: $1)]) }, to: T.self) }
        if T.self == [UInt8].self {
            let kind = nodes[Int(node)].kind
            if kind == .bytes || kind == .bytearray { return unsafeBitCast(Array(text(node)), to: T.self) }
            return unsafeBitCast(try array(node, depth: depth, path: path) { try integer(UInt8.self, $0, path() + [PythonCodingKey(intValue: $1)]) }, to: T.self)
        }
        return unsafeBitCast(try value(node, depth: Int(depth)), to: T.self)
    }

    // MARK: PythonValue

    /// The ``PythonValue`` of a node, for `PythonValue` fields inside typed values.
    func value(_ index: Int32, depth: Int) throws -> PythonValue {
        try visit([])
        guard depth < limits.maxDepth else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "pickle nests containers deeper than \(limits.maxDepth)"))
        }
        let index = resolve(index)
        let node = nodes[Int(index)]
        /// The items; set items must be hashable, as in Python.
        func children(hashable: Bool = false) throws -> [PythonValue] {
            var items: [PythonValue] = []
            items.reserveCapacity(Int(node.count))
            var child = node.first
            while child >= 0 {
                let item = try value(child, depth: depth + 1)
                if hashable && !item.isHashable { throw Self.unhashable }
                items.append(item)
                child = nodes[Int(child)].next
            }
            return items
        }
        switch node.kind {
        case .none, .alias: return .none
        case .bool: return .bool(node.payload != 0)
        case .int: return .int(node.payload)
        case .bigInt: return PythonInteger.value(fromLittleEndian: Array(text(index)))
        case .float: return .float(Double(bitPattern: UInt64(UInt(bitPattern: node.payload))))
        case .string:
            guard let string = try string(index, []) else { return .none }
            return .string(string)
        case .bytes: return .bytes(Array(text(index)))
        case .bytearray: return .bytearray(Array(text(index)))
        case .list: return .list(try children())
        case .tuple: return .tuple(try children())
        case .set: return .set(try children(hashable: true))
        case .frozenset: return .frozenset(try children(hashable: true))
        case .dict:
            var pairs: [PythonDictItem] = []
            pairs.reserveCapacity(Int(node.count) / 2)
            var key = node.first
            while key >= 0 {
                let value = nodes[Int(key)].next
                guard value >= 0 else { break }  // (a dict's items come in pairs)
                let keyValue = try self.value(key, depth: depth + 1)
                if !keyValue.isHashable { throw Self.unhashable }
                pairs.append(PythonDictItem(key: keyValue, value: try self.value(value, depth: depth + 1)))
                key = nodes[Int(value)].next
            }
            return .dict(pairs)
        }
    }

    /// An unhashable set item or dict key, which the full reader refuses with its own error.
    private static let unhashable = DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "an unhashable set item or dict key"))

    /// The whole pickle as a ``PythonValue`` when it is one the full reader would load the same way
    /// (every set item and dict key hashable, as Python requires), else nil (the reader then decides,
    /// with its errors).
    func rootValue() -> PythonValue? {
        try? value(root, depth: 0)
    }
}

/// A decoder on one node of a tape: three words, so that `any Decoder` holds it without allocating.
struct PickleTapeDecoder: Decoder, SingleValueDecodingContainer {
    let tape: PickleTape
    /// The node (never an alias).
    let node: Int32
    /// The coding path entry of this value (-1 for the root).
    let entry: Int32
    let depth: Int32

    init(tape: PickleTape, node: Int32, entry: Int32, depth: Int32) {
        self.tape = tape
        self.node = tape.resolve(node)
        self.entry = entry
        self.depth = depth
    }

    /// A decoder on a node that is no alias.
    init(tape: PickleTape, resolved node: Int32, entry: Int32, depth: Int32) {
        self.tape = tape
        self.node = node
        self.entry = entry
        self.depth = depth
    }

    var codingPath: [any CodingKey] { tape.codingPath(entry) }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func mismatch(_ type: Any.Type, _ detail: String? = nil) -> DecodingError {
        .typeMismatch(type, .init(codingPath: codingPath, debugDescription: detail ?? "expected \(type), found a Python \(tape.typeName(node))"))
    }

    /// The decoder of an item of this container, counted against the object limit.
    @inline(__always)
    func child(_ index: Int32, key: any CodingKey) throws -> PickleTapeDecoder {
        let entry = tape.path(self.entry, key)
        try tape.visit(tape.codingPath(entry))
        return PickleTapeDecoder(tape: tape, node: index, entry: entry, depth: depth + 1)
    }

    /// Decodes this value as `T`, directly for strings, numbers, booleans and arrays of them.
    @inline(__always)
    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        if PickleTape.decodesDirectly(T.self) { return try tape.direct(T.self, node, depth: depth, path: { codingPath }) }
        return try T(from: self)
    }

    private func nested() throws {
        guard Int(depth) < tape.limits.maxDepth else {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "pickle nests containers deeper than \(tape.limits.maxDepth)"))
        }
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard tape.nodes[Int(node)].kind == .dict else { throw mismatch([String: Any].self, "expected a dict, found a Python \(tape.typeName(node))") }
        try nested()
        return tape.keyedContainer(Key.self, self)
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let value = tape.nodes[Int(node)]
        switch value.kind {
        case .list, .tuple, .set, .frozenset:
            try nested()
            return PickleTapeUnkeyedDecoder(decoder: self, cursor: value.first, count: Int(value.count))
        case .bytes, .bytearray:
            return PythonUnkeyedDecoder(items: tape.text(node).map { .int(Int($0)) }, codingPath: codingPath)
        default:
            throw mismatch([Any].self, "expected a list or tuple, found a Python \(tape.typeName(node))")
        }
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }

    func decodeNil() -> Bool { tape.nodes[Int(node)].kind == .none }

    func decode(_ type: Bool.Type) throws -> Bool {
        guard let flag = tape.bool(node) else { throw mismatch(type) }
        return flag
    }

    func decode(_ type: String.Type) throws -> String {
        guard let string = try tape.string(node, codingPath) else { throw mismatch(type) }
        return string
    }

    func decode(_ type: Double.Type) throws -> Double {
        guard let number = try tape.double(node, codingPath) else { throw mismatch(type) }
        return number
    }

    func decode(_ type: Float.Type) throws -> Float { Float(try decode(Double.self)) }

    func integer<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        guard let number = try tape.integer(type, node, codingPath) else { throw mismatch(type) }
        return number
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

/// What a keyed decoding container works on, kept apart from it so that its box can be reused (see
/// ``PickleBoxCache``): the tape and dict of its decoder while its call lasts, detached after.
///
/// The tape is not retained: a frame is attached only while the tape is in a call, which holds the tape,
/// and every call detaches its frames when it ends; a detached frame never reads its tape.
final class PickleDecodingFrame {
    /// The tape, not retained (read through `_withUnsafeGuaranteedRef`, which retains nothing either).
    @exclusivity(unchecked) var tape: Unmanaged<PickleTape>
    /// The dict node, its coding path entry and its depth (as in ``PickleTapeDecoder``).
    @exclusivity(unchecked) var node: Int32 = -1
    @exclusivity(unchecked) var entry: Int32 = -1
    @exclusivity(unchecked) var depth: Int32 = 0
    @exclusivity(unchecked) var attached = false

    init(decoder: PickleTapeDecoder) {
        tape = .passUnretained(decoder.tape)
        attach(decoder)
    }

    @inline(__always)
    func attach(_ decoder: PickleTapeDecoder) {
        tape = .passUnretained(decoder.tape)
        node = decoder.node
        entry = decoder.entry
        depth = decoder.depth
        // A decoder kept past its call has a tape in no call, and its containers stay detached.
        attached = decoder.tape.inCall
    }

    func detach() { attached = false }

    /// The decoder of the dict, nil once detached.
    var decoder: PickleTapeDecoder? {
        attached ? PickleTapeDecoder(tape: tape.takeUnretainedValue(), resolved: node, entry: entry, depth: depth) : nil
    }

    var codingPath: [any CodingKey] { attached ? tape.takeUnretainedValue().codingPath(entry) : [] }
}

struct PickleTapeKeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    /// The frame, unretained: the standard library's box copies this container for every call, and a
    /// copy that retains nothing is a plain copy. The box cache owns the frame for as long as a box may
    /// hold it (see ``PickleBoxCache``).
    let frameReference: Unmanaged<PickleDecodingFrame>
    var frame: PickleDecodingFrame { frameReference.takeUnretainedValue() }
    var codingPath: [any CodingKey] { frame.codingPath }

    init(frame: PickleDecodingFrame) {
        self.frameReference = .passUnretained(frame)
    }

    /// Runs `body` with the tape, or throws for a container used after its call ended.
    @inline(__always)
    private func withTape<R>(_ body: (PickleTape, PickleDecodingFrame) throws -> R) throws -> R {
        try frameReference._withUnsafeGuaranteedRef { frame in
            guard frame.attached else {
                throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "a keyed container was used after its decode call ended"))
            }
            return try frame.tape._withUnsafeGuaranteedRef { try body($0, frame) }
        }
    }

    /// Whether the key node at `slot` is `key`.
    @inline(__always)
    private func matches(_ tape: PickleTape, _ slot: Int32, _ wanted: UnsafeBufferPointer<UInt8>, _ key: Key) -> Bool {
        let keyNode = tape.resolve(slot)
        let node = tape.nodes[Int(keyNode)]
        switch node.kind {
        case .string:
            guard Int(node.count) == wanted.count else { return false }
            return wanted.isEmpty || memcmp(wanted.baseAddress!, tape.input.baseAddress! + node.payload, wanted.count) == 0
        case .int:
            return key.intValue == node.payload
        default:
            return false
        }
    }

    /// The value slot for `key` in the dict of this container, or nil. The search starts after the key
    /// found last in this dict.
    @inline(__always)
    private func find(_ key: Key, in tape: PickleTape, _ frame: PickleDecodingFrame) -> Int32? {
        let dict = frame.node
        var text = key.stringValue
        return text.withUTF8 { wanted -> Int32? in
            if tape.hintDict == dict, tape.hintKey >= 0 {
                let slot = tape.hintKey
                let value = tape.nodes[Int(slot)].next
                if value >= 0, matches(tape, slot, wanted, key) {
                    tape.hintKey = tape.nodes[Int(value)].next
                    return value
                }
            }
            var slot = tape.nodes[Int(dict)].first
            while slot >= 0 {
                let value = tape.nodes[Int(slot)].next
                guard value >= 0 else { return nil }
                if matches(tape, slot, wanted, key) {
                    tape.hintDict = dict
                    tape.hintKey = tape.nodes[Int(value)].next
                    return value
                }
                slot = tape.nodes[Int(value)].next
            }
            return nil
        }
    }

    var allKeys: [Key] {
        (try? withTape { tape, frame in
            var keys: [Key] = []
            var slot = tape.nodes[Int(frame.node)].first
            while slot >= 0 {
                let keyNode = tape.resolve(slot)
                let node = tape.nodes[Int(keyNode)]
                switch node.kind {
                case .string:
                    if let text = String(validating: tape.text(keyNode), as: UTF8.self), let key = Key(stringValue: text) { keys.append(key) }
                case .int:
                    if let key = Key(intValue: node.payload) ?? Key(stringValue: String(node.payload)) { keys.append(key) }
                default: break
                }
                let value = tape.nodes[Int(slot)].next
                guard value >= 0 else { break }
                slot = tape.nodes[Int(value)].next
            }
            return keys
        }) ?? []
    }

    func contains(_ key: Key) -> Bool {
        (try? withTape { find(key, in: $0, $1) != nil }) ?? false
    }

    private func notFound(_ key: Key) -> DecodingError {
        .keyNotFound(key, .init(codingPath: frame.codingPath, debugDescription: "the dict has no key '\(key.stringValue)'"))
    }

    private func child(_ key: Key) throws -> PickleTapeDecoder {
        try withTape { tape, frame in
            guard let index = find(key, in: tape, frame) else { throw notFound(key) }
            return try PickleTapeDecoder(tape: tape, resolved: frame.node, entry: frame.entry, depth: frame.depth).child(index, key: key)
        }
    }

    /// The resolved value node for `key`, counted against the object limit, for the direct scalar paths.
    @inline(__always)
    private func scalar(_ key: Key, _ tape: PickleTape, _ frame: PickleDecodingFrame) throws -> Int32 {
        guard let index = find(key, in: tape, frame) else { throw notFound(key) }
        try tape.visit(frame.codingPath + [key])
        return tape.resolve(index)
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        try withTape { tape, frame in
            guard let index = find(key, in: tape, frame) else { return true }
            return tape.nodes[Int(tape.resolve(index))].kind == .none
        }
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool {
        try withTape { tape, frame in
            let node = try scalar(key, tape, frame)
            guard let flag = tape.bool(node) else { throw tape.mismatch(type, node, frame.codingPath + [key]) }
            return flag
        }
    }

    func decode(_ type: String.Type, forKey key: Key) throws -> String {
        try withTape { tape, frame in
            let node = try scalar(key, tape, frame)
            guard let string = try tape.string(node, frame.codingPath + [key]) else { throw tape.mismatch(type, node, frame.codingPath + [key]) }
            return string
        }
    }

    func decode(_ type: Double.Type, forKey key: Key) throws -> Double {
        try withTape { tape, frame in
            let node = try scalar(key, tape, frame)
            guard let number = try tape.double(node, frame.codingPath + [key]) else { throw tape.mismatch(type, node, frame.codingPath + [key]) }
            return number
        }
    }

    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { Float(try decode(Double.self, forKey: key)) }

    @inline(__always)
    private func integer<T: FixedWidthInteger>(_ type: T.Type, forKey key: Key) throws -> T {
        try withTape { tape, frame in
            let node = try scalar(key, tape, frame)
            guard let number = try tape.integer(type, node, frame.codingPath + [key]) else { throw tape.mismatch(type, node, frame.codingPath + [key]) }
            return number
        }
    }

    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try integer(type, forKey: key) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try integer(type, forKey: key) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try integer(type, forKey: key) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try integer(type, forKey: key) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try integer(type, forKey: key) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try integer(type, forKey: key) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try integer(type, forKey: key) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try integer(type, forKey: key) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try integer(type, forKey: key) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try integer(type, forKey: key) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try withTape { tape, frame in
            guard let index = find(key, in: tape, frame) else { throw notFound(key) }
            if PickleTape.decodesDirectly(T.self) {
                try tape.visit(frame.codingPath + [key])
                return try tape.direct(T.self, tape.resolve(index), depth: frame.depth + 1, path: { frame.codingPath + [key] })
            }
            return try PickleTapeDecoder(tape: tape, resolved: frame.node, entry: frame.entry, depth: frame.depth).child(index, key: key).decodeValue(type)
        }
    }

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
    var codingPath: [any CodingKey] { decoder.codingPath }
    var count: Int? { total }
    var isAtEnd: Bool { cursor < 0 }

    init(decoder: PickleTapeDecoder, cursor: Int32, count: Int) {
        self.decoder = decoder
        self.cursor = cursor
        self.total = count
    }

    private mutating func next() throws -> PickleTapeDecoder {
        guard cursor >= 0 else {
            throw DecodingError.valueNotFound(Any.self, .init(codingPath: codingPath, debugDescription: "the sequence has only \(total) items"))
        }
        let child = try decoder.child(cursor, key: PythonCodingKey(intValue: currentIndex))
        cursor = decoder.tape.nodes[Int(cursor)].next
        currentIndex += 1
        return child
    }

    mutating func decodeNil() throws -> Bool {
        let tape = decoder.tape
        guard cursor >= 0, tape.nodes[Int(tape.resolve(cursor))].kind == .none else { return false }
        cursor = tape.nodes[Int(cursor)].next
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

/// A stack of node indices for the parser: in a caller's buffer at first, on the heap once it outgrows it.
struct ScratchStack {
    static let initialCapacity = 64
    private var base: UnsafeMutablePointer<Int32>
    private(set) var count = 0
    private var capacity = ScratchStack.initialCapacity
    private var owned = false

    init(_ base: UnsafeMutablePointer<Int32>) { self.base = base }

    var last: Int32? { count > 0 ? base[count &- 1] : nil }

    subscript(index: Int) -> Int32 {
        get { base[index] }
        set { base[index] = newValue }
    }

    @inline(__always)
    mutating func append(_ value: Int32) {
        if count == capacity { grow() }
        base[count] = value
        count &+= 1  // (below the capacity)
    }

    mutating func popLast() -> Int32? {
        guard count > 0 else { return nil }
        count -= 1
        return base[count]
    }

    mutating func removeLast(from start: Int) { count = start }

    private mutating func grow() {
        let grown = UnsafeMutablePointer<Int32>.allocate(capacity: capacity * 2)
        grown.update(from: base, count: count)
        if owned { base.deallocate() }
        base = grown
        capacity *= 2
        owned = true
    }

    /// Frees the heap storage, if any.
    func release() { if owned { base.deallocate() } }
}
