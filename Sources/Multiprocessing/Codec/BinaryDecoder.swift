#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One short ASCII string (up to 15 bytes, which a String holds inline, without a reference to
/// count) and its bytes, zero-padded to two words.
struct BinaryShortString {
    private var string = ""
    private var words: (UInt64, UInt64) = (0, 0)
    private var count = -1

    /// The string kept, when `bytes` are its bytes.
    @inline(__always)
    func string(ifSameAs bytes: UnsafeRawBufferPointer) -> String? {
        guard bytes.count == count else { return nil }
        let same = withUnsafeBytes(of: words) {
            BinaryDecodingContext.equal(UnsafeRawBufferPointer(rebasing: $0[..<count]), bytes)
        }
        return same ? string : nil
    }

    /// Keeps `string`, made of the ASCII `bytes`, if it is short.
    mutating func remember(_ string: String, _ bytes: UnsafeRawBufferPointer) {
        guard bytes.count <= 15 else { return }
        self.string = string
        words = (0, 0)
        withUnsafeMutableBytes(of: &words) { $0.copyMemory(from: bytes) }
        count = bytes.count
    }
}

/// Decodes `Decodable` values from the bytes that ``BinaryEncoder`` produces.
///
/// The input is treated as untrusted: truncated, corrupt or hostile bytes throw
/// ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport`` (saying what was wrong
/// and at which coding path); they never trap, and no length is believed before it has been checked
/// against the bytes that remain. Keys may be read in any order and absent keys are cheap to ask for;
/// arrays of fixed-width numbers are copied out as raw memory. Integers decode into any integer type
/// that holds their value. The whole input must be one value: trailing bytes are an error.
///
/// Two limits protect the decoding process: values nest at most 512 levels deep and no deeper than the
/// decoding thread's stack has room for (a reserve of up to 64 KiB is kept), and the decoded values may
/// take no more memory than ``memoryBudget`` allows for the size of the input.
///
/// Errors thrown by `init(from:)` implementations (a `DecodingError` from an enum's raw value, say)
/// are wrapped in a ``MultiprocessingError/Code/transport`` error that carries their description.
public struct BinaryDecoder: Sendable {
    /// Values handed to every `init(from:)` as `Decoder.userInfo`.
    public var userInfo: [CodingUserInfoKey: any Sendable]

    /// How much memory the values of one decode call may take; see ``MemoryBudget``.
    public var memoryBudget: MemoryBudget

    /// Creates a decoder with empty ``userInfo`` and the default ``memoryBudget``.
    public init() {
        userInfo = [:]
        memoryBudget = .default
    }

    /// Decodes a value of type `T` from `bytes`, which must hold exactly one encoded value.
    ///
    /// - Throws: ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport`` when the bytes
    ///   are not a `T`, when the values would take more memory than ``memoryBudget`` allows, or when they
    ///   nest deeper than 512 levels or than the calling thread's stack has room for.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try bytes.withUnsafeBytes { try decode(type, from: $0) }
    }

    /// Decodes a value of type `T` from `bytes`, which must hold exactly one encoded value.
    ///
    /// The bytes are read only during the call; the decoded value does not refer to them.
    ///
    /// - Throws: ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport`` when the bytes
    ///   are not a `T`, when the values would take more memory than ``memoryBudget`` allows, or when they
    ///   nest deeper than 512 levels or than the calling thread's stack has room for.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: UnsafeRawBufferPointer) throws -> T {
        guard let base = bytes.baseAddress, !bytes.isEmpty else {
            throw MultiprocessingError(.transport, "binary decoding: cannot decode \(T.self) from an empty message")
        }
        return try BinaryDecodingContext.with(BinaryDecodingContext.key) { context in
            try context.decodeRoot(T.self, from: BinaryReader(base: base, count: bytes.count), userInfo: userInfo, budget: memoryBudget)
        }
    }
}

/// The state of a `BinaryDecoder.decode` call, shared by all its decoders and containers, and kept
/// by its thread for the next call (see ``BinaryReusableState``). Between calls its reader is empty.
final class BinaryDecodingContext: BinaryReusableState {
    static let key = makeKey()

    /// A keyed container: its header, where its entries start and end, the entry after the one read
    /// last (so keys read in the order they were written are each found at the first look), and the
    /// call it belongs to.
    struct Frame {
        var start: Int
        var contentStart: Int
        var end: Int
        var hint: Int
        var generation: Int
    }

    @exclusivity(unchecked) var busy = false
    @exclusivity(unchecked) var next: BinaryDecodingContext?
    /// Reads nothing between calls (the address is never read through when `count` is 0).
    @exclusivity(unchecked) private(set) var reader = BinaryReader(base: UnsafeRawPointer(bitPattern: 16).unsafelyUnwrapped, count: 0)
    @exclusivity(unchecked) var userInfo: [CodingUserInfoKey: any Sendable] = [:]
    /// Nesting of `init(from:)` calls.
    @exclusivity(unchecked) var depth = 0
    /// The stack of the thread that keeps this state.
    @exclusivity(unchecked) var stack = BinaryStackGuard.unmeasured
    /// Bytes of the memory budget not counted yet (negative once it is exceeded), and the budget.
    @exclusivity(unchecked) var budgetLeft = 0
    @exclusivity(unchecked) var budget = BinaryDecoder.MemoryBudget.default
    /// Changes at the start and end of every call, retiring what the call handed out.
    @exclusivity(unchecked) var generation = 0
    @exclusivity(unchecked) var kinds = BinaryKindCache()
    /// The short string read last (see ``readString(at:limit:next:)``), kept across calls.
    @exclusivity(unchecked) var lastShort = BinaryShortString()
    @exclusivity(unchecked) var boxes = BinaryBoxCache<Frame>()
    /// Frames of keyed containers made while every cached box was in use, and the containers' boxes.
    @exclusivity(unchecked) var spilledFrames: [Frame] = []
    @exclusivity(unchecked) var spilledBoxes: [AnyObject] = []

    init() {}

    deinit {
        boxes.deallocate()
    }

