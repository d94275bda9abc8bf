/// Reads a pickle (protocols 0 to 5) into a ``PythonValue`` without importing or running anything.
///
/// Only the opcodes CPython writes for plain data are understood. The few globals those pickles name
/// (`bytes`, `bytearray`, `set`, `frozenset` and `_codecs.encode`, which protocols below 3 and 4 use
/// for bytes and sets) are applied by this reader itself to the arguments they must have; any other
/// global, class, reduce call or persistent id is refused with ``MultiprocessingError/Code/refused``.
/// Lengths are checked against the bytes that arrived before anything is allocated, and nesting depth,
/// memo size and the number of objects that memo references may expand to are bounded.
struct PickleReader {
    /// Marks a stack entry that stands for a callable global rather than a value.
    enum Callable: UInt8 { case none, codecsEncode, bytes, bytearray, set, frozenset, refused }

    struct Entry {
        var value: PythonValue
        /// Objects in the value, counting what memo references expand to.
        var nodes: Int
        /// Container nesting depth of the value (a scalar is 0).
        var depth: Int
        /// The memo slot that refers to this entry while it is on the stack, or -1.
        var memoIndex: Int = -1
        /// Whether a copy was taken through the memo: a later mutation would not reach that copy.
        var shared = false
        var callable: Callable = .none
    }

    enum Memo {
        case empty
        case value(PythonValue, nodes: Int, depth: Int)
        /// The container at this stack index, still on the stack.
        case onStack(Int)
        /// One of the allowed globals.
        case callable(Callable)
    }

    let limits: PickleDecoder.Limits
    private var stack: [Entry] = []
    private var marks: [Int] = []
    private var memo: [Memo] = []
    private var nodesSeen = 0
    /// A helper that rebuilds class instances (copyreg's), held until the pickle names the class itself.
    private var refusedHelper: String?
    private let input: UnsafeRawBufferPointer
    private var position = 0

    init(_ input: UnsafeRawBufferPointer, limits: PickleDecoder.Limits) {
        self.input = input
        self.limits = limits
        stack.reserveCapacity(16)
        memo.reserveCapacity(16)
    }

    static func read(_ input: UnsafeRawBufferPointer, limits: PickleDecoder.Limits) throws -> PythonValue {
        var reader = PickleReader(input, limits: limits)
        return try reader.run()
    }

    // MARK: Input

    private func malformed(_ message: String) -> MultiprocessingError {
        MultiprocessingError(.transport, "malformed pickle at byte \(position): \(message)")
    }

    private mutating func byte() throws -> UInt8 {
        guard position < input.count else { throw malformed("the pickle ends early") }
        defer { position += 1 }
        return input[position]
    }

    private mutating func take(_ count: Int) throws -> UnsafeRawBufferPointer {
        guard count >= 0, input.count - position >= count else {
            throw malformed("a length of \(count) bytes runs past the end of the pickle")
        }
        defer { position += count }
        return UnsafeRawBufferPointer(rebasing: input[position..<position + count])
    }

    private mutating func littleEndian(_ width: Int) throws -> UInt64 {
        let bytes = try take(width)
        var result: UInt64 = 0
        for index in (0..<width).reversed() { result = result << 8 | UInt64(bytes[index]) }
        return result
    }

    private mutating func length(_ width: Int) throws -> Int {
        let value = try littleEndian(width)
        guard value <= UInt64(input.count - position) else {
            throw malformed("a length of \(value) bytes runs past the end of the pickle")
        }
        return Int(value)
    }

    /// The text up to the next newline (protocol 0's arguments).
    private mutating func line() throws -> Substring {
        guard let newline = input[position...].firstIndex(of: 10) else { throw malformed("a line has no end") }
        let bytes = input[position..<newline]
        position = newline + 1
        guard let text = String(validating: bytes, as: UTF8.self) else { throw malformed("a line is not text") }
        return Substring(text)
    }

    private func string(_ bytes: UnsafeRawBufferPointer) throws -> String {
        if bytes.allSatisfy({ $0 < 0x80 }) { return String(decoding: bytes, as: UTF8.self) }
        if let text = String(validating: bytes, as: UTF8.self) { return text }
        throw malformed("a str is not valid UTF-8 (a lone surrogate cannot be represented)")
    }

    // MARK: Stack

