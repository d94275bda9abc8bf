/// Encodes `Encodable` values into the package's compact binary format, the form in which every
/// message crosses a process boundary (connections, queues, child bootstrap).
///
/// The format is self-describing: each value carries a one-byte tag, keyed containers carry their
/// keys (so `encodeIfPresent` may omit keys and a decoder may read keys in any order), and every
/// container carries its byte length (so a decoder skips what it does not read without parsing it).
/// Integers are stored in the narrowest width that holds them; arrays of fixed-width integers and
/// floating-point numbers (`[UInt8]`, `[Int]`, `[Double]`, ...) are copied as raw memory.
///
/// ```swift
/// let bytes = try BinaryEncoder().encode(job)
/// let copy = try BinaryDecoder().decode(Job.self, from: bytes)
/// ```
///
/// Containers must be written in nesting order, which is what synthesized `Codable` conformances
/// and almost all hand-written ones do: once a value's encoder or container has been left for its
/// parent, it cannot be written again. Values may nest at most 512 levels deep. Failures throw
/// ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport``.
public struct BinaryEncoder: Sendable {
    /// Values handed to every `encode(to:)` as `Encoder.userInfo`.
    public var userInfo: [CodingUserInfoKey: any Sendable]

    /// Creates an encoder with empty ``userInfo``.
    public init() {
        userInfo = [:]
    }

    /// Encodes `value` into a new byte array.
    ///
    /// - Throws: ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport`` when the
    ///   value cannot be encoded; errors thrown by `encode(to:)` are wrapped in it.
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        var bytes: [UInt8] = []
        try encode(value, appendingTo: &bytes, startCapacity: 128)
        return bytes
    }

    /// Appends the encoding of `value` to `buffer`, so a caller can reserve a frame header first and
    /// send the whole buffer without another copy.
    ///
    /// On failure `buffer` is left as it was.
    ///
    /// - Throws: ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport`` when the
    ///   value cannot be encoded; errors thrown by `encode(to:)` are wrapped in it.
    public func encode<T: Encodable>(_ value: T, appendingTo buffer: inout [UInt8]) throws {
        try encode(value, appendingTo: &buffer, startCapacity: 0)
    }

    private func encode<T: Encodable>(_ value: T, appendingTo buffer: inout [UInt8], startCapacity: Int) throws {
        let state = BinaryEncodingState(userInfo: userInfo)
        state.begin(with: &buffer, startCapacity: startCapacity)
        let root = state.root
        do {
            try state.encodeIntoPendingSlot(value, slot: root)
            state.finishSlot(root)
            if let failure = state.failure { throw failure }
        } catch {
            let failure = state.failure ?? BinaryEncodingState.wrap(error, encoding: T.self)
            state.end(into: &buffer, keeping: root)
            throw failure
        }
        state.end(into: &buffer, keeping: state.count)
    }
}

/// The state of one `BinaryEncoder.encode` call, shared by all its encoders and containers.
///
/// Bytes are written in one pass. A container's header holds, while the container is open, the
/// distance back to the enclosing open container (a stack kept inside the buffer, so opening a
/// container allocates nothing); when the container is left its length replaces that link.
/// A "slot" is the place where one value goes; `pending` is the slot handed out to an encoder that
/// has not written it yet (there is at most one, and it is always at the end of the bytes).
///
/// `storage` is the caller's array, grown ahead of need with zeros: `count` says how much of it is
/// written, and writes go through its pointer, without `append`'s per-call bookkeeping.
final class BinaryEncodingState {
    @exclusivity(unchecked) var storage: [UInt8] = []
    /// How many bytes of `storage` are written.
    @exclusivity(unchecked) var count = 0
    /// Where the top-level value starts (bytes before it belong to the caller).
    @exclusivity(unchecked) var root = 0
    /// Start of the innermost open container, or -1.
    @exclusivity(unchecked) var top = -1
    /// The unwritten slot handed out to an encoder, or -1.
    @exclusivity(unchecked) var pending = -1
    /// Nesting of `encode(to:)` calls.
    @exclusivity(unchecked) var depth = 0
    /// The last type found to be neither a primitive nor an array with a fast path.
    @exclusivity(unchecked) var lastGeneralType: ObjectIdentifier?
    /// The first misuse seen by a method that cannot throw; thrown when the encoding ends.
    var failure: MultiprocessingError?
    /// Links too long for a header's 32 bits (containers more than 4 GiB apart), by container start.
    var farLinks: [Int: Int] = [:]
    let userInfo: [CodingUserInfoKey: any Sendable]

