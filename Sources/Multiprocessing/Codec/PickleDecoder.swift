/// Decodes Python pickles of plain data (protocols 0 to 5, as CPython 3.7 to 3.13 write them) into
/// `Decodable` Swift values or a ``PythonValue``.
///
/// A dict with string keys decodes into a struct (or a `[String: T]`), a list, tuple, set or frozenset
/// into an array, `None` into nil, `bytes` and `bytearray` into `[UInt8]`, an int into any integer type
/// it fits (or into `Double` when exact), a float into `Double` or `Float`.
///
/// Unlike Python's unpickler, this decoder never imports or runs anything: a pickle that names a class,
/// a function or any other global (a class instance, a `__reduce__` payload) is refused with
/// ``MultiprocessingError/Code/refused``, naming what it asked for. Malformed, truncated or over-limit
/// pickles throw ``MultiprocessingError/Code/transport``.
public struct PickleDecoder: Sendable {
    /// Bounds on what a pickle may make this decoder build.
    public struct Limits: Sendable {
        /// How deeply containers may nest.
        public var maxDepth: Int
        /// How many objects the decoded value may hold, counting each reference to a shared object
        /// (a memo reference) as a copy of everything in it.
        public var maxObjects: Int
        /// How many digits a decimal integer (protocols 0 and 1) may have, as in CPython.
        public var maxIntegerDigits: Int

        /// Creates limits; the defaults suit messages between processes.
        public init(maxDepth: Int = 200, maxObjects: Int = 10_000_000, maxIntegerDigits: Int = 4300) {
            self.maxDepth = maxDepth
            self.maxObjects = maxObjects
            self.maxIntegerDigits = maxIntegerDigits
        }
    }

    /// The bounds this decoder enforces.
    public var limits: Limits

    /// Creates a decoder.
    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Reads a pickle into a ``PythonValue``.
    ///
    /// - Throws: ``MultiprocessingError/Code/refused`` for a pickle that names a class, global or call;
    ///   ``MultiprocessingError/Code/transport`` for a malformed pickle or one beyond ``limits``;
    ///   ``MultiprocessingError/Code/unsupported`` for out-of-band buffers.
    public func value(from pickle: UnsafeRawBufferPointer) throws -> PythonValue {
        try PickleReader.read(pickle, limits: limits)
    }

    /// Reads a pickle into a ``PythonValue``, as ``value(from:)-(UnsafeRawBufferPointer)`` does.
    public func value(from pickle: [UInt8]) throws -> PythonValue {
        try pickle.withUnsafeBytes { try value(from: $0) }
    }

    /// Decodes a pickle into `type`.
    ///
    /// - Throws: the errors of ``value(from:)-(UnsafeRawBufferPointer)``, and
    ///   ``MultiprocessingError/Code/transport`` when the Python object does not fit `type` (a wrong
    ///   type, a missing key, an int too large), with the coding path in the message.
    public func decode<T: Decodable>(_ type: T.Type, from pickle: UnsafeRawBufferPointer) throws -> T {
        if var tape = PickleTape.parsed(pickle, limits: limits) {
            defer { PickleTape.recycle(&tape) }
            if T.self == PythonValue.self {
                // The tape's objects when the full reader would load the same; else the reader decides.
                if let value = tape.rootValue() { return unsafeBitCast(value, to: T.self) }
            } else {
                do {
                    return try PickleTapeDecoder(tape: tape, node: tape.root, entry: -1, depth: 0).decodeValue(T.self)
                } catch let error as DecodingError {
                    throw MultiprocessingError(.transport, "cannot decode \(T.self) from the Python object: \(describe(error))")
                }
            }
        }
        return try decode(type, from: value(from: pickle))
    }

    /// Decodes a pickle into `type`, as ``decode(_:from:)-(_,UnsafeRawBufferPointer)`` does.
    public func decode<T: Decodable>(_ type: T.Type, from pickle: [UInt8]) throws -> T {
        try pickle.withUnsafeBytes { try decode(type, from: $0) }
    }

