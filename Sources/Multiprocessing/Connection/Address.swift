/// Where a ``Listener`` listens and a client connects (Python's `address` argument).
public enum ConnectionAddress: Hashable, Sendable, Codable, CustomStringConvertible {
    /// A Unix-domain socket path (Python's `AF_UNIX`). On Linux a path that starts with a NUL
    /// character (`"\0name"`) names the abstract namespace and leaves no file behind.
    case unix(String)
    /// A TCP host and port (Python's `AF_INET`, `(host, port)`); IPv6 hosts work too.
    case tcp(host: String, port: UInt16)

    /// Parses `HOST:PORT` (or `[IPV6]:PORT`) as TCP and anything else as a Unix socket path.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for an empty string or a bad port.
    public init(parsing text: String) throws {
        guard !text.isEmpty else { throw MultiprocessingError(.invalidArgument, "empty address") }
        guard !text.contains("/"), let colon = text.lastIndex(of: ":") else {
            self = .unix(text)
            return
        }
        var host = text[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard let port = UInt16(text[text.index(after: colon)...]) else {
            throw MultiprocessingError(.invalidArgument, "bad port in address \(text)")
        }
        self = .tcp(host: String(host), port: port)
    }

    /// Refuses addresses that mean nothing on this system, as CPython's `address_type` does, before
    /// anything is created for them.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a Windows named pipe (`\\.\pipe\name`),
    ///   an empty path, a path with a NUL byte other than an abstract name's first, one longer than a Unix
    ///   socket address holds (107 bytes).
    func validate() throws {
        switch self {
        case .unix(let path):
            if path.hasPrefix("\\") {
                throw MultiprocessingError(
                    .invalidArgument,
                    "\(path) is a Windows named pipe address (AF_PIPE), which does not exist here; "
                        + "use a Unix socket path or HOST:PORT")
            }
            guard !path.isEmpty else { throw MultiprocessingError(.invalidArgument, "empty Unix socket path") }
            guard !path.utf8.dropFirst().contains(0) else {
                throw MultiprocessingError(.invalidArgument, "a Unix socket path cannot contain a NUL byte")
            }
            guard path.utf8.count <= 107 else {
                throw MultiprocessingError(
                    .invalidArgument, "Unix socket path of \(path.utf8.count) bytes is longer than the 107 a socket address holds")
            }
        case .tcp:
            return  // an empty host listens on every interface, as in Python
        }
    }

    /// The address family.
    public var family: AddressFamily {
        switch self {
        case .unix: .unix
        case .tcp: .tcp
        }
    }

    /// `HOST:PORT` for TCP (brackets around an IPv6 host), the path for Unix.
    public var description: String {
        switch self {
        case .unix(let path): path
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }
}

/// The kinds of address a ``Listener`` supports (Python's `families`).
public enum AddressFamily: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// Unix-domain sockets, the default: local, and able to carry descriptors.
    case unix = "AF_UNIX"
    /// TCP sockets.
    case tcp = "AF_INET"

    /// Python's name for the family.
    public var description: String { rawValue }
}
