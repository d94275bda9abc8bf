#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The wire format shared by `BinaryEncoder` and `BinaryDecoder`.
//
// A message is one value. Every value starts with a tag byte:
//
//   0x00 nil                     0x01 false               0x02 true
//   0x03 empty (an encoder that was given no value; decodes as an empty keyed or unkeyed container)
//   0x04...0x07 Int8/16/32/64    0x08...0x0B UInt8/16/32/64   (little-endian payload of that width)
//   0x0C Int128                  0x0D UInt128                 (16 bytes, little-endian)
//   0x0E Float (4 bytes)         0x0F Double (8 bytes)        (IEEE 754 bits, little-endian)
//   0x10 String: varint byte count, UTF-8 bytes
//   0x11 keyed container:   u32 content length, then entries (varint key length, key UTF-8, value)
//   0x12 keyed container:   u64 content length, entries
//   0x13 unkeyed container: u32 content length, u32 element count, then elements
//   0x14 unkeyed container: u64 content length, u64 element count, elements
//   0x15 packed array: kind byte, varint element count, raw little-endian elements
//   0x40...0x7F String of 0...63 UTF-8 bytes, which follow the tag
//   0x80...0xFF integer 0...127, held in the tag itself
//
// Integers are written in the narrowest tag that holds them and decode into any integer type that
// holds the value. Container lengths count the bytes after the container's header, so any value can
// be skipped without reading into it. Varints are unsigned LEB128 of at most 10 bytes.

/// Tags and limits of the binary coding format (see the comment at the top of this file).
enum BinaryFormat {
    static let nilTag: UInt8 = 0x00
    static let falseTag: UInt8 = 0x01
    static let trueTag: UInt8 = 0x02
    static let emptyTag: UInt8 = 0x03
    static let int8Tag: UInt8 = 0x04
    static let int16Tag: UInt8 = 0x05
    static let int32Tag: UInt8 = 0x06
    static let int64Tag: UInt8 = 0x07
    static let uint8Tag: UInt8 = 0x08
    static let uint16Tag: UInt8 = 0x09
    static let uint32Tag: UInt8 = 0x0A
    static let uint64Tag: UInt8 = 0x0B
    static let int128Tag: UInt8 = 0x0C
    static let uint128Tag: UInt8 = 0x0D
    static let float32Tag: UInt8 = 0x0E
    static let float64Tag: UInt8 = 0x0F
    static let stringTag: UInt8 = 0x10
    static let keyedTag: UInt8 = 0x11
    static let keyed64Tag: UInt8 = 0x12
    static let unkeyedTag: UInt8 = 0x13
    static let unkeyed64Tag: UInt8 = 0x14
    static let packedTag: UInt8 = 0x15
    static let smallStringBase: UInt8 = 0x40
    static let smallStringLimit = 64
    static let smallIntBase: UInt8 = 0x80

    /// Header sizes: tag + length (+ count for unkeyed containers).
    static let keyedHeader = 5
    static let keyed64Header = 9
    static let unkeyedHeader = 9
    static let unkeyed64Header = 17

    /// How deep values may nest (counted in calls to `encode(to:)` / `init(from:)`). Decoding is driven
    /// by the input, so without a limit hostile bytes could make a recursive type overflow the stack.
    static let maxDepth = 512

    /// Words for a tag in error messages.
    static func describe(tag: UInt8) -> String {
        switch tag {
        case nilTag: return "nil"
        case falseTag, trueTag: return "a Bool"
        case emptyTag: return "an empty value"
        case int8Tag...uint128Tag, smallIntBase...0xFF: return "an integer"
        case float32Tag: return "a Float"
        case float64Tag: return "a Double"
        case stringTag, smallStringBase..<smallIntBase: return "a String"
        case keyedTag, keyed64Tag: return "a keyed container"
        case unkeyedTag, unkeyed64Tag: return "an unkeyed container"
        case packedTag: return "a packed array"
        default: return "unknown tag 0x\(String(tag, radix: 16))"
        }
    }
}

/// Element kinds of a packed array (tag 0x15): arrays of fixed-width numbers travel as raw memory.
enum BinaryPackedKind: UInt8 {
    case uint8 = 1, int8, uint16, int16, uint32, int32, uint64, int64, float32, float64

    /// Bytes per element.
    var size: Int {
        switch self {
        case .uint8, .int8: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        }
    }
}

