/// The package's error crosses processes as itself, so that a shared object's method that throws it (a
/// queue that is empty, an index out of range) throws the same code and facts in the caller.
extension MultiprocessingError: Codable {
    private enum CodingKeys: String, CodingKey { case code, message, errno, payload, pid, signal, timeout }

    /// Encodes the code, the message and the facts.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(code.rawValue, forKey: .code)
        try container.encode(message, forKey: .message)
        try container.encodeIfPresent(errno, forKey: .errno)
        try container.encodeIfPresent(payload, forKey: .payload)
        try container.encodeIfPresent(pid?.rawValue, forKey: .pid)
        try container.encodeIfPresent(signal?.rawValue, forKey: .signal)
        try container.encodeIfPresent(timeout, forKey: .timeout)
    }

    /// Decodes an error encoded by ``encode(to:)``.
    ///
    /// - Throws: the decoder's errors for malformed data.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            Code(try container.decode(String.self, forKey: .code)), try container.decode(String.self, forKey: .message),
            errno: try container.decodeIfPresent(Int32.self, forKey: .errno),
            payload: try container.decodeIfPresent([UInt8].self, forKey: .payload))
        pid = try container.decodeIfPresent(Int32.self, forKey: .pid).map(ProcessIdentifier.init(rawValue:))
        signal = try container.decodeIfPresent(Int32.self, forKey: .signal).map(Signal.init(rawValue:))
        timeout = try container.decodeIfPresent(Duration.self, forKey: .timeout)
    }
}
