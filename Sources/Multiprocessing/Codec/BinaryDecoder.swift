#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Decodes `Decodable` values from the bytes that ``BinaryEncoder`` produces.
///
/// The input is treated as untrusted: truncated, corrupt or hostile bytes throw
/// ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport`` (saying what was wrong
/// and at which coding path); they never trap, and no length is believed before it has been checked
/// against the bytes that remain. Keys may be read in any order and absent keys are cheap to ask for;
/// arrays of fixed-width numbers are copied out as raw memory. Integers decode into any integer type
/// that holds their value. The whole input must be one value: trailing bytes are an error.
///
/// Errors thrown by `init(from:)` implementations (a `DecodingError` from an enum's raw value, say)
/// are wrapped in a ``MultiprocessingError/Code/transport`` error that carries their description.
public struct BinaryDecoder: Sendable {
    /// Values handed to every `init(from:)` as `Decoder.userInfo`.
    public var userInfo: [CodingUserInfoKey: any Sendable]

    /// Creates a decoder with empty ``userInfo``.
    public init() {
        userInfo = [:]
    }

    /// Decodes a value of type `T` from `bytes`, which must hold exactly one encoded value.
    ///
    /// - Throws: ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport``.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try bytes.withUnsafeBytes { try decode(type, from: $0) }
    }

    /// Decodes a value of type `T` from `bytes`, which must hold exactly one encoded value.
    ///
    /// The bytes are read only during the call; the decoded value does not refer to them.
    ///
    /// - Throws: ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport``.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: UnsafeRawBufferPointer) throws -> T {
        guard let base = bytes.baseAddress, !bytes.isEmpty else {
            throw MultiprocessingError(.transport, "binary decoding: cannot decode \(T.self) from an empty message")
        }
        let context = BinaryDecodingContext(reader: BinaryReader(base: base, count: bytes.count), userInfo: userInfo)
        // Decoders that escape `init(from:)` must not read the caller's memory afterwards.
        defer { context.invalidate() }
        do {
            var end = 0
            let value = try context.decodeValue(T.self, at: 0, limit: bytes.count, end: &end)
            guard end == bytes.count else {
                throw MultiprocessingError(
                    .transport, "binary decoding: \(bytes.count - end) trailing bytes after the \(T.self) value")
            }
            return value
        } catch let error as MultiprocessingError {
            throw error
        } catch {
            throw MultiprocessingError(.transport, "binary decoding: decoding \(T.self) failed: \(error)")
        }
    }
}

/// The state of one `BinaryDecoder.decode` call, shared by all its decoders and containers.
final class BinaryDecodingContext {
    @exclusivity(unchecked) private(set) var reader: BinaryReader
    let userInfo: [CodingUserInfoKey: any Sendable]
    /// The keyed container last read from and the entry after the one read, so that keys read in the
    /// order they were written are each found at the first look.
    @exclusivity(unchecked) var hintContainer = -1
    @exclusivity(unchecked) var hintEntry = 0
    /// Nesting of `init(from:)` calls.
    @exclusivity(unchecked) var depth = 0
    /// The last type found to be neither a primitive nor an array with a fast path.
    @exclusivity(unchecked) var lastGeneralType: ObjectIdentifier?

    init(reader: BinaryReader, userInfo: [CodingUserInfoKey: any Sendable]) {
        self.reader = reader
        self.userInfo = userInfo
    }

    func invalidate() {
        reader = BinaryReader(base: reader.base, count: 0)
        hintContainer = -1
    }

    // MARK: Errors and coding paths

    func codingPath(to offset: Int) -> [any CodingKey] {
        guard offset >= 0 else { return [] }
        return reader.codingPath(root: 0, to: offset)
    }

    func error(_ what: String, at offset: Int) -> MultiprocessingError {
        let path = offset >= 0 ? binaryPathDescription(codingPath(to: offset)) : "a missing value"
        let place = offset >= 0 ? " (byte \(offset))" : ""
        return MultiprocessingError(.transport, "binary decoding: \(what) at \(path)\(place)")
    }

    func mismatch(_ expected: String, at offset: Int) -> MultiprocessingError {
        guard let tag = reader.byte(at: offset) else { return error("expected \(expected), found no value", at: offset) }
        return error("expected \(expected), found \(BinaryFormat.describe(tag: tag))", at: offset)
    }

    // MARK: Primitive reads (each returns the value and the offset after it)

    @inline(__always)
    func tag(at offset: Int, limit: Int, expecting what: @autoclosure () -> String) throws -> UInt8 {
        guard offset >= 0 && offset < limit && limit <= reader.count else {
            throw error("expected \(what()), found the end of the data", at: offset)
        }
        return reader.base.load(fromByteOffset: offset, as: UInt8.self)
    }

    @inline(__always)
    func isNil(at offset: Int) -> Bool {
        reader.byte(at: offset) == BinaryFormat.nilTag
    }