    /// Decodes a ``PythonValue`` into `type`, with the same rules as a pickle.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the value does not fit `type`.
    public func decode<T: Decodable>(_ type: T.Type, from value: PythonValue) throws -> T {
        do {
            return try PythonValueDecoder(value: value, codingPath: []).decodeValue(T.self)
        } catch let error as DecodingError {
            throw MultiprocessingError(.transport, "cannot decode \(T.self) from the Python object: \(describe(error))")
        }
    }
}

/// The words of a `DecodingError`, with its coding path.
private func describe(_ error: DecodingError) -> String {
    func path(_ context: DecodingError.Context) -> String {
        let keys = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        return keys.isEmpty ? context.debugDescription : "at \(keys): \(context.debugDescription)"
    }
    switch error {
    case .typeMismatch(_, let context), .valueNotFound(_, let context), .keyNotFound(_, let context),
         .dataCorrupted(let context):
        return path(context)
    @unknown default:
        return "\(error)"
    }
}

/// A key for positions and Python dict keys.
struct PythonCodingKey: CodingKey {
    private let text: String?
    let intValue: Int?
    var stringValue: String { text ?? String(intValue ?? 0) }
    init(stringValue: String) { self.text = stringValue; self.intValue = nil }
    init(intValue: Int) { self.text = nil; self.intValue = intValue }
}

struct PythonValueDecoder: Decoder, SingleValueDecodingContainer {
    let value: PythonValue
    /// The path to the container holding this value, and this value's key in it: the full coding path is
    /// built only when asked for.
    let parentPath: [any CodingKey]
    let key: (any CodingKey)?
    var codingPath: [any CodingKey] { key.map { parentPath + [$0] } ?? parentPath }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(value: PythonValue, codingPath: [any CodingKey]) {
        self.value = value
        self.parentPath = codingPath
        self.key = nil
    }

    init(value: PythonValue, parentPath: [any CodingKey], key: any CodingKey) {
        self.value = value
        self.parentPath = parentPath
        self.key = key
    }

    func mismatch(_ type: Any.Type, _ detail: String? = nil) -> DecodingError {
        .typeMismatch(type, .init(codingPath: codingPath,
                                  debugDescription: detail ?? "expected \(type), found a Python \(value.typeName)"))
    }

    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        if T.self == [UInt8].self {
            switch value {
            case .bytes(let bytes), .bytearray(let bytes): return unsafeBitCast(bytes, to: T.self)
            default: break
            }
        }
        if T.self == PythonValue.self { return unsafeBitCast(value, to: T.self) }
        return try T(from: self)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .dict(let items) = value else { throw mismatch([String: Any].self, "expected a dict, found a Python \(value.typeName)") }
        return KeyedDecodingContainer(PythonKeyedDecoder<Key>(items: items, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        switch value {
        case .list(let items), .tuple(let items), .set(let items), .frozenset(let items):
            return PythonUnkeyedDecoder(items: items, codingPath: codingPath)
        case .bytes(let bytes), .bytearray(let bytes):
            return PythonUnkeyedDecoder(items: bytes.map { .int(Int($0)) }, codingPath: codingPath)
        default:
            throw mismatch([Any].self, "expected a list or tuple, found a Python \(value.typeName)")
        }
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }

    func decodeNil() -> Bool { value == .none }

    func decode(_ type: Bool.Type) throws -> Bool {
        guard case .bool(let flag) = value else { throw mismatch(type) }
        return flag
    }

    func decode(_ type: String.Type) throws -> String {
        guard case .string(let string) = value else { throw mismatch(type) }
        return string
    }

    func decode(_ type: Double.Type) throws -> Double {
        switch value {
        case .float(let number): return number
        case .int(let number):
            guard let exact = Double(exactly: number) else { throw mismatch(type, "the int \(number) has no exact Double") }
            return exact
        default: throw mismatch(type)
        }
    }

    func decode(_ type: Float.Type) throws -> Float { Float(try decode(Double.self)) }

    func integer<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        switch value {
        case .int(let number):
            guard let exact = T(exactly: number) else { throw mismatch(type, "the int \(number) does not fit in \(T.self)") }
            return exact
        case .bigInt(let bytes):
            // Only UInt64's upper half and similar wide unsigned values can fit here.
            if T.bitWidth >= 64, !T.isSigned, bytes.count == 9, bytes[8] == 0 {
                var result: UInt64 = 0
                for byte in bytes[..<8].reversed() { result = result << 8 | UInt64(byte) }
                if let exact = T(exactly: result) { return exact }
            }
            throw mismatch(type, "the int \(value) does not fit in \(T.self)")
        default:
            throw mismatch(type)
        }
    }