    /// Decodes the message in `reader`, which must hold one `T` value and nothing else.
    func decodeRoot<T: Decodable>(
        _: T.Type, from reader: BinaryReader, userInfo: [CodingUserInfoKey: any Sendable], budget: BinaryDecoder.MemoryBudget
    ) throws -> T {
        generation &+= 1
        self.reader = reader
        if !userInfo.isEmpty { self.userInfo = userInfo }
        self.budget = budget
        budgetLeft = budget.limit(forInputBytes: reader.count)
        do {
            var end = 0
            let value = try decodeValue(T.self, at: 0, limit: reader.count, end: &end)
            // Counts that could not throw where they were made (``allKeys``) are checked here.
            guard budgetLeft >= 0 else { throw overBudget(at: 0) }
            guard end == reader.count else {
                throw MultiprocessingError(
                    .transport, "binary decoding: \(reader.count - end) trailing bytes after the \(T.self) value")
            }
            return value
        } catch let error as MultiprocessingError {
            throw error
        } catch {
            throw MultiprocessingError(.transport, "binary decoding: decoding \(T.self) failed: \(error)")
        }
    }

    /// Ends the call: decoders that escaped it read nothing more, and the state is free again.
    func finish() {
        generation &+= 1
        reader = BinaryReader(base: reader.base, count: 0)
        depth = 0
        if !spilledFrames.isEmpty {
            spilledFrames = []
            spilledBoxes = []
        }
        if !userInfo.isEmpty { userInfo = [:] }
        busy = false
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

    /// The error of a decode whose values would take more memory than its budget allows.
    func overBudget(at offset: Int) -> MultiprocessingError {
        let limit = budget.limit(forInputBytes: reader.count)
        return error(
            "the decoded values would take more than \(BinaryStackGuard.bytes(limit)) of memory, the budget of a "
                + "\(reader.count)-byte message (\(budget)); raise BinaryDecoder.memoryBudget or "
                + "Connection.decodingBudget to accept such messages", at: offset)
    }

    /// Counts `bytes` of decoded values against the budget; throws once it is exceeded.
    @inline(__always)
    func charge(_ bytes: Int, at offset: Int) throws {
        budgetLeft &-= bytes
        if budgetLeft < 0 { throw overBudget(at: offset) }
    }

    /// Throws unless `count` values of `stride` bytes each fit in what is left of the budget (counting
    /// nothing yet): an array is refused before its storage grows, not after.
    @inline(__always)
    func reserve(_ count: Int, of stride: Int, at offset: Int) throws {
        let (total, overflow) = count.multipliedReportingOverflow(by: stride)
        if overflow || total > budgetLeft { throw overBudget(at: offset) }
    }

    func mismatch(_ expected: String, at offset: Int) -> MultiprocessingError {
        guard let tag = reader.byte(at: offset) else { return error("expected \(expected), found no value", at: offset) }
        return error("expected \(expected), found \(BinaryFormat.describe(tag: tag))", at: offset)
    }

    /// Throws unless `generation` is this call's: decoders and containers are good only within it.
    @inline(__always)
    func check(_ generation: Int) throws {
        if generation != self.generation {
            throw MultiprocessingError(.transport, "binary decoding: a decoder or container was used after its decode call ended")
        }
    }

    // MARK: Scalar reads (each reads the value at `offset`, which must end by `limit`, and sets `next` to its end)

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

    /// The byte at `offset` if it is a tag of a value that may end by `limit`, else nil.
    @inline(__always)
    func quickTag(at offset: Int, limit: Int) -> UInt8? {
        guard offset >= 0 && offset < limit && limit <= reader.count else { return nil }
        return reader.base.load(fromByteOffset: offset, as: UInt8.self)
    }

    /// Reads an integer of any width into `I`, which must hold its value.
    @inline(__always)
    func readInteger<I: FixedWidthInteger>(at offset: Int, limit: Int, next: inout Int) throws -> I {
        if let tag = quickTag(at: offset, limit: limit), tag >= BinaryFormat.smallIntBase {
            next = offset &+ 1
            return I(truncatingIfNeeded: tag &- BinaryFormat.smallIntBase)
        }
        return try readWideInteger(at: offset, limit: limit, next: &next)
    }

    private func readWideInteger<I: FixedWidthInteger>(at offset: Int, limit: Int, next: inout Int) throws -> I {
        let tag = try tag(at: offset, limit: limit, expecting: "\(I.self)")
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

    @inline(__always)
    func readDouble(at offset: Int, limit: Int, next: inout Int) throws -> Double {
        if quickTag(at: offset, limit: limit) == BinaryFormat.float64Tag, 8 < limit &- offset {
            next = offset &+ 9
            return Double(bitPattern: UInt64(littleEndian: reader.base.loadUnaligned(fromByteOffset: offset &+ 1, as: UInt64.self)))
        }
        return try readReal(at: offset, limit: limit, next: &next, as: "Double")
    }

    func readFloat(at offset: Int, limit: Int, next: inout Int) throws -> Float {
        if quickTag(at: offset, limit: limit) == BinaryFormat.float32Tag, 4 < limit &- offset {
            next = offset &+ 5
            return Float(bitPattern: UInt32(littleEndian: reader.base.loadUnaligned(fromByteOffset: offset &+ 1, as: UInt32.self)))
        }
        return try narrow(readReal(at: offset, limit: limit, next: &next, as: "Float"), at: offset)
    }

    /// Reads a Float or a Double value as a Double.
    private func readReal(at offset: Int, limit: Int, next: inout Int, as what: String) throws -> Double {
        switch try tag(at: offset, limit: limit, expecting: what) {
        case BinaryFormat.float64Tag:
            guard let bits = reader.load(UInt64.self, at: offset + 1, limit: limit) else { throw error("truncated Double", at: offset) }
            next = offset + 9
            return Double(bitPattern: bits)
        case BinaryFormat.float32Tag:
            guard let bits = reader.load(UInt32.self, at: offset + 1, limit: limit) else { throw error("truncated Float", at: offset) }
            next = offset + 5
            return Double(Float(bitPattern: bits))
        default:
            throw mismatch(what, at: offset)
        }
    }

    private func narrow(_ value: Double, at offset: Int) throws -> Float {
        guard !value.isFinite || abs(value) <= Double(Float.greatestFiniteMagnitude) else {
            throw error("\(value) does not fit in Float", at: offset)
        }
        return Float(value)
    }

    func readBool(at offset: Int, limit: Int, next: inout Int) throws -> Bool {
        let tag = try tag(at: offset, limit: limit, expecting: "Bool")
        guard tag == BinaryFormat.trueTag || tag == BinaryFormat.falseTag else { throw mismatch("Bool", at: offset) }
        next = offset + 1
        return tag == BinaryFormat.trueTag
    }

    @inline(__always)
    func readString(at offset: Int, limit: Int, next: inout Int) throws -> String {
        // A short ASCII string, whose bytes follow its tag.
        if let tag = quickTag(at: offset, limit: limit), tag >= BinaryFormat.smallStringBase && tag < BinaryFormat.smallIntBase {
            let length = Int(tag &- BinaryFormat.smallStringBase)
            let bytes = UnsafeRawBufferPointer(start: reader.base + offset + 1, count: length)
            if length < limit &- offset {
                // The short string read last, again: messages of a stream often repeat theirs (kinds,
                // states, names), and comparing two words costs far less than making a String,
                // which validates its bytes.
                if let same = lastShort.string(ifSameAs: bytes) {
                    next = offset &+ 1 &+ length
                    return same
                }
                if BinaryReader.isASCII(bytes) {
                    next = offset &+ 1 &+ length
                    let string = String(decoding: bytes, as: UTF8.self)
                    lastShort.remember(string, bytes)
                    return string
                }
            }
        }
        return try readOtherString(at: offset, limit: limit, next: &next)
    }

    private func readOtherString(at offset: Int, limit: Int, next: inout Int) throws -> String {
        let tag = try tag(at: offset, limit: limit, expecting: "String")
        let start: Int
        let length: Int
        if tag >= BinaryFormat.smallStringBase && tag < BinaryFormat.smallIntBase {
            start = offset + 1
            length = Int(tag &- BinaryFormat.smallStringBase)
            guard length <= limit - start else { throw error("truncated String", at: offset) }
        } else if tag == BinaryFormat.stringTag {
            guard let (count, after) = reader.length(at: offset + 1, limit: limit) else {
                throw error("truncated String", at: offset)
            }
            start = after
            length = count
        } else {
            throw mismatch("String", at: offset)
        }
        guard let string = BinaryReader.string(UnsafeRawBufferPointer(start: reader.base + start, count: length)) else {
            throw error("String is not valid UTF-8", at: offset)
        }
        next = start + length
        return string
    }

    // MARK: Packed arrays

    /// Copies a packed array out as raw memory when it is packed with `kind`; nil otherwise.
    func readPacked<Element>(_: Element.Type, kind: BinaryPackedKind, at offset: Int, limit: Int, end: inout Int) throws -> [Element]? {
        guard reader.byte(at: offset) == BinaryFormat.packedTag,
              reader.byte(at: offset + 1) == kind.rawValue,
              let bounds = reader.packedBounds(at: offset, limit: limit) else { return nil }
        try charge(bounds.end - bounds.dataStart, at: offset)
        end = bounds.end
        // (Not through `init(unsafeUninitializedCapacity:)` when empty: that writes to the shared empty array.)
        guard bounds.count > 0 else { return [] }
        let source = reader.base + bounds.dataStart
        return [Element](unsafeUninitializedCapacity: bounds.count) { buffer, initialized in
            UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: source, byteCount: bounds.end - bounds.dataStart)
            initialized = bounds.count
        }
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

    /// Decodes a `T` from the value at `offset`, which must end by `limit`; `end` becomes its end. With
    /// `packed`, the value is one raw element of a packed array of that kind instead.
    ///
    /// Generic code that runs unspecialized avoids tuples and optionals of `T`: each would make the
    /// runtime look up their metadata on every call.
    func decodeValue<T: Decodable>(_: T.Type, at offset: Int, limit: Int, end: inout Int, packed: BinaryPackedKind? = nil) throws -> T {
        try charge(MemoryLayout<T>.stride, at: offset)
        let kind = kinds.kind(of: T.self)
        switch kind {
        case .general: break
        case .string: return try scalar(String.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .bool: return try scalar(Bool.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .double: return try scalar(Double.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .float: return try scalar(Float.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .int: return try scalar(Int.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .int8: return try scalar(Int8.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .int16: return try scalar(Int16.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .int32: return try scalar(Int32.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .int64: return try scalar(Int64.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .uint: return try scalar(UInt.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .uint8: return try scalar(UInt8.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .uint16: return try scalar(UInt16.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .uint32: return try scalar(UInt32.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case .uint64: return try scalar(UInt64.self, as: T.self, at: offset, limit: limit, end: &end, packed: packed)
        case _ where packed != nil: break
        case .strings: if let value = try readStrings(at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .stringKeyedDictionary: if let value = try readDictionary(T.self, at: offset, limit: limit, end: &end) { return value as! T }
        case .intArray: if let value = try readPacked(Int.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .int8Array: if let value = try readPacked(Int8.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .int16Array: if let value = try readPacked(Int16.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .int32Array: if let value = try readPacked(Int32.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .int64Array: if let value = try readPacked(Int64.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .uintArray: if let value = try readPacked(UInt.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .uint8Array: if let value = try readPacked(UInt8.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .uint16Array: if let value = try readPacked(UInt16.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .uint32Array: if let value = try readPacked(UInt32.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .uint64Array: if let value = try readPacked(UInt64.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .floatArray: if let value = try readPacked(Float.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        case .doubleArray: if let value = try readPacked(Double.self, kind: kind.packed, at: offset, limit: limit, end: &end) { return binaryCast(value, to: T.self) }
        }
        // Through `init(from:)`, which also reads arrays that were not written packed.
        if let packed {
            end = offset + packed.size
            return try decodeNested(T.self, at: offset, stamp: stamp(packed.rawValue))
        }
        guard let next = reader.valueEnd(at: offset, limit: limit, keyed: true) else {
            throw error("malformed or truncated value for \(T.self)", at: offset)
        }
        end = next
        return try decodeNested(T.self, at: offset, stamp: stamp(0))
    }

    @inline(__always)
    private func scalar<S: BinaryScalar, T>(
        _: S.Type, as _: T.Type, at offset: Int, limit: Int, end: inout Int, packed: BinaryPackedKind?
    ) throws -> T {
        binaryCast(try S.read(self, at: offset, limit: limit, next: &end, packed: packed), to: T.self)
    }

    /// Reads `[String]` from an unkeyed container without going through `Array.init(from:)`;
    /// nil when the value is something else (an empty value, say), for the general path to handle.
    private func readStrings(at offset: Int, limit: Int, end: inout Int) throws -> [String]? {
        guard let tag = reader.byte(at: offset), tag == BinaryFormat.unkeyedTag || tag == BinaryFormat.unkeyed64Tag,
              let bounds = reader.containerBounds(at: offset, limit: limit) else { return nil }
        try charge(bounds.count &* MemoryLayout<String>.stride, at: offset)
        var strings: [String] = []
        strings.reserveCapacity(bounds.count)
        var position = bounds.contentStart
        while position < bounds.end {
            strings.append(try readString(at: position, limit: bounds.end, next: &position))
        }
        end = bounds.end
        return strings
    }

    /// A value of kind ``BinaryKind/stringKeyedDictionary`` read by ``readStringKeyed(_:at:limit:end:)``,
    /// or nil. As `Any`: a `T?` here would make ``decodeValue(_:at:limit:end:packed:)``, which every value
    /// goes through, look up `Optional<T>`'s metadata on every call.
    @inline(never)
    private func readDictionary<T>(_: T.Type, at offset: Int, limit: Int, end: inout Int) throws -> Any? {
        try (T.self as! any BinaryStringKeyedDictionary.Type).read(from: self, at: offset, limit: limit, end: &end)
    }

    /// The entries of the keyed container at `offset` as a dictionary keyed by their strings, without
    /// going through `Dictionary.init(from:)` (which lists the keys, looks each one up again, and grows
    /// its table as it goes); nil when the value is something else, for the general path to handle.
    /// Entries whose keys are not valid UTF-8 are skipped, as `allKeys` skips them.
    func readStringKeyed<Value: Decodable>(_: Value.Type, at offset: Int, limit: Int, end: inout Int) throws -> [String: Value]? {
        guard let tag = reader.byte(at: offset), tag == BinaryFormat.keyedTag || tag == BinaryFormat.keyed64Tag,
              let bounds = reader.containerBounds(at: offset, limit: limit) else { return nil }
        // The entries are counted first, so that the table is sized once.
        var count = 0
        var position = bounds.contentStart
        while position < bounds.end {
            guard let (_, value) = reader.entryKey(at: position, limit: bounds.end),
                  let next = reader.valueEnd(at: value, limit: bounds.end) else {
                throw error("malformed keyed container entry", at: position)
            }
            count += 1
            position = next
        }
        try reserve(count, of: MemoryLayout<String>.stride &+ MemoryLayout<Value>.stride, at: offset)
        var result = [String: Value](minimumCapacity: count)
        try enterNested(at: offset)
        defer { depth -= 1 }
        position = bounds.contentStart
        while position < bounds.end {
            let (name, value) = reader.entryKey(at: position, limit: bounds.end)!
            try charge(name.count, at: position)
            var next = value
            let element = try decodeValue(Value.self, at: value, limit: bounds.end, end: &next)
            if let key = BinaryReader.string(name) { result.updateValue(element, forKey: key) }
            position = next
        }
        end = bounds.end
        return result
    }

    /// Runs `T.init(from:)` on the value at `offset`, counting the nesting so hostile input cannot
    /// exhaust the stack.
    private func decodeNested<T: Decodable>(_: T.Type, at offset: Int, stamp: Int) throws -> T {
        depth += 1
        defer { depth -= 1 }
        guard depth <= BinaryFormat.maxDepth else {
            throw error("values nest more than \(BinaryFormat.maxDepth) levels deep", at: offset)
        }
        if stack.exhausted(atDepth: depth) {
            throw error(
                "values nest \(depth) levels deep, more than this thread's stack has room for (\(stack.left) left); "
                    + "decode them on a thread with a larger stack", at: offset)
        }
        return try T(from: BinaryValueDecoder(context: .passUnretained(self), position: offset, stamp: stamp))
    }

    /// Counts one more level of nesting for the value at `offset` (the caller counts it back down), or
    /// throws when there are too many or the thread's stack is nearly used up.
    @inline(__always)
    private func enterNested(at offset: Int) throws {
        depth += 1
        guard depth <= BinaryFormat.maxDepth else {
            depth -= 1
            throw error("values nest more than \(BinaryFormat.maxDepth) levels deep", at: offset)
        }
        if stack.exhausted(atDepth: depth) {
            defer { depth -= 1 }
            throw error(
                "values nest \(depth) levels deep, more than this thread's stack has room for (\(stack.left) left); "
                    + "decode them on a thread with a larger stack", at: offset)
        }
    }

    /// A decoder's `stamp`: this call's generation and the packed element kind (0 for a tagged value).
    @inline(__always)
    func stamp(_ packed: UInt8) -> Int {
        generation << 8 | Int(packed)
    }

    // MARK: Containers

    /// A keyed container for the value at `position` (-1: a missing value, read as empty), in a
    /// reused box when one is free.
    func keyedContainer<Key: CodingKey>(_: Key.Type, at position: Int, stamp: Int) throws -> KeyedDecodingContainer<Key> {
        try check(stamp >> 8)
        let (contentStart, end) = try keyedBounds(at: position, packed: UInt8(truncatingIfNeeded: stamp))
        let frame = Frame(start: position, contentStart: contentStart, end: end, hint: contentStart, generation: generation)
        if let box = boxes.reuse(Key.self, frame: frame) {
            return reusedContainer(box, as: KeyedDecodingContainer<Key>.self)
        }
        let slot = boxes.newSlot(frame: frame)
        guard slot >= 0 else { return try spilledContainer(Key.self, frame: frame) }
        let container = KeyedDecodingContainer(
            BinaryKeyedDecodingContainer<Key>(context: .passUnretained(self), slot: slot, frame: frame))
        boxes.keep(unsafeBitCast(container, to: AnyObject.self), of: Key.self, in: slot)
        return container
    }

    /// A keyed container whose box the cache has no room for: its frame goes on top of the spilled
    /// frames, after the frames of containers no one holds any more have come off the top (containers
    /// nest, so they mostly end in the reverse order of their making). Each spilled frame counts
    /// against the memory budget while it is kept.
    private func spilledContainer<Key: CodingKey>(_: Key.Type, frame: Frame) throws -> KeyedDecodingContainer<Key> {
        while let top = spilledBoxes.indices.last, isKnownUniquelyReferenced(&spilledBoxes[top]) {
            spilledBoxes.removeLast()
            spilledFrames.removeLast()
            budgetLeft &+= MemoryLayout<Frame>.stride
        }
        try charge(MemoryLayout<Frame>.stride, at: frame.start)
        spilledFrames.append(frame)
        let container = KeyedDecodingContainer(BinaryKeyedDecodingContainer<Key>(
            context: .passUnretained(self), slot: -1 - spilledFrames.count, frame: frame))
        // Without a box to watch (see ``BinaryBoxCache``), the frame stays until the call ends.
        spilledBoxes.append(keyedBoxesConvert ? unsafeBitCast(container, to: AnyObject.self) : BinaryBoxPlaceholder.placeholder)
        return container
    }

    /// Finds `key` among the entries of a keyed container: the offset of its value, or -1 when the
    /// key is absent. Looks first at the frame's hint.
    ///
    /// A found value has not been checked yet: the caller reads it (within `frame.end`) and then
    /// records where it ended as the frame's hint.
    @inline(__always)
    func find(_ key: String, in frame: Frame) throws -> Int {
        if let value = try key.utf8.withContiguousStorageIfAvailable({ try find(UnsafeRawBufferPointer($0), in: frame) }) {
            return value
        }
        var key = key
        return try key.withUTF8 { try find(UnsafeRawBufferPointer($0), in: frame) }
    }

    @inline(__always)
    private func find(_ key: UnsafeRawBufferPointer, in frame: Frame) throws -> Int {
        // The entry at the hint, when its key is this one.
        let hint = frame.hint
        if hint >= frame.contentStart && hint < frame.end {
            let length = Int(reader.base.load(fromByteOffset: hint, as: UInt8.self))
            if length == key.count && length < 0x80 && length < frame.end &- hint,
               BinaryDecodingContext.equal(UnsafeRawBufferPointer(start: reader.base + hint + 1, count: length), key) {
                return hint + 1 + length
            }
            // A key of 128 bytes or more has a longer length prefix; without this look every lookup of
            // such a key would scan from the first entry, and a dictionary would decode in quadratic time.
            if length >= 0x80, key.count >= 0x80, let value = longKeyAtHint(key, hint: hint, in: frame) {
                return value
            }
        }
        return try scan(for: key, in: frame)
    }

    /// The value of the entry at `hint` when its key, of 128 bytes or more, is `key`; nil otherwise.
    private func longKeyAtHint(_ key: UnsafeRawBufferPointer, hint: Int, in frame: Frame) -> Int? {
        guard let (name, value) = reader.entryKey(at: hint, limit: frame.end),
              BinaryDecodingContext.equal(name, key) else { return nil }
        return value
    }

    /// `find` without the hint: the entries from the first one.
    private func scan(for key: UnsafeRawBufferPointer, in frame: Frame) throws -> Int {
        var position = frame.contentStart
        while position < frame.end {
            guard let (name, value) = reader.entryKey(at: position, limit: frame.end) else {
                throw error("malformed keyed container entry", at: position)
            }
            if BinaryDecodingContext.equal(name, key) { return value }
            guard let next = reader.valueEnd(at: value, limit: frame.end) else {
                throw error("malformed or truncated value", at: value)
            }
            position = next
        }
        return -1
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
        if quickTag(at: position, limit: reader.count) == BinaryFormat.keyedTag,
           let length = reader.load(UInt32.self, at: position &+ 1, limit: reader.count),
           Int(length) <= reader.count &- position &- BinaryFormat.keyedHeader {
            return (position &+ BinaryFormat.keyedHeader, position &+ BinaryFormat.keyedHeader &+ Int(length))
        }
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
    func unkeyedFirst(at position: Int, stamp: Int) throws -> Int {
        try check(stamp >> 8)
        guard position >= 0 else { return 0 }
        guard stamp & 0xFF == 0 else { throw error("expected an unkeyed container, found a packed array element", at: position) }
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

    /// The layout of the unkeyed container at `start` (validated when the container was made, and
    /// read again against the current bytes): where its elements end, and the element kind when it
    /// is a packed array.
    @inline(__always)
    func unkeyedLayout(at start: Int) -> (end: Int, kind: BinaryPackedKind?) {
        guard start >= 0, let tag = reader.byte(at: start) else { return (0, nil) }
        if tag == BinaryFormat.unkeyedTag, let length = reader.load(UInt32.self, at: start + 1, limit: reader.count) {
            return (start + BinaryFormat.unkeyedHeader + Int(length), nil)
        }
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

    /// Before the first element of the unkeyed container at `start` is read (when `cursor` is that
    /// element): throws unless all its elements, of `stride` bytes each, fit in the budget.
    @inline(__always)
    func reserveElements(of stride: Int, in start: Int, at cursor: Int) throws {
        if cursor == start &+ BinaryFormat.unkeyedHeader, reader.byte(at: start) == BinaryFormat.unkeyedTag,
           let count = reader.load(UInt32.self, at: start &+ 5, limit: reader.count) {
            try reserve(Int(count), of: stride, at: start)
        } else if cursor <= start &+ BinaryFormat.unkeyed64Header {
            try reserveElementsSlowly(of: stride, in: start, at: cursor)
        }
    }

    private func reserveElementsSlowly(of stride: Int, in start: Int, at cursor: Int) throws {
        guard start >= 0, let tag = reader.byte(at: start) else { return }
        let count: Int
        switch tag {
        case BinaryFormat.unkeyed64Tag:
            guard let bounds = reader.containerBounds(at: start, limit: reader.count), cursor == bounds.contentStart else { return }
            count = bounds.count
        case BinaryFormat.packedTag:
            guard let bounds = reader.packedBounds(at: start, limit: reader.count), cursor == bounds.dataStart else { return }
            count = bounds.count
        default:
            return
        }
        try reserve(count, of: stride, at: start)
    }
}

/// The values with a direct read in every container: a tagged value, or one raw element of a packed
/// array.
protocol BinaryScalar {
    static func read(_ context: BinaryDecodingContext, at offset: Int, limit: Int, next: inout Int) throws -> Self
    static func read(_ context: BinaryDecodingContext, packed kind: BinaryPackedKind, at offset: Int) throws -> Self
}

extension BinaryScalar {
    /// Reads the value at `offset` (one raw element of a packed array of kind `packed`, if given);
    /// `next` becomes its end.
    @inline(__always)
    static func read(_ context: BinaryDecodingContext, at offset: Int, limit: Int, next: inout Int, packed: BinaryPackedKind?) throws -> Self {
        guard let packed else { return try read(context, at: offset, limit: limit, next: &next) }
        next = offset + packed.size
        return try read(context, packed: packed, at: offset)
    }
}

extension BinaryScalar where Self: FixedWidthInteger {
    static func read(_ context: BinaryDecodingContext, at offset: Int, limit: Int, next: inout Int) throws -> Self {
        try context.readInteger(at: offset, limit: limit, next: &next)
    }

    static func read(_ context: BinaryDecodingContext, packed kind: BinaryPackedKind, at offset: Int) throws -> Self {
        try context.packedInteger(kind, at: offset)
    }
}

extension Int: BinaryScalar {}
extension Int8: BinaryScalar {}
extension Int16: BinaryScalar {}
extension Int32: BinaryScalar {}
extension Int64: BinaryScalar {}
extension UInt: BinaryScalar {}
extension UInt8: BinaryScalar {}
extension UInt16: BinaryScalar {}
extension UInt32: BinaryScalar {}
extension UInt64: BinaryScalar {}
@available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
extension Int128: BinaryScalar {}
@available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
extension UInt128: BinaryScalar {}

extension Double: BinaryScalar {
    static func read(_ context: BinaryDecodingContext, at offset: Int, limit: Int, next: inout Int) throws -> Double {
        try context.readDouble(at: offset, limit: limit, next: &next)
    }

    static func read(_ context: BinaryDecodingContext, packed kind: BinaryPackedKind, at offset: Int) throws -> Double {
        try context.packedDouble(kind, at: offset)
    }
}

extension Float: BinaryScalar {
    static func read(_ context: BinaryDecodingContext, at offset: Int, limit: Int, next: inout Int) throws -> Float {
        try context.readFloat(at: offset, limit: limit, next: &next)
    }

    static func read(_ context: BinaryDecodingContext, packed kind: BinaryPackedKind, at offset: Int) throws -> Float {
        try context.packedFloat(kind, at: offset)
    }
}

extension Bool: BinaryScalar {
    static func read(_ context: BinaryDecodingContext, at offset: Int, limit: Int, next: inout Int) throws -> Bool {
        try context.readBool(at: offset, limit: limit, next: &next)
    }

    static func read(_ context: BinaryDecodingContext, packed kind: BinaryPackedKind, at offset: Int) throws -> Bool {
        throw context.error("expected Bool, found a packed number", at: offset)
    }
}

extension String: BinaryScalar {
    static func read(_ context: BinaryDecodingContext, at offset: Int, limit: Int, next: inout Int) throws -> String {
        try context.readString(at: offset, limit: limit, next: &next)
    }

    static func read(_ context: BinaryDecodingContext, packed kind: BinaryPackedKind, at offset: Int) throws -> String {
        throw context.error("expected String, found a packed number", at: offset)
    }
}

/// The `Decoder` for one value: a tagged value, a raw element of a packed array, or a missing value
/// (`position` -1, from `superDecoder(forKey:)` of an absent key). `stamp` holds the call's
/// generation and the packed element kind (see ``BinaryDecodingContext/stamp(_:)``).
struct BinaryValueDecoder: Decoder {
    let context: Unmanaged<BinaryDecodingContext>
    let position: Int
    let stamp: Int

    var codingPath: [any CodingKey] { context._withUnsafeGuaranteedRef { $0.codingPath(to: position) } }

    /// The decoder's user info, with the process's ``ManagerActorSystem`` under `actorSystemKey` unless the
    /// caller put another there, so that references to shared objects decode wherever they arrive.
    var userInfo: [CodingUserInfoKey: Any] {
        context._withUnsafeGuaranteedRef { ManagerActorSystem.addingSystem(to: $0.userInfo as [CodingUserInfoKey: Any]) }
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        try context._withUnsafeGuaranteedRef { try $0.keyedContainer(Key.self, at: position, stamp: stamp) }
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try BinaryUnkeyedDecodingContainer(context: context, position: position, stamp: stamp)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        BinarySingleValueDecodingContainer(context: context, position: position, stamp: stamp)
    }
}

/// Reads the entries of one keyed container (an empty value or a missing one reads as empty).
/// Lookups scan the entries' keys lazily; no dictionary of keys is built. Its bounds are in the
/// context's box cache under `slot` when its box is cached, else among the context's spilled frames
/// under `-2 - slot` (so that its hint still moves: without it, a dictionary nested deeper than the
/// cache holds would decode in quadratic time).
struct BinaryKeyedDecodingContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let context: Unmanaged<BinaryDecodingContext>
    let slot: Int
    /// The container's frame as it was made; its current one is in the box cache or among the spilled
    /// frames. (A plain value, so that copying the container copies bytes only.)
    let frame: BinaryDecodingContext.Frame

    /// Runs `body` with the context and the container's current frame (checked to be this call's).
    @inline(__always)
    private func with<T>(_ body: (BinaryDecodingContext, BinaryDecodingContext.Frame) throws -> T) throws -> T {
        try context._withUnsafeGuaranteedRef { context in
            if slot >= 0 {
                let frame = context.boxes.frames[slot]
                try context.check(frame.generation)
                return try body(context, frame)
            }
            try context.check(frame.generation)
            return try body(context, context.spilledFrames[-2 - slot])
        }
    }

    var codingPath: [any CodingKey] { (try? with { $0.codingPath(to: $1.start) }) ?? [] }

    /// The keys count against the memory budget; since this cannot throw, a decode whose keys exceed it
    /// fails when it next counts a value, or at its end.
    var allKeys: [Key] {
        (try? with { context, frame in
            var keys: [Key] = []
            var position = frame.contentStart
            while position < frame.end {
                guard let (name, value) = context.reader.entryKey(at: position, limit: frame.end),
                      let next = context.reader.valueEnd(at: value, limit: frame.end) else { break }
                if let string = BinaryReader.string(name), let key = Key(stringValue: string) {
                    keys.append(key)
                }
                position = next
            }
            context.budgetLeft &-= keys.count &* MemoryLayout<Key>.stride
            return keys
        }) ?? []
    }

    /// Records that the value just read from this container ended at `next`.
    @inline(__always)
    private func resume(_ context: BinaryDecodingContext, at next: Int) {
        if slot >= 0 {
            context.boxes.frames[slot].hint = next
        } else {
            context.spilledFrames[-2 - slot].hint = next
        }
    }

    /// The offset of `key`'s value; throws when the key is absent.
    @inline(__always)
    private func require(_ context: BinaryDecodingContext, _ frame: BinaryDecodingContext.Frame, _ key: some CodingKey) throws -> Int {
        let value = try context.find(key.stringValue, in: frame)
        guard value >= 0 else { throw context.error("key '\(key.stringValue)' not found", at: frame.start) }
        return value
    }

    /// Checks that the value at `value` lies within the container; resumes after it.
    private func skip(_ context: BinaryDecodingContext, _ frame: BinaryDecodingContext.Frame, _ value: Int) throws -> Int {
        guard let next = context.reader.valueEnd(at: value, limit: frame.end) else {
            throw context.error("malformed or truncated value", at: value)
        }
        resume(context, at: next)
        return value
    }

    /// Reads `key`'s value with `read` (given the value's offset, the container's end, and where to
    /// put the value's end).
    @inline(__always)
    private func value<T>(_ key: Key, _ read: (BinaryDecodingContext, Int, Int, inout Int) throws -> T) throws -> T {
        try with { context, frame in
            var next = 0
            let value = try read(context, require(context, frame, key), frame.end, &next)
            resume(context, at: next)
            return value
        }
    }

    /// `value` when the key is there and not nil: one lookup, instead of the default `contains` +
    /// `decodeNil` + `decode`.
    @inline(__always)
    private func valueIfPresent<T>(_ key: Key, _ read: (BinaryDecodingContext, Int, Int, inout Int) throws -> T) throws -> T? {
        try with { context, frame in
            let value = try context.find(key.stringValue, in: frame)
            guard value >= 0 else { return nil }
            var next = value + 1
            let result = context.isNil(at: value) ? nil : try read(context, value, frame.end, &next)
            resume(context, at: next)
            return result
        }
    }

    @inline(__always)
    private func scalar<T: BinaryScalar>(_ key: Key) throws -> T {
        try value(key) { try T.read($0, at: $1, limit: $2, next: &$3) }
    }

    @inline(__always)
    private func scalarIfPresent<T: BinaryScalar>(_ key: Key) throws -> T? {
        try valueIfPresent(key) { try T.read($0, at: $1, limit: $2, next: &$3) }
    }

    func contains(_ key: Key) -> Bool {
        ((try? with { try $0.find(key.stringValue, in: $1) }) ?? -1) >= 0
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        try with { $0.isNil(at: try skip($0, $1, require($0, $1, key))) }
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try scalar(key) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try scalar(key) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try scalar(key) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try scalar(key) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try scalar(key) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try scalar(key) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try scalar(key) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try scalar(key) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try scalar(key) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try scalar(key) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try scalar(key) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try scalar(key) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try scalar(key) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try scalar(key) }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: Int128.Type, forKey key: Key) throws -> Int128 { try scalar(key) }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: UInt128.Type, forKey key: Key) throws -> UInt128 { try scalar(key) }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try value(key) { try $0.decodeValue(T.self, at: $1, limit: $2, end: &$3) }
    }

    func decodeIfPresent(_ type: Bool.Type, forKey key: Key) throws -> Bool? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: Double.Type, forKey key: Key) throws -> Double? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: Float.Type, forKey key: Key) throws -> Float? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: Int.Type, forKey key: Key) throws -> Int? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: Int8.Type, forKey key: Key) throws -> Int8? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: Int16.Type, forKey key: Key) throws -> Int16? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: Int32.Type, forKey key: Key) throws -> Int32? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: Int64.Type, forKey key: Key) throws -> Int64? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: UInt.Type, forKey key: Key) throws -> UInt? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: UInt8.Type, forKey key: Key) throws -> UInt8? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: UInt16.Type, forKey key: Key) throws -> UInt16? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: UInt32.Type, forKey key: Key) throws -> UInt32? { try scalarIfPresent(key) }
    func decodeIfPresent(_ type: UInt64.Type, forKey key: Key) throws -> UInt64? { try scalarIfPresent(key) }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decodeIfPresent(_ type: Int128.Type, forKey key: Key) throws -> Int128? { try scalarIfPresent(key) }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decodeIfPresent(_ type: UInt128.Type, forKey key: Key) throws -> UInt128? { try scalarIfPresent(key) }

    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        try valueIfPresent(key) { try $0.decodeValue(T.self, at: $1, limit: $2, end: &$3) }
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type, forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        try with { context, frame in
            try context.keyedContainer(NestedKey.self, at: skip(context, frame, require(context, frame, key)), stamp: context.stamp(0))
        }
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        let value = try with { try skip($0, $1, require($0, $1, key)) }
        return try BinaryUnkeyedDecodingContainer(context: context, position: value, stamp: context._withUnsafeGuaranteedRef { $0.stamp(0) })
    }

    func superDecoder() throws -> any Decoder {
        try superDecoder(named: BinaryCodingKey.superKey)
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        try superDecoder(named: key)
    }

    private func superDecoder(named key: some CodingKey) throws -> any Decoder {
        try with { context, frame in
            let value = try context.find(key.stringValue, in: frame)
            let position = value < 0 ? -1 : try skip(context, frame, value)
            return BinaryValueDecoder(context: self.context, position: position, stamp: context.stamp(0))
        }
    }
}

/// Reads the elements of an unkeyed container, a packed array, or an empty value. Kept to three
/// words so that the `any UnkeyedDecodingContainer` holding it needs no heap box; the end and the
/// count are read from the container's header when asked for (against the current call's bytes, so
/// a container that escaped its call reads nothing), and `currentIndex` (which the standard library's
/// types never ask for) is found by stepping over the elements already read.
struct BinaryUnkeyedDecodingContainer: UnkeyedDecodingContainer {
    let context: Unmanaged<BinaryDecodingContext>
    /// The container's header, or -1 for a missing value.
    let start: Int
    /// The next element.
    var cursor: Int

    init(context: Unmanaged<BinaryDecodingContext>, position: Int, stamp: Int) throws {
        self.context = context
        start = position
        cursor = try context._withUnsafeGuaranteedRef { try $0.unkeyedFirst(at: position, stamp: stamp) }
    }

    var codingPath: [any CodingKey] { context._withUnsafeGuaranteedRef { $0.codingPath(to: start) } }

    var count: Int? {
        context._withUnsafeGuaranteedRef { context in
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
    }

    var isAtEnd: Bool { cursor >= context._withUnsafeGuaranteedRef { $0.unkeyedLayout(at: start).end } }

    var currentIndex: Int {
        context._withUnsafeGuaranteedRef { context in
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
    }

    /// Reads the next element with `read` (given its offset, its kind when this is a packed array,
    /// the end of the elements, and where to put the element's end, which is set to its start).
    /// Elements of `stride` bytes count against the memory budget: all of them before the first is read.
    @inline(__always)
    private mutating func next<T>(
        _ what: @autoclosure () -> String, stride: Int = 0,
        _ read: (BinaryDecodingContext, Int, BinaryPackedKind?, Int, inout Int) throws -> T
    ) throws -> T {
        let start = self.start
        var cursor = self.cursor
        let value = try context._withUnsafeGuaranteedRef { context in
            let layout = context.unkeyedLayout(at: start)
            guard cursor < layout.end else {
                throw context.error("expected \(what()), found the end of an unkeyed container", at: start)
            }
            if stride > 0 { try context.reserveElements(of: stride, in: start, at: cursor) }
            return try read(context, cursor, layout.kind, layout.end, &cursor)
        }
        self.cursor = cursor
        return value
    }

    @inline(__always)
    private mutating func scalar<T: BinaryScalar>() throws -> T {
        try next("\(T.self)", stride: MemoryLayout<T>.stride) {
            try $0.charge(MemoryLayout<T>.stride, at: $1)
            return try T.read($0, at: $1, limit: $3, next: &$4, packed: $2)
        }
    }

    mutating func decodeNil() throws -> Bool {
        try next("a value") { context, at, kind, _, next in
            guard kind == nil && context.isNil(at: at) else { return false }
            next = at + 1
            return true
        }
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try scalar() }
    mutating func decode(_ type: String.Type) throws -> String { try scalar() }
    mutating func decode(_ type: Double.Type) throws -> Double { try scalar() }
    mutating func decode(_ type: Float.Type) throws -> Float { try scalar() }
    mutating func decode(_ type: Int.Type) throws -> Int { try scalar() }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try scalar() }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try scalar() }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try scalar() }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try scalar() }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try scalar() }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try scalar() }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try scalar() }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try scalar() }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try scalar() }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func decode(_ type: Int128.Type) throws -> Int128 { try scalar() }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func decode(_ type: UInt128.Type) throws -> UInt128 { try scalar() }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try next("\(T.self)", stride: MemoryLayout<T>.stride) { try $0.decodeValue(T.self, at: $1, limit: $3, end: &$4, packed: $2) }
    }

    /// Steps over the next element, returning a decoder for it.
    private mutating func element(_ what: String) throws -> BinaryValueDecoder {
        try next(what) { context, at, kind, end, next in
            if let kind {
                next = at + kind.size
            } else {
                guard let after = context.reader.valueEnd(at: at, limit: end) else {
                    throw context.error("malformed or truncated element", at: at)
                }
                next = after
            }
            return BinaryValueDecoder(context: .passUnretained(context), position: at, stamp: context.stamp(kind?.rawValue ?? 0))
        }
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try element("a keyed container").container(keyedBy: NestedKey.self)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try element("an unkeyed container").unkeyedContainer()
    }

    mutating func superDecoder() throws -> any Decoder {
        try element("a value")
    }
}

/// Reads the one value a decoder stands for.
struct BinarySingleValueDecodingContainer: SingleValueDecodingContainer {
    let context: Unmanaged<BinaryDecodingContext>
    let position: Int
    let stamp: Int

    var codingPath: [any CodingKey] { context._withUnsafeGuaranteedRef { $0.codingPath(to: position) } }

    /// Reads the value with `read` (given its kind when it is a raw element of a packed array, and
    /// where to put its end). The limit for reads is the end of the bytes: the value was bounded by
    /// its parent when its decoder was made.
    @inline(__always)
    private func read<T>(_ what: @autoclosure () -> String, _ read: (BinaryDecodingContext, BinaryPackedKind?, inout Int) throws -> T) throws -> T {
        try context._withUnsafeGuaranteedRef { context in
            try context.check(stamp >> 8)
            guard position >= 0 else { throw context.error("expected \(what()), found no value", at: position) }
            var next = 0
            return try read(context, BinaryPackedKind(rawValue: UInt8(truncatingIfNeeded: stamp)), &next)
        }
    }

    @inline(__always)
    private func scalar<T: BinaryScalar>() throws -> T {
        try read("\(T.self)") { try T.read($0, at: position, limit: $0.reader.count, next: &$2, packed: $1) }
    }

    func decodeNil() -> Bool {
        position < 0 || (stamp & 0xFF == 0 && context._withUnsafeGuaranteedRef { $0.isNil(at: position) })
    }

    func decode(_ type: Bool.Type) throws -> Bool { try scalar() }
    func decode(_ type: String.Type) throws -> String { try scalar() }
    func decode(_ type: Double.Type) throws -> Double { try scalar() }
    func decode(_ type: Float.Type) throws -> Float { try scalar() }
    func decode(_ type: Int.Type) throws -> Int { try scalar() }
    func decode(_ type: Int8.Type) throws -> Int8 { try scalar() }
    func decode(_ type: Int16.Type) throws -> Int16 { try scalar() }
    func decode(_ type: Int32.Type) throws -> Int32 { try scalar() }
    func decode(_ type: Int64.Type) throws -> Int64 { try scalar() }
    func decode(_ type: UInt.Type) throws -> UInt { try scalar() }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try scalar() }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try scalar() }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try scalar() }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try scalar() }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: Int128.Type) throws -> Int128 { try scalar() }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: UInt128.Type) throws -> UInt128 { try scalar() }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try read("\(T.self)") { try $0.decodeValue(T.self, at: position, limit: $0.reader.count, end: &$2, packed: $1) }
    }
}

/// Dictionaries keyed by strings, which ``BinaryDecodingContext/readStringKeyed(_:at:limit:end:)`` reads
/// directly (``BinaryKind/stringKeyedDictionary``).
protocol BinaryStringKeyedDictionary {
    /// The dictionary at `offset`, or nil when the value there is not a keyed container.
    static func read(from context: BinaryDecodingContext, at offset: Int, limit: Int, end: inout Int) throws -> Self?
}

extension Dictionary: BinaryStringKeyedDictionary where Key == String, Value: Decodable {
    static func read(from context: BinaryDecodingContext, at offset: Int, limit: Int, end: inout Int) throws -> Self? {
        try context.readStringKeyed(Value.self, at: offset, limit: limit, end: &end)
    }
}
