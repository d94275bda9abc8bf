#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
/// parent, it cannot be written again. Values may nest at most 512 levels deep, and no deeper than the
/// encoding thread's stack has room for (a reserve of up to 64 KiB is kept). Failures throw
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
        try BinaryEncodingState.with(BinaryEncodingState.key) { state in
            try state.encodeRoot(value, userInfo: userInfo)
            if state.flushed == 0 {
                // (Faster than `init(unsafeUninitializedCapacity:)`, which looks up the storage's metadata.)
                return Array(UnsafeRawBufferPointer(start: state.scratch, count: state.count))
            }
            state.flush()
            var bytes: [UInt8] = []
            swap(&bytes, &state.output)
            return bytes
        }
    }

    /// Encodes `value` and lets `body` read the encoding in place, before the buffer it is in is reused:
    /// a caller that copies the bytes somewhere (a queue's shared memory, say) makes no array of them.
    ///
    /// `body` may not encode on the same thread with `self` while it reads (another encoding call gets
    /// a buffer of its own, so it is safe, only slower).
    ///
    /// - Throws: ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport`` when the
    ///   value cannot be encoded (`body` is not called); what `body` throws.
    func withEncoding<T: Encodable, R>(of value: T, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        try BinaryEncodingState.with(BinaryEncodingState.key) { state in
            try state.encodeRoot(value, userInfo: userInfo)
            if state.flushed == 0 {
                return try body(UnsafeRawBufferPointer(start: state.scratch, count: state.count))
            }
            state.flush()
            return try state.output.withUnsafeBytes(body)
        }
    }

    /// Appends the encoding of `value` to `buffer`, so a caller can reserve a frame header first and
    /// send the whole buffer without another copy. Takes time in proportion to the new bytes only.
    ///
    /// On failure `buffer` is left as it was.
    ///
    /// - Throws: ``MultiprocessingError`` with code ``MultiprocessingError/Code/transport`` when the
    ///   value cannot be encoded; errors thrown by `encode(to:)` are wrapped in it.
    public func encode<T: Encodable>(_ value: T, appendingTo buffer: inout [UInt8]) throws {
        try BinaryEncodingState.with(BinaryEncodingState.key) { state in
            swap(&state.output, &buffer)
            defer { swap(&state.output, &buffer) }
            state.root = state.output.count
            do {
                try state.encodeRoot(value, userInfo: userInfo)
            } catch {
                state.output.removeSubrange(state.root...)
                throw error
            }
            state.flush()
        }
    }
}

/// The state of a `BinaryEncoder.encode` call, shared by all its encoders and containers, and kept
/// by its thread for the next call (see ``BinaryReusableState``).
///
/// Bytes are written in one pass into a scratch buffer the state owns, and copied out at the end;
/// the payload of a large value (a long string or packed array) is appended straight to the output
/// instead, after what came before it (which is then patched there if need be). A container's
/// header holds, while the container is open, the distance back to the enclosing open
/// container (a stack kept inside the buffer, so opening a container allocates nothing); when the
/// container is left its length replaces that link. A "slot" is the place where one value goes;
/// `pending` is the slot handed out to an encoder that has not written it yet (there is at most one,
/// and it is always at the end of the bytes).
final class BinaryEncodingState: BinaryReusableState {
    static let key = makeKey()

    /// Where a keyed container starts, and the call it belongs to.
    struct Frame {
        var start: Int
        var generation: Int
    }

