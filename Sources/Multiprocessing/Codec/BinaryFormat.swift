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
    /// A thread with a small stack is guarded by ``BinaryStackGuard`` before it reaches this depth.
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

/// How values of a type are coded. The types listed have fast paths (arrays of fixed-width numbers
/// travel as packed arrays, on little-endian machines; dictionaries keyed by strings are decoded
/// straight from their keyed container); any other type is `general`, coded through its own `Codable`
/// conformance. Looked up through a ``BinaryKindCache``.
enum BinaryKind: UInt8 {
    case general, string, bool, double, float, strings, stringKeyedDictionary
    case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64
    case intArray, int8Array, int16Array, int32Array, int64Array
    case uintArray, uint8Array, uint16Array, uint32Array, uint64Array, floatArray, doubleArray

    private static let table: [(ObjectIdentifier, BinaryKind)] = {
        var table: [(Any.Type, BinaryKind)] = [
            (String.self, .string), (Bool.self, .bool), (Double.self, .double), (Float.self, .float),
            (arrayType(String.self), .strings), (Int.self, .int), (Int8.self, .int8), (Int16.self, .int16),
            (Int32.self, .int32), (Int64.self, .int64), (UInt.self, .uint), (UInt8.self, .uint8),
            (UInt16.self, .uint16), (UInt32.self, .uint32), (UInt64.self, .uint64),
        ]
        #if _endian(little)
        table += [
            (arrayType(Int.self), .intArray), (arrayType(Int8.self), .int8Array), (arrayType(Int16.self), .int16Array),
            (arrayType(Int32.self), .int32Array), (arrayType(Int64.self), .int64Array), (arrayType(UInt.self), .uintArray),
            (arrayType(UInt8.self), .uint8Array), (arrayType(UInt16.self), .uint16Array),
            (arrayType(UInt32.self), .uint32Array), (arrayType(UInt64.self), .uint64Array),
            (arrayType(Float.self), .floatArray), (arrayType(Double.self), .doubleArray),
        ]
        #endif
        return table.map { (ObjectIdentifier($0.0), $0.1) }
    }()

    /// `[Element].self`, through the array's metadata accessor: never specialised, because a
    /// specialisation instantiates each array type from its mangled name, demangling it (a fresh child
    /// builds this table when it decodes its bootstrap).
    @_semantics("optimize.sil.specialize.generic.never")
    @inline(never)
    private static func arrayType<Element>(_: Element.Type) -> Any.Type { [Element].self }

    init(_ type: Any.Type) {
        let id = ObjectIdentifier(type)
        if let listed = BinaryKind.table.first(where: { $0.0 == id })?.1 {
            self = listed
        } else {
            self = type is any BinaryStringKeyedDictionary.Type ? .stringKeyedDictionary : .general
        }
    }

    /// The element kind on the wire of a packed array type.
    var packed: BinaryPackedKind {
        switch self {
        case .int8Array: return .int8
        case .int16Array: return .int16
        case .int32Array: return .int32
        case .intArray, .int64Array: return .int64
        case .uint8Array: return .uint8
        case .uint16Array: return .uint16
        case .uint32Array: return .uint32
        case .uintArray, .uint64Array: return .uint64
        case .floatArray: return .float32
        default: return .float64
        }
    }
}

/// A small direct-mapped cache of ``BinaryKind``s, so that telling a type's kind costs one comparison.
struct BinaryKindCache {
    private var types = [ObjectIdentifier?](repeating: nil, count: 32)
    private var kinds = [BinaryKind](repeating: .general, count: 32)

    @inline(__always)
    mutating func kind(of type: Any.Type) -> BinaryKind {
        let id = ObjectIdentifier(type)
        let index = Int(truncatingIfNeeded: UInt(bitPattern: id) >> 4) & 31
        if types[index] == id { return kinds[index] }
        types[index] = id
        kinds[index] = BinaryKind(type)
        return kinds[index]
    }
}

