/// Writes a ``PythonValue`` as a pickle of a given protocol (0 to 5), in the opcodes CPython itself uses
/// for each type at that protocol, so that every CPython that knows the protocol loads it into the same
/// Python object. Nothing is memoized: a value is a tree.
struct PickleWriter {
    var version: Int
    var output: PickleOutput

    init(version: Int) {
        self.version = version
        self.output = PickleOutput()
    }

    mutating func write(_ value: PythonValue) {
        begin()
        put(value)
        end()
    }

    /// The protocol header.
    mutating func begin() {
        if version >= 2 { output.append(0x80); output.append(UInt8(version)) }
    }

    /// STOP.
    mutating func end() { output.append(UInt8(ascii: ".")) }

    @inline(__always)
    mutating func putBool(_ flag: Bool) {
        if version >= 2 { output.append(flag ? 0x88 : 0x89) } else { text(flag ? "I01\n" : "I00\n") }
    }

    mutating func putFloat(_ number: Double) {
        if version >= 1 {
            output.reserve(9)
            output.appendUnchecked(UInt8(ascii: "G"))
            output.appendUnchecked(number.bitPattern.bigEndian)
        } else {
            text("F\(number.description)\n")
        }
    }

    mutating func putUInt64(_ number: UInt64) {
        if let small = Int(exactly: number) { return putInt(small) }
        var bytes: [UInt8] = (0..<8).map { UInt8(truncatingIfNeeded: number >> (8 * UInt64($0))) }
        bytes.append(0)
        put(.bigInt(bytes))
    }

    /// Opens an empty dict (`keyed`) or list that items are then added to, ended by ``closeContainer(keyed:)``.
    mutating func openContainer(keyed: Bool) {
        if version >= 1 {
            output.append(keyed ? UInt8(ascii: "}") : UInt8(ascii: "]"))
            output.append(UInt8(ascii: "("))
        } else {
            output.append(UInt8(ascii: "("))
            output.append(keyed ? UInt8(ascii: "d") : UInt8(ascii: "l"))
        }
    }

    /// Ends a container opened by ``openContainer(keyed:)`` (protocol 0 adds each item on its own).
    mutating func closeContainer(keyed: Bool) {
        if version >= 1 { output.append(keyed ? UInt8(ascii: "u") : UInt8(ascii: "e")) }
    }

    /// What follows each item of an open container: nothing from protocol 1 on (one SETITEMS or APPENDS
    /// ends them all), SETITEM or APPEND in protocol 0.
    func itemTrailer(keyed: Bool) -> UInt8? {
        version >= 1 ? nil : (keyed ? UInt8(ascii: "s") : UInt8(ascii: "a"))
    }

    private mutating func text(_ string: String) { output.append(contentsOf: string.utf8) }

    @inline(__always)
    private mutating func littleEndian<T: FixedWidthInteger>(_ value: T) {
        output.reserve(MemoryLayout<T>.size)
        output.appendUnchecked(value.littleEndian)
    }

    mutating func mark() { output.append(UInt8(ascii: "(")) }

    private mutating func global(_ name: String) {
        let module = name == "encode" ? "_codecs" : (version >= 3 ? "builtins" : "__builtin__")
        text("c\(module)\n\(name)\n")
    }

    /// A tuple of already written items (`count` of them, after a mark when `marked`).
    private mutating func endTuple(count: Int, marked: Bool) {
        if marked {
            output.append(UInt8(ascii: "t"))
        } else {
            output.append(0x84 + UInt8(count))  // TUPLE1 to TUPLE3
        }
    }

    /// Whether a tuple of `count` items is written with a leading mark.
    private func tupleNeedsMark(_ count: Int) -> Bool { version < 2 || count == 0 || count > 3 }