    @exclusivity(unchecked) var busy = false
    @exclusivity(unchecked) var next: BinaryEncodingState?
    /// The message's bytes from `flushed` on; those before are in `output`.
    @exclusivity(unchecked) var scratch: UnsafeMutableRawPointer
    @exclusivity(unchecked) var capacity: Int
    /// How many bytes of the message are written.
    @exclusivity(unchecked) var count = 0
    /// How many of them are in `output`.
    @exclusivity(unchecked) var flushed = 0
    /// Where the message goes when it is not copied out at the end: a new array, or the caller's
    /// buffer, whose first `root` bytes are not the message's.
    @exclusivity(unchecked) var output: [UInt8] = []
    @exclusivity(unchecked) var root = 0
    /// Start of the innermost open container, or -1.
    @exclusivity(unchecked) var top = -1
    /// The unwritten slot handed out to an encoder, or -1.
    @exclusivity(unchecked) var pending = -1
    /// Nesting of `encode(to:)` calls.
    @exclusivity(unchecked) var depth = 0
    /// The stack of the thread that keeps this state.
    @exclusivity(unchecked) var stack = BinaryStackGuard.unmeasured
    /// Changes at the start and end of every call, retiring what the call handed out.
    @exclusivity(unchecked) var generation = 0
    @exclusivity(unchecked) var kinds = BinaryKindCache()
    @exclusivity(unchecked) var boxes = BinaryBoxCache<Frame>()
    /// The first misuse seen by a method that cannot throw; thrown when the encoding ends.
    @exclusivity(unchecked) var failure: MultiprocessingError?
    /// Whether `failure` is set: testing this flag costs a load, testing the optional copies the error.
    @exclusivity(unchecked) var failed = false
    /// Links too long for a header's 32 bits (containers more than 4 GiB apart), by container start.
    @exclusivity(unchecked) var farLinks: [Int: Int] = [:]
    @exclusivity(unchecked) var userInfo: [CodingUserInfoKey: any Sendable] = [:]

    /// Marks a container handle that was refused; every write through it throws.
    static let invalid = Int.min
    /// The buffer a state starts with, and the most it keeps between calls.
    static let initialCapacity = 256
    static let keptCapacity = 1 << 20
    /// Payloads this large go straight to the output.
    static let largeWrite = 4_096

