/// A fixed-length list of integers, doubles, booleans, strings, bytes and nils in a named
/// ``SharedMemory`` block: Python's `multiprocessing.shared_memory.ShareableList`, byte for byte, so a
/// list made here is read and changed by Python's `ShareableList(name=...)` and the other way round.
///
/// ```swift
/// let list = try ShareableList(["howdy", .bytes([1, 2]), -273.15, 100, nil, true])
/// try list.set(42, at: 3)
/// // Python: ShareableList(name=list.memory.name)[3] == 42
/// ```
///
/// Every slot has room for what it held at creation: 8 bytes for a number, boolean or nil, and for a
/// string or bytes the next multiple of 8 above its length in bytes. A slot may change type if the new
/// value fits; a string or bytes value longer than the slot's room is refused, leaving the old value.
/// Values live in shared memory, not in this object, so every holder sees each change at once; there
/// is no lock (guard compound updates with a ``ProcessLock``). Like Python, string and bytes values
/// lose trailing NUL bytes.
///
/// Layout (CPython 3.9 and later; 3.8 stored item sizes instead of offsets and is not compatible): the
/// count N as a 64-bit integer; N+1 64-bit offsets of the slots from the data area; the data area; N
/// 8-byte `struct` format strings; N one-byte type codes. Tested live with CPython 3.9 to 3.13.
public final class ShareableList: @unchecked Sendable, Codable, CustomStringConvertible {
    /// A value a ``ShareableList`` can hold (Python's int, float, bool, str, bytes and None).
    public enum Item: Hashable, Sendable, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
        ExpressibleByBooleanLiteral, ExpressibleByStringLiteral, ExpressibleByNilLiteral, CustomStringConvertible
    {
        /// A 64-bit integer (Python's `int` within 64 bits).
        case int(Int)
        /// A double (Python's `float`).
        case double(Double)
        /// A boolean.
        case bool(Bool)
        /// A string, stored as UTF-8.
        case string(String)
        /// Raw bytes (Python's `bytes`).
        case bytes([UInt8])
        /// Nothing (Python's `None`).
        case none

        /// An integer item.
        public init(integerLiteral value: Int) { self = .int(value) }
        /// A double item.
        public init(floatLiteral value: Double) { self = .double(value) }
        /// A boolean item.
        public init(booleanLiteral value: Bool) { self = .bool(value) }
        /// A string item.
        public init(stringLiteral value: String) { self = .string(value) }
        /// The nil item.
        public init(nilLiteral: ()) { self = .none }

        /// The item as Python would print it: `42`, `2.5`, `True`, `'text'`, `b'\x01'`, `None`.
        public var description: String {
            switch self {
            case .int(let value): "\(value)"
            case .double(let value): "\(value)"
            case .bool(let value): value ? "True" : "False"
            case .string(let value): "'" + value.replacingAll("\\", with: "\\\\").replacingAll("'", with: "\\'") + "'"
            case .bytes(let value): "b'" + value.map { $0 >= 32 && $0 < 127 && $0 != 39 && $0 != 92 ? String(UnicodeScalar($0)) : "\\x" + (($0 < 16 ? "0" : "") + String($0, radix: 16)) }.joined() + "'"
            case .none: "None"
            }
        }
    }

    /// The block that holds the list (Python's `.shm`).
    public let memory: SharedMemory
    /// The number of items (fixed).
    public let count: Int
    /// Offsets of the slots from the data area, count + 1 of them.
    private let offsets: [Int]

    private var dataStart: Int { 8 + (count + 1) * 8 }
    private var formatsStart: Int { dataStart + offsets[count] }
    private var codesStart: Int { formatsStart + count * 8 }

    private static let boolFormat = "xxxxxxx?"
    private static let noneFormat = "xxxxxx?x"

    /// Creates a list holding `items` in a new block owned by this process.
    ///
    /// - Parameters:
    ///   - items: the values, which fix the list's length and each slot's room.
    ///   - name: the block's name; nil picks a random one.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a string or bytes value of 10 MB or
    ///   more or a bad name; ``MultiprocessingError/Code/alreadyExists`` when the name is taken;
    ///   ``MultiprocessingError/Code/system`` when the block cannot be created.
    public init(_ items: [Item], name: String? = nil) throws {
        var offsets = [0]
        var formats: [String] = []
        for item in items {
            let format = try Self.creationFormat(of: item)
            formats.append(format)
            offsets.append(offsets.last! + Self.room(of: format))
        }
        let count = items.count
        let size = 8 + (count + 1) * 8 + offsets[count] + count * 9
        memory = try SharedMemory(size: size, name: name)
        self.count = count
        self.offsets = offsets
        try memory.withUnsafeMutableBytes { bytes in
            bytes.storeBytes(of: Int64(count), toByteOffset: 0, as: Int64.self)
            for (index, offset) in offsets.enumerated() {
                bytes.storeBytes(of: Int64(offset), toByteOffset: 8 + index * 8, as: Int64.self)
            }
        }
        for (index, item) in items.enumerated() { try write(item, format: formats[index], at: index) }
    }