    mutating func put(_ value: PythonValue) {
        switch value {
        case .none:
            output.append(UInt8(ascii: "N"))
        case .bool(let flag):
            putBool(flag)
        case .int(let number):
            putInt(number)
        case .bigInt(let bytes):
            if version >= 2 {
                putLong(bytes)
            } else {
                text("L\(PythonInteger.decimal(fromLittleEndian: bytes))L\n")
            }
        case .float(let number):
            putFloat(number)
        case .string(let string):
            putString(string)
        case .bytes(let bytes):
            putBytes(bytes)
        case .bytearray(let bytes):
            if version >= 5 {
                output.append(0x96)
                littleEndian(UInt64(bytes.count))
                output.append(contentsOf: bytes)
            } else {
                global("bytearray")
                callWithOne(bytes.isEmpty ? nil : .bytes(bytes))
            }
        case .list(let items):
            if version >= 1 {
                output.append(UInt8(ascii: "]"))
                putBatches(count: items.count, single: "a", many: "e") { $0.put(items[$1]) }
            } else {
                text("(l")
                for item in items { put(item); output.append(UInt8(ascii: "a")) }
            }
        case .tuple(let items):
            if version >= 1 && items.isEmpty { return output.append(UInt8(ascii: ")")) }
            let marked = tupleNeedsMark(items.count)
            if marked { mark() }
            for item in items { put(item) }
            endTuple(count: items.count, marked: marked)
        case .dict(let items):
            if version >= 1 {
                output.append(UInt8(ascii: "}"))
                putBatches(count: items.count, single: "s", many: "u") { $0.put(items[$1].key); $0.put(items[$1].value) }
            } else {
                text("(d")
                for item in items { put(item.key); put(item.value); output.append(UInt8(ascii: "s")) }
            }
        case .set(let items):
            if version >= 4 {
                output.append(0x8F)
                for start in stride(from: 0, to: items.count, by: 1000) {
                    mark()
                    for item in items[start..<min(start + 1000, items.count)] { put(item) }
                    output.append(0x90)
                }
            } else {
                global("set")
                callWithOne(.list(items))
            }
        case .frozenset(let items):
            if version >= 4 {
                mark()
                for item in items { put(item) }
                output.append(0x91)
            } else {
                global("frozenset")
                callWithOne(.list(items))
            }
        }
    }

    /// The arguments and REDUCE of a call with no argument (nil) or one.
    private mutating func callWithOne(_ argument: PythonValue?) {
        if let argument {
            let marked = tupleNeedsMark(1)
            if marked { mark() }
            put(argument)
            endTuple(count: 1, marked: marked)
        } else if version >= 1 {
            output.append(UInt8(ascii: ")"))
        } else {
            text("(t")
        }
        output.append(UInt8(ascii: "R"))
    }

    /// Items of a list or dict, in batches of at most 1000 as CPython writes them: `write` puts the item
    /// (or key and value) at an index.
    private mutating func putBatches(count: Int, single: Character, many: Character, _ write: (inout PickleWriter, Int) -> Void) {
        var start = 0
        while start < count {
            let end = min(start + 1000, count)
            if end - start == 1 {
                write(&self, start)
                output.append(single.asciiValue!)
            } else {
                mark()
                for index in start..<end { write(&self, index) }
                output.append(many.asciiValue!)
            }
            start = end
        }
    }

    @inline(__always)
    mutating func putInt(_ number: Int) {
        if version >= 1 {
            output.reserve(5)
            switch number {
            case 0...0xFF: output.appendUnchecked(UInt8(ascii: "K")); output.appendUnchecked(UInt8(number))
            case 0...0xFFFF: output.appendUnchecked(UInt8(ascii: "M")); output.appendUnchecked(UInt16(number).littleEndian)
            case Int(Int32.min)...Int(Int32.max): output.appendUnchecked(UInt8(ascii: "J")); output.appendUnchecked(Int32(number).littleEndian)
            default:
                if version >= 2 { putLong(PythonInteger.littleEndian(number)) } else { text("L\(number)L\n") }
            }
        } else {
            text(Int32(exactly: number) != nil ? "I\(number)\n" : "L\(number)L\n")
        }
    }

    mutating func putLong(_ bytes: [UInt8]) {
        if bytes.count < 256 {
            output.append(0x8A); output.append(UInt8(bytes.count))
        } else {
            output.append(0x8B)
            littleEndian(UInt32(bytes.count))
        }
        output.append(contentsOf: bytes)
    }

    @inline(__always)
    mutating func putString(_ string: String) {
        if version >= 4, string.utf8.count < 256,
           string.utf8.withContiguousStorageIfAvailable({ output.appendShortString($0) }) != nil {
            return
        }
        putStringSlowly(string)
    }

    mutating func putStringSlowly(_ string: String) {
        if version >= 1 {
            var string = string
            string.withUTF8 { utf8 in
                let count = utf8.count
                if version >= 4 && count < 256 {
                    output.append(0x8C); output.append(UInt8(count))
                } else if count <= Int(UInt32.max) {
                    output.append(UInt8(ascii: "X"))
                    littleEndian(UInt32(count))
                } else {
                    output.append(0x8D)
                    littleEndian(UInt64(count))
                }
                output.append(contentsOf: utf8)
            }
            return
        }
        // Protocol 0: raw-unicode-escape, with the characters that would end or confuse the line escaped.
        output.append(UInt8(ascii: "V"))
        for scalar in string.unicodeScalars {
            switch scalar.value {
            case 0, 10, 13, 0x1A, 0x5C, 0x100...0xFFFF:
                let hex = String(scalar.value, radix: 16)
                text("\\u" + String(repeating: "0", count: 4 - hex.count) + hex)
            case 0x10000...:
                let hex = String(scalar.value, radix: 16)
                text("\\U" + String(repeating: "0", count: 8 - hex.count) + hex)
            default:
                output.append(UInt8(scalar.value))
            }
        }
        output.append(10)
    }