    init() {
        capacity = BinaryEncodingState.initialCapacity
        scratch = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit {
        scratch.deallocate()
        boxes.deallocate()
    }

    /// Encodes the message `value` into the buffer, from its start.
    func encodeRoot<T: Encodable>(_ value: T, userInfo: [CodingUserInfoKey: any Sendable]) throws {
        generation &+= 1
        if !userInfo.isEmpty { self.userInfo = userInfo }
        pending = 0
        do {
            try encodeIntoPendingSlot(value, slot: 0)
            finishSlot(0)
        } catch let error as MultiprocessingError {
            throw failure ?? error
        } catch {
            throw failure ?? MultiprocessingError(.transport, "binary encoding: encoding \(T.self) failed: \(error)")
        }
        if failed, let failure { throw failure }
    }

    /// Ends the call: retires what it handed out and makes the state free for the next one.
    func finish() {
        generation &+= 1
        count = 0
        flushed = 0
        root = 0
        if !output.isEmpty { output = [] }
        top = -1
        pending = -1
        depth = 0
        if failed {
            failure = nil
            failed = false
        }
        if !farLinks.isEmpty { farLinks = [:] }
        if !userInfo.isEmpty { userInfo = [:] }
        if capacity > BinaryEncodingState.keptCapacity {
            scratch.deallocate()
            capacity = BinaryEncodingState.initialCapacity
            scratch = .allocate(byteCount: capacity, alignment: 16)
        }
        busy = false
    }

    // MARK: Errors and coding paths

    func codingPath(to offset: Int, generation: Int) -> [any CodingKey] {
        guard generation == self.generation, offset >= 0, offset <= count else { return [] }
        var open: [Int] = []
        var container = top
        while container >= 0 {
            open.append(container)
            container = parent(of: container)
        }
        var bytes = Array(output[root...])
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: scratch, count: count - flushed))
        return bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return [] }
            return BinaryReader(base: base, count: raw.count).codingPath(root: 0, to: offset, openContainers: open)
        }
    }

    func error(_ what: String, at offset: Int) -> MultiprocessingError {
        let path = offset >= 0 ? binaryPathDescription(codingPath(to: offset, generation: generation)) : "an unknown place"
        return MultiprocessingError(.transport, "binary encoding: \(what) at \(path)")
    }

    func record(_ error: MultiprocessingError) {
        if !failed {
            failure = error
            failed = true
        }
    }

    /// Throws unless `generation` is this call's: encoders and containers are good only within it.
    @inline(__always)
    func check(_ generation: Int) throws {
        if generation != self.generation { throw staleError() }
    }

    func staleError() -> MultiprocessingError {
        MultiprocessingError(.transport, "binary encoding: an encoder or container was used after its encode call ended")
    }

    // MARK: Writing

    /// Runs `body` with the address of the first unwritten byte, where at least `size` bytes are
    /// free; `body` returns how many it wrote.
    @inline(__always)
    func write(reserving size: Int, _ body: (UnsafeMutableRawPointer) -> Int) {
        let used = count &- flushed
        if size > capacity &- used { grow(size) }
        count &+= body(scratch + used)
    }

    @inline(never)
    func grow(_ size: Int) {
        let used = count - flushed
        capacity = Swift.max(used + size, capacity * 2)
        let larger = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        larger.copyMemory(from: scratch, byteCount: used)
        scratch.deallocate()
        scratch = larger
    }

    /// Moves the scratch bytes to the output.
    func flush() {
        if count > flushed { output.append(contentsOf: UnsafeRawBufferPointer(start: scratch, count: count - flushed)) }
        flushed = count
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

    /// Stores a header field of the message at `offset` (in the scratch buffer, or in the output).
    @inline(__always)
    func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        if offset >= flushed { return scratch.storeBytes(of: value.littleEndian, toByteOffset: offset &- flushed, as: T.self) }
        let root = self.root
        output.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: root + offset, as: T.self) }
    }

    @inline(__always)
    func loadStored<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        if offset >= flushed { return T(littleEndian: scratch.loadUnaligned(fromByteOffset: offset &- flushed, as: T.self)) }
        return output.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: root + offset, as: T.self)) }
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

    /// Writes an integer of up to 64 bits in the narrowest tag that holds it.
    @inline(__always)
    func writeInteger<I: FixedWidthInteger>(_ value: I) {
        if value >= 0 && value < 0x80 {
            append(BinaryFormat.smallIntBase | UInt8(truncatingIfNeeded: value))
        } else {
            writeWide(value)
        }
    }

    /// Writes an integer in the narrowest of the 8...64-bit tags (signed or not, as `I` is) that holds it.
    private func writeWide<I: FixedWidthInteger>(_ value: I) {
        let bits = UInt64(truncatingIfNeeded: value)
        let tag = I.isSigned ? BinaryFormat.int8Tag : BinaryFormat.uint8Tag
        // Whether the value survives being cut to `width` bits (and sign- or zero-extended back).
        func fits(_ width: UInt64) -> Bool {
            I.isSigned ? Int64(bitPattern: bits << (64 - width)) >> (64 - width) == Int64(bitPattern: bits) : bits >> width == 0
        }
        if fits(8) {
            append(tag: tag, UInt8(truncatingIfNeeded: bits))
        } else if fits(16) {
            append(tag: tag + 1, UInt16(truncatingIfNeeded: bits))
        } else if fits(32) {
            append(tag: tag + 2, UInt32(truncatingIfNeeded: bits))
        } else {
            append(tag: tag + 3, bits)
        }
    }

    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func writeInt128(_ value: Int128) {
        if let narrow = Int64(exactly: value) { return writeInteger(narrow) }
        write128(tag: BinaryFormat.int128Tag, low: UInt64(truncatingIfNeeded: value), high: UInt64(truncatingIfNeeded: value >> 64))
    }

    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func writeUInt128(_ value: UInt128) {
        if let narrow = UInt64(exactly: value) { return writeInteger(narrow) }
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
        if value.utf8.withContiguousStorageIfAvailable({ writeString(utf8: UnsafeRawBufferPointer($0)) }) == nil {
            var value = value
            value.withUTF8 { writeString(utf8: UnsafeRawBufferPointer($0)) }
        }
    }

    @inline(__always)
    private func writeString(utf8: UnsafeRawBufferPointer) {
        if utf8.count >= BinaryEncodingState.largeWrite { return writeLarge(tag: BinaryFormat.stringTag, kind: nil, count: utf8.count, utf8) }
        write(reserving: utf8.count + 11) { pointer in
            var size = 1
            if utf8.count < BinaryFormat.smallStringLimit {
                pointer.storeBytes(of: BinaryFormat.smallStringBase | UInt8(truncatingIfNeeded: utf8.count), as: UInt8.self)
            } else {
                pointer.storeBytes(of: BinaryFormat.stringTag, as: UInt8.self)
                size += BinaryEncodingState.storeVarint(UInt64(utf8.count), at: pointer + 1)
            }
            if let source = utf8.baseAddress { (pointer + size).copyMemory(from: source, byteCount: utf8.count) }
            return size + utf8.count
        }
    }

    /// Writes a long string or a large packed array: its header, then its payload straight to the output.
    @inline(never)
    private func writeLarge(tag: UInt8, kind: BinaryPackedKind?, count elements: Int, _ payload: UnsafeRawBufferPointer) {
        write(reserving: 12) { pointer in
            pointer.storeBytes(of: tag, as: UInt8.self)
            guard let kind else { return 1 + BinaryEncodingState.storeVarint(UInt64(elements), at: pointer + 1) }
            (pointer + 1).storeBytes(of: kind.rawValue, as: UInt8.self)
            return 2 + BinaryEncodingState.storeVarint(UInt64(elements), at: pointer + 2)
        }
        flush()
        output.append(contentsOf: payload)
        count += payload.count
        flushed = count
    }

    func writeKey(_ name: String) {
        if name.utf8.withContiguousStorageIfAvailable({ writeKey(utf8: UnsafeRawBufferPointer($0)) }) == nil {
            var name = name
            name.withUTF8 { writeKey(utf8: UnsafeRawBufferPointer($0)) }
        }
    }

    @inline(__always)
    private func writeKey(utf8: UnsafeRawBufferPointer) {
        write(reserving: utf8.count + 10) { pointer in
            let size = utf8.count < 0x80 ? 1 : BinaryEncodingState.storeVarint(UInt64(utf8.count), at: pointer)
            if size == 1 { pointer.storeBytes(of: UInt8(truncatingIfNeeded: utf8.count), as: UInt8.self) }
            if let source = utf8.baseAddress { (pointer + size).copyMemory(from: source, byteCount: utf8.count) }
            return size + utf8.count
        }
    }

    func writePacked<Element>(_ array: [Element], kind: BinaryPackedKind) {
        array.withUnsafeBytes { raw in
            if raw.count >= BinaryEncodingState.largeWrite { return writeLarge(tag: BinaryFormat.packedTag, kind: kind, count: array.count, raw) }
            write(reserving: raw.count + 12) { pointer in
                pointer.storeBytes(of: BinaryFormat.packedTag, as: UInt8.self)
                (pointer + 1).storeBytes(of: kind.rawValue, as: UInt8.self)
                let size = 2 + BinaryEncodingState.storeVarint(UInt64(array.count), at: pointer + 2)
                if let source = raw.baseAddress { (pointer + size).copyMemory(from: source, byteCount: raw.count) }
                return size + raw.count
            }
        }
    }

    /// Writes `[String]` as an unkeyed container without going through `Array.encode(to:)`.
    func writeStrings(_ strings: [String]) {
        let start = openContainer(keyed: false)
        store(UInt32(truncatingIfNeeded: strings.count), at: start + 5)
        for string in strings { writeString(string) }
        closeTop()
    }

    /// Writes `value` directly when its type has a fast path (see ``BinaryKind``); false otherwise.
    @inline(__always)
    func encodeScalar<T: Encodable>(_ value: T) -> Bool {
        switch kinds.kind(of: T.self) {
        case .general, .stringKeyedDictionary: return false
        case .string: writeString(binaryCast(value, to: String.self))
        case .bool: writeBool(binaryCast(value, to: Bool.self))
        case .double: writeDouble(binaryCast(value, to: Double.self))
        case .float: writeFloat(binaryCast(value, to: Float.self))
        case .strings: writeStrings(binaryCast(value, to: [String].self))
        case .int: writeInteger(binaryCast(value, to: Int.self))
        case .int8: writeInteger(binaryCast(value, to: Int8.self))
        case .int16: writeInteger(binaryCast(value, to: Int16.self))
        case .int32: writeInteger(binaryCast(value, to: Int32.self))
        case .int64: writeInteger(binaryCast(value, to: Int64.self))
        case .uint: writeInteger(binaryCast(value, to: UInt.self))
        case .uint8: writeInteger(binaryCast(value, to: UInt8.self))
        case .uint16: writeInteger(binaryCast(value, to: UInt16.self))
        case .uint32: writeInteger(binaryCast(value, to: UInt32.self))
        case .uint64: writeInteger(binaryCast(value, to: UInt64.self))
        case let array: encodePacked(value, array)
        }
        return true
    }

    private func encodePacked<T>(_ value: T, _ array: BinaryKind) {
        let kind = array.packed
        switch array {
        case .intArray: writePacked(binaryCast(value, to: [Int].self), kind: kind)
        case .int8Array: writePacked(binaryCast(value, to: [Int8].self), kind: kind)
        case .int16Array: writePacked(binaryCast(value, to: [Int16].self), kind: kind)
        case .int32Array: writePacked(binaryCast(value, to: [Int32].self), kind: kind)
        case .int64Array: writePacked(binaryCast(value, to: [Int64].self), kind: kind)
        case .uintArray: writePacked(binaryCast(value, to: [UInt].self), kind: kind)
        case .uint8Array: writePacked(binaryCast(value, to: [UInt8].self), kind: kind)
        case .uint16Array: writePacked(binaryCast(value, to: [UInt16].self), kind: kind)
        case .uint32Array: writePacked(binaryCast(value, to: [UInt32].self), kind: kind)
        case .uint64Array: writePacked(binaryCast(value, to: [UInt64].self), kind: kind)
        case .floatArray: writePacked(binaryCast(value, to: [Float].self), kind: kind)
        default: writePacked(binaryCast(value, to: [Double].self), kind: kind)
        }
    }

    // MARK: Slots

    /// Encodes `value` into `slot`, which is pending.
    func encodeIntoPendingSlot<T: Encodable>(_ value: T, slot: Int) throws {
        if encodeScalar(value) {
            pending = -1
            return
        }
        try encodeGeneral(value, slot: slot)
    }

    /// Encodes `value` as the next value at the end of the bytes (a container entry or element).
    @inline(__always)
    func encodeNextValue<T: Encodable>(_ value: T) throws {
        if encodeScalar(value) { return }
        let slot = count
        pending = slot
        try encodeGeneral(value, slot: slot)
        finishSlot(slot)
    }

    private func encodeGeneral<T: Encodable>(_ value: T, slot: Int) throws {
        depth += 1
        defer { depth -= 1 }
        guard depth <= BinaryFormat.maxDepth else {
            throw error("values nest more than \(BinaryFormat.maxDepth) levels deep", at: slot)
        }
        if stack.exhausted(atDepth: depth) {
            throw error(
                "values nest \(depth) levels deep, more than this thread's stack has room for (\(stack.left) left); "
                    + "encode them on a thread with a larger stack", at: slot)
        }
        try value.encode(to: BinarySlotEncoder(state: .passUnretained(self), slot: slot, generation: generation))
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
        pending = count
        return BinarySlotEncoder(state: .passUnretained(self), slot: count, generation: generation)
    }

    /// Claims the pending `slot` for a single value.
    @inline(__always)
    func fill(_ slot: Int, generation: Int) throws {
        try check(generation)
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
        let keyed = loadStored(UInt8.self, at: start) == BinaryFormat.keyedTag
        let header = keyed ? BinaryFormat.keyedHeader : BinaryFormat.unkeyedHeader
        let length = count - start - header
        if length <= Int(UInt32.max) {
            store(UInt32(length), at: start + 1)
            return
        }
        // Over 4 GiB: widen the header to 64-bit fields (moves the content once, in the output).
        let elements = loadStored(UInt32.self, at: start + 5)
        let extra = keyed ? 4 : 8
        flush()
        output.append(contentsOf: repeatElement(0, count: extra))
        output.withUnsafeMutableBytes { raw in
            let content = raw.baseAddress.unsafelyUnwrapped + root + start + header
            (content + extra).copyMemory(from: content, byteCount: length)
        }
        count += extra
        flushed = count
        store(keyed ? BinaryFormat.keyed64Tag : BinaryFormat.unkeyed64Tag, at: start)
        store(UInt64(length), at: start + 1)
        if !keyed { store(UInt64(elements), at: start + 9) }
    }

    func isOpen(_ container: Int) -> Bool {
        guard container >= 0 else { return false }
        var open = top
        while open > container { open = parent(of: open) }
        return open == container
    }

    /// Makes `container` the place being written: closes the pending slot and the containers inside it.
    @inline(__always)
    func enter(_ container: Int, generation: Int) throws {
        if container == top && pending < 0 && generation == self.generation { return }
        try enterSlow(container, generation: generation)
    }

    func enterSlow(_ container: Int, generation: Int) throws {
        try check(generation)
        guard isOpen(container) else {
            throw error(
                "a container was written after its parent moved on (containers must be written in nesting order)",
                at: container)
        }
        closePending()
        while top > container { closeTop() }
    }

    /// `enter` for methods that cannot throw: records the failure instead.
    func enterOrRecord(_ container: Int, generation: Int, element: Bool) -> Bool {
        do {
            try element ? enterElement(container, generation: generation) : enter(container, generation: generation)
            return true
        } catch let failure as MultiprocessingError {
            if generation == self.generation { record(failure) }
            return false
        } catch {
            return false
        }
    }

    /// Enters an unkeyed container and counts one more element in it.
    @inline(__always)
    func enterElement(_ container: Int, generation: Int) throws {
        try enter(container, generation: generation)
        let elements = loadStored(UInt32.self, at: container + 5)
        guard elements < UInt32.max else {
            throw error("an unkeyed container holds more than \(UInt32.max) elements", at: container)
        }
        store(elements + 1, at: container + 5)
    }

    func elementCount(_ container: Int, generation: Int) -> Int {
        guard generation == self.generation, container >= 0, container < count else { return 0 }
        switch loadStored(UInt8.self, at: container) {
        case BinaryFormat.unkeyedTag: return Int(loadStored(UInt32.self, at: container + 5))
        case BinaryFormat.unkeyed64Tag: return Int(loadStored(UInt64.self, at: container + 9))
        default: return 0
        }
    }

    /// The container for an encoder's `container(keyedBy:)` or `unkeyedContainer()`: a new one in a
    /// pending slot, or the same one again while it is open.
    func container(in slot: Int, keyed: Bool, generation: Int) -> Int {
        guard generation == self.generation else { return BinaryEncodingState.invalid }
        if pending == slot && slot >= 0 {
            pending = -1
            return openContainer(keyed: keyed)
        }
        let tag = keyed ? BinaryFormat.keyedTag : BinaryFormat.unkeyedTag
        if slot >= 0 && isOpen(slot) && loadStored(UInt8.self, at: slot) == tag {
            closePending()
            while top > slot { closeTop() }
            return slot
        }
        let kind = keyed ? "keyed" : "unkeyed"
        record(error("an encoder was asked for a \(kind) container after it had encoded something else", at: slot))
        return BinaryEncodingState.invalid
    }

    /// A keyed container starting at `start`, in a reused box when one is free.
    func keyedContainer<Key: CodingKey>(_: Key.Type, start: Int) -> KeyedEncodingContainer<Key> {
        let frame = Frame(start: start, generation: generation)
        if let box = boxes.reuse(Key.self, frame: frame) {
            return reusedContainer(box, as: KeyedEncodingContainer<Key>.self)
        }
        let slot = boxes.newSlot(frame: frame)
        let container = KeyedEncodingContainer(
            BinaryKeyedEncodingContainer<Key>(state: .passUnretained(self), slot: slot, frame: frame))
        boxes.keep(unsafeBitCast(container, to: AnyObject.self), of: Key.self, in: slot)
        return container
    }
}