    private mutating func push(_ value: PythonValue, nodes: Int = 1, depth: Int = 0) throws {
        nodesSeen += 1
        guard nodesSeen <= limits.maxObjects else {
            throw MultiprocessingError(.transport, "pickle holds more than \(limits.maxObjects) objects")
        }
        stack.append(Entry(value: value, nodes: nodes, depth: depth))
    }

    /// Removes the top entry; a memo slot that referred to it keeps its final value.
    private mutating func popEntry() throws -> Entry {
        guard stack.count > (marks.last ?? 0) else { throw malformed("the stack is empty") }
        let entry = stack.removeLast()
        settle(entry)
        return entry
    }

    private mutating func settle(_ entry: Entry) {
        if entry.memoIndex >= 0 { memo[entry.memoIndex] = .value(entry.value, nodes: entry.nodes, depth: entry.depth) }
    }

    private mutating func popValue() throws -> Entry {
        let entry = try popEntry()
        if entry.callable != .none { throw misuse(entry) }
        return entry
    }

    /// Pops the last mark and returns where its items start; they stay on the stack, checked and settled.
    private mutating func takeMark() throws -> Int {
        guard let mark = marks.popLast() else { throw malformed("no mark to pop to") }
        try checkItems(from: mark)
        return mark
    }

    /// Checks that the entries from `start` on are values, and settles their memo slots.
    private mutating func checkItems(from start: Int) throws {
        for index in start..<stack.count {
            if stack[index].callable != .none { throw misuse(stack[index]) }
            let memoIndex = stack[index].memoIndex
            if memoIndex >= 0 { memo[memoIndex] = .value(stack[index].value, nodes: stack[index].nodes, depth: stack[index].depth) }
        }
    }

    /// The values from `start` on.
    private func values(from start: Int) -> [PythonValue] {
        var values: [PythonValue] = []
        values.reserveCapacity(stack.count - start)
        for index in start..<stack.count { values.append(stack[index].value) }
        return values
    }

    /// The error for a global used where a value belongs.
    private func misuse(_ entry: Entry) -> MultiprocessingError {
        if entry.callable == .refused, let refusedHelper { return Self.refusal(refusedHelper) }
        return malformed("a global is used as a value")
    }

    static func refusal(_ name: String) -> MultiprocessingError {
        MultiprocessingError(
            .refused,
            "refused to load \(name): the pickle names a class or function, and only plain data "
                + "(None, bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset) is accepted")
    }

    private func container(from start: Int) throws -> (nodes: Int, depth: Int) {
        var nodes = 1, depth = 0
        for index in start..<stack.count {
            nodes += stack[index].nodes
            depth = max(depth, stack[index].depth)
        }
        guard depth < limits.maxDepth else {
            throw MultiprocessingError(.transport, "pickle nests containers deeper than \(limits.maxDepth)")
        }
        return (nodes, depth + 1)
    }

    /// Replaces the entries from `start` on with `value`, the container made of them.
    private mutating func pushContainer(_ value: PythonValue, replacingFrom start: Int) throws {
        let (nodes, depth) = try container(from: start)
        stack.removeSubrange(start...)
        try push(value, nodes: nodes, depth: depth)
    }

    /// Adds the entries from `start` on (checked values) to the list, dict or set just below them, and
    /// removes them from the stack.
    private mutating func extend(from start: Int, opcode: UInt8) throws {
        let index = start - 1
        guard index >= (marks.last ?? 0), index >= 0 else { throw malformed("nothing to add items to") }
        guard !stack[index].shared else {
            throw MultiprocessingError(.transport, "pickle refers to a container before it is complete (a recursive structure cannot be represented)")
        }
        let (nodes, depth) = try container(from: start)
        var target = stack[index].value
        let fits: Bool
        switch (target, opcode) {
        case (.list, UInt8(ascii: "a")), (.list, UInt8(ascii: "e")), (.dict, UInt8(ascii: "s")), (.dict, UInt8(ascii: "u")): fits = true
        case (.set, 0x90): fits = stack[start...].allSatisfy(\.value.isHashable)
        default: fits = false
        }
        guard fits else { throw malformed("items of the wrong kind are added to a \(target.typeName)") }
        stack[index].value = .none
        switch target {
        case .list(var list):
            target = .none
            for item in start..<stack.count { list.append(stack[item].value) }
            stack[index].value = .list(list)
        case .set(var set):
            target = .none
            for item in start..<stack.count { set.append(stack[item].value) }
            stack[index].value = .set(set)
        case .dict(var dict):
            target = .none
            guard (stack.count - start) % 2 == 0 else {
                stack[index].value = .dict(dict)
                throw malformed("a dict gets an odd number of keys and values")
            }
            dict.reserveCapacity(dict.count + (stack.count - start) / 2)
            for item in stride(from: start, to: stack.count, by: 2) {
                let key = stack[item].value
                guard key.isHashable else {
                    stack[index].value = .dict(dict)
                    throw malformed("a dict key of type \(key.typeName) is unhashable")
                }
                dict.append(PythonDictItem(key: key, value: stack[item + 1].value))
            }
            stack[index].value = .dict(dict)
        default:
            stack[index].value = target
        }
        stack.removeSubrange(start...)
        stack[index].nodes += nodes - 1
        stack[index].depth = max(stack[index].depth, depth)
    }