/// The array types that travel as packed arrays (raw memory), told apart by identity. Comparing
/// `T.self == [UInt8].self` in unspecialized generic code looks the array's metadata up at run time
/// on every call; these identities are looked up once.
enum BinaryPackedArray {
    case uint8, float64, int, float32, int64, uint64, uint, int32, uint32, int16, uint16, int8

    private static let table: [(ObjectIdentifier, BinaryPackedArray)] = [
        (ObjectIdentifier([UInt8].self), .uint8), (ObjectIdentifier([Double].self), .float64),
        (ObjectIdentifier([Int].self), .int), (ObjectIdentifier([Float].self), .float32),
        (ObjectIdentifier([Int64].self), .int64), (ObjectIdentifier([UInt64].self), .uint64),
        (ObjectIdentifier([UInt].self), .uint), (ObjectIdentifier([Int32].self), .int32),
        (ObjectIdentifier([UInt32].self), .uint32), (ObjectIdentifier([Int16].self), .int16),
        (ObjectIdentifier([UInt16].self), .uint16), (ObjectIdentifier([Int8].self), .int8),
    ]

    /// `[String]`, which also has a fast path (though not a packed one).
    static let stringArray = ObjectIdentifier([String].self)

    /// The packed array type `type` is, if it is one (always nil on big-endian machines).
    @inline(__always)
    static func of(_ type: Any.Type) -> BinaryPackedArray? {
        #if _endian(little)
        let id = ObjectIdentifier(type)
        for (candidate, array) in table where candidate == id { return array }
        #endif
        return nil
    }

    /// The element kind on the wire.
    var kind: BinaryPackedKind {
        switch self {
        case .uint8: return .uint8
        case .float64: return .float64
        case .int, .int64: return .int64
        case .float32: return .float32
        case .uint, .uint64: return .uint64
        case .int32: return .int32
        case .uint32: return .uint32
        case .int16: return .int16
        case .uint16: return .uint16
        case .int8: return .int8
        }
    }
}

/// The coding key of a reconstructed coding path: a key's string, or an index in an unkeyed container.
struct BinaryCodingKey: CodingKey, Sendable {
    var stringValue: String
    var intValue: Int?

    init(stringValue: String) {
        self.stringValue = stringValue
        self.intValue = nil
    }

    init(intValue: Int) {
        self.stringValue = "Index \(intValue)"
        self.intValue = intValue
    }

    /// The key `super` that `superEncoder()` and `superDecoder()` use.
    static let superKey = BinaryCodingKey(stringValue: "super")
}

/// Renders a coding path as `a.b[2].c`, or "the top level" when empty.
func binaryPathDescription(_ path: [any CodingKey]) -> String {
    if path.isEmpty { return "the top level" }
    var text = ""
    for key in path {
        if let index = key.intValue, key.stringValue == "Index \(index)" {
            text += "[\(index)]"
        } else {
            if !text.isEmpty { text += "." }
            text += key.stringValue
        }
    }
    return text
}

/// Bounds-checked reads over encoded bytes: every read that would leave `[0, count)` (or pass the
/// `limit` it is given) returns nil instead.
struct BinaryReader {
    let base: UnsafeRawPointer
    let count: Int

    @inline(__always)
    func byte(at offset: Int) -> UInt8? {
        guard offset >= 0 && offset < count else { return nil }
        return base.load(fromByteOffset: offset, as: UInt8.self)
    }