/// The `Encoder` for one slot: the place where one value goes.
struct BinarySlotEncoder: Encoder {
    let state: Unmanaged<BinaryEncodingState>
    let slot: Int
    let generation: Int

    var codingPath: [any CodingKey] { state._withUnsafeGuaranteedRef { $0.codingPath(to: slot, generation: generation) } }

    var userInfo: [CodingUserInfoKey: Any] { state._withUnsafeGuaranteedRef { $0.userInfo as [CodingUserInfoKey: Any] } }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        state._withUnsafeGuaranteedRef { state in
            state.keyedContainer(Key.self, start: state.container(in: slot, keyed: true, generation: generation))
        }
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let start = state._withUnsafeGuaranteedRef { $0.container(in: slot, keyed: false, generation: generation) }
        return BinaryValueEncodingContainer(state: state, position: start, generation: generation, single: false)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        BinaryValueEncodingContainer(state: state, position: slot, generation: generation, single: true)
    }
}

/// Writes the entries of one keyed container. Its start is in its `frame`, or in the state's box
/// cache under `slot` when its box is cached (the box is then reused for other containers).
struct BinaryKeyedEncodingContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let state: Unmanaged<BinaryEncodingState>
    let slot: Int
    let frame: BinaryEncodingState.Frame

    var codingPath: [any CodingKey] {
        let frame = current
        return state._withUnsafeGuaranteedRef { $0.codingPath(to: frame.start, generation: frame.generation) }
    }

    /// Writes `key`, then lets `write` write its value.
    @inline(__always)
    private func put(_ key: some CodingKey, _ write: (BinaryEncodingState) throws -> Void) throws {
        try state._withUnsafeGuaranteedRef { state in
            let frame = slot < 0 ? frame : state.boxes.frames[slot]
            try state.enter(frame.start, generation: frame.generation)
            state.writeKey(key.stringValue)
            try write(state)
        }
    }

    mutating func encodeNil(forKey key: Key) throws { try put(key) { $0.append(BinaryFormat.nilTag) } }
    mutating func encode(_ value: Bool, forKey key: Key) throws { try put(key) { $0.writeBool(value) } }
    mutating func encode(_ value: String, forKey key: Key) throws { try put(key) { $0.writeString(value) } }
    mutating func encode(_ value: Double, forKey key: Key) throws { try put(key) { $0.writeDouble(value) } }
    mutating func encode(_ value: Float, forKey key: Key) throws { try put(key) { $0.writeFloat(value) } }
    mutating func encode(_ value: Int, forKey key: Key) throws { try put(key) { $0.writeInteger(value) } }
    mutating func encode(_ value: Int8, forKey key: Key) throws { try put(key) { $0.writeInteger(value) } }
    mutating func encode(_ value: Int16, forKey key: Key) throws { try put(key) { $0.writeInteger(value) } }
    mutating func encode(_ value: Int32, forKey key: Key) throws { try put(key) { $0.writeInteger(value) } }
    mutating func encode(_ value: Int64, forKey key: Key) throws { try put(key) { $0.writeInteger(value) } }
    mutating func encode(_ value: UInt, forKey key: Key) throws { try put(key) { $0.writeInteger(value) } }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { try put(key) { $0.writeInteger(value) } }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { try put(key) { $0.writeInteger(value) } }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { try put(key) { $0.writeInteger(value) } }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { try put(key) { $0.writeInteger(value) } }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ value: Int128, forKey key: Key) throws { try put(key) { $0.writeInt128(value) } }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ value: UInt128, forKey key: Key) throws { try put(key) { $0.writeUInt128(value) } }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws { try put(key) { try $0.encodeNextValue(value) } }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type, forKey key: Key
    ) -> KeyedEncodingContainer<NestedKey> {
        state._withUnsafeGuaranteedRef { state in
            state.keyedContainer(NestedKey.self, start: open(key, keyed: true))
        }
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        BinaryValueEncodingContainer(state: state, position: open(key, keyed: false), generation: current.generation, single: false)
    }

    mutating func superEncoder() -> any Encoder {
        superEncoder(named: BinaryCodingKey.superKey)
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        superEncoder(named: key)
    }

    /// Where the container starts, and the call it belongs to.
    private var current: BinaryEncodingState.Frame {
        slot < 0 ? frame : state._withUnsafeGuaranteedRef { $0.boxes.frames[slot] }
    }

    /// Writes `key` and opens a container for its value.
    private func open(_ key: Key, keyed: Bool) -> Int {
        state._withUnsafeGuaranteedRef { state in
            let frame = current
            guard state.enterOrRecord(frame.start, generation: frame.generation, element: false) else {
                return BinaryEncodingState.invalid
            }
            state.writeKey(key.stringValue)
            return state.openContainer(keyed: keyed)
        }
    }

    private func superEncoder(named key: some CodingKey) -> any Encoder {
        state._withUnsafeGuaranteedRef { state in
            let frame = current
            guard state.enterOrRecord(frame.start, generation: frame.generation, element: false) else {
                return BinarySlotEncoder(state: self.state, slot: BinaryEncodingState.invalid, generation: frame.generation)
            }
            state.writeKey(key.stringValue)
            return state.handOutSlot()
        }
    }
}

