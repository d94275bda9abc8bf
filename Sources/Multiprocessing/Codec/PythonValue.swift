/// A plain Python object, as a pickle carries it: the dynamic form for messages whose shape is not known
/// in advance (see ``PickleDecoder`` and ``Connection/recvPickle(_:timeout:limits:)-64rr6``).
///
/// Containers keep the order in which their items arrived, and two values are equal when they have the
/// same case and equal contents in the same order (floats compare as `Double` does, so NaN differs from
/// itself). Integers that fit in `Int` are ``int(_:)``; larger ones keep every digit in ``bigInt(_:)``.
public enum PythonValue: Sendable, Hashable, CustomStringConvertible {
    /// `None`.
    case none
    /// `True` or `False`.
    case bool(Bool)
    /// An `int` that fits in `Int`.
    case int(Int)
    /// An `int` outside `Int`'s range, as its little-endian two's complement bytes (pickle's own form).
    case bigInt([UInt8])
    /// A `float`.
    case float(Double)
    /// A `str`.
    case string(String)
    /// A `bytes` object.
    case bytes([UInt8])
    /// A `bytearray`.
    case bytearray([UInt8])
    /// A `list`.
    case list([PythonValue])
    /// A `tuple`.
    case tuple([PythonValue])
    /// A `dict`, as its items in order.
    case dict([PythonDictItem])
    /// A `set`, in the order its items arrived.
    case set([PythonValue])
    /// A `frozenset`, in the order its items arrived.
    case frozenset([PythonValue])

    /// The Python type's name: `"NoneType"`, `"int"`, `"dict"`, ...
    public var typeName: String {
        switch self {
        case .none: "NoneType"
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

    /// The value for `key` in a ``dict(_:)`` whose key is that string, or nil.
    public subscript(key: String) -> PythonValue? {
        guard case .dict(let items) = self else { return nil }
        return items.first { $0.key == .string(key) }?.value
    }

    /// A Python-like rendering: `{'job': 3, 'args': [1, 2]}`.
    public var description: String {
        func list(_ items: [PythonValue]) -> String { items.map(\.description).joined(separator: ", ") }
        switch self {
        case .none: return "None"
        case .bool(let value): return value ? "True" : "False"
        case .int(let value): return String(value)
        case .bigInt(let bytes): return PythonInteger.decimal(fromLittleEndian: bytes)
        case .float(let value): return value.description
        case .string(let value): return "'\(value)'"
        case .bytes(let value): return "b'\(PythonInteger.escaped(value))'"
        case .bytearray(let value): return "bytearray(b'\(PythonInteger.escaped(value))')"
        case .list(let items): return "[\(list(items))]"
        case .tuple(let items): return items.count == 1 ? "(\(items[0]),)" : "(\(list(items)))"
        case .dict(let items): return "{\(items.map { "\($0.key): \($0.value)" }.joined(separator: ", "))}"
        case .set(let items): return items.isEmpty ? "set()" : "{\(list(items))}"
        case .frozenset(let items): return items.isEmpty ? "frozenset()" : "frozenset({\(list(items))})"
        }
    }
}

/// One key and value of a ``PythonValue/dict(_:)``.
public struct PythonDictItem: Sendable, Hashable {
    /// The key.
    public var key: PythonValue
    /// The value.
    public var value: PythonValue

    /// Creates an item.
    public init(key: PythonValue, value: PythonValue) {
        self.key = key
        self.value = value
    }
}

/// Conversions between Python's arbitrary-size integers (little-endian two's complement bytes, as pickle's
/// LONG1 and LONG4 carry them) and text.
enum PythonInteger {
    /// The shortest two's complement bytes of `value`.
    static func littleEndian(_ value: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        var rest = value
        repeat {
            bytes.append(UInt8(truncatingIfNeeded: rest))
            rest >>= 8
        } while !((rest == 0 && bytes.last! < 0x80) || (rest == -1 && bytes.last! >= 0x80))
        return bytes
    }

    /// The value of two's complement bytes as a ``PythonValue``: ``PythonValue/int(_:)`` when it fits.
    static func value(fromLittleEndian bytes: [UInt8]) -> PythonValue {
        let trimmed = trimmed(bytes)
        if trimmed.isEmpty { return .int(0) }
        if trimmed.count <= 8 {
            var result = 0
            for byte in trimmed.reversed() { result = result << 8 | Int(byte) }
            let shift = 64 - 8 * trimmed.count
            return .int(shift == 0 ? result : (result << shift) >> shift)
        }
        return .bigInt(trimmed)
    }

    /// Drops redundant sign bytes.
    static func trimmed(_ bytes: [UInt8]) -> [UInt8] {
        var end = bytes.count
        while end > 1 {
            let last = bytes[end - 1], previous = bytes[end - 2]
            if (last == 0 && previous < 0x80) || (last == 0xFF && previous >= 0x80) { end -= 1 } else { break }
        }
        return Array(bytes[..<end])
    }

    /// Decimal text of two's complement bytes.
    static func decimal(fromLittleEndian bytes: [UInt8]) -> String {
        let negative = (bytes.last ?? 0) >= 0x80
        // Magnitude as 32-bit limbs, least significant first.
        var magnitude = bytes
        if negative {
            var carry = 1
            for index in magnitude.indices {
                let sum = Int(~magnitude[index]) + carry
                magnitude[index] = UInt8(truncatingIfNeeded: sum)
                carry = sum >> 8
            }
        }
        var limbs: [UInt32] = stride(from: 0, to: magnitude.count, by: 4).map { base in
            var limb: UInt32 = 0
            for offset in (0..<4).reversed() where base + offset < magnitude.count {
                limb = limb << 8 | UInt32(magnitude[base + offset])
            }
            return limb
        }
        var chunks: [UInt32] = []
        while limbs.contains(where: { $0 != 0 }) {
            var remainder: UInt64 = 0
            for index in limbs.indices.reversed() {
                let current = remainder << 32 | UInt64(limbs[index])
                limbs[index] = UInt32(current / 1_000_000_000)
                remainder = current % 1_000_000_000
            }
            chunks.append(UInt32(remainder))
        }
        guard let top = chunks.popLast() else { return "0" }
        var text = negative ? "-" : ""
        text += String(top)
        for chunk in chunks.reversed() {
            let digits = String(chunk)
            text += String(repeating: "0", count: 9 - digits.count) + digits
        }
        return text
    }

    /// Two's complement bytes of decimal text (an optional sign, then digits), or nil when malformed.
    static func littleEndian(fromDecimal text: Substring) -> [UInt8]? {
        var digits = text.utf8[...]
        var negative = false
        if let first = digits.first, first == UInt8(ascii: "-") || first == UInt8(ascii: "+") {
            negative = first == UInt8(ascii: "-")
            digits = digits.dropFirst()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        var limbs: [UInt32] = [0]  // magnitude, least significant first
        for digit in digits {
            var carry = UInt64(digit - 48)
            for index in limbs.indices {
                let current = UInt64(limbs[index]) * 10 + carry
                limbs[index] = UInt32(truncatingIfNeeded: current)
                carry = current >> 32
            }
            if carry > 0 { limbs.append(UInt32(carry)) }
        }
        var bytes: [UInt8] = []
        for limb in limbs { for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: limb >> UInt32(shift))) } }
        bytes.append(0)  // room for the sign
        if negative {
            var carry = 1
            for index in bytes.indices {
                let sum = Int(~bytes[index]) + carry
                bytes[index] = UInt8(truncatingIfNeeded: sum)
                carry = sum >> 8
            }
        }
        return trimmed(bytes)
    }

