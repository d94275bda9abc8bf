/// Encodes `Encodable` Swift values as Python pickles that CPython loads into the natural Python types.
///
/// A struct (or a `[String: T]`) becomes a dict with string keys, an array a list, nil `None`, `[UInt8]`
/// `bytes`, integers `int`, `Double` and `Float` `float`, `String` `str`. A ``PythonValue`` inside the
/// value is written as the Python object it stands for, so tuples, sets and the other Python types are
/// available too.
public struct PickleEncoder: Sendable {
    /// The protocol CPython's `Connection.send` uses by default: `pickle.DEFAULT_PROTOCOL`, which is 4
    /// from Python 3.8 on (and readable by 3.4 and later).
    public static let defaultProtocol = 4
    /// The newest protocol written and read here.
    public static let highestProtocol = 5

    /// The pickle protocol written, 0 to 5.
    public let protocolVersion: Int

    /// Creates an encoder for a protocol.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` when `protocolVersion` is not 0 to 5.
    public init(protocolVersion: Int = PickleEncoder.defaultProtocol) throws {
        guard (0...Self.highestProtocol).contains(protocolVersion) else {
            throw MultiprocessingError(.invalidArgument, "pickle protocol \(protocolVersion) is not between 0 and \(Self.highestProtocol)")
        }
        self.protocolVersion = protocolVersion
    }

