/// CPython's message framing, so a Python `multiprocessing.connection` peer reads and writes our frames
/// with `send_bytes`/`recv_bytes`: a signed big-endian 4-byte length, and for messages of 2^31 bytes
/// or more a length of -1 followed by an unsigned big-endian 8-byte length.
enum Framing {
    /// The largest length the 4-byte form carries.
    static let shortLimit = Int(Int32.max)

    /// The header for a payload of `length` bytes (4 bytes, or 12 for the long form).
    static func header(forLength length: Int) -> [UInt8] {
        var header: [UInt8] = []
        if length > shortLimit {
            header.reserveCapacity(12)
            appendBigEndian(UInt32(bitPattern: -1), to: &header)
            appendBigEndian(UInt64(length), to: &header)
        } else {
            header.reserveCapacity(4)
            appendBigEndian(UInt32(length), to: &header)
        }
        return header
    }

    /// Writes the header of a message built in place: `message` starts with 4 reserved bytes, and the
    /// payload is everything after them (the long form replaces the 4 bytes with its 12).
    static func fillHeader(of message: inout [UInt8]) {
        let length = message.count - 4
        if length > shortLimit {
            message.replaceSubrange(0..<4, with: header(forLength: length))
        } else {
            message.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(length).bigEndian, as: UInt32.self) }
        }
    }

    /// Parses a header at the start of `bytes`: the payload length and the header's size,
    /// or nil when more bytes are needed. Throws for a negative length other than -1.
    static func parseHeader(_ bytes: UnsafeRawBufferPointer) throws -> (length: Int, headerSize: Int)? {
        guard bytes.count >= 4 else { return nil }
        let short = Int32(bitPattern: readBigEndian(UInt32.self, bytes, at: 0))
        if short >= 0 { return (Int(short), 4) }
        guard short == -1 else {
            throw MultiprocessingError(.protocolViolation, "bad message length: frame header says \(short)")
        }
        guard bytes.count >= 12 else { return nil }
        let long = readBigEndian(UInt64.self, bytes, at: 4)
        guard long <= UInt64(Int.max / 2) else {
            throw MultiprocessingError(.protocolViolation, "bad message length: frame header says \(long)")
        }
        return (Int(long), 12)
    }

    static func appendBigEndian<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    static func readBigEndian<T: FixedWidthInteger>(_: T.Type, _ bytes: UnsafeRawBufferPointer, at offset: Int) -> T {
        T(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