    private mutating func memoize(at index: Int) throws {
        guard let top = stack.indices.last, top >= (marks.last ?? 0) else { throw malformed("nothing to memoize") }
        guard index >= 0, index <= memo.count || index < limits.maxObjects && index < input.count else {
            throw malformed("memo index \(index) is out of range")
        }
        if index == memo.count {
            memo.append(.empty)
        } else if index > memo.count {
            memo.append(contentsOf: repeatElement(.empty, count: index + 1 - memo.count))
        }
        if case .onStack(let other) = memo[index], other < stack.count, stack[other].memoIndex == index {
            stack[other].memoIndex = -1
        }
        if stack[top].callable != .none { memo[index] = .callable(stack[top].callable); return }
        switch stack[top].value {
        case .list, .dict, .set:
            let previous = stack[top].memoIndex
            if previous >= 0, previous != index { throw malformed("a container is memoized twice") }
            memo[index] = .onStack(top)
            stack[top].memoIndex = index
        default:
            memo[index] = .value(stack[top].value, nodes: stack[top].nodes, depth: stack[top].depth)
        }
    }

    private mutating func recall(_ index: Int) throws {
        guard index >= 0, index < memo.count else { throw malformed("memo index \(index) was never stored") }
        switch memo[index] {
        case .empty:
            throw malformed("memo index \(index) was never stored")
        case .callable(let callable):
            nodesSeen += 1
            stack.append(Entry(value: .none, nodes: 0, depth: 0, callable: callable))
        case .value(let value, let nodes, let depth):
            nodesSeen += nodes - 1
            try push(value, nodes: nodes, depth: depth)
            stack[stack.count - 1].shared = true
        case .onStack(let at):
            guard at < stack.count else { throw malformed("memo index \(index) refers to a lost object") }
            stack[at].shared = true
            let entry = stack[at]
            nodesSeen += entry.nodes - 1
            try push(entry.value, nodes: entry.nodes, depth: entry.depth)
            stack[stack.count - 1].shared = true
        }
    }

    // MARK: Globals

    private mutating func pushGlobal(module: Substring, name: Substring) throws {
        let callable: Callable
        switch (module, name) {
        case ("_codecs", "encode"): callable = .codecsEncode
        case ("builtins", "bytes"), ("__builtin__", "bytes"): callable = .bytes
        case ("builtins", "bytearray"), ("__builtin__", "bytearray"): callable = .bytearray
        case ("builtins", "set"), ("__builtin__", "set"): callable = .set
        case ("builtins", "frozenset"), ("__builtin__", "frozenset"): callable = .frozenset
        case ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__"):
            // Protocols 0 and 1 name this helper before the class: refuse at the class, naming it.
            if let refusedHelper { throw Self.refusal(refusedHelper) }
            refusedHelper = "\(module).\(name)"
            callable = .refused
        default:
            if let refusedHelper { throw Self.refusal("\(module).\(name) (through \(refusedHelper))") }
            throw Self.refusal("\(module).\(name)")
        }
        nodesSeen += 1
        stack.append(Entry(value: .none, nodes: 0, depth: 0, callable: callable))
    }

