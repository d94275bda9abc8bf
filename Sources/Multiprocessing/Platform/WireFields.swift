/// Fields of the messages the package packs by hand (a pool's job and reply frames, a manager's
/// requests and replies): single bytes, little-endian integers, and byte runs after a 4-byte
/// little-endian length.
enum WireFields {
    /// Appends `value` in little-endian byte order.
    static func append<Integer: FixedWidthInteger>(_ value: Integer, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// Appends `field` after its 4-byte length.
    static func append(field: [UInt8], to bytes: inout [UInt8]) {
        append(UInt32(truncatingIfNeeded: field.count), to: &bytes)
        bytes += field
    }
}

/// Reads the fields of one message in order, in place; a read past the end is a protocol violation.
struct WireFieldReader {
    let bytes: UnsafeRawBufferPointer
    /// The offset of the next field.
    private(set) var position = 0
    /// What the message is, for errors ("a pool frame").
    private let what: StaticString

    init(_ bytes: UnsafeRawBufferPointer, what: StaticString) {
        self.bytes = bytes
        self.what = what
    }

    private func short() -> MultiprocessingError {
        MultiprocessingError(.protocolViolation, "\(what) ends early (\(bytes.count) bytes)")
    }

    mutating func byte() throws -> UInt8 {
        guard position < bytes.count else { throw short() }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func integer<Integer: FixedWidthInteger>(_: Integer.Type) throws -> Integer {
        let size = MemoryLayout<Integer>.size
        guard bytes.count - position >= size else { throw short() }
        defer { position += size }
        return Integer(littleEndian: bytes.loadUnaligned(fromByteOffset: position, as: Integer.self))
    }

    /// A 4-byte count of fields that follow, each at least 4 bytes long.
    mutating func count() throws -> Int {
        let count = Int(try integer(UInt32.self))
        guard count <= (bytes.count - position) / 4 else { throw short() }
        return count
    }

    /// Where the next field (a 4-byte length, then that many bytes) lies in the message.
    mutating func fieldRange() throws -> Range<Int> {
        let length = Int(try integer(UInt32.self))
        guard bytes.count - position >= length else { throw short() }
        defer { position += length }
        return position..<position + length
    }

    /// The next field's bytes (a 4-byte length, then that many bytes).
    mutating func field() throws -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[try fieldRange()])
    }

    /// The bytes after the last field read.
    func rest() -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: bytes[position...]) }

    /// Checks that nothing follows the last field.
    func finish() throws {
        guard position == bytes.count else {
            throw MultiprocessingError(.protocolViolation, "\(what) has \(bytes.count - position) bytes too many")
        }
    }
}