    /// Marks a container handle that was refused; every write through it throws.
    static let invalid = Int.min

    init(userInfo: [CodingUserInfoKey: any Sendable]) {
        self.userInfo = userInfo
    }

    static func wrap<T>(_ error: any Error, encoding _: T.Type) -> MultiprocessingError {
        if let error = error as? MultiprocessingError { return error }
        return MultiprocessingError(.transport, "binary encoding: encoding \(T.self) failed: \(error)")
    }

    /// Takes over `buffer` (appending after its bytes).
    func begin(with buffer: inout [UInt8], startCapacity: Int) {
        count = buffer.count
        if count == 0 && startCapacity > 0 {
            buffer = [UInt8](repeating: 0, count: startCapacity)
        }
        swap(&storage, &buffer)
        root = count
        pending = root
    }

    /// Hands the bytes back to `buffer`, keeping only the first `length`; retires this state, so
    /// encoders and containers that escaped their `encode(to:)` cannot write any more.
    func end(into buffer: inout [UInt8], keeping length: Int) {
        if storage.count > length { storage.removeSubrange(length...) }
        top = -1
        pending = -1
        count = 0
        swap(&storage, &buffer)
    }

    // MARK: Errors and coding paths

    func codingPath(to offset: Int) -> [any CodingKey] {
        guard offset >= root, offset <= count else { return [] }
        var open: [Int] = []
        var container = top
        while container >= 0 {
            open.append(container)
            container = parent(of: container)
        }
        return storage.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return [] }
            return BinaryReader(base: base, count: count).codingPath(root: root, to: offset, openContainers: open)
        }
    }

    func error(_ what: String, at offset: Int) -> MultiprocessingError {
        let path = offset >= 0 ? binaryPathDescription(codingPath(to: offset)) : "an unknown place"
        return MultiprocessingError(.transport, "binary encoding: \(what) at \(path)")
    }

    func record(_ error: MultiprocessingError) {
        if failure == nil { failure = error }
    }

    // MARK: Writing

    /// Makes room for `size` more bytes.
    @inline(__always)
    func reserve(_ size: Int) {
        if size > storage.count &- count { grow(size) }
    }

    @inline(never)
    func grow(_ size: Int) {
        let needed = count + size
        if storage.capacity >= needed {
            // The caller's buffer has room reserved: use it.
            storage.append(contentsOf: repeatElement(0, count: storage.capacity - storage.count))
            return
        }
        let capacity = Swift.max(needed, storage.count * 2, 64)
        var larger = [UInt8](repeating: 0, count: capacity)
        let written = count
        if written > 0 {
            larger.withUnsafeMutableBytes { target in
                storage.withUnsafeBytes { source in
                    target.baseAddress.unsafelyUnwrapped.copyMemory(from: source.baseAddress.unsafelyUnwrapped, byteCount: written)
                }
            }
        }
        storage = larger
    }

    /// Runs `body` with the address of the first unwritten byte, where at least `size` bytes are
    /// free; `body` returns how many it wrote.
    @inline(__always)
    func write(reserving size: Int, _ body: (UnsafeMutableRawPointer) -> Int) {
        reserve(size)
        storage.withUnsafeMutableBytes { raw in
            count &+= body(raw.baseAddress.unsafelyUnwrapped + count)
        }
    }

    @inline(__always)
    func append(_ byte: UInt8) {
        write(reserving: 1) { pointer in
            pointer.storeBytes(of: byte, as: UInt8.self)
            return 1
        }
    }

    /// Writes a tag and a little-endian payload.
    @inline(__always)
    func append<T: FixedWidthInteger>(tag: UInt8, _ value: T) {
        write(reserving: 1 + MemoryLayout<T>.size) { pointer in
            pointer.storeBytes(of: tag, as: UInt8.self)
            (pointer + 1).storeBytes(of: value.littleEndian, as: T.self)
            return 1 + MemoryLayout<T>.size
        }
    }

    @inline(__always)
    func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storage.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
    }

    @inline(__always)
    func loadStored<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        storage.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }

    /// Stores an unsigned LEB128 varint at `pointer`; returns its size (at most 10).
    @inline(__always)
    static func storeVarint(_ value: UInt64, at pointer: UnsafeMutableRawPointer) -> Int {
        var value = value
        var size = 0
        while value >= 0x80 {
            (pointer + size).storeBytes(of: UInt8(truncatingIfNeeded: value) | 0x80, as: UInt8.self)
            value >>= 7
            size += 1
        }
        (pointer + size).storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
        return size + 1
    }

    func writeSigned(_ value: Int64) {
        if value >= 0 && value < 0x80 {
            append(BinaryFormat.smallIntBase | UInt8(truncatingIfNeeded: value))
        } else if let narrow = Int8(exactly: value) {
            append(tag: BinaryFormat.int8Tag, narrow)
        } else if let narrow = Int16(exactly: value) {
            append(tag: BinaryFormat.int16Tag, narrow)
        } else if let narrow = Int32(exactly: value) {
            append(tag: BinaryFormat.int32Tag, narrow)
        } else {
            append(tag: BinaryFormat.int64Tag, value)
        }
    }

    func writeUnsigned(_ value: UInt64) {
        if value < 0x80 {
            append(BinaryFormat.smallIntBase | UInt8(truncatingIfNeeded: value))
        } else if let narrow = UInt8(exactly: value) {
            append(tag: BinaryFormat.uint8Tag, narrow)
        } else if let narrow = UInt16(exactly: value) {
            append(tag: BinaryFormat.uint16Tag, narrow)
        } else if let narrow = UInt32(exactly: value) {
            append(tag: BinaryFormat.uint32Tag, narrow)
        } else {
            append(tag: BinaryFormat.uint64Tag, value)
        }
    }

    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func writeInt128(_ value: Int128) {
        if let narrow = Int64(exactly: value) { return writeSigned(narrow) }
        write128(tag: BinaryFormat.int128Tag, low: UInt64(truncatingIfNeeded: value), high: UInt64(truncatingIfNeeded: value >> 64))
    }

    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func writeUInt128(_ value: UInt128) {
        if let narrow = UInt64(exactly: value) { return writeUnsigned(narrow) }
        write128(tag: BinaryFormat.uint128Tag, low: UInt64(truncatingIfNeeded: value), high: UInt64(truncatingIfNeeded: value >> 64))
    }

    private func write128(tag: UInt8, low: UInt64, high: UInt64) {
        write(reserving: 17) { pointer in
            pointer.storeBytes(of: tag, as: UInt8.self)
            (pointer + 1).storeBytes(of: low.littleEndian, as: UInt64.self)
            (pointer + 9).storeBytes(of: high.littleEndian, as: UInt64.self)
            return 17
        }
    }

    @inline(__always)
    func writeBool(_ value: Bool) {
        append(value ? BinaryFormat.trueTag : BinaryFormat.falseTag)
    }

    @inline(__always)
    func writeDouble(_ value: Double) {
        append(tag: BinaryFormat.float64Tag, value.bitPattern)
    }

    @inline(__always)
    func writeFloat(_ value: Float) {
        append(tag: BinaryFormat.float32Tag, value.bitPattern)
    }

    func writeString(_ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            if utf8.count > BinaryEncodingState.largeWrite {
                write(reserving: 11) { pointer in
                    pointer.storeBytes(of: BinaryFormat.stringTag, as: UInt8.self)
                    return 1 + BinaryEncodingState.storeVarint(UInt64(utf8.count), at: pointer + 1)
                }
                appendLarge(UnsafeRawBufferPointer(utf8))
                return
            }
            write(reserving: utf8.count + 11) { pointer in
                var size: Int
                if utf8.count < BinaryFormat.smallStringLimit {
                    pointer.storeBytes(of: BinaryFormat.smallStringBase | UInt8(truncatingIfNeeded: utf8.count), as: UInt8.self)
                    size = 1
                } else {
                    pointer.storeBytes(of: BinaryFormat.stringTag, as: UInt8.self)
                    size = 1 + BinaryEncodingState.storeVarint(UInt64(utf8.count), at: pointer + 1)
                }
                if let source = utf8.baseAddress {
                    (pointer + size).copyMemory(from: source, byteCount: utf8.count)
                }
                size += utf8.count
                return size
            }
        }
    }

    func writeKey<Key: CodingKey>(_ key: Key) {
        var name = key.stringValue
        name.withUTF8 { utf8 in
            write(reserving: utf8.count + 10) { pointer in
                let size = BinaryEncodingState.storeVarint(UInt64(utf8.count), at: pointer)
                if let source = utf8.baseAddress {
                    (pointer + size).copyMemory(from: source, byteCount: utf8.count)
                }
                return size + utf8.count
            }
        }
    }

    func writePacked<Element>(_ array: [Element], kind: BinaryPackedKind) {
        array.withUnsafeBytes { raw in
            let large = raw.count > BinaryEncodingState.largeWrite
            write(reserving: large ? 12 : raw.count + 12) { pointer in
                pointer.storeBytes(of: BinaryFormat.packedTag, as: UInt8.self)
                (pointer + 1).storeBytes(of: kind.rawValue, as: UInt8.self)
                let size = 2 + BinaryEncodingState.storeVarint(UInt64(array.count), at: pointer + 2)
                if large { return size }
                if let source = raw.baseAddress {
                    (pointer + size).copyMemory(from: source, byteCount: raw.count)
                }
                return size + raw.count
            }
            if large { appendLarge(raw) }
        }
    }

    /// Writes larger than this skip the zero-filled spare room (which would be written twice).
    static let largeWrite = 4_096

    /// Appends `bytes` with one copy: drops the spare room, lets the array grow as it does, and
    /// goes on from its new end.
    func appendLarge(_ bytes: UnsafeRawBufferPointer) {
        if storage.count > count { storage.removeSubrange(count...) }
        storage.append(contentsOf: bytes)
        count = storage.count
    }

    /// Writes `[String]` as an unkeyed container without going through `Array.encode(to:)`.
    func writeStrings(_ strings: [String]) {
        let start = openContainer(keyed: false)
        store(UInt32(truncatingIfNeeded: strings.count), at: start + 5)
        for string in strings { writeString(string) }
        closeTop()
    }

    /// Writes `value` directly when it is a primitive or an array with a fast path; false otherwise.
    func encodeScalar<T: Encodable>(_ value: T) -> Bool {
        let type = ObjectIdentifier(T.self)
        if type == lastGeneralType { return false }
        if T.self == String.self {
            writeString(binaryCast(value, to: String.self))
        } else if T.self == Int.self {
            writeSigned(Int64(binaryCast(value, to: Int.self)))
        } else if T.self == Double.self {
            writeDouble(binaryCast(value, to: Double.self))
        } else if T.self == Bool.self {
            writeBool(binaryCast(value, to: Bool.self))
        } else if T.self == Float.self {
            writeFloat(binaryCast(value, to: Float.self))
        } else if T.self == Int64.self {
            writeSigned(binaryCast(value, to: Int64.self))
        } else if T.self == UInt8.self {
            writeUnsigned(UInt64(binaryCast(value, to: UInt8.self)))
        } else if T.self == UInt64.self {
            writeUnsigned(binaryCast(value, to: UInt64.self))
        } else if T.self == Int32.self {
            writeSigned(Int64(binaryCast(value, to: Int32.self)))
        } else if T.self == UInt.self {
            writeUnsigned(UInt64(binaryCast(value, to: UInt.self)))
        } else if T.self == UInt32.self {
            writeUnsigned(UInt64(binaryCast(value, to: UInt32.self)))
        } else if T.self == Int16.self {
            writeSigned(Int64(binaryCast(value, to: Int16.self)))
        } else if T.self == UInt16.self {
            writeUnsigned(UInt64(binaryCast(value, to: UInt16.self)))
        } else if T.self == Int8.self {
            writeSigned(Int64(binaryCast(value, to: Int8.self)))
        } else if type == BinaryPackedArray.stringArray {
            writeStrings(binaryCast(value, to: [String].self))
        } else if !encodePackedArray(value) {
            lastGeneralType = type
            return false
        }
        return true
    }

    /// Writes arrays of fixed-width numbers as raw little-endian memory; false for other types.
    func encodePackedArray<T: Encodable>(_ value: T) -> Bool {
        guard let array = BinaryPackedArray.of(T.self) else { return false }
        let kind = array.kind
        switch array {
        case .uint8: writePacked(binaryCast(value, to: [UInt8].self), kind: kind)
        case .float64: writePacked(binaryCast(value, to: [Double].self), kind: kind)
        case .int: writePacked(binaryCast(value, to: [Int].self), kind: kind)
        case .float32: writePacked(binaryCast(value, to: [Float].self), kind: kind)
        case .int64: writePacked(binaryCast(value, to: [Int64].self), kind: kind)
        case .uint64: writePacked(binaryCast(value, to: [UInt64].self), kind: kind)
        case .uint: writePacked(binaryCast(value, to: [UInt].self), kind: kind)
        case .int32: writePacked(binaryCast(value, to: [Int32].self), kind: kind)
        case .uint32: writePacked(binaryCast(value, to: [UInt32].self), kind: kind)
        case .int16: writePacked(binaryCast(value, to: [Int16].self), kind: kind)
        case .uint16: writePacked(binaryCast(value, to: [UInt16].self), kind: kind)
        case .int8: writePacked(binaryCast(value, to: [Int8].self), kind: kind)
        }
        return true
    }

    // MARK: Slots

    /// Encodes `value` into `slot`, which is pending.
    func encodeIntoPendingSlot<T: Encodable>(_ value: T, slot: Int) throws {
        if encodeScalar(value) {
            pending = -1
            return
        }
        depth += 1
        defer { depth -= 1 }
        guard depth <= BinaryFormat.maxDepth else {
            throw error("values nest more than \(BinaryFormat.maxDepth) levels deep", at: slot)
        }
        try value.encode(to: BinarySlotEncoder(state: self, slot: slot))
    }

    /// Encodes `value` as the next value at the end of the bytes (a container entry or element).
    @inline(__always)
    func encodeNextValue<T: Encodable>(_ value: T) throws {
        if encodeScalar(value) { return }
        let slot = count
        pending = slot
        depth += 1
        defer { depth -= 1 }
        guard depth <= BinaryFormat.maxDepth else {
            throw error("values nest more than \(BinaryFormat.maxDepth) levels deep", at: slot)
        }
        try value.encode(to: BinarySlotEncoder(state: self, slot: slot))
        finishSlot(slot)
    }

    /// Completes the value in `slot`: marks it empty if nothing was written, else closes what it opened.
    func finishSlot(_ slot: Int) {
        if pending == slot {
            append(BinaryFormat.emptyTag)
            pending = -1
            return
        }
        closePending()
        while top >= slot { closeTop() }
    }

    /// Marks the pending slot, which no one wrote, as empty.
    @inline(__always)
    func closePending() {
        if pending >= 0 {
            append(BinaryFormat.emptyTag)
            pending = -1
        }
    }

    /// Hands out the next value at the end of the bytes to an encoder (for `superEncoder`).
    func handOutSlot() -> BinarySlotEncoder {
        let slot = count
        pending = slot
        return BinarySlotEncoder(state: self, slot: slot)
    }

    /// Claims the pending `slot` for a single value.
    @inline(__always)
    func fill(_ slot: Int) throws {
        guard pending == slot, slot >= 0 else {
            throw error("a single value container was written twice, or after its parent moved on", at: slot)
        }
        pending = -1
    }

    // MARK: Containers

    func parent(of container: Int) -> Int {
        let link = loadStored(UInt32.self, at: container + 1)
        if link == 0 { return -1 }
        if link == UInt32.max { return farLinks[container] ?? -1 }
        return container - Int(link)
    }

    /// Opens a container at the end of the bytes, inside the innermost open one.
    func openContainer(keyed: Bool) -> Int {
        let start = count
        var link: UInt32 = 0
        if top >= 0 {
            let distance = start - top
            if distance < Int(UInt32.max) {
                link = UInt32(distance)
            } else {
                link = UInt32.max
                farLinks[start] = top
            }
        }
        write(reserving: BinaryFormat.unkeyedHeader) { pointer in
            pointer.storeBytes(of: keyed ? BinaryFormat.keyedTag : BinaryFormat.unkeyedTag, as: UInt8.self)
            (pointer + 1).storeBytes(of: link.littleEndian, as: UInt32.self)
            if keyed { return BinaryFormat.keyedHeader }
            (pointer + 5).storeBytes(of: UInt32(0), as: UInt32.self)
            return BinaryFormat.unkeyedHeader
        }
        top = start
        return start
    }

    /// Closes the innermost open container: its length replaces its link.
    func closeTop() {
        let start = top
        top = parent(of: start)
        if loadStored(UInt32.self, at: start + 1) == UInt32.max { farLinks[start] = nil }
        let keyed = storage[start] == BinaryFormat.keyedTag
        let header = keyed ? BinaryFormat.keyedHeader : BinaryFormat.unkeyedHeader
        let length = count - start - header
        if length <= Int(UInt32.max) {
            store(UInt32(length), at: start + 1)
            return
        }
        // Over 4 GiB: widen the header to 64-bit fields (moves the content once).
        if keyed {
            widen(at: start + header, by: 4)
            storage[start] = BinaryFormat.keyed64Tag
            store(UInt64(length), at: start + 1)
        } else {
            let elements = loadStored(UInt32.self, at: start + 5)
            widen(at: start + header, by: 8)
            storage[start] = BinaryFormat.unkeyed64Tag
            store(UInt64(length), at: start + 1)
            store(UInt64(elements), at: start + 9)
        }
    }

    /// Moves the bytes from `offset` on `size` bytes further.
    private func widen(at offset: Int, by size: Int) {
        reserve(size)
        storage.withUnsafeMutableBytes { raw in
            let base = raw.baseAddress.unsafelyUnwrapped
            (base + offset + size).copyMemory(from: base + offset, byteCount: count - offset)
        }
        count += size
    }

    func isOpen(_ container: Int) -> Bool {
        guard container >= 0 else { return false }
        var open = top
        while open > container { open = parent(of: open) }
        return open == container
    }

    /// Makes `container` the place being written: closes the pending slot and the containers inside it.
    @inline(__always)
    func enter(_ container: Int) throws {
        if container == top && pending < 0 { return }
        try enterSlow(container)
    }

    func enterSlow(_ container: Int) throws {
        guard isOpen(container) else {
            throw error(
                "a container was written after its parent moved on (containers must be written in nesting order)",
                at: container)
        }
        closePending()
        while top > container { closeTop() }
    }

    /// `enter` for methods that cannot throw: records the failure instead.
    func enterOrRecord(_ container: Int) -> Bool {
        do {
            try enter(container)
            return true
        } catch let failure as MultiprocessingError {
            record(failure)
            return false
        } catch {
            return false
        }
    }

    /// Enters an unkeyed container and counts one more element in it.
    @inline(__always)
    func enterElement(_ container: Int) throws {
        try enter(container)
        try countElement(container)
    }

    func countElement(_ container: Int) throws {
        let elements = loadStored(UInt32.self, at: container + 5)
        guard elements < UInt32.max else {
            throw error("an unkeyed container holds more than \(UInt32.max) elements", at: container)
        }
        store(elements + 1, at: container + 5)
    }

    func elementCount(_ container: Int) -> Int {
        guard container >= root, container < count else { return 0 }
        switch storage[container] {
        case BinaryFormat.unkeyedTag: return Int(loadStored(UInt32.self, at: container + 5))
        case BinaryFormat.unkeyed64Tag: return Int(loadStored(UInt64.self, at: container + 9))
        default: return 0
        }
    }

    /// The container for an encoder's `container(keyedBy:)` or `unkeyedContainer()`: a new one in a
    /// pending slot, or the same one again while it is open.
    func container(in slot: Int, keyed: Bool) -> Int {
        if pending == slot && slot >= 0 {
            pending = -1
            return openContainer(keyed: keyed)
        }
        let tag = keyed ? BinaryFormat.keyedTag : BinaryFormat.unkeyedTag
        if slot >= 0 && isOpen(slot) && storage[slot] == tag {
            closePending()
            while top > slot { closeTop() }
            return slot
        }
        let kind = keyed ? "keyed" : "unkeyed"
        record(error("an encoder was asked for a \(kind) container after it had encoded something else", at: slot))
        return BinaryEncodingState.invalid
    }
}

