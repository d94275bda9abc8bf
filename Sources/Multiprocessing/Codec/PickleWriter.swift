/// Writes a ``PythonValue`` as a pickle of a given protocol (0 to 5), in the opcodes CPython itself uses
/// for each type at that protocol, so that every CPython that knows the protocol loads it into the same
/// Python object. Nothing is memoized: a value is a tree.
struct PickleWriter {
    let version: Int
    var output: [UInt8]

    init(version: Int, output: [UInt8] = []) {
        self.version = version
        self.output = output
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

    mutating func putBool(_ flag: Bool) {
        if version >= 2 { output.append(flag ? 0x88 : 0x89) } else { text(flag ? "I01\n" : "I00\n") }
    }

    mutating func putFloat(_ number: Double) {
        if version >= 1 {
            output.append(UInt8(ascii: "G"))
            withUnsafeBytes(of: number.bitPattern.bigEndian) { output.append(contentsOf: $0) }
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

    private mutating func littleEndian<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { output.append(contentsOf: $0) }
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
                putBatches(items.lazy.map { [$0] }, single: "a", many: "e")
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
                putBatches(items.lazy.map { [$0.key, $0.value] }, single: "s", many: "u")
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

    /// Items of a list or dict, in batches of at most 1000 as CPython writes them.
    private mutating func putBatches<C: Collection>(_ groups: C, single: Character, many: Character) where C.Element == [PythonValue] {
        var index = groups.startIndex
        while index != groups.endIndex {
            let end = groups.index(index, offsetBy: 1000, limitedBy: groups.endIndex) ?? groups.endIndex
            if groups.distance(from: index, to: end) == 1 {
                for item in groups[index] { put(item) }
                output.append(single.asciiValue!)
            } else {
                mark()
                for group in groups[index..<end] { for item in group { put(item) } }
                output.append(many.asciiValue!)
            }
            index = end
        }
    }

    mutating func putInt(_ number: Int) {
        if version >= 1 {
            switch number {
            case 0...0xFF: output.append(UInt8(ascii: "K")); output.append(UInt8(number))
            case 0...0xFFFF: output.append(UInt8(ascii: "M")); littleEndian(UInt16(number))
            case Int(Int32.min)...Int(Int32.max): output.append(UInt8(ascii: "J")); littleEndian(Int32(number))
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

    mutating func putString(_ string: String) {
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