    func decode(_ type: Int.Type) throws -> Int { try integer(type) }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer(type) }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer(type) }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer(type) }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer(type) }
    func decode(_ type: UInt.Type) throws -> UInt { try integer(type) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(type) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(type) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(type) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(type) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decodeValue(type) }
}

struct PythonKeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let items: [PythonDictItem]
    let codingPath: [any CodingKey]
    /// An index from key text to item, built only for large dicts.
    private let index: [String: Int]?

    init(items: [PythonDictItem], codingPath: [any CodingKey]) {
        self.items = items
        self.codingPath = codingPath
        if items.count > 12 {
            var index: [String: Int] = [:]
            for (position, item) in items.enumerated() {
                if let text = Self.text(of: item.key) { index[text] = position }
            }
            self.index = index
        } else {
            index = nil
        }
    }

    private static func text(of key: PythonValue) -> String? {
        switch key {
        case .string(let text): text
        case .int(let number): String(number)
        default: nil
        }
    }

    var allKeys: [Key] {
        items.compactMap { item in
            switch item.key {
            case .string(let text): Key(stringValue: text)
            case .int(let number): Key(intValue: number) ?? Key(stringValue: String(number))
            default: nil
            }
        }
    }

    private func find(_ key: Key) -> PythonValue? {
        if let index { return index[key.stringValue].map { items[$0].value } }
        for item in items {
            switch item.key {
            case .string(let text) where text == key.stringValue: return item.value
            case .int(let number) where key.intValue == number: return item.value
            default: continue
            }
        }
        return nil
    }

    func contains(_ key: Key) -> Bool { find(key) != nil }

    private func decoder(for key: Key) throws -> PythonValueDecoder {
        guard let value = find(key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "the dict has no key '\(key.stringValue)'"))
        }
        return PythonValueDecoder(value: value, parentPath: codingPath, key: key)
    }

    func decodeNil(forKey key: Key) throws -> Bool { find(key).map { $0 == .none } ?? true }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try decoder(for: key).decode(type) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try decoder(for: key).decode(type) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try decoder(for: key).decode(type) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try decoder(for: key).decode(type) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try decoder(for: key).decode(type) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try decoder(for: key).decode(type) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try decoder(for: key).decodeValue(type) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try decoder(for: key).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try decoder(for: key).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder { try decoder(for: Key(stringValue: "super")!) }
    func superDecoder(forKey key: Key) throws -> any Decoder { try decoder(for: key) }
}

struct PythonUnkeyedDecoder: UnkeyedDecodingContainer {
    let items: [PythonValue]
    let codingPath: [any CodingKey]
    var currentIndex = 0
    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    init(items: [PythonValue], codingPath: [any CodingKey]) {
        self.items = items
        self.codingPath = codingPath
    }

    private mutating func next() throws -> PythonValueDecoder {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(Any.self, .init(codingPath: codingPath, debugDescription: "the sequence has only \(items.count) items"))
        }
        defer { currentIndex += 1 }
        return PythonValueDecoder(value: items[currentIndex], parentPath: codingPath, key: PythonCodingKey(intValue: currentIndex))
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, items[currentIndex] == .none else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try next().decode(type) }
    mutating func decode(_ type: String.Type) throws -> String { try next().decode(type) }
    mutating func decode(_ type: Double.Type) throws -> Double { try next().decode(type) }
    mutating func decode(_ type: Int.Type) throws -> Int { try next().decode(type) }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try next().decode(type) }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decodeValue(type) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try next().container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next().unkeyedContainer() }
    mutating func superDecoder() throws -> any Decoder { try next() }
}