    /// Encodes a value as a pickle.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the value's `encode(to:)` throws or
    ///   encodes nothing.
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        try PickleStream.with(version: protocolVersion) { stream in
            try stream.write(value)
            return Array(stream.writer.output.bytes)
        }
    }

    /// Encodes a value, appending the pickle to `output`, as ``encode(_:)`` does. On failure `output`
    /// is left as it was.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the value's `encode(to:)` throws or
    ///   encodes nothing.
    public func encode<T: Encodable>(_ value: T, appendingTo output: inout [UInt8]) throws {
        try PickleStream.with(version: protocolVersion) { stream in
            try stream.write(value)
            output.append(contentsOf: stream.writer.output.bytes)
        }
    }

    /// The Python object a value is pickled as.
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` when the value's `encode(to:)` throws or
    ///   encodes nothing.
    public static func pythonValue<T: Encodable>(of value: T) throws -> PythonValue {
        if let value = value as? PythonValue { return value }
        return try PickleDecoder().value(from: PickleEncoder(protocolVersion: highestProtocol).encode(value))
    }
}

/// The pickle being written while `encode(to:)` calls run: containers are written as they open, their
/// items as they come, and each container is closed when its value's `encode(to:)` returns or when its
/// parent moves on to its next item.
final class PickleStream {
    enum Kind { case pending, done, keyed, unkeyed }

    /// Each thread's stream kept from its last encode (see ``PickleThreadSlot``).
    private static let kept = PickleThreadSlot<PickleStream>()

    /// Runs `body` with an empty stream for `version`: this thread's kept one when it is free.
    @inline(__always)
    static func with<R>(version: Int, _ body: (PickleStream) throws -> R) throws -> R {
        var stream = kept.take() ?? PickleStream(writer: PickleWriter(version: version))
        stream.writer.version = version
        defer {
            stream.finish()
            kept.keep(&stream)
        }
        return try body(stream)
    }

    /// Writes the pickle of `value` (into an empty stream).
    func write<T: Encodable>(_ value: T) throws {
        do {
            writer.begin()
            try encodeRoot(value)
            writer.end()
        } catch let error as EncodingError {
            if case .invalidValue(_, let context) = error {
                throw MultiprocessingError(.transport, "cannot encode \(T.self) as a pickle: \(context.debugDescription)")
            }
            throw MultiprocessingError(.transport, "cannot encode \(T.self) as a pickle: \(error)")
        }
    }

    /// Ends a call: empties the stream and detaches the cached containers from it, so that it holds
    /// nothing of the call and is referenced only by whoever still holds one of its encoders.
    func finish() {
        writer.output.removeAll()
        if !levels.isEmpty { levels.removeAll(keepingCapacity: true) }  // (empty after every whole encode)
        if failed { failure = nil }
        boxes.detachFrames { $0.detach() }
    }

    /// The keyed container of the value at `level`, in a reused box when one is free.
    @inline(__always)
    func keyedContainer<Key: CodingKey>(_: Key.Type, level: Int) -> KeyedEncodingContainer<Key> {
        if let box = boxes.reuse(Key.self, { $0.attach(self, level: level) }) {
            return reusedContainer(box, as: KeyedEncodingContainer<Key>.self)
        }
        let frame = PickleEncodingFrame(stream: self, level: level)
        let container = KeyedEncodingContainer(PickleKeyedEncoder<Key>(frame: frame))
        boxes.keep(unsafeBitCast(container, to: AnyObject.self), frame: frame, of: Key.self)
        return container
    }

    @exclusivity(unchecked) var boxes = PickleBoxCache<PickleEncodingFrame>()

    /// An open value: the root, each value being encoded, each nested container.
    struct Level {
        var kind: Kind
        /// What to write after the value (protocol 0's SETITEM or APPEND).
        let trailer: UInt8?
        /// The key or position the value has in its parent, for coding paths.
        let key: (any CodingKey)?
        var count = 0
    }

    @exclusivity(unchecked) var writer: PickleWriter
    @exclusivity(unchecked) var levels: [Level] = []
    /// The first misuse of the Encoder protocol (a keyed container asked for where a value was written).
    var failure: EncodingError? {
        didSet { failed = failure != nil }
    }
    /// Whether there is a `failure` (cheaper to test).
    private var failed = false

    init(writer: PickleWriter) {
        self.writer = writer
        levels.reserveCapacity(16)
    }

    deinit {
        writer.output.deallocate()
        boxes.deallocate()
    }

    func codingPath(to level: Int) -> [any CodingKey] {
        levels.prefix(level < levels.count ? level + 1 : levels.count).compactMap(\.key)
    }

    func fail(_ level: Int, _ message: String) {
        if failure == nil { failure = .invalidValue((), .init(codingPath: codingPath(to: level), debugDescription: message)) }
    }

    func encodeRoot<T: Encodable>(_ value: T) throws {
        levels.append(Level(kind: .pending, trailer: nil, key: nil))
        try encodeBody(value, at: 0)
        close(downTo: 0)
        if failed, let failure { throw failure }
    }

    /// Encodes a value as the next item of the container at `parent`.
    func encode<T: Encodable>(_ value: T, in parent: Int, key: (any CodingKey)?) throws {
        levels.append(Level(kind: .pending, trailer: writer.itemTrailer(keyed: levels[parent].kind == .keyed), key: key))
        let level = levels.count - 1
        try encodeBody(value, at: level)
        close(downTo: level)
    }

    /// Whether values of `T` are written by ``direct(_:)`` rather than through their `encode(to:)`: strings,
    /// numbers, booleans and arrays of them. (A check of the type alone, cheap in unspecialized code.)
    @inline(__always)
    static func encodesDirectly<T>(_ type: T.Type) -> Bool {
        T.self == String.self || T.self == Int.self || T.self == Double.self || T.self == Bool.self
            || T.self == [String].self || T.self == [Int].self || T.self == [Double].self
    }

    /// Writes a value of one of the types for which ``encodesDirectly(_:)`` is true, as their
    /// `encode(to:)` would through this encoder.
    @inline(__always)
    func direct<T>(_ value: T) {
        if T.self == String.self { return writer.putString(unsafeBitCast(value, to: String.self)) }
        if T.self == Int.self { return writer.putInt(unsafeBitCast(value, to: Int.self)) }
        if T.self == Double.self { return writer.putFloat(unsafeBitCast(value, to: Double.self)) }
        if T.self == Bool.self { return writer.putBool(unsafeBitCast(value, to: Bool.self)) }
        let trailer = writer.itemTrailer(keyed: false)
        writer.openContainer(keyed: false)
        if T.self == [String].self {
            for item in unsafeBitCast(value, to: [String].self) {
                writer.putString(item)
                if let trailer { writer.output.append(trailer) }
            }
        } else if T.self == [Int].self {
            for item in unsafeBitCast(value, to: [Int].self) {
                writer.putInt(item)
                if let trailer { writer.output.append(trailer) }
            }
        } else if T.self == [Double].self {
            for item in unsafeBitCast(value, to: [Double].self) {
                writer.putFloat(item)
                if let trailer { writer.output.append(trailer) }
            }
        }
        writer.closeContainer(keyed: false)
    }

    /// Writes a value of a direct type as the next item of the container at `level`.
    @inline(__always)
    func directItem<T>(_ level: Int, _ value: T) {
        direct(value)
        if let trailer = writer.itemTrailer(keyed: levels[level].kind == .keyed) { writer.output.append(trailer) }
    }

    private func encodeBody<T: Encodable>(_ value: T, at level: Int) throws {
        if Self.encodesDirectly(T.self) {
            direct(value)
            levels[level].kind = .done
        } else if T.self == [UInt8].self {
            writer.putBytes(unsafeBitCast(value, to: [UInt8].self))
            levels[level].kind = .done
        } else if T.self == PythonValue.self {
            writer.put(unsafeBitCast(value, to: PythonValue.self))
            levels[level].kind = .done
        } else {
            try value.encode(to: PickleValueEncoder(stream: self, level: level))
        }
    }

    /// Closes every level from the top down to `level`, inclusive.
    func close(downTo level: Int) {
        while levels.count > level {
            let closing = levels.removeLast()
            switch closing.kind {
            case .pending: writer.put(.dict([]))  // a value that encoded nothing: an empty dict, as JSON does
            case .done: break
            case .keyed: writer.closeContainer(keyed: true)
            case .unkeyed: writer.closeContainer(keyed: false)
            }
            if let trailer = closing.trailer { writer.output.append(trailer) }
        }
    }

    /// Makes `level` the innermost open one and checks that it is a container of the right kind.
    @inline(__always)
    func prepare(_ level: Int, _ kind: Kind) -> Bool {
        guard levels.count > level, levels[level].kind == kind else { return misplaced(level) }
        if levels.count > level + 1 { close(downTo: level + 1) }
        levels[level].count += 1
        return true
    }

    private func misplaced(_ level: Int) -> Bool {
        fail(level, "a container was used after its value was complete")
        return false
    }

    /// Writes a scalar as the next item of the container at `level`.
    @inline(__always)
    func item(_ level: Int, _ write: (inout PickleWriter) -> Void) {
        write(&writer)
        if let trailer = writer.itemTrailer(keyed: levels[level].kind == .keyed) { writer.output.append(trailer) }
    }

    /// Turns the pending value at `level` into a container.
    func open(_ level: Int, keyed: Bool) {
        guard levels.count > level else { return fail(level, "an encoder was used after its value was complete") }
        let kind: Kind = keyed ? .keyed : .unkeyed
        switch levels[level].kind {
        case .pending:
            if levels.count > level + 1 { close(downTo: level + 1) }
            writer.openContainer(keyed: keyed)
            levels[level].kind = kind
        case kind: break
        default: fail(level, "a value asked for two different containers")
        }
    }

    /// Writes the single value of the pending value at `level`.
    func single(_ level: Int, _ write: (inout PickleWriter) -> Void) {
        guard levels.count > level, levels[level].kind == .pending else {
            return fail(level, "a single value was encoded twice or beside a container")
        }
        write(&writer)
        levels[level].kind = .done
    }

    @inline(__always)
    func key(_ key: some CodingKey) {
        if let number = key.intValue { writer.putInt(number) } else { writer.putString(key.stringValue) }
    }
}

struct PickleValueEncoder: Encoder, SingleValueEncodingContainer {
    let stream: PickleStream
    let level: Int
    var codingPath: [any CodingKey] { stream.codingPath(to: level) }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        stream.open(level, keyed: true)
        return stream.keyedContainer(Key.self, level: level)
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        stream.open(level, keyed: false)
        return PickleUnkeyedEncoder(stream: stream, level: level)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { self }

    func encodeNil() { stream.single(level) { $0.put(.none) } }
    func encode(_ value: Bool) { stream.single(level) { $0.putBool(value) } }
    func encode(_ value: String) { stream.single(level) { $0.putString(value) } }
    func encode(_ value: Double) { stream.single(level) { $0.putFloat(value) } }
    func encode(_ value: Float) { stream.single(level) { $0.putFloat(Double(value)) } }
    func encode(_ value: Int) { stream.single(level) { $0.putInt(value) } }
    func encode(_ value: Int8) { encode(Int(value)) }
    func encode(_ value: Int16) { encode(Int(value)) }
    func encode(_ value: Int32) { encode(Int(value)) }
    func encode(_ value: Int64) { encode(Int(value)) }
    func encode(_ value: UInt) { encode(UInt64(value)) }
    func encode(_ value: UInt8) { encode(Int(value)) }
    func encode(_ value: UInt16) { encode(Int(value)) }
    func encode(_ value: UInt32) { encode(Int(value)) }
    func encode(_ value: UInt64) { stream.single(level) { $0.putUInt64(value) } }

    func encode<T: Encodable>(_ value: T) throws {
        guard stream.levels.count > level, stream.levels[level].kind == .pending else {
            return stream.fail(level, "a single value was encoded twice or beside a container")
        }
        // The value takes this level's place: its own containers open here.
        if T.self == [UInt8].self {
            return stream.single(level) { $0.putBytes(unsafeBitCast(value, to: [UInt8].self)) }
        }
        if T.self == PythonValue.self {
            return stream.single(level) { $0.put(unsafeBitCast(value, to: PythonValue.self)) }
        }
        try value.encode(to: self)
    }
}

/// What a keyed encoding container works on, kept apart from it so that its box can be reused (see
/// ``PickleBoxCache``): the stream and level while its call lasts, detached after.
///
/// The stream is not retained: a frame is attached only while the stream is in a call, which holds the
/// stream, and every call detaches its frames when it ends; a detached frame never reads its stream.
final class PickleEncodingFrame {
    @exclusivity(unchecked) var streamReference: Unmanaged<PickleStream>
    @exclusivity(unchecked) var level: Int
    @exclusivity(unchecked) var attached = false

    init(stream: PickleStream, level: Int) {
        streamReference = .passUnretained(stream)
        self.level = level
        attach(stream, level: level)
    }

    @inline(__always)
    func attach(_ stream: PickleStream, level: Int) {
        streamReference = .passUnretained(stream)
        self.level = level
        // An encoder kept past its call has a stream in no call (no open levels): its containers stay detached.
        attached = !stream.levels.isEmpty
    }

    func detach() { attached = false }

    /// The stream, nil once detached.
    var stream: PickleStream? { attached ? streamReference.takeUnretainedValue() : nil }

    /// Runs `body` with the stream and level, unless detached (then nothing is written, and nothing reads it).
    @inline(__always)
    func withStream(_ body: (PickleStream, Int) throws -> Void) rethrows {
        guard attached else { return }
        try streamReference._withUnsafeGuaranteedRef { try body($0, level) }
    }
}

struct PickleKeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    /// The frame, unretained: the standard library's box copies this container for every call, and a
    /// copy that retains nothing is a plain copy. The box cache owns the frame for as long as a box may
    /// hold it (see ``PickleBoxCache``).
    let frameReference: Unmanaged<PickleEncodingFrame>
    var frame: PickleEncodingFrame { frameReference.takeUnretainedValue() }

    init(frame: PickleEncodingFrame) {
        frameReference = .passUnretained(frame)
    }
    /// The stream; a container used after its call ended writes into a stream of its own, which no one reads.
    var stream: PickleStream { frame.stream ?? PickleStream(writer: PickleWriter(version: PickleEncoder.highestProtocol)) }
    var level: Int { frame.level }
    var codingPath: [any CodingKey] { stream.codingPath(to: level) }

    @inline(__always)
    private func scalar(_ key: Key, _ write: (inout PickleWriter) -> Void) {
        // A container used after its call ended has no stream, and nothing reads what it would write.
        frameReference._withUnsafeGuaranteedRef { frame in
            frame.withStream { stream, level in
                guard stream.prepare(level, .keyed) else { return }
                stream.key(key)
                stream.item(level, write)
            }
        }
    }

    mutating func encodeNil(forKey key: Key) { scalar(key) { $0.put(.none) } }
    mutating func encode(_ value: Bool, forKey key: Key) { scalar(key) { $0.putBool(value) } }
    mutating func encode(_ value: String, forKey key: Key) { scalar(key) { $0.putString(value) } }
    mutating func encode(_ value: Double, forKey key: Key) { scalar(key) { $0.putFloat(value) } }
    mutating func encode(_ value: Float, forKey key: Key) { scalar(key) { $0.putFloat(Double(value)) } }
    mutating func encode(_ value: Int, forKey key: Key) { scalar(key) { $0.putInt(value) } }
    mutating func encode(_ value: Int64, forKey key: Key) { scalar(key) { $0.putInt(Int(value)) } }

    // A nil optional is written as None rather than left out, so that a Python peer finds every key.
    mutating func encodeIfPresent(_ value: Bool?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: String?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Double?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Float?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Int?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Int8?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Int16?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Int32?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: Int64?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: UInt?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: UInt8?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: UInt16?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: UInt32?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent(_ value: UInt64?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }
    mutating func encodeIfPresent<T: Encodable>(_ value: T?, forKey key: Key) throws { try encodeOptional(value, forKey: key) }

    private mutating func encodeOptional<T: Encodable>(_ value: T?, forKey key: Key) throws {
        if let value { try encode(value, forKey: key) } else { encodeNil(forKey: key) }
    }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try frameReference._withUnsafeGuaranteedRef { frame in
            try frame.withStream { stream, level in
                guard stream.prepare(level, .keyed) else { return }
                stream.key(key)
                if PickleStream.encodesDirectly(T.self) { return stream.directItem(level, value) }
                try stream.encode(value, in: level, key: key)
            }
        }
    }

    private func nested(_ key: Key) -> Int {
        guard stream.prepare(level, .keyed) else { return Int.max }
        stream.key(key)
        stream.levels.append(.init(kind: .pending, trailer: stream.writer.itemTrailer(keyed: true), key: key))
        return stream.levels.count - 1
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        PickleValueEncoder(stream: stream, level: nested(key)).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        PickleValueEncoder(stream: stream, level: nested(key)).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder { PickleValueEncoder(stream: stream, level: nested(Key(stringValue: "super")!)) }
    mutating func superEncoder(forKey key: Key) -> any Encoder { PickleValueEncoder(stream: stream, level: nested(key)) }
}

struct PickleUnkeyedEncoder: UnkeyedEncodingContainer {
    let stream: PickleStream
    let level: Int
    var codingPath: [any CodingKey] { stream.codingPath(to: level) }
    var count: Int { stream.levels.count > level ? stream.levels[level].count : 0 }

    private func scalar(_ write: (inout PickleWriter) -> Void) {
        guard stream.prepare(level, .unkeyed) else { return }
        stream.item(level, write)
    }

    mutating func encodeNil() { scalar { $0.put(.none) } }
    mutating func encode(_ value: Bool) { scalar { $0.putBool(value) } }
    mutating func encode(_ value: String) { scalar { $0.putString(value) } }
    mutating func encode(_ value: Double) { scalar { $0.putFloat(value) } }
    mutating func encode(_ value: Float) { scalar { $0.putFloat(Double(value)) } }
    mutating func encode(_ value: Int) { scalar { $0.putInt(value) } }
    mutating func encode(_ value: UInt8) { scalar { $0.putInt(Int(value)) } }

    mutating func encode<T: Encodable>(_ value: T) throws {
        guard stream.prepare(level, .unkeyed) else { return }
        if PickleStream.encodesDirectly(T.self) { return stream.directItem(level, value) }
        try stream.encode(value, in: level, key: PythonCodingKey(intValue: count - 1))
    }

    private func nested() -> Int {
        guard stream.prepare(level, .unkeyed) else { return Int.max }
        stream.levels.append(.init(kind: .pending, trailer: stream.writer.itemTrailer(keyed: false), key: PythonCodingKey(intValue: count - 1)))
        return stream.levels.count - 1
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        PickleValueEncoder(stream: stream, level: nested()).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        PickleValueEncoder(stream: stream, level: nested()).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder { PickleValueEncoder(stream: stream, level: nested()) }
}