    /// Attaches to the list in the block `name`, made by this or any other process (Python's
    /// `ShareableList(name=...)`).
    /// - Throws: ``MultiprocessingError/Code/notFound`` when no block has that name;
    ///   ``MultiprocessingError/Code/invalidArgument`` when the block does not hold a ShareableList.
    public convenience init(attachingTo name: String) throws {
        try self.init(memory: SharedMemory(attachingTo: name))
    }

    private init(memory: SharedMemory) throws {
        let (count, offsets) = try memory.withUnsafeMutableBytes { bytes -> (Int, [Int]) in
            let size = bytes.count
            guard size >= 16 else { throw Self.notAList(memory) }
            let count = Int(bytes.loadUnaligned(fromByteOffset: 0, as: Int64.self))
            guard count >= 0, count <= (size - 16) / 17 else { throw Self.notAList(memory) }
            var offsets: [Int] = []
            offsets.reserveCapacity(count + 1)
            for index in 0...count {
                let offset = Int(bytes.loadUnaligned(fromByteOffset: 8 + index * 8, as: Int64.self))
                guard offset >= (offsets.last ?? 0), offset <= size else { throw Self.notAList(memory) }
                offsets.append(offset)
            }
            guard offsets.first == 0, 8 + (count + 1) * 8 + offsets[count] + count * 9 <= size else { throw Self.notAList(memory) }
            return (count, offsets)
        }
        self.memory = memory
        self.count = count
        self.offsets = offsets
    }

    private static func notAList(_ memory: SharedMemory) -> MultiprocessingError {
        MultiprocessingError(.invalidArgument, "shared memory block \(memory.name) does not hold a ShareableList")
    }

    /// The `struct` format a new slot for `item` gets, as CPython chooses it.
    private static func creationFormat(of item: Item) throws -> String {
        switch item {
        case .int: return "q"
        case .double: return "d"
        case .bool: return boolFormat
        case .none: return noneFormat
        case .string(let value): return try textFormat(length: value.utf8.count)
        case .bytes(let value): return try textFormat(length: value.count)
        }
    }

    private static func textFormat(length: Int) throws -> String {
        let format = "\(8 * (length / 8 + 1))s"
        guard format.utf8.count <= 8 else {
            throw MultiprocessingError(.invalidArgument, "a ShareableList string or bytes value holds at most 9,999,991 bytes, not \(length)")
        }
        return format
    }

    /// The bytes a slot with `format` takes.
    private static func room(of format: String) -> Int {
        format.hasSuffix("s") ? Int(format.dropLast())! : 8
    }

    private func checked(_ index: Int) throws -> Int {
        guard index >= 0 && index < count else {
            throw MultiprocessingError(.invalidArgument, "index \(index) is out of range for a ShareableList of \(count) items")
        }
        return index
    }