/// Writes the elements of one unkeyed container, which starts at `position` (its header counts
/// them), or, as a single value container, the one value of the slot at `position`.
struct BinaryValueEncodingContainer: UnkeyedEncodingContainer, SingleValueEncodingContainer {
    let state: Unmanaged<BinaryEncodingState>
    let position: Int
    /// The call's generation, times two, plus one for a single value container.
    private let stamp: Int

    init(state: Unmanaged<BinaryEncodingState>, position: Int, generation: Int, single: Bool) {
        self.state = state
        self.position = position
        stamp = generation << 1 | (single ? 1 : 0)
    }

    private var generation: Int { stamp >> 1 }
    private var single: Bool { stamp & 1 == 1 }

    var codingPath: [any CodingKey] { state._withUnsafeGuaranteedRef { $0.codingPath(to: position, generation: generation) } }

    var count: Int { single ? 0 : state._withUnsafeGuaranteedRef { $0.elementCount(position, generation: generation) } }

    /// Claims the slot, or counts one more element, then lets `write` write the value.
    @inline(__always)
    private func put(_ write: (BinaryEncodingState) throws -> Void) throws {
        try state._withUnsafeGuaranteedRef { state in
            if single {
                try state.fill(position, generation: generation)
            } else {
                try state.enterElement(position, generation: generation)
            }
            try write(state)
        }
    }