    mutating func putBytes(_ bytes: [UInt8]) {
        if version >= 3 {
            if bytes.count < 256 {
                output.append(UInt8(ascii: "C")); output.append(UInt8(bytes.count))
            } else if bytes.count <= Int(UInt32.max) {
                output.append(UInt8(ascii: "B"))
                littleEndian(UInt32(bytes.count))
            } else {
                output.append(0x8E)
                littleEndian(UInt64(bytes.count))
            }
            output.append(contentsOf: bytes)
        } else if bytes.isEmpty {
            global("bytes")
            callWithOne(nil)
        } else {
            // Protocols 0 to 2 have no bytes type: CPython writes _codecs.encode(latin-1 text, 'latin1').
            global("encode")
            var latin1 = String.UnicodeScalarView()
            for byte in bytes { latin1.append(Unicode.Scalar(byte)) }
            let marked = tupleNeedsMark(2)
            if marked { mark() }
            put(.string(String(latin1)))
            put(.string("latin1"))
            endTuple(count: 2, marked: marked)
            output.append(UInt8(ascii: "R"))
        }
    }
}

/// The bytes of a pickle being written: a buffer of its own that grows by doubling, kept (emptied)
/// between pickles by a reused ``PickleStream``, and freed by its owner.
struct PickleOutput {
    static let initialCapacity = 256
    /// Past this, a kept buffer shrinks back to the initial capacity when emptied.
    static let keptCapacity = 64 * 1024

    private(set) var base: UnsafeMutablePointer<UInt8>
    private(set) var count = 0
    private var capacity: Int

    init() {
        capacity = Self.initialCapacity
        base = .allocate(capacity: capacity)
    }

    func deallocate() { base.deallocate() }

    var bytes: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: base, count: count) }

    /// Empties the buffer, keeping its storage unless it grew large.
    mutating func removeAll() {
        count = 0
        if capacity > Self.keptCapacity {
            base.deallocate()
            capacity = Self.initialCapacity
            base = .allocate(capacity: capacity)
        }
    }

    /// Makes room for `extra` more bytes.
    @inline(__always)
    mutating func reserve(_ extra: Int) {
        if capacity &- count < extra { grow(extra) }
    }

    private mutating func grow(_ extra: Int) {
        var newCapacity = capacity * 2
        while newCapacity - count < extra { newCapacity *= 2 }
        let grown = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        grown.update(from: base, count: count)
        base.deallocate()
        base = grown
        capacity = newCapacity
    }

    /// Appends a value's bytes in memory order, in room already reserved.
    @inline(__always)
    mutating func appendUnchecked<T: FixedWidthInteger>(_ value: T) {
        UnsafeMutableRawPointer(base + count).storeBytes(of: value, as: T.self)
        count &+= MemoryLayout<T>.size
    }

    @inline(__always)
    mutating func append(_ byte: UInt8) {
        reserve(1)
        base[count] = byte
        count &+= 1
    }

    @inline(__always)
    mutating func append(contentsOf bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress else { return }
        reserve(bytes.count)
        UnsafeMutableRawPointer(base + count).copyMemory(from: source, byteCount: bytes.count)
        count &+= bytes.count
    }

    @inline(__always)
    mutating func append(contentsOf bytes: UnsafeBufferPointer<UInt8>) {
        append(contentsOf: UnsafeRawBufferPointer(bytes))
    }

    mutating func append(contentsOf bytes: [UInt8]) {
        bytes.withUnsafeBytes { append(contentsOf: $0) }
    }

    mutating func append(contentsOf bytes: String.UTF8View) {
        for byte in bytes { append(byte) }
    }

    /// SHORT_BINUNICODE and a text of fewer than 256 bytes.
    @inline(__always)
    mutating func appendShortString(_ utf8: UnsafeBufferPointer<UInt8>) {
        let length = utf8.count
        reserve(length &+ 2)
        base[count] = 0x8C
        base[count &+ 1] = UInt8(truncatingIfNeeded: length)
        if let source = utf8.baseAddress { (base + (count &+ 2)).update(from: source, count: length) }
        count &+= length &+ 2
    }
}