/// The `Encoder` for one slot: the place where one value goes.
struct BinarySlotEncoder: Encoder {
    let state: BinaryEncodingState
    let slot: Int

    var codingPath: [any CodingKey] { state.codingPath(to: slot) }

    var userInfo: [CodingUserInfoKey: Any] { state.userInfo }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(BinaryKeyedEncodingContainer<Key>(state: state, start: state.container(in: slot, keyed: true)))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        BinaryUnkeyedEncodingContainer(state: state, start: state.container(in: slot, keyed: false))
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        BinarySingleValueEncodingContainer(state: state, slot: slot)
    }
}

/// Writes the entries of one keyed container, which starts at `start` (or is refused: `start` is
/// `BinaryEncodingState.invalid`).
struct BinaryKeyedEncodingContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let state: BinaryEncodingState
    let start: Int

    var codingPath: [any CodingKey] { state.codingPath(to: start) }

    @inline(__always)
    private func begin(_ key: Key) throws {
        try state.enter(start)
        state.writeKey(key)
    }

    mutating func encodeNil(forKey key: Key) throws {
        try begin(key)
        state.append(BinaryFormat.nilTag)
    }

    mutating func encode(_ value: Bool, forKey key: Key) throws {
        try begin(key)
        state.writeBool(value)
    }

    mutating func encode(_ value: String, forKey key: Key) throws {
        try begin(key)
        state.writeString(value)
    }

    mutating func encode(_ value: Double, forKey key: Key) throws {
        try begin(key)
        state.writeDouble(value)
    }

    mutating func encode(_ value: Float, forKey key: Key) throws {
        try begin(key)
        state.writeFloat(value)
    }

    mutating func encode(_ value: Int, forKey key: Key) throws {
        try begin(key)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int8, forKey key: Key) throws {
        try begin(key)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int16, forKey key: Key) throws {
        try begin(key)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int32, forKey key: Key) throws {
        try begin(key)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int64, forKey key: Key) throws {
        try begin(key)
        state.writeSigned(value)
    }

    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ value: Int128, forKey key: Key) throws {
        try begin(key)
        state.writeInt128(value)
    }

    mutating func encode(_ value: UInt, forKey key: Key) throws {
        try begin(key)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt8, forKey key: Key) throws {
        try begin(key)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt16, forKey key: Key) throws {
        try begin(key)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt32, forKey key: Key) throws {
        try begin(key)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt64, forKey key: Key) throws {
        try begin(key)
        state.writeUnsigned(value)
    }

    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ value: UInt128, forKey key: Key) throws {
        try begin(key)
        state.writeUInt128(value)
    }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try begin(key)
        try state.encodeNextValue(value)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type, forKey key: Key
    ) -> KeyedEncodingContainer<NestedKey> {
        var start = BinaryEncodingState.invalid
        if state.enterOrRecord(self.start) {
            state.writeKey(key)
            start = state.openContainer(keyed: true)
        }
        return KeyedEncodingContainer(BinaryKeyedEncodingContainer<NestedKey>(state: state, start: start))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        var start = BinaryEncodingState.invalid
        if state.enterOrRecord(self.start) {
            state.writeKey(key)
            start = state.openContainer(keyed: false)
        }
        return BinaryUnkeyedEncodingContainer(state: state, start: start)
    }

    mutating func superEncoder() -> any Encoder {
        superEncoder(named: BinaryCodingKey.superKey)
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        superEncoder(named: key)
    }

    private func superEncoder<K: CodingKey>(named key: K) -> any Encoder {
        guard state.enterOrRecord(start) else {
            return BinarySlotEncoder(state: state, slot: BinaryEncodingState.invalid)
        }
        state.writeKey(key)
        return state.handOutSlot()
    }
}

