#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// `count` trivially copyable values in anonymous shared memory (a memfd, so there is no name to
/// leak): the storage behind ``RawSharedValue``, ``RawSharedArray`` and their locked forms.
///
/// A 64-byte header records a magic number, the element stride and the count, so a descriptor decoded
/// as the wrong element type or length is refused instead of misread. The values start at byte 64.
@usableFromInline
final class SharedElements<Element: BitwiseCopyable>: @unchecked Sendable, Codable {
    private static var magic: UInt32 { 0x4D50_5641 }
    private static var dataOffset: Int { 64 }

    let segment: MappedSegment
    @usableFromInline let count: Int
    @usableFromInline let base: UnsafeMutablePointer<Element>

    /// New storage for `count` values, which `fill` initialises (the memory starts zero-filled).
    init(count: Int, fill: (UnsafeMutableBufferPointer<Element>) -> Void) throws {
        guard count >= 0 else { throw MultiprocessingError(.invalidArgument, "a shared array cannot have \(count) elements") }
        let stride = MemoryLayout<Element>.stride
        let (bytes, overflow) = count.multipliedReportingOverflow(by: stride)
        guard !overflow, bytes <= Int.max - Self.dataOffset else {
            throw MultiprocessingError(.invalidArgument, "\(count) elements of \(Element.self) do not fit in memory")
        }
        segment = try MappedSegment.anonymous(size: Self.dataOffset + bytes)
        self.count = count
        base = (segment.base + Self.dataOffset).bindMemory(to: Element.self, capacity: count)
        segment.base.storeBytes(of: Self.magic, as: UInt32.self)
        segment.base.storeBytes(of: UInt32(truncatingIfNeeded: stride), toByteOffset: 4, as: UInt32.self)
        segment.base.storeBytes(of: Int64(count), toByteOffset: 8, as: Int64.self)
        fill(buffer)
    }

    @usableFromInline var buffer: UnsafeMutableBufferPointer<Element> { UnsafeMutableBufferPointer(start: base, count: count) }

    private enum CodingKeys: String, CodingKey { case memory, count }

    @usableFromInline func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(segment.encodeDescriptor(to: encoder, as: "shared memory"), forKey: .memory)
        try container.encode(count, forKey: .count)
    }

    @usableFromInline init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let count = try container.decode(Int.self, forKey: .count)
        let stride = MemoryLayout<Element>.stride
        guard count >= 0, count <= (Int.max - Self.dataOffset) / max(stride, 1) else {
            throw MultiprocessingError(.transport, "a shared array of \(count) elements of \(Element.self) cannot arrive")
        }
        let segment = try MappedSegment.decode(
            from: decoder, index: container.decode(Int.self, forKey: .memory),
            size: Self.dataOffset + count * stride, as: "shared memory")
        guard segment.base.load(as: UInt32.self) == Self.magic,
              segment.base.load(fromByteOffset: 4, as: UInt32.self) == UInt32(truncatingIfNeeded: stride),
              segment.base.load(fromByteOffset: 8, as: Int64.self) == Int64(count)
        else {
            throw MultiprocessingError(.transport, "the shared memory that arrived does not hold \(count) values of \(Element.self)")
        }
        self.segment = segment
        self.count = count
        base = (segment.base + Self.dataOffset).bindMemory(to: Element.self, capacity: count)
    }
}