/// The per-thread reuse of coding states. A state (with its buffers and cached container boxes)
/// serves one `encode` or `decode` call at a time and is then kept, by the thread that used it, for
/// its next call: the thread's states form a chain (a call nested in another needs a second one),
/// whose head is a thread-specific value released when the thread exits.
///
/// Because a state outlives the calls it serves, the encoders, decoders and containers it hands out
/// refer to it without retaining it (`Unmanaged`), which saves reference counting on every call
/// through the standard library's container boxes. They carry the state's `generation`, which
/// changes at the start and end of every call, so one that escapes its call only ever throws (or,
/// for an unkeyed decoding container, reads within the bytes of whatever call is current). None of
/// them is `Sendable`: they stay on the thread whose state they refer to.
protocol BinaryReusableState: AnyObject {
    init()
    var busy: Bool { get set }
    var next: Self? { get set }
    /// Ends a call: retires what it handed out and sets `busy` to false.
    func finish()
}

extension BinaryReusableState {
    /// Makes the thread-specific key under which a thread keeps its chain of states.
    static func makeKey() -> pthread_key_t {
        var key = pthread_key_t()
        #if canImport(Darwin)
        pthread_key_create(&key) { Unmanaged<AnyObject>.fromOpaque($0).release() }
        #else
        pthread_key_create(&key) { if let head = $0 { Unmanaged<AnyObject>.fromOpaque(head).release() } }
        #endif
        return key
    }

    /// Runs `body` with a state of this thread that is not serving a call, then calls `finish()`.
    @inline(__always)
    static func with<R>(_ key: pthread_key_t, _ body: (Self) throws -> R) rethrows -> R {
        if let head = pthread_getspecific(key) {
            return try Unmanaged<Self>.fromOpaque(head)._withUnsafeGuaranteedRef { head in
                if !head.busy { return try serve(head, body) }
                return try serve(nested(after: head), body)
            }
        }
        let head = Self()
        pthread_setspecific(key, Unmanaged.passRetained(head).toOpaque())
        return try serve(head, body)
    }

    @inline(__always)
    private static func serve<R>(_ state: Self, _ body: (Self) throws -> R) rethrows -> R {
        state.busy = true
        defer { state.finish() }
        return try body(state)
    }

    private static func nested(after head: Self) -> Self {
        var link = head
        while let next = link.next {
            if !next.busy { return next }
            link = next
        }
        let state = Self()
        link.next = state
        return state
    }
}

/// The boxes of keyed containers, kept by a coding state for reuse.
///
/// `KeyedEncodingContainer(_:)` and `KeyedDecodingContainer(_:)` allocate a box and look up two
/// generic metadata records each time. A box no one else holds any more is handed out again (for the
/// same key type); since a box cannot be changed, the container in it keeps its mutable place (its
/// `Frame`) in `frames`, under the box's slot. `KeyedEncodingContainer<K>` and
/// `KeyedDecodingContainer<K>` hold nothing but the reference to their box, so a box converts to them
/// (``reusedContainer(_:as:)``) and from them (`unsafeBitCast`); `enabled` checks that layout.
struct BinaryBoxCache<Frame> {
    static var capacity: Int { 32 }

    private let types = UnsafeMutablePointer<ObjectIdentifier>.allocate(capacity: BinaryBoxCache.capacity)
    private let boxes = UnsafeMutablePointer<AnyObject>.allocate(capacity: BinaryBoxCache.capacity)
    /// The frames of the cached boxes' containers, by slot.
    let frames = UnsafeMutablePointer<Frame>.allocate(capacity: BinaryBoxCache.capacity)
    private var count = 0
    private var victim = 0
    private let enabled = keyedBoxesConvert

    /// Frees the storage; the owner calls this when it goes away.
    func deallocate() {
        types.deallocate()
        boxes.deinitialize(count: count)
        boxes.deallocate()
        frames.deinitialize(count: count)
        frames.deallocate()
    }

    /// A cached box of a `Key` container that no one else holds, now with `frame`.
    @inline(__always)
    mutating func reuse<Key: CodingKey>(_: Key.Type, frame: Frame) -> AnyObject? {
        let type = ObjectIdentifier(Key.self)
        for slot in 0..<count where types[slot] == type && isKnownUniquelyReferenced(&boxes[slot]) {
            frames[slot] = frame
            return boxes[slot]
        }
        return nil
    }