    /// Applies one of the allowed callables, as REDUCE asks.
    private mutating func reduce() throws {
        let arguments = try popValue()
        let function = try popEntry()
        guard case .tuple(let args) = arguments.value else { throw malformed("a call's arguments are not a tuple") }
        func bytesArgument() throws -> [UInt8] {
            switch args.first {
            case nil: return []
            case .bytes(let bytes)?, .bytearray(let bytes)?: return bytes
            default: throw malformed("\(function.callable) gets a \(args[0].typeName)")
            }
        }
        switch function.callable {
        case .refused:
            throw misuse(function)
        case .none:
            throw MultiprocessingError(.refused, "refused a reduce call on a \(function.value.typeName): only plain data is accepted")
        case .codecsEncode:
            try push(.bytes(latin1(args, "_codecs.encode")))
        case .bytes:
            guard args.count <= 1 else { throw malformed("bytes is called with \(args.count) arguments") }
            try push(.bytes(bytesArgument()))
        case .bytearray:
            // Python 3.7 writes bytearray(text, 'latin-1') at protocols 0 to 2.
            guard args.count <= 2 else { throw malformed("bytearray is called with \(args.count) arguments") }
            try push(.bytearray(args.count == 2 ? latin1(args, "bytearray") : bytesArgument()))
        case .set, .frozenset:
            guard args.count <= 1 else { throw malformed("set is called with \(args.count) arguments") }
            var items: [PythonValue] = []
            switch args.first {
            case nil: break
            case .list(let values)?, .tuple(let values)?, .set(let values)?, .frozenset(let values)?: items = values
            default: throw malformed("a set is made from a \(args[0].typeName)")
            }
            guard items.allSatisfy(\.isHashable) else { throw malformed("a set item is unhashable") }
            nodesSeen -= 1
            try push(function.callable == .set ? .set(items) : .frozenset(items), nodes: arguments.nodes, depth: arguments.depth)
        }
    }

    /// The bytes of `(text, 'latin1')` arguments.
    private func latin1(_ args: [PythonValue], _ function: String) throws -> [UInt8] {
        guard args.count == 2, case .string(let text) = args[0], case .string(let encoding) = args[1],
              encoding == "latin1" || encoding == "latin-1" else {
            throw malformed("\(function) is called with arguments other than a str and 'latin1'")
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            guard scalar.value < 256 else { throw malformed("\(function) gets a character outside latin-1") }
            bytes.append(UInt8(scalar.value))
        }
        return bytes
    }

    // MARK: Text arguments (protocol 0)

    private mutating func integerLine(long: Bool) throws {
        var text = try line()
        if !long, text == "00" || text == "01" { return try push(.bool(text == "01")) }
        if long, text.last == "L" { text = text.dropLast() }
        guard text.utf8.count <= limits.maxIntegerDigits else {
            throw MultiprocessingError(.transport, "an int has more than \(limits.maxIntegerDigits) digits")
        }
        if let value = Int(text) { return try push(.int(value)) }
        guard let bytes = PythonInteger.littleEndian(fromDecimal: text) else { throw malformed("'\(text)' is not an int") }
        try push(PythonInteger.value(fromLittleEndian: bytes))
    }