    /// Reads an integer of any width into `I`, which must hold its value; `next` becomes its end.
    func readInteger<I: FixedWidthInteger>(at offset: Int, limit: Int, next: inout Int) throws -> I {
        let tag = try tag(at: offset, limit: limit, expecting: "\(I.self)")
        if tag >= BinaryFormat.smallIntBase {
            next = offset &+ 1
            return I(truncatingIfNeeded: tag &- BinaryFormat.smallIntBase)
        }
        let payload = offset &+ 1
        let value: I
        switch tag {
        case BinaryFormat.int8Tag: value = try exact(reader.load(Int8.self, at: payload, limit: limit), at: offset)
        case BinaryFormat.int16Tag: value = try exact(reader.load(Int16.self, at: payload, limit: limit), at: offset)
        case BinaryFormat.int32Tag: value = try exact(reader.load(Int32.self, at: payload, limit: limit), at: offset)
        case BinaryFormat.int64Tag: value = try exact(reader.load(Int64.self, at: payload, limit: limit), at: offset)
        case BinaryFormat.uint8Tag: value = try exact(reader.load(UInt8.self, at: payload, limit: limit), at: offset)
        case BinaryFormat.uint16Tag: value = try exact(reader.load(UInt16.self, at: payload, limit: limit), at: offset)
        case BinaryFormat.uint32Tag: value = try exact(reader.load(UInt32.self, at: payload, limit: limit), at: offset)
        case BinaryFormat.uint64Tag: value = try exact(reader.load(UInt64.self, at: payload, limit: limit), at: offset)
        case BinaryFormat.int128Tag, BinaryFormat.uint128Tag:
            value = try readInteger128(tag, at: offset, limit: limit)
        default:
            throw mismatch("\(I.self)", at: offset)
        }
        next = payload + (tag == BinaryFormat.int128Tag || tag == BinaryFormat.uint128Tag ? 16 : 1 << Int((tag - BinaryFormat.int8Tag) & 3))
        return value
    }

    /// Reads an integer without caring where it ends.
    @inline(__always)
    func readInteger<I: FixedWidthInteger>(at offset: Int, limit: Int) throws -> I {
        var next = 0
        return try readInteger(at: offset, limit: limit, next: &next)
    }