    /// The slot for a new box: a free one, or the slot of a box no one else holds; -1 when none is.
    mutating func newSlot(frame: Frame) -> Int {
        guard enabled else { return -1 }
        if count < BinaryBoxCache.capacity {
            (types + count).initialize(to: ObjectIdentifier(BinaryBoxPlaceholder.self))
            (boxes + count).initialize(to: BinaryBoxPlaceholder.placeholder)
            (frames + count).initialize(to: frame)
            count += 1
            return count - 1
        }
        for _ in 0..<count {
            victim = (victim + 1) % count
            if isKnownUniquelyReferenced(&boxes[victim]) {
                types[victim] = ObjectIdentifier(BinaryBoxPlaceholder.self)
                frames[victim] = frame
                return victim
            }
        }
        return -1
    }

    /// Keeps `box`, a `Key` container's box, in `slot` (from `newSlot`).
    mutating func keep<Key: CodingKey>(_ box: AnyObject, of _: Key.Type, in slot: Int) {
        guard slot >= 0 else { return }
        types[slot] = ObjectIdentifier(Key.self)
        boxes[slot] = box
    }
}

/// Whether keyed container boxes convert to and from `AnyObject` (see ``BinaryBoxCache`` and
/// ``PickleBoxCache``); the same for every key type.
let keyedBoxesConvert = keyedContainersAreOneReference(BinaryCodingKey.self)

/// Whether keyed containers with `Key` are one reference in size (the same for every key type).
/// Never specialised: the generic code asks the containers' metadata accessors, passing the key's
/// conformance, whereas a specialisation instantiates the types from their mangled names, which makes
/// the runtime look the conformance up by scanning the program's conformances (in a fresh child).
@_semantics("optimize.sil.specialize.generic.never")
@inline(never)
private func keyedContainersAreOneReference<Key: CodingKey>(_: Key.Type) -> Bool {
    MemoryLayout<KeyedEncodingContainer<Key>>.size == MemoryLayout<AnyObject>.size
        && MemoryLayout<KeyedDecodingContainer<Key>>.size == MemoryLayout<AnyObject>.size
}

/// A cached box as the keyed container it came from (see ``BinaryBoxCache``).
///
/// `unsafeBitCast(box, to: KeyedDecodingContainer<Key>.self)` would look up the container type's
/// generic metadata on every call in unspecialized code (the standard library's containers are
/// resilient, so copying one into the caller's result goes through that metadata): about 330
/// instructions per container. Instead the box goes through a function that returns its argument
/// through memory, as every function returning a generic value does, seen as a function returning the
/// container; the caller's result memory is handed straight to it and the box is stored there, which
/// is all such a container holds (``keyedBoxesConvert`` checks that).
@inline(__always)
func reusedContainer<Container>(_ box: consuming AnyObject, as _: Container.Type) -> Container {
    unsafeBitCast(boxIdentity, to: BoxReturner<Container>.self).call(box)
}

/// A function from a box to a `Result` returned through memory (see ``reusedContainer(_:as:)``).
struct BoxReturner<Result>: Sendable {
    let call: @Sendable (consuming AnyObject) -> Result
}

/// Returns the box itself (the caller's reference, moved), through memory.
private let boxIdentity = BoxReturner<AnyObject> { $0 }

/// Fills the slots of ``BinaryBoxCache`` that hold no box yet.
final class BinaryBoxPlaceholder: Sendable {
    static let placeholder = BinaryBoxPlaceholder()
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
    /// are not a well-formed value header or the value runs past `limit`. `keyed` says that the value
    /// is likely a keyed container.
    @inline(__always)
    func valueEnd(at offset: Int, limit: Int, keyed: Bool) -> Int? {
        if keyed && offset >= 0 && limit <= count && BinaryFormat.keyedHeader <= limit &- offset
            && base.load(fromByteOffset: offset, as: UInt8.self) == BinaryFormat.keyedTag {
            let length = Int(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: offset &+ 1, as: UInt32.self)))
            return length <= limit &- offset &- BinaryFormat.keyedHeader ? offset &+ BinaryFormat.keyedHeader &+ length : nil
        }
        return valueEnd(at: offset, limit: limit)
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

    /// Whether all `bytes` are below 0x80.
    @inline(__always)
    static func isASCII(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        return isASCII(base, count: bytes.count)
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