    /// The item at `index` (0 ..< ``count``).
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for an index out of range;
    ///   ``MultiprocessingError/Code/protocolViolation`` when the slot holds something no ShareableList
    ///   writes; ``MultiprocessingError/Code/closed`` after the block was closed.
    public subscript(index: Int) -> Item {
        get throws {
            let index = try checked(index)
            return try memory.withUnsafeMutableBytes { bytes in
                let format = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[formatsStart + index * 8 ..< formatsStart + index * 8 + 8]).prefix { $0 != 0 }, as: UTF8.self)
                let code = bytes[codesStart + index]
                let start = dataStart + offsets[index]
                let room = offsets[index + 1] - offsets[index]
                switch (code, format) {
                case (0, "q"): return .int(Int(bytes.loadUnaligned(fromByteOffset: start, as: Int64.self)))
                case (0, "d"): return .double(bytes.loadUnaligned(fromByteOffset: start, as: Double.self))
                case (0, Self.boolFormat): return .bool(bytes[start + 7] != 0)
                case (3, _): return .none
                case (1, _), (2, _):
                    guard format.hasSuffix("s"), let length = Int(format.dropLast()), length >= 0, length <= room else { break }
                    var value = Array(bytes[start ..< start + length])
                    while value.last == 0 { value.removeLast() }
                    if code == 2 { return .bytes(value) }
                    guard let text = String(validating: value, as: UTF8.self) else { break }
                    return .string(text)
                default: break
                }
                throw MultiprocessingError(.protocolViolation, "ShareableList \(memory.name) item \(index) has format \(format.debugDescription) and type code \(code), which no ShareableList writes")
            }
        }
    }

    /// Replaces the item at `index` (Python's `list[index] = item`).
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for an index out of range or a string or
    ///   bytes value longer than the slot's room (the old value stays); ``MultiprocessingError/Code/closed``
    ///   after the block was closed.
    public func set(_ item: Item, at index: Int) throws {
        let index = try checked(index)
        let room = offsets[index + 1] - offsets[index]
        let format: String
        switch item {
        case .string, .bytes:
            let length: Int
            if case .string(let value) = item { length = value.utf8.count } else if case .bytes(let value) = item { length = value.count } else { length = 0 }
            guard length <= room else {
                throw MultiprocessingError(.invalidArgument, "\(length) bytes exceed the \(room) bytes of ShareableList \(memory.name) item \(index)")
            }
            format = "\(room)s"
        default:
            format = try Self.creationFormat(of: item)
        }
        try write(item, format: format, at: index)
    }

    /// Writes `item` into slot `index` with `format`, which fits the slot.
    private func write(_ item: Item, format: String, at index: Int) throws {
        try memory.withUnsafeMutableBytes { bytes in
            let formatAt = formatsStart + index * 8
            for offset in 0..<8 { bytes[formatAt + offset] = 0 }
            for (offset, byte) in format.utf8.enumerated() { bytes[formatAt + offset] = byte }
            let start = dataStart + offsets[index]
            let code: UInt8
            switch item {
            case .int(let value):
                code = 0
                bytes.storeBytes(of: Int64(value), toByteOffset: start, as: Int64.self)
            case .double(let value):
                code = 0
                bytes.storeBytes(of: value, toByteOffset: start, as: Double.self)
            case .bool(let value):
                code = 0
                for offset in 0..<7 { bytes[start + offset] = 0 }
                bytes[start + 7] = value ? 1 : 0
            case .none:
                code = 3
                for offset in 0..<8 { bytes[start + offset] = 0 }
            case .string(let value):
                code = 1
                writeText(Array(value.utf8), into: bytes, at: start, room: Self.room(of: format))
            case .bytes(let value):
                code = 2
                writeText(value, into: bytes, at: start, room: Self.room(of: format))
            }
            bytes[codesStart + index] = code
        }
    }

    private func writeText(_ value: [UInt8], into bytes: UnsafeMutableRawBufferPointer, at start: Int, room: Int) {
        for offset in 0..<room { bytes[start + offset] = offset < value.count ? value[offset] : 0 }
    }

    /// All items, in order.
    /// - Throws: as ``subscript(_:)``.
    public var items: [Item] {
        get throws { try (0..<count).map { try self[$0] } }
    }

    /// The index of the first item equal to `item`, or nil (Python's `index`, which raises instead).
    /// - Throws: as ``subscript(_:)``.
    public func firstIndex(of item: Item) throws -> Int? {
        for index in 0..<count where try self[index] == item { return index }
        return nil
    }

    /// How many items equal `item` (Python's `count`).
    /// - Throws: as ``subscript(_:)``.
    public func count(of item: Item) throws -> Int {
        try (0..<count).reduce(0) { try $0 + (self[$1] == item ? 1 : 0) }
    }

    /// `ShareableList([1, 'a', None], name: "msm_…")`.
    public var description: String {
        let shown = (try? items.map(\.description).joined(separator: ", ")) ?? "closed"
        return "ShareableList([\(shown)], name: \(memory.name.debugDescription))"
    }

    /// Encodes the list (its block) for a child's task or a ``Connection/send(_:)-70itn`` message.
    /// - Throws: ``MultiprocessingError/Code/closed`` after the block was closed.
    public func encode(to encoder: any Encoder) throws { try memory.encode(to: encoder) }

    /// Decodes a list sent by another process: the same block, attached.
    /// - Throws: ``MultiprocessingError/Code/transport`` or ``MultiprocessingError/Code/invalidArgument``
    ///   when what arrived is not a ShareableList's block.
    public convenience init(from decoder: any Decoder) throws {
        try self.init(memory: SharedMemory(from: decoder))
    }
}

extension String {
    /// The string with every `target` replaced by `replacement`.
    fileprivate func replacingAll(_ target: Character, with replacement: String) -> String {
        var result = ""
        for character in self { if character == target { result += replacement } else { result.append(character) } }
        return result
    }
}