    private func readInteger128<I: FixedWidthInteger>(_ tag: UInt8, at offset: Int, limit: Int) throws -> I {
        guard let low = reader.load(UInt64.self, at: offset + 1, limit: limit),
              let high = reader.load(UInt64.self, at: offset + 9, limit: limit) else {
            throw error("truncated \(I.self)", at: offset)
        }
        if #available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *) {
            let bits = UInt128(high) << 64 | UInt128(low)
            let value: I? = tag == BinaryFormat.int128Tag ? I(exactly: Int128(bitPattern: bits)) : I(exactly: bits)
            guard let value else { throw error("integer does not fit in \(I.self)", at: offset) }
            return value
        }
        throw error("128-bit integers need a newer runtime", at: offset)
    }

    @inline(__always)
    private func exact<Source: FixedWidthInteger, I: FixedWidthInteger>(_ value: Source?, at offset: Int) throws -> I {
        guard let value else { throw error("truncated \(I.self)", at: offset) }
        guard let result = I(exactly: value) else { throw error("\(value) does not fit in \(I.self)", at: offset) }
        return result
    }

    func readDouble(at offset: Int, limit: Int) throws -> (Double, Int) {
        switch try tag(at: offset, limit: limit, expecting: "Double") {
        case BinaryFormat.float64Tag:
            guard let bits = reader.load(UInt64.self, at: offset + 1, limit: limit) else { throw error("truncated Double", at: offset) }
            return (Double(bitPattern: bits), offset + 9)
        case BinaryFormat.float32Tag:
            guard let bits = reader.load(UInt32.self, at: offset + 1, limit: limit) else { throw error("truncated Float", at: offset) }
            return (Double(Float(bitPattern: bits)), offset + 5)
        default:
            throw mismatch("Double", at: offset)
        }
    }

    func readFloat(at offset: Int, limit: Int) throws -> (Float, Int) {
        switch try tag(at: offset, limit: limit, expecting: "Float") {
        case BinaryFormat.float32Tag:
            guard let bits = reader.load(UInt32.self, at: offset + 1, limit: limit) else { throw error("truncated Float", at: offset) }
            return (Float(bitPattern: bits), offset + 5)
        case BinaryFormat.float64Tag:
            guard let bits = reader.load(UInt64.self, at: offset + 1, limit: limit) else { throw error("truncated Double", at: offset) }
            return (try narrow(Double(bitPattern: bits), at: offset), offset + 9)
        default:
            throw mismatch("Float", at: offset)
        }
    }

    private func narrow(_ value: Double, at offset: Int) throws -> Float {
        guard !value.isFinite || abs(value) <= Double(Float.greatestFiniteMagnitude) else {
            throw error("\(value) does not fit in Float", at: offset)
        }
        return Float(value)
    }

    func readBool(at offset: Int, limit: Int) throws -> (Bool, Int) {
        switch try tag(at: offset, limit: limit, expecting: "Bool") {
        case BinaryFormat.trueTag: return (true, offset + 1)
        case BinaryFormat.falseTag: return (false, offset + 1)
        default: throw mismatch("Bool", at: offset)
        }
    }

    func readString(at offset: Int, limit: Int) throws -> (String, Int) {
        let tag = try tag(at: offset, limit: limit, expecting: "String")
        let start: Int
        let length: Int
        if tag >= BinaryFormat.smallStringBase && tag < BinaryFormat.smallIntBase {
            start = offset + 1
            length = Int(tag &- BinaryFormat.smallStringBase)
            guard length <= limit - start else { throw error("truncated String", at: offset) }
        } else if tag == BinaryFormat.stringTag {
            guard let (count, next) = reader.length(at: offset + 1, limit: limit) else {
                throw error("truncated String", at: offset)
            }
            start = next
            length = count
        } else {
            throw mismatch("String", at: offset)
        }
        guard let string = BinaryReader.string(UnsafeRawBufferPointer(start: reader.base + start, count: length)) else {
            throw error("String is not valid UTF-8", at: offset)
        }
        return (string, start + length)
    }

    // MARK: Packed arrays

    /// Copies a packed array out as raw memory when it is packed with `kind`; nil otherwise.
    func readPacked<Element>(_: Element.Type, kind: BinaryPackedKind, at offset: Int, limit: Int, end: inout Int) -> [Element]? {
        guard reader.byte(at: offset) == BinaryFormat.packedTag,
              reader.byte(at: offset + 1) == kind.rawValue,
              let bounds = reader.packedBounds(at: offset, limit: limit) else { return nil }
        let source = reader.base + bounds.dataStart
        let array = [Element](unsafeUninitializedCapacity: bounds.count) { buffer, initialized in
            if bounds.count > 0 {
                UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: source, byteCount: bounds.end - bounds.dataStart)
            }
            initialized = bounds.count
        }
        end = bounds.end
        return array
    }

    /// Reads one raw element of a packed array as an integer.
    func packedInteger<I: FixedWidthInteger>(_ kind: BinaryPackedKind, at offset: Int) throws -> I {
        let limit = reader.count
        switch kind {
        case .uint8: return try exact(reader.load(UInt8.self, at: offset, limit: limit), at: offset)
        case .int8: return try exact(reader.load(Int8.self, at: offset, limit: limit), at: offset)
        case .uint16: return try exact(reader.load(UInt16.self, at: offset, limit: limit), at: offset)
        case .int16: return try exact(reader.load(Int16.self, at: offset, limit: limit), at: offset)
        case .uint32: return try exact(reader.load(UInt32.self, at: offset, limit: limit), at: offset)
        case .int32: return try exact(reader.load(Int32.self, at: offset, limit: limit), at: offset)
        case .uint64: return try exact(reader.load(UInt64.self, at: offset, limit: limit), at: offset)
        case .int64: return try exact(reader.load(Int64.self, at: offset, limit: limit), at: offset)
        case .float32, .float64: throw error("expected \(I.self), found a floating-point array element", at: offset)
        }
    }

    /// Reads one raw element of a packed array as a Double.
    func packedDouble(_ kind: BinaryPackedKind, at offset: Int) throws -> Double {
        switch kind {
        case .float64:
            guard let bits = reader.load(UInt64.self, at: offset, limit: reader.count) else { throw error("truncated Double", at: offset) }
            return Double(bitPattern: bits)
        case .float32:
            guard let bits = reader.load(UInt32.self, at: offset, limit: reader.count) else { throw error("truncated Float", at: offset) }
            return Double(Float(bitPattern: bits))
        default:
            throw error("expected a floating-point number, found an integer array element", at: offset)
        }
    }

    func packedFloat(_ kind: BinaryPackedKind, at offset: Int) throws -> Float {
        if kind == .float32 {
            guard let bits = reader.load(UInt32.self, at: offset, limit: reader.count) else { throw error("truncated Float", at: offset) }
            return Float(bitPattern: bits)
        }
        return try narrow(packedDouble(kind, at: offset), at: offset)
    }

    // MARK: Values

    /// Decodes a `T` from the value at `offset`, which must end by `limit`; `end` becomes its end.
    ///
    /// Generic code that runs unspecialized avoids tuples and optionals of `T`: each would make the
    /// runtime look up their metadata on every call.
    func decodeValue<T: Decodable>(_: T.Type, at offset: Int, limit: Int, end: inout Int) throws -> T {
        let type = ObjectIdentifier(T.self)
        if type == lastGeneralType {
            return try decodeGeneral(T.self, at: offset, limit: limit, end: &end)
        }
        if T.self == String.self {
            let (value, next) = try readString(at: offset, limit: limit)
            end = next
            return binaryCast(value, to: T.self)
        } else if T.self == Int.self {
            return binaryCast(try readInteger(at: offset, limit: limit, next: &end) as Int, to: T.self)
        } else if T.self == Double.self {
            let (value, next) = try readDouble(at: offset, limit: limit)
            end = next
            return binaryCast(value, to: T.self)
        } else if T.self == Bool.self {
            let (value, next) = try readBool(at: offset, limit: limit)
            end = next
            return binaryCast(value, to: T.self)
        } else if T.self == Float.self {
            let (value, next) = try readFloat(at: offset, limit: limit)
            end = next
            return binaryCast(value, to: T.self)
        } else if T.self == Int64.self {
            return binaryCast(try readInteger(at: offset, limit: limit, next: &end) as Int64, to: T.self)
        } else if T.self == UInt8.self {
            return binaryCast(try readInteger(at: offset, limit: limit, next: &end) as UInt8, to: T.self)
        } else if T.self == UInt64.self {
            return binaryCast(try readInteger(at: offset, limit: limit, next: &end) as UInt64, to: T.self)
        } else if T.self == Int32.self {
            return binaryCast(try readInteger(at: offset, limit: limit, next: &end) as Int32, to: T.self)
        } else if T.self == UInt.self {
            return binaryCast(try readInteger(at: offset, limit: limit, next: &end) as UInt, to: T.self)
        } else if T.self == UInt32.self {
            return binaryCast(try readInteger(at: offset, limit: limit, next: &end) as UInt32, to: T.self)
        } else if T.self == Int16.self {
            return binaryCast(try readInteger(at: offset, limit: limit, next: &end) as Int16, to: T.self)
        } else if T.self == UInt16.self {
            return binaryCast(try readInteger(at: offset, limit: limit, next: &end) as UInt16, to: T.self)
        } else if T.self == Int8.self {
            return binaryCast(try readInteger(at: offset, limit: limit, next: &end) as Int8, to: T.self)
        }
        if let array = BinaryPackedArray.of(T.self) {
            let kind = array.kind
            switch array {
            case .uint8: if let value = readPacked(UInt8.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .float64: if let value = readPacked(Double.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .int: if let value = readPacked(Int.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .float32: if let value = readPacked(Float.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .int64: if let value = readPacked(Int64.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .uint64: if let value = readPacked(UInt64.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .uint: if let value = readPacked(UInt.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .int32: if let value = readPacked(Int32.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .uint32: if let value = readPacked(UInt32.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .int16: if let value = readPacked(Int16.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .uint16: if let value = readPacked(UInt16.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            case .int8: if let value = readPacked(Int8.self, kind: kind, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
            }
        }
        if type == BinaryPackedArray.stringArray, let strings = try readStrings(at: offset, limit: limit, end: &end) {
            return binaryCast(strings, to: T.self)
        }
        if BinaryPackedArray.of(T.self) == nil && type != BinaryPackedArray.stringArray {
            lastGeneralType = type
        }
        return try decodeGeneral(T.self, at: offset, limit: limit, end: &end)
    }

    /// Decodes a `T` with its `init(from:)`.
    private func decodeGeneral<T: Decodable>(_: T.Type, at offset: Int, limit: Int, end: inout Int) throws -> T {
        guard let next = reader.valueEnd(at: offset, limit: limit) else {
            throw error("malformed or truncated value for \(T.self)", at: offset)
        }
        end = next
        return try decodeNested(T.self, decoder: BinaryValueDecoder(context: self, position: offset, packed: 0))
    }

    /// Reads `[String]` from an unkeyed container without going through `Array.init(from:)`;
    /// nil when the value is something else (an empty value, say), for the general path to handle.
    private func readStrings(at offset: Int, limit: Int, end: inout Int) throws -> [String]? {
        guard let tag = reader.byte(at: offset), tag == BinaryFormat.unkeyedTag || tag == BinaryFormat.unkeyed64Tag,
              let bounds = reader.containerBounds(at: offset, limit: limit) else { return nil }
        var strings: [String] = []
        strings.reserveCapacity(bounds.count)
        var position = bounds.contentStart
        while position < bounds.end {
            let (string, next) = try readString(at: position, limit: bounds.end)
            strings.append(string)
            position = next
        }
        end = bounds.end
        return strings
    }

    /// Runs `T.init(from:)`, counting the nesting so hostile input cannot exhaust the stack.
    func decodeNested<T: Decodable>(_: T.Type, decoder: BinaryValueDecoder) throws -> T {
        depth += 1
        defer { depth -= 1 }
        guard depth <= BinaryFormat.maxDepth else {
            throw error("values nest more than \(BinaryFormat.maxDepth) levels deep", at: decoder.position)
        }
        return try T(from: decoder)
    }

    /// Decodes a `T` from one raw element of a packed array.
    func decodePackedElement<T: Decodable>(_: T.Type, kind: BinaryPackedKind, at offset: Int) throws -> T {
        if T.self == Double.self { return binaryCast(try packedDouble(kind, at: offset), to: T.self) }
        if T.self == Float.self { return binaryCast(try packedFloat(kind, at: offset), to: T.self) }
        if T.self == Int.self { return binaryCast(try packedInteger(kind, at: offset) as Int, to: T.self) }
        if T.self == UInt8.self { return binaryCast(try packedInteger(kind, at: offset) as UInt8, to: T.self) }
        if T.self == Int64.self { return binaryCast(try packedInteger(kind, at: offset) as Int64, to: T.self) }
        if T.self == UInt64.self { return binaryCast(try packedInteger(kind, at: offset) as UInt64, to: T.self) }
        if T.self == UInt.self { return binaryCast(try packedInteger(kind, at: offset) as UInt, to: T.self) }
        if T.self == Int32.self { return binaryCast(try packedInteger(kind, at: offset) as Int32, to: T.self) }
        if T.self == UInt32.self { return binaryCast(try packedInteger(kind, at: offset) as UInt32, to: T.self) }
        if T.self == Int16.self { return binaryCast(try packedInteger(kind, at: offset) as Int16, to: T.self) }
        if T.self == UInt16.self { return binaryCast(try packedInteger(kind, at: offset) as UInt16, to: T.self) }
        if T.self == Int8.self { return binaryCast(try packedInteger(kind, at: offset) as Int8, to: T.self) }
        return try decodeNested(T.self, decoder: BinaryValueDecoder(context: self, position: offset, packed: kind.rawValue))
    }

    // MARK: Keyed lookups

    /// Finds `key` among the entries of the keyed container starting at `container`: the offset of
    /// its value, or -1 when the key is absent. Looks first where the last lookup in this container
    /// left off, so keys read in the order they were written are each found at the first look.
    ///
    /// A found value has not been checked yet: the caller reads it (within `end`) and then calls
    /// ``resume(container:at:)`` with the offset after it.
    func findValue(container: Int, contentStart: Int, end: Int, key: UnsafeRawBufferPointer) throws -> Int {
        let reader = self.reader
        if hintContainer == container && hintEntry < end && hintEntry >= contentStart {
            guard let (name, value) = reader.entryKey(at: hintEntry, limit: end) else {
                throw error("malformed keyed container entry", at: hintEntry)
            }
            if BinaryDecodingContext.equal(name, key) {
                hintContainer = -1
                return value
            }
        }
        var position = contentStart
        while position < end {
            guard let (name, value) = reader.entryKey(at: position, limit: end) else {
                throw error("malformed keyed container entry", at: position)
            }
            if BinaryDecodingContext.equal(name, key) {
                hintContainer = -1
                return value
            }
            guard let next = reader.valueEnd(at: value, limit: end) else {
                throw error("malformed or truncated value", at: value)
            }
            position = next
        }
        return -1
    }

    /// Records that the entry of keyed container `container` read last ended at `next`.
    @inline(__always)
    func resume(container: Int, at next: Int) {
        hintContainer = container
        hintEntry = next
    }

    /// Compares two short byte strings (keys), a word at a time.
    @inline(__always)
    static func equal(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        let count = a.count
        guard count == b.count else { return false }
        guard count > 0 else { return true }
        let left = a.baseAddress.unsafelyUnwrapped
        let right = b.baseAddress.unsafelyUnwrapped
        if count > 32 { return memcmp(left, right, count) == 0 }
        var offset = 0
        while offset + 8 <= count {
            if left.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                != right.loadUnaligned(fromByteOffset: offset, as: UInt64.self) { return false }
            offset += 8
        }
        while offset < count {
            if left.load(fromByteOffset: offset, as: UInt8.self) != right.load(fromByteOffset: offset, as: UInt8.self) {
                return false
            }
            offset += 1
        }
        return true
    }

    /// The bounds of the keyed container at `position` (an empty value or a missing one counts as empty).
    func keyedBounds(at position: Int, packed: UInt8) throws -> (contentStart: Int, end: Int) {
        guard position >= 0 else { return (0, 0) }
        guard packed == 0 else { throw error("expected a keyed container, found a packed array element", at: position) }
        let tag = try tag(at: position, limit: reader.count, expecting: "a keyed container")
        switch tag {
        case BinaryFormat.keyedTag, BinaryFormat.keyed64Tag:
            guard let bounds = reader.containerBounds(at: position, limit: reader.count) else {
                throw error("truncated keyed container", at: position)
            }
            return (bounds.contentStart, bounds.end)
        case BinaryFormat.emptyTag:
            return (position + 1, position + 1)
        default:
            throw mismatch("a keyed container", at: position)
        }
    }

    /// The first element of the unkeyed container or packed array at `position`.
    func unkeyedFirst(at position: Int, packed: UInt8) throws -> Int {
        guard position >= 0 else { return 0 }
        guard packed == 0 else { throw error("expected an unkeyed container, found a packed array element", at: position) }
        let tag = try tag(at: position, limit: reader.count, expecting: "an unkeyed container")
        switch tag {
        case BinaryFormat.unkeyedTag, BinaryFormat.unkeyed64Tag:
            guard let bounds = reader.containerBounds(at: position, limit: reader.count) else {
                throw error("truncated unkeyed container", at: position)
            }
            return bounds.contentStart
        case BinaryFormat.packedTag:
            guard let bounds = reader.packedBounds(at: position, limit: reader.count) else {
                throw error("truncated packed array", at: position)
            }
            return bounds.dataStart
        case BinaryFormat.emptyTag:
            return position + 1
        default:
            throw mismatch("an unkeyed container", at: position)
        }
    }

    /// The layout of the unkeyed container at `start` (validated when the container was made):
    /// where its elements end, and the element kind when it is a packed array.
    @inline(__always)
    func unkeyedLayout(at start: Int) -> (end: Int, kind: BinaryPackedKind?) {
        guard start >= 0, let tag = reader.byte(at: start) else { return (0, nil) }
        if tag == BinaryFormat.unkeyedTag, let length = reader.load(UInt32.self, at: start + 1, limit: reader.count) {
            return (start + BinaryFormat.unkeyedHeader + Int(length), nil)
        }
        return unkeyedLayoutSlow(at: start, tag: tag)
    }

    private func unkeyedLayoutSlow(at start: Int, tag: UInt8) -> (end: Int, kind: BinaryPackedKind?) {
        switch tag {
        case BinaryFormat.unkeyed64Tag:
            return (reader.containerBounds(at: start, limit: reader.count)?.end ?? 0, nil)
        case BinaryFormat.packedTag:
            guard let bounds = reader.packedBounds(at: start, limit: reader.count) else { return (0, nil) }
            return (bounds.end, bounds.kind)
        default:
            return (start + 1, nil)
        }
    }
}

/// The `Decoder` for one value: a tagged value, a raw element of a packed array (`packed` is its
/// kind), or a missing value (`position` -1, from `superDecoder(forKey:)` of an absent key).
struct BinaryValueDecoder: Decoder {
    let context: BinaryDecodingContext
    let position: Int
    let packed: UInt8

    var codingPath: [any CodingKey] { context.codingPath(to: position) }

    var userInfo: [CodingUserInfoKey: Any] { context.userInfo }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(try BinaryKeyedDecodingContainer<Key>(context: context, position: position, packed: packed))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try BinaryUnkeyedDecodingContainer(context: context, position: position, packed: packed)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        BinarySingleValueDecodingContainer(context: context, position: position, packed: packed)
    }
}

/// Reads the entries of one keyed container (an empty value or a missing one reads as empty).
/// Lookups scan the entries' keys lazily; no dictionary of keys is built.
struct BinaryKeyedDecodingContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let context: BinaryDecodingContext
    let start: Int
    let contentStart: Int
    let end: Int

    init(context: BinaryDecodingContext, position: Int, packed: UInt8) throws {
        self.context = context
        start = position
        (contentStart, end) = try context.keyedBounds(at: position, packed: packed)
    }

    var codingPath: [any CodingKey] { context.codingPath(to: start) }

    var allKeys: [Key] {
        var keys: [Key] = []
        var position = contentStart
        let reader = context.reader
        while position < end {
            guard let (name, value) = reader.entryKey(at: position, limit: end),
                  let next = reader.valueEnd(at: value, limit: end) else { break }
            if let string = BinaryReader.string(name), let key = Key(stringValue: string) {
                keys.append(key)
            }
            position = next
        }
        return keys
    }

    /// The offset of `key`'s value, or -1 when the key is absent.
    @inline(__always)
    private func find<K: CodingKey>(_ key: K) throws -> Int {
        var name = key.stringValue
        return try name.withUTF8 { utf8 in
            try context.findValue(container: start, contentStart: contentStart, end: end, key: UnsafeRawBufferPointer(utf8))
        }
    }

    @inline(__always)
    private func require(_ key: Key) throws -> Int {
        let value = try find(key)
        guard value >= 0 else { throw context.error("key '\(key.stringValue)' not found", at: start) }
        return value
    }

    /// The value of `key` when it is there and not nil, else -1.
    @inline(__always)
    private func present(_ key: Key) throws -> Int {
        let value = try find(key)
        guard value >= 0 else { return -1 }
        guard !context.isNil(at: value) else {
            context.resume(container: start, at: value + 1)
            return -1
        }
        return value
    }

    /// Checks that the value at `value` lies within this container; resumes after it.
    private func skip(_ value: Int) throws -> Int {
        guard let next = context.reader.valueEnd(at: value, limit: end) else {
            throw context.error("malformed or truncated value", at: value)
        }
        context.resume(container: start, at: next)
        return value
    }

    /// Records where the value just read ended and returns it.
    @inline(__always)
    private func resumed<T>(_ read: (T, Int)) -> T {
        context.resume(container: start, at: read.1)
        return read.0
    }

    @inline(__always)
    private func readInteger<I: FixedWidthInteger>(_ value: Int) throws -> I {
        var next = 0
        let result: I = try context.readInteger(at: value, limit: end, next: &next)
        context.resume(container: start, at: next)
        return result
    }

    private func readValue<T: Decodable>(_: T.Type, _ value: Int) throws -> T {
        var next = 0
        let result = try context.decodeValue(T.self, at: value, limit: end, end: &next)
        context.resume(container: start, at: next)
        return result
    }

    func contains(_ key: Key) -> Bool {
        ((try? find(key)) ?? -1) >= 0
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        context.isNil(at: try skip(require(key)))
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool {
        try resumed(context.readBool(at: require(key), limit: end))
    }

    func decode(_ type: String.Type, forKey key: Key) throws -> String {
        try resumed(context.readString(at: require(key), limit: end))
    }

    func decode(_ type: Double.Type, forKey key: Key) throws -> Double {
        try resumed(context.readDouble(at: require(key), limit: end))
    }

    func decode(_ type: Float.Type, forKey key: Key) throws -> Float {
        try resumed(context.readFloat(at: require(key), limit: end))
    }

    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try readInteger(require(key)) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try readInteger(require(key)) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try readInteger(require(key)) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try readInteger(require(key)) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try readInteger(require(key)) }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: Int128.Type, forKey key: Key) throws -> Int128 { try readInteger(require(key)) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try readInteger(require(key)) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try readInteger(require(key)) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try readInteger(require(key)) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try readInteger(require(key)) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try readInteger(require(key)) }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: UInt128.Type, forKey key: Key) throws -> UInt128 { try readInteger(require(key)) }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try readValue(T.self, require(key))
    }

    // One lookup each, instead of the default `contains` + `decodeNil` + `decode`.

    func decodeIfPresent(_ type: Bool.Type, forKey key: Key) throws -> Bool? {
        let value = try present(key)
        return value < 0 ? nil : try resumed(context.readBool(at: value, limit: end))
    }

    func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? {
        let value = try present(key)
        return value < 0 ? nil : try resumed(context.readString(at: value, limit: end))
    }

    func decodeIfPresent(_ type: Double.Type, forKey key: Key) throws -> Double? {
        let value = try present(key)
        return value < 0 ? nil : try resumed(context.readDouble(at: value, limit: end))
    }

    func decodeIfPresent(_ type: Float.Type, forKey key: Key) throws -> Float? {
        let value = try present(key)
        return value < 0 ? nil : try resumed(context.readFloat(at: value, limit: end))
    }

    @inline(__always)
    private func integerIfPresent<I: FixedWidthInteger>(_ key: Key) throws -> I? {
        let value = try present(key)
        return value < 0 ? nil : try readInteger(value) as I
    }

    func decodeIfPresent(_ type: Int.Type, forKey key: Key) throws -> Int? { try integerIfPresent(key) }
    func decodeIfPresent(_ type: Int8.Type, forKey key: Key) throws -> Int8? { try integerIfPresent(key) }
    func decodeIfPresent(_ type: Int16.Type, forKey key: Key) throws -> Int16? { try integerIfPresent(key) }
    func decodeIfPresent(_ type: Int32.Type, forKey key: Key) throws -> Int32? { try integerIfPresent(key) }
    func decodeIfPresent(_ type: Int64.Type, forKey key: Key) throws -> Int64? { try integerIfPresent(key) }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decodeIfPresent(_ type: Int128.Type, forKey key: Key) throws -> Int128? { try integerIfPresent(key) }
    func decodeIfPresent(_ type: UInt.Type, forKey key: Key) throws -> UInt? { try integerIfPresent(key) }
    func decodeIfPresent(_ type: UInt8.Type, forKey key: Key) throws -> UInt8? { try integerIfPresent(key) }
    func decodeIfPresent(_ type: UInt16.Type, forKey key: Key) throws -> UInt16? { try integerIfPresent(key) }
    func decodeIfPresent(_ type: UInt32.Type, forKey key: Key) throws -> UInt32? { try integerIfPresent(key) }
    func decodeIfPresent(_ type: UInt64.Type, forKey key: Key) throws -> UInt64? { try integerIfPresent(key) }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decodeIfPresent(_ type: UInt128.Type, forKey key: Key) throws -> UInt128? { try integerIfPresent(key) }

    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        let value = try present(key)
        return value < 0 ? nil : try readValue(T.self, value)
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type, forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        KeyedDecodingContainer(
            try BinaryKeyedDecodingContainer<NestedKey>(context: context, position: skip(require(key)), packed: 0))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try BinaryUnkeyedDecodingContainer(context: context, position: skip(require(key)), packed: 0)
    }

    func superDecoder() throws -> any Decoder {
        try superDecoder(at: find(BinaryCodingKey.superKey))
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        try superDecoder(at: find(key))
    }

    private func superDecoder(at value: Int) throws -> any Decoder {
        BinaryValueDecoder(context: context, position: value < 0 ? -1 : try skip(value), packed: 0)
    }
}

/// Reads the elements of an unkeyed container, a packed array, or an empty value. Kept to three
/// words so that the `any UnkeyedDecodingContainer` holding it needs no heap box; the end and the
/// count are read from the container's header when asked for, and `currentIndex` (which the
/// standard library's types never ask for) is found by stepping over the elements already read.
struct BinaryUnkeyedDecodingContainer: UnkeyedDecodingContainer {
    let context: BinaryDecodingContext
    /// The container's header, or -1 for a missing value.
    let start: Int
    /// The next element.
    var cursor: Int

    init(context: BinaryDecodingContext, position: Int, packed: UInt8) throws {
        self.context = context
        start = position
        cursor = try context.unkeyedFirst(at: position, packed: packed)
    }

    var codingPath: [any CodingKey] { context.codingPath(to: start) }

    var count: Int? {
        guard start >= 0, let tag = context.reader.byte(at: start) else { return 0 }
        switch tag {
        case BinaryFormat.unkeyedTag, BinaryFormat.unkeyed64Tag:
            return context.reader.containerBounds(at: start, limit: context.reader.count)?.count ?? 0
        case BinaryFormat.packedTag:
            return context.reader.packedBounds(at: start, limit: context.reader.count)?.count ?? 0
        default:
            return 0
        }
    }

    var isAtEnd: Bool { cursor >= context.unkeyedLayout(at: start).end }

    var currentIndex: Int {
        let reader = context.reader
        guard start >= 0, let tag = reader.byte(at: start) else { return 0 }
        if tag == BinaryFormat.packedTag {
            guard let bounds = reader.packedBounds(at: start, limit: reader.count) else { return 0 }
            return (cursor - bounds.dataStart) / bounds.kind.size
        }
        guard let bounds = reader.containerBounds(at: start, limit: reader.count) else { return 0 }
        var index = 0
        var position = bounds.contentStart
        while position < cursor, let next = reader.valueEnd(at: position, limit: bounds.end) {
            position = next
            index += 1
        }
        return index
    }

    /// The next element's offset and the layout, or a throw at the end.
    @inline(__always)
    private func nextElement(_ what: @autoclosure () -> String) throws -> (end: Int, kind: BinaryPackedKind?) {
        let layout = context.unkeyedLayout(at: start)
        guard cursor < layout.end else {
            throw context.error("expected \(what()), found the end of an unkeyed container", at: start)
        }
        return layout
    }

    mutating func decodeNil() throws -> Bool {
        let layout = try nextElement("a value")
        guard layout.kind == nil, context.isNil(at: cursor) else { return false }
        cursor += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool {
        let layout = try nextElement("Bool")
        guard layout.kind == nil else { throw context.error("expected Bool, found a packed number", at: cursor) }
        let (value, next) = try context.readBool(at: cursor, limit: layout.end)
        cursor = next
        return value
    }

    mutating func decode(_ type: String.Type) throws -> String {
        let layout = try nextElement("String")
        guard layout.kind == nil else { throw context.error("expected String, found a packed number", at: cursor) }
        let (value, next) = try context.readString(at: cursor, limit: layout.end)
        cursor = next
        return value
    }

    mutating func decode(_ type: Double.Type) throws -> Double {
        let layout = try nextElement("Double")
        if let kind = layout.kind {
            let value = try context.packedDouble(kind, at: cursor)
            cursor += kind.size
            return value
        }
        let (value, next) = try context.readDouble(at: cursor, limit: layout.end)
        cursor = next
        return value
    }

    mutating func decode(_ type: Float.Type) throws -> Float {
        let layout = try nextElement("Float")
        if let kind = layout.kind {
            let value = try context.packedFloat(kind, at: cursor)
            cursor += kind.size
            return value
        }
        let (value, next) = try context.readFloat(at: cursor, limit: layout.end)
        cursor = next
        return value
    }

    @inline(__always)
    private mutating func integer<I: FixedWidthInteger>() throws -> I {
        let layout = try nextElement("\(I.self)")
        if let kind = layout.kind {
            let value: I = try context.packedInteger(kind, at: cursor)
            cursor += kind.size
            return value
        }
        return try context.readInteger(at: cursor, limit: layout.end, next: &cursor)
    }

    mutating func decode(_ type: Int.Type) throws -> Int { try integer() }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try integer() }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try integer() }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try integer() }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try integer() }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func decode(_ type: Int128.Type) throws -> Int128 { try integer() }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try integer() }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try integer() }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try integer() }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try integer() }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try integer() }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func decode(_ type: UInt128.Type) throws -> UInt128 { try integer() }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let layout = try nextElement("\(T.self)")
        if let kind = layout.kind {
            let value = try context.decodePackedElement(T.self, kind: kind, at: cursor)
            cursor += kind.size
            return value
        }
        return try context.decodeValue(T.self, at: cursor, limit: layout.end, end: &cursor)
    }

    /// Steps over the next tagged element, returning where it starts.
    private mutating func skipElement(_ what: String) throws -> Int {
        let layout = try nextElement(what)
        guard layout.kind == nil else { throw context.error("expected \(what), found a packed number", at: cursor) }
        guard let next = context.reader.valueEnd(at: cursor, limit: layout.end) else {
            throw context.error("malformed or truncated element", at: cursor)
        }
        let element = cursor
        cursor = next
        return element
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let element = try skipElement("a keyed container")
        return KeyedDecodingContainer(try BinaryKeyedDecodingContainer<NestedKey>(context: context, position: element, packed: 0))
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let element = try skipElement("an unkeyed container")
        return try BinaryUnkeyedDecodingContainer(context: context, position: element, packed: 0)
    }

    mutating func superDecoder() throws -> any Decoder {
        let layout = try nextElement("a value")
        if let kind = layout.kind {
            let element = cursor
            cursor += kind.size
            return BinaryValueDecoder(context: context, position: element, packed: kind.rawValue)
        }
        return BinaryValueDecoder(context: context, position: try skipElement("a value"), packed: 0)
    }
}