    /// Bytes as Python shows them inside `b'...'`.
    static func escaped(_ bytes: [UInt8]) -> String {
        var text = ""
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\\"), UInt8(ascii: "'"): text += "\\" + String(UnicodeScalar(byte))
            case 0x20..<0x7F: text.unicodeScalars.append(UnicodeScalar(byte))
            default:
                let hex = String(byte, radix: 16)
                text += "\\x" + (hex.count == 1 ? "0" : "") + hex
            }
        }
        return text
    }
}

/// With the pickle coders a ``PythonValue`` is the Python object itself. With other coders (the package's
/// binary codec, JSON) it takes the nearest plain shape: sequences become arrays, a dict with string keys
/// a keyed container (other dicts an array of key, value pairs), a big int its decimal text, so tuples
/// and sets come back as lists.
extension PythonValue: Codable {
    /// Encodes the value in its nearest plain shape (see the extension's note).
    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .none:
            var container = encoder.singleValueContainer()
            try container.encodeNil()
        case .bool(let value):
            var container = encoder.singleValueContainer()
            try container.encode(value)
        case .int(let value):
            var container = encoder.singleValueContainer()
            try container.encode(value)
        case .bigInt(let bytes):
            var container = encoder.singleValueContainer()
            try container.encode(PythonInteger.decimal(fromLittleEndian: bytes))
        case .float(let value):
            var container = encoder.singleValueContainer()
            try container.encode(value)
        case .string(let value):
            var container = encoder.singleValueContainer()
            try container.encode(value)
        case .bytes(let bytes), .bytearray(let bytes):
            var container = encoder.singleValueContainer()
            try container.encode(bytes)
        case .list(let items), .tuple(let items), .set(let items), .frozenset(let items):
            var container = encoder.unkeyedContainer()
            for item in items { try container.encode(item) }
        case .dict(let items):
            if items.allSatisfy({ if case .string = $0.key { true } else { false } }) {
                var container = encoder.container(keyedBy: PythonCodingKey.self)
                for item in items {
                    guard case .string(let key) = item.key else { continue }
                    try container.encode(item.value, forKey: PythonCodingKey(stringValue: key))
                }
            } else {
                var container = encoder.unkeyedContainer()
                for item in items { try container.encode([item.key, item.value]) }
            }
        }
    }

    /// Decodes the nearest Python object from another coder's data (see the extension's note).
    ///
    /// - Throws: `DecodingError.dataCorrupted` when the data has no plain shape.
    public init(from decoder: any Decoder) throws {
        if let container = try? decoder.singleValueContainer() {
            if container.decodeNil() { self = .none; return }
            if let value = try? container.decode(Bool.self) { self = .bool(value); return }
            if let value = try? container.decode(Int.self) { self = .int(value); return }
            if let value = try? container.decode(Double.self) { self = .float(value); return }
            if let value = try? container.decode(String.self) { self = .string(value); return }
        }
        if let container = try? decoder.container(keyedBy: PythonCodingKey.self) {
            self = .dict(try container.allKeys.map {
                PythonDictItem(key: .string($0.stringValue), value: try container.decode(PythonValue.self, forKey: $0))
            })
            return
        }
        if var container = try? decoder.unkeyedContainer() {
            var items: [PythonValue] = []
            while !container.isAtEnd { items.append(try container.decode(PythonValue.self)) }
            self = .list(items)
            return
        }
        throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "no plain value here"))
    }
}