/// Atomic operations on integers of 1, 2, 4 or 8 bytes in shared memory, through
/// `Synchronization.Atomic` over the integer's bit pattern (wrapping arithmetic, as two's complement
/// makes it the same for signed and unsigned types). Sequentially consistent.
@usableFromInline
enum SharedAtomic {
    @inlinable @inline(__always)
    static func load<T: FixedWidthInteger>(_ address: UnsafeMutablePointer<T>) -> T {
        let raw = UnsafeMutableRawPointer(address)
        switch MemoryLayout<T>.size {
        case 1: return T(truncatingIfNeeded: raw.assumingMemoryBound(to: Atomic<UInt8>.self).pointee.load(ordering: .sequentiallyConsistent))
        case 2: return T(truncatingIfNeeded: raw.assumingMemoryBound(to: Atomic<UInt16>.self).pointee.load(ordering: .sequentiallyConsistent))
        case 4: return T(truncatingIfNeeded: raw.assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .sequentiallyConsistent))
        default: return T(truncatingIfNeeded: raw.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.load(ordering: .sequentiallyConsistent))
        }
    }

    @inlinable @inline(__always)
    static func store<T: FixedWidthInteger>(_ value: T, _ address: UnsafeMutablePointer<T>) {
        let raw = UnsafeMutableRawPointer(address)
        switch MemoryLayout<T>.size {
        case 1: raw.assumingMemoryBound(to: Atomic<UInt8>.self).pointee.store(UInt8(truncatingIfNeeded: value), ordering: .sequentiallyConsistent)
        case 2: raw.assumingMemoryBound(to: Atomic<UInt16>.self).pointee.store(UInt16(truncatingIfNeeded: value), ordering: .sequentiallyConsistent)
        case 4: raw.assumingMemoryBound(to: Atomic<UInt32>.self).pointee.store(UInt32(truncatingIfNeeded: value), ordering: .sequentiallyConsistent)
        default: raw.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.store(UInt64(truncatingIfNeeded: value), ordering: .sequentiallyConsistent)
        }
    }

    /// Adds `delta` (wrapping); returns the new value.
    @inlinable @inline(__always)
    static func add<T: FixedWidthInteger>(_ delta: T, _ address: UnsafeMutablePointer<T>) -> T {
        let raw = UnsafeMutableRawPointer(address)
        switch MemoryLayout<T>.size {
        case 1: return T(truncatingIfNeeded: raw.assumingMemoryBound(to: Atomic<UInt8>.self).pointee.wrappingAdd(UInt8(truncatingIfNeeded: delta), ordering: .sequentiallyConsistent).newValue)
        case 2: return T(truncatingIfNeeded: raw.assumingMemoryBound(to: Atomic<UInt16>.self).pointee.wrappingAdd(UInt16(truncatingIfNeeded: delta), ordering: .sequentiallyConsistent).newValue)
        case 4: return T(truncatingIfNeeded: raw.assumingMemoryBound(to: Atomic<UInt32>.self).pointee.wrappingAdd(UInt32(truncatingIfNeeded: delta), ordering: .sequentiallyConsistent).newValue)
        default: return T(truncatingIfNeeded: raw.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.wrappingAdd(UInt64(truncatingIfNeeded: delta), ordering: .sequentiallyConsistent).newValue)
        }
    }

    /// Replaces the value with `desired` if it equals `expected`; returns whether it did and the value found.
    @inlinable @inline(__always)
    static func compareExchange<T: FixedWidthInteger>(_ expected: T, _ desired: T, _ address: UnsafeMutablePointer<T>) -> (exchanged: Bool, original: T) {
        let raw = UnsafeMutableRawPointer(address)
        switch MemoryLayout<T>.size {
        case 1:
            let r = raw.assumingMemoryBound(to: Atomic<UInt8>.self).pointee.compareExchange(
                expected: UInt8(truncatingIfNeeded: expected), desired: UInt8(truncatingIfNeeded: desired), ordering: .sequentiallyConsistent)
            return (r.exchanged, T(truncatingIfNeeded: r.original))
        case 2:
            let r = raw.assumingMemoryBound(to: Atomic<UInt16>.self).pointee.compareExchange(
                expected: UInt16(truncatingIfNeeded: expected), desired: UInt16(truncatingIfNeeded: desired), ordering: .sequentiallyConsistent)
            return (r.exchanged, T(truncatingIfNeeded: r.original))
        case 4:
            let r = raw.assumingMemoryBound(to: Atomic<UInt32>.self).pointee.compareExchange(
                expected: UInt32(truncatingIfNeeded: expected), desired: UInt32(truncatingIfNeeded: desired), ordering: .sequentiallyConsistent)
            return (r.exchanged, T(truncatingIfNeeded: r.original))
        default:
            let r = raw.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.compareExchange(
                expected: UInt64(truncatingIfNeeded: expected), desired: UInt64(truncatingIfNeeded: desired), ordering: .sequentiallyConsistent)
            return (r.exchanged, T(truncatingIfNeeded: r.original))
        }
    }
}

/// The lock of a ``SharedValue`` or ``SharedArray``: any Codable ``ProcessLocking`` (a ``ProcessRLock``
/// by default, as in Python), sent with its type name so the receiver rebuilds the same kind.
struct SharedLockBox: Codable, @unchecked Sendable {
    let lock: any ProcessLocking & Codable

    init(_ lock: any ProcessLocking & Codable) { self.lock = lock }

    private enum CodingKeys: String, CodingKey { case type, lock }

    @usableFromInline func encode(to encoder: any Encoder) throws {
        let type = Swift.type(of: lock)
        guard let name = _mangledTypeName(type), !name.contains("$") else {
            throw MultiprocessingError(.transport, "the lock type \(type) cannot be found by name in another process; declare it at file scope")
        }
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .type)
        try lock.encode(to: container.superEncoder(forKey: .lock))
    }

    @usableFromInline init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let name = try container.decode(String.self, forKey: .type)
        guard let type = _typeByName(name) as? any (ProcessLocking & Codable).Type else {
            throw MultiprocessingError(.transport, "no lock type named \(name) in this program")
        }
        lock = try type.init(from: container.superDecoder(forKey: .lock))
    }
}