/// Writes the elements of one unkeyed container, which starts at `start`; its header counts them.
struct BinaryUnkeyedEncodingContainer: UnkeyedEncodingContainer {
    let state: BinaryEncodingState
    let start: Int

    var codingPath: [any CodingKey] { state.codingPath(to: start) }

    var count: Int { state.elementCount(start) }

    mutating func encodeNil() throws {
        try state.enterElement(start)
        state.append(BinaryFormat.nilTag)
    }

    mutating func encode(_ value: Bool) throws {
        try state.enterElement(start)
        state.writeBool(value)
    }

    mutating func encode(_ value: String) throws {
        try state.enterElement(start)
        state.writeString(value)
    }

    mutating func encode(_ value: Double) throws {
        try state.enterElement(start)
        state.writeDouble(value)
    }

    mutating func encode(_ value: Float) throws {
        try state.enterElement(start)
        state.writeFloat(value)
    }

    mutating func encode(_ value: Int) throws {
        try state.enterElement(start)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int8) throws {
        try state.enterElement(start)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int16) throws {
        try state.enterElement(start)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int32) throws {
        try state.enterElement(start)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int64) throws {
        try state.enterElement(start)
        state.writeSigned(value)
    }

    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ value: Int128) throws {
        try state.enterElement(start)
        state.writeInt128(value)
    }

    mutating func encode(_ value: UInt) throws {
        try state.enterElement(start)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt8) throws {
        try state.enterElement(start)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt16) throws {
        try state.enterElement(start)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt32) throws {
        try state.enterElement(start)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt64) throws {
        try state.enterElement(start)
        state.writeUnsigned(value)
    }

    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ value: UInt128) throws {
        try state.enterElement(start)
        state.writeUInt128(value)
    }

    mutating func encode<T: Encodable>(_ value: T) throws {
        try state.enterElement(start)
        try state.encodeNextValue(value)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(BinaryKeyedEncodingContainer<NestedKey>(state: state, start: openNested(keyed: true)))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        BinaryUnkeyedEncodingContainer(state: state, start: openNested(keyed: false))
    }

    mutating func superEncoder() -> any Encoder {
        guard beginElementOrRecord() else {
            return BinarySlotEncoder(state: state, slot: BinaryEncodingState.invalid)
        }
        return state.handOutSlot()
    }

    private func openNested(keyed: Bool) -> Int {
        guard beginElementOrRecord() else { return BinaryEncodingState.invalid }
        return state.openContainer(keyed: keyed)
    }

    private func beginElementOrRecord() -> Bool {
        do {
            try state.enterElement(start)
            return true
        } catch let failure as MultiprocessingError {
            state.record(failure)
            return false
        } catch {
            return false
        }
    }
}