/// Reads the one value a decoder stands for.
struct BinarySingleValueDecodingContainer: SingleValueDecodingContainer {
    let context: BinaryDecodingContext
    let position: Int
    let packed: UInt8

    var codingPath: [any CodingKey] { context.codingPath(to: position) }

    /// The limit for reads: the value was bounded by its parent when its decoder was made.
    private var limit: Int { context.reader.count }

    private var kind: BinaryPackedKind? { packed == 0 ? nil : BinaryPackedKind(rawValue: packed) }

    private func present(_ what: String) throws {
        guard position >= 0 else { throw context.error("expected \(what), found no value", at: position) }
    }

    func decodeNil() -> Bool {
        position < 0 || (packed == 0 && context.isNil(at: position))
    }

    func decode(_ type: Bool.Type) throws -> Bool {
        try present("Bool")
        guard packed == 0 else { throw context.error("expected Bool, found a packed number", at: position) }
        return try context.readBool(at: position, limit: limit).0
    }

    func decode(_ type: String.Type) throws -> String {
        try present("String")
        guard packed == 0 else { throw context.error("expected String, found a packed number", at: position) }
        return try context.readString(at: position, limit: limit).0
    }

    func decode(_ type: Double.Type) throws -> Double {
        try present("Double")
        if let kind { return try context.packedDouble(kind, at: position) }
        return try context.readDouble(at: position, limit: limit).0
    }

    func decode(_ type: Float.Type) throws -> Float {
        try present("Float")
        if let kind { return try context.packedFloat(kind, at: position) }
        return try context.readFloat(at: position, limit: limit).0
    }

    @inline(__always)
    private func integer<I: FixedWidthInteger>() throws -> I {
        try present("\(I.self)")
        if let kind { return try context.packedInteger(kind, at: position) }
        return try context.readInteger(at: position, limit: limit)
    }

    func decode(_ type: Int.Type) throws -> Int { try integer() }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer() }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer() }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer() }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer() }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: Int128.Type) throws -> Int128 { try integer() }
    func decode(_ type: UInt.Type) throws -> UInt { try integer() }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer() }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer() }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer() }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer() }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: UInt128.Type) throws -> UInt128 { try integer() }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try present("\(T.self)")
        if let kind { return try context.decodePackedElement(T.self, kind: kind, at: position) }
        var end = 0
        return try context.decodeValue(T.self, at: position, limit: limit, end: &end)
    }
}