    mutating func encodeNil() throws { try put { $0.append(BinaryFormat.nilTag) } }
    mutating func encode(_ value: Bool) throws { try put { $0.writeBool(value) } }
    mutating func encode(_ value: String) throws { try put { $0.writeString(value) } }
    mutating func encode(_ value: Double) throws { try put { $0.writeDouble(value) } }
    mutating func encode(_ value: Float) throws { try put { $0.writeFloat(value) } }
    mutating func encode(_ value: Int) throws { try put { $0.writeInteger(value) } }
    mutating func encode(_ value: Int8) throws { try put { $0.writeInteger(value) } }
    mutating func encode(_ value: Int16) throws { try put { $0.writeInteger(value) } }
    mutating func encode(_ value: Int32) throws { try put { $0.writeInteger(value) } }
    mutating func encode(_ value: Int64) throws { try put { $0.writeInteger(value) } }
    mutating func encode(_ value: UInt) throws { try put { $0.writeInteger(value) } }
    mutating func encode(_ value: UInt8) throws { try put { $0.writeInteger(value) } }
    mutating func encode(_ value: UInt16) throws { try put { $0.writeInteger(value) } }
    mutating func encode(_ value: UInt32) throws { try put { $0.writeInteger(value) } }
    mutating func encode(_ value: UInt64) throws { try put { $0.writeInteger(value) } }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ value: Int128) throws { try put { $0.writeInt128(value) } }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ value: UInt128) throws { try put { $0.writeUInt128(value) } }

    mutating func encode<T: Encodable>(_ value: T) throws {
        guard single else { return try put { try $0.encodeNextValue(value) } }
        try state._withUnsafeGuaranteedRef { state in
            try state.check(generation)
            guard state.pending == position, position >= 0 else {
                throw state.error("a single value container was written twice, or after its parent moved on", at: position)
            }
            try state.encodeIntoPendingSlot(value, slot: position)
        }
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        state._withUnsafeGuaranteedRef { $0.keyedContainer(NestedKey.self, start: openNested(keyed: true)) }
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        BinaryValueEncodingContainer(state: state, position: openNested(keyed: false), generation: generation, single: false)
    }

    mutating func superEncoder() -> any Encoder {
        state._withUnsafeGuaranteedRef { state in
            guard state.enterOrRecord(position, generation: generation, element: true) else {
                return BinarySlotEncoder(state: self.state, slot: BinaryEncodingState.invalid, generation: generation)
            }
            return state.handOutSlot()
        }
    }

    private func openNested(keyed: Bool) -> Int {
        state._withUnsafeGuaranteedRef { state in
            guard state.enterOrRecord(position, generation: generation, element: true) else { return BinaryEncodingState.invalid }
            return state.openContainer(keyed: keyed)
        }
    }
}