    /// Loads a little-endian integer of `T`'s width at `offset` if it ends by `limit`.
    @inline(__always)
    func load<T: FixedWidthInteger>(_: T.Type, at offset: Int, limit: Int) -> T? {
        guard offset >= 0, MemoryLayout<T>.size <= limit &- offset else { return nil }
        return T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// Reads an unsigned LEB128 varint at `offset`: its value and the offset after it.
    @inline(__always)
    func varint(at offset: Int, limit: Int) -> (value: UInt64, next: Int)? {
        guard offset >= 0 && offset < limit else { return nil }
        let first = base.load(fromByteOffset: offset, as: UInt8.self)
        if first < 0x80 { return (UInt64(first), offset &+ 1) }
        return varintSlow(at: offset, limit: limit)
    }

    func varintSlow(at offset: Int, limit: Int) -> (value: UInt64, next: Int)? {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        var position = offset
        while position < limit {
            let byte = base.load(fromByteOffset: position, as: UInt8.self)
            position += 1
            if shift == 63 && byte > 1 { return nil }  // more than 64 bits
            result |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { return (result, position) }
            shift += 7
            if shift > 63 { return nil }
        }
        return nil
    }

    /// Reads a varint length and checks that that many bytes follow before `limit`.
    @inline(__always)
    func length(at offset: Int, limit: Int) -> (length: Int, next: Int)? {
        guard let (value, next) = varint(at: offset, limit: limit), value <= UInt64(limit &- next) else { return nil }
        return (Int(value), next)
    }

    /// The offset just after the value at `offset`, which must end by `limit`; nil when the bytes there
    /// are not a well-formed value header or the value runs past `limit`.
    func valueEnd(at offset: Int, limit: Int) -> Int? {
        guard offset >= 0 && offset < limit && limit <= count else { return nil }
        let tag = base.load(fromByteOffset: offset, as: UInt8.self)
        let payload: Int
        switch tag {
        case BinaryFormat.smallIntBase...0xFF, 0x00...0x03: return offset + 1
        case BinaryFormat.smallStringBase..<BinaryFormat.smallIntBase:
            payload = Int(tag &- BinaryFormat.smallStringBase)
        case BinaryFormat.int8Tag, BinaryFormat.uint8Tag: payload = 1
        case BinaryFormat.int16Tag, BinaryFormat.uint16Tag: payload = 2
        case BinaryFormat.int32Tag, BinaryFormat.uint32Tag, BinaryFormat.float32Tag: payload = 4
        case BinaryFormat.int64Tag, BinaryFormat.uint64Tag, BinaryFormat.float64Tag: payload = 8
        case BinaryFormat.int128Tag, BinaryFormat.uint128Tag: payload = 16
        case BinaryFormat.stringTag:
            guard let (length, next) = length(at: offset + 1, limit: limit) else { return nil }
            return next + length
        case BinaryFormat.keyedTag, BinaryFormat.keyed64Tag, BinaryFormat.unkeyedTag, BinaryFormat.unkeyed64Tag:
            return containerBounds(at: offset, limit: limit)?.end
        case BinaryFormat.packedTag:
            return packedBounds(at: offset, limit: limit)?.end
        default:
            return nil
        }
        guard payload <= limit - offset - 1 else { return nil }
        return offset + 1 + payload
    }

    /// Where a keyed or unkeyed container's content starts and ends, and its element count (unkeyed only).
    func containerBounds(at offset: Int, limit: Int) -> (contentStart: Int, end: Int, count: Int)? {
        guard let tag = byte(at: offset), limit <= count else { return nil }
        let contentStart: Int
        let length: UInt64
        var elements: UInt64 = 0
        switch tag {
        case BinaryFormat.keyedTag:
            guard let value = load(UInt32.self, at: offset + 1, limit: limit) else { return nil }
            contentStart = offset + BinaryFormat.keyedHeader
            length = UInt64(value)
        case BinaryFormat.keyed64Tag:
            guard let value = load(UInt64.self, at: offset + 1, limit: limit) else { return nil }
            contentStart = offset + BinaryFormat.keyed64Header
            length = value
        case BinaryFormat.unkeyedTag:
            guard let value = load(UInt32.self, at: offset + 1, limit: limit),
                  let number = load(UInt32.self, at: offset + 5, limit: limit) else { return nil }
            contentStart = offset + BinaryFormat.unkeyedHeader
            length = UInt64(value)
            elements = UInt64(number)
        case BinaryFormat.unkeyed64Tag:
            guard let value = load(UInt64.self, at: offset + 1, limit: limit),
                  let number = load(UInt64.self, at: offset + 9, limit: limit) else { return nil }
            contentStart = offset + BinaryFormat.unkeyed64Header
            length = value
            elements = number
        default:
            return nil
        }
        // Every element takes at least one byte.
        guard contentStart <= limit, length <= UInt64(limit - contentStart), elements <= length else { return nil }
        return (contentStart, contentStart + Int(length), Int(elements))
    }

    /// A packed array's element kind, element count, first element and end.
    func packedBounds(at offset: Int, limit: Int) -> (kind: BinaryPackedKind, count: Int, dataStart: Int, end: Int)? {
        guard byte(at: offset) == BinaryFormat.packedTag, offset + 1 < limit, limit <= count,
              let kind = BinaryPackedKind(rawValue: base.load(fromByteOffset: offset + 1, as: UInt8.self)),
              let (elements, dataStart) = varint(at: offset + 2, limit: limit) else { return nil }
        let available = UInt64(limit - dataStart) / UInt64(kind.size)
        guard elements <= available else { return nil }
        return (kind, Int(elements), dataStart, dataStart + Int(elements) * kind.size)
    }

    /// Reads the key of the keyed-container entry at `offset`: its bytes and where its value starts.
    @inline(__always)
    func entryKey(at offset: Int, limit: Int) -> (key: UnsafeRawBufferPointer, value: Int)? {
        guard let (length, start) = length(at: offset, limit: limit) else { return nil }
        return (UnsafeRawBufferPointer(start: base + start, count: length), start + length)
    }

    /// Makes a String of UTF-8 bytes; nil when they are not valid UTF-8.
    @inline(__always)
    static func string(_ bytes: UnsafeRawBufferPointer) -> String? {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return "" }
        if isASCII(base, count: bytes.count) { return String(decoding: bytes, as: UTF8.self) }
        var string = String(decoding: bytes, as: UTF8.self)
        // String(decoding:) repairs bad UTF-8; a repaired string differs from its input bytes.
        let intact = string.withUTF8 { utf8 in
            utf8.count == bytes.count && memcmp(utf8.baseAddress!, base, bytes.count) == 0
        }
        return intact ? string : nil
    }