/// Writes the one value of a slot.
struct BinarySingleValueEncodingContainer: SingleValueEncodingContainer {
    let state: BinaryEncodingState
    let slot: Int

    var codingPath: [any CodingKey] { state.codingPath(to: slot) }

    mutating func encodeNil() throws {
        try state.fill(slot)
        state.append(BinaryFormat.nilTag)
    }

    mutating func encode(_ value: Bool) throws {
        try state.fill(slot)
        state.writeBool(value)
    }

    mutating func encode(_ value: String) throws {
        try state.fill(slot)
        state.writeString(value)
    }

    mutating func encode(_ value: Double) throws {
        try state.fill(slot)
        state.writeDouble(value)
    }

    mutating func encode(_ value: Float) throws {
        try state.fill(slot)
        state.writeFloat(value)
    }

    mutating func encode(_ value: Int) throws {
        try state.fill(slot)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int8) throws {
        try state.fill(slot)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int16) throws {
        try state.fill(slot)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int32) throws {
        try state.fill(slot)
        state.writeSigned(Int64(value))
    }

    mutating func encode(_ value: Int64) throws {
        try state.fill(slot)
        state.writeSigned(value)
    }

    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ value: Int128) throws {
        try state.fill(slot)
        state.writeInt128(value)
    }

    mutating func encode(_ value: UInt) throws {
        try state.fill(slot)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt8) throws {
        try state.fill(slot)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt16) throws {
        try state.fill(slot)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt32) throws {
        try state.fill(slot)
        state.writeUnsigned(UInt64(value))
    }

    mutating func encode(_ value: UInt64) throws {
        try state.fill(slot)
        state.writeUnsigned(value)
    }

    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ value: UInt128) throws {
        try state.fill(slot)
        state.writeUInt128(value)
    }

    mutating func encode<T: Encodable>(_ value: T) throws {
        guard state.pending == slot, slot >= 0 else {
            throw state.error("a single value container was written twice, or after its parent moved on", at: slot)
        }
        try state.encodeIntoPendingSlot(value, slot: slot)
    }
}