    /// Decodes protocol 0's raw-unicode-escape text: `\uXXXX` and `\UXXXXXXXX` escapes, other bytes latin-1.
    private mutating func rawUnicodeEscape() throws -> String {
        guard let newline = input[position...].firstIndex(of: 10) else { throw malformed("a line has no end") }
        let bytes = input[position..<newline]
        position = newline + 1
        var scalars = String.UnicodeScalarView()
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\\"), index + 1 < bytes.endIndex, bytes[index + 1] == UInt8(ascii: "u") || bytes[index + 1] == UInt8(ascii: "U") {
                let width = bytes[index + 1] == UInt8(ascii: "u") ? 4 : 8
                guard index + 2 + width <= bytes.endIndex,
                      let hex = String(validating: bytes[(index + 2)..<(index + 2 + width)], as: UTF8.self),
                      let code = UInt32(hex, radix: 16), let scalar = Unicode.Scalar(code) else {
                    throw malformed("a bad \\u escape in a str")
                }
                scalars.append(scalar)
                index += 2 + width
            } else {
                scalars.append(Unicode.Scalar(byte))
                index += 1
            }
        }
        return String(scalars)
    }

    /// Python 2 `str` opcodes: loaded as a str when ASCII, as Python 3's default does.
    private mutating func pushLegacyString(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.allSatisfy({ $0 < 0x80 }) else { throw malformed("a Python 2 str is not ASCII") }
        try push(.string(String(decoding: bytes, as: UTF8.self)))
    }

    // MARK: Loop

    mutating func run() throws -> PythonValue {
        while true {
            let opcode = try byte()
            switch opcode {
            case 0x80:  // PROTO
                let version = try byte()
                guard version <= 5 else { throw malformed("unsupported pickle protocol \(version)") }
            case 0x95:  // FRAME: a length hint only
                _ = try littleEndian(8)
            case UInt8(ascii: "."):  // STOP
                if let refusedHelper { throw Self.refusal(refusedHelper) }
                let result = try popValue()
                guard stack.isEmpty, marks.isEmpty else { throw malformed("objects are left on the stack at the end") }
                guard position == input.count else { throw malformed("\(input.count - position) bytes follow the end of the pickle") }
                return result.value
            case UInt8(ascii: "("):  // MARK
                guard marks.count < limits.maxDepth else {
                    throw MultiprocessingError(.transport, "pickle nests containers deeper than \(limits.maxDepth)")
                }
                marks.append(stack.count)
            case UInt8(ascii: "0"):  // POP
                if marks.last == stack.count { _ = marks.popLast() } else { _ = try popEntry() }
            case UInt8(ascii: "1"):  // POP_MARK
                stack.removeSubrange(try takeMark()...)
            case UInt8(ascii: "2"):  // DUP
                guard let top = stack.last, stack.count > (marks.last ?? 0) else { throw malformed("the stack is empty") }
                guard top.callable == .none else { throw malformed("a global is duplicated") }
                try push(top.value, nodes: top.nodes, depth: top.depth)
                stack[stack.count - 1].shared = true
                stack[stack.count - 2].shared = true
            // Scalars
            case UInt8(ascii: "N"): try push(.none)
            case 0x88: try push(.bool(true))
            case 0x89: try push(.bool(false))
            case UInt8(ascii: "K"): try push(.int(Int(try byte())))
            case UInt8(ascii: "M"): try push(.int(Int(try littleEndian(2))))
            case UInt8(ascii: "J"): try push(.int(Int(Int32(truncatingIfNeeded: try littleEndian(4)))))
            case 0x8A, 0x8B:  // LONG1, LONG4
                let count = try length(opcode == 0x8A ? 1 : 4)
                try push(PythonInteger.value(fromLittleEndian: Array(try take(count))))
            case UInt8(ascii: "I"): try integerLine(long: false)
            case UInt8(ascii: "L"): try integerLine(long: true)
            case UInt8(ascii: "G"): try push(.float(Double(bitPattern: try littleEndian(8).byteSwapped)))
            case UInt8(ascii: "F"):
                let text = try line()
                guard let value = Double(text) else { throw malformed("'\(text)' is not a float") }
                try push(.float(value))
            // Text and bytes
            case 0x8C: try push(.string(try string(try take(try length(1)))))
            case UInt8(ascii: "X"): try push(.string(try string(try take(try length(4)))))
            case 0x8D: try push(.string(try string(try take(try length(8)))))
            case UInt8(ascii: "V"): try push(.string(try rawUnicodeEscape()))
            case UInt8(ascii: "C"): try push(.bytes(Array(try take(try length(1)))))
            case UInt8(ascii: "B"): try push(.bytes(Array(try take(try length(4)))))
            case 0x8E: try push(.bytes(Array(try take(try length(8)))))
            case 0x96: try push(.bytearray(Array(try take(try length(8)))))
            case UInt8(ascii: "U"): try pushLegacyString(try take(try length(1)))
            case UInt8(ascii: "T"): try pushLegacyString(try take(try length(4)))
            case UInt8(ascii: "S"):
                let text = try line()
                guard text.count >= 2, let quote = text.first, quote == "'" || quote == "\"", text.last == quote,
                      !text.contains("\\") else {
                    throw malformed("a Python 2 str in protocol 0 form is not supported")
                }
                guard text.utf8.allSatisfy({ $0 < 0x80 }) else { throw malformed("a Python 2 str is not ASCII") }
                try push(.string(String(text.dropFirst().dropLast())))
            // Containers
            case UInt8(ascii: "]"): try pushContainer(.list([]), replacingFrom: stack.count)
            case UInt8(ascii: ")"): try pushContainer(.tuple([]), replacingFrom: stack.count)
            case UInt8(ascii: "}"): try pushContainer(.dict([]), replacingFrom: stack.count)
            case 0x8F: try pushContainer(.set([]), replacingFrom: stack.count)
            case UInt8(ascii: "l"):
                let mark = try takeMark()
                try pushContainer(.list(values(from: mark)), replacingFrom: mark)
            case UInt8(ascii: "t"):
                let mark = try takeMark()
                try pushContainer(.tuple(values(from: mark)), replacingFrom: mark)
            case 0x85, 0x86, 0x87:  // TUPLE1-3
                let start = stack.count - Int(opcode - 0x84)
                guard start >= (marks.last ?? 0) else { throw malformed("the stack is empty") }
                try checkItems(from: start)
                try pushContainer(.tuple(values(from: start)), replacingFrom: start)
            case UInt8(ascii: "d"):
                let mark = try takeMark()
                stack.insert(Entry(value: .dict([]), nodes: 1, depth: 0), at: mark)
                try extend(from: mark + 1, opcode: UInt8(ascii: "u"))
            case 0x91:  // FROZENSET
                let mark = try takeMark()
                guard stack[mark...].allSatisfy(\.value.isHashable) else { throw malformed("a frozenset item is unhashable") }
                try pushContainer(.frozenset(values(from: mark)), replacingFrom: mark)
            case UInt8(ascii: "a"), UInt8(ascii: "s"):  // APPEND, SETITEM
                let start = stack.count - (opcode == UInt8(ascii: "a") ? 1 : 2)
                guard start > (marks.last ?? 0) else { throw malformed("the stack is empty") }
                try checkItems(from: start)
                try extend(from: start, opcode: opcode)
            case UInt8(ascii: "e"), UInt8(ascii: "u"), 0x90:  // APPENDS, SETITEMS, ADDITEMS
                try extend(from: try takeMark(), opcode: opcode)
            // Memo
            case UInt8(ascii: "p"):
                guard let index = Int(try line()) else { throw malformed("a bad memo index") }
                try memoize(at: index)
            case UInt8(ascii: "q"): try memoize(at: Int(try byte()))
            case UInt8(ascii: "r"): try memoize(at: Int(try littleEndian(4)))
            case 0x94: try memoize(at: memo.count)
            case UInt8(ascii: "g"):
                guard let index = Int(try line()) else { throw malformed("a bad memo index") }
                try recall(index)
            case UInt8(ascii: "h"): try recall(Int(try byte()))
            case UInt8(ascii: "j"): try recall(Int(try littleEndian(4)))
            // Globals and calls
            case UInt8(ascii: "c"):
                let module = try line()
                try pushGlobal(module: module, name: try line())
            case 0x93:  // STACK_GLOBAL
                let name = try popValue(), module = try popValue()
                guard case .string(let moduleName) = module.value, case .string(let globalName) = name.value else {
                    throw malformed("STACK_GLOBAL needs two str")
                }
                try pushGlobal(module: Substring(moduleName), name: Substring(globalName))
            case UInt8(ascii: "R"): try reduce()
            case UInt8(ascii: "i"):  // INST
                let module = try line(), name = try line()
                throw MultiprocessingError(.refused, "refused to create an instance of \(module).\(name): only plain data is accepted")
            case UInt8(ascii: "o"), 0x81, 0x92, UInt8(ascii: "b"):  // OBJ, NEWOBJ, NEWOBJ_EX, BUILD
                throw MultiprocessingError(.refused, "refused to create or build a class instance: only plain data is accepted")
            case UInt8(ascii: "P"), UInt8(ascii: "Q"):
                throw MultiprocessingError(.refused, "refused a persistent id: only plain data is accepted")
            case 0x82, 0x83, 0x84:
                throw MultiprocessingError(.refused, "refused an extension registry code: only plain data is accepted")
            case 0x97, 0x98:
                throw MultiprocessingError(.unsupported, "the pickle uses an out-of-band buffer, which a connection does not carry")
            default:
                throw malformed("unknown opcode 0x\(String(opcode, radix: 16))")
            }
        }
    }
}

extension PythonValue {
    /// Whether Python could use the value as a dict key or set item.
    var isHashable: Bool {
        switch self {
        case .list, .dict, .set, .bytearray: false
        case .tuple(let items): items.allSatisfy(\.isHashable)
        default: true
        }
    }
}