    /// Whether all `count` bytes at `base` are below 0x80, a word at a time.
    @inline(__always)
    static func isASCII(_ base: UnsafeRawPointer, count: Int) -> Bool {
        var offset = 0
        var bits: UInt64 = 0
        while offset + 8 <= count {
            bits |= base.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            offset += 8
        }
        while offset < count {
            bits |= UInt64(base.load(fromByteOffset: offset, as: UInt8.self))
            offset += 1
        }
        return bits & 0x8080_8080_8080_8080 == 0
    }

    /// Reconstructs the coding path from the value at `root` to the byte at `target`.
    ///
    /// Used only for error messages and `codingPath`, so it may be slow. `openContainers` lists the
    /// starts of containers whose length is not written yet (an encoder's containers still open):
    /// those run past the end of the bytes, where the next value will go.
    func codingPath(root: Int, to target: Int, openContainers: [Int] = []) -> [any CodingKey] {
        var path: [any CodingKey] = []
        var position = root
        descend: while position != target {
            guard position < target, let tag = byte(at: position) else { break }
            switch tag {
            case BinaryFormat.keyedTag, BinaryFormat.keyed64Tag, BinaryFormat.unkeyedTag, BinaryFormat.unkeyed64Tag:
                let keyed = tag == BinaryFormat.keyedTag || tag == BinaryFormat.keyed64Tag
                let contentStart: Int
                let end: Int
                if openContainers.contains(position) {
                    contentStart = position + (keyed ? BinaryFormat.keyedHeader : BinaryFormat.unkeyedHeader)
                    end = Int.max
                } else {
                    guard let bounds = containerBounds(at: position, limit: count) else { break descend }
                    contentStart = bounds.contentStart
                    end = bounds.end
                }
                let limit = Swift.min(end, count)
                var entry = contentStart
                var index = 0
                while entry < end && entry <= target {
                    let key: any CodingKey
                    var value = entry
                    if keyed {
                        guard let (keyBytes, valueStart) = entryKey(at: entry, limit: limit) else { break descend }
                        key = BinaryCodingKey(stringValue: BinaryReader.string(keyBytes) ?? "<bad UTF-8>")
                        value = valueStart
                    } else {
                        key = BinaryCodingKey(intValue: index)
                    }
                    if value >= target {
                        if value == target { path.append(key) }
                        break descend
                    }
                    let next: Int
                    if openContainers.contains(value) {
                        next = Int.max
                    } else {
                        guard let end = valueEnd(at: value, limit: limit) else { break descend }
                        next = end
                    }
                    if target < next {
                        path.append(key)
                        position = value
                        continue descend
                    }
                    entry = next
                    index += 1
                }
                break descend
            case BinaryFormat.packedTag:
                if let bounds = packedBounds(at: position, limit: count), target >= bounds.dataStart, target < bounds.end {
                    path.append(BinaryCodingKey(intValue: (target - bounds.dataStart) / bounds.kind.size))
                }
                break descend
            default:
                break descend
            }
        }
        return path
    }
}

/// Reinterprets a value whose type the caller has just compared equal to `U`.
@inline(__always)
func binaryCast<T, U>(_ value: T, to _: U.Type) -> U {
    unsafeBitCast(value, to: U.self)
}
