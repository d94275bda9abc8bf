/// The package's error on its way from a manager to a caller: its code, message and facts, so that a
/// shared object's method that throws it (a queue that is empty, an index out of range) throws the same
/// code and facts in the caller.
///
/// A form of its own rather than a `Codable` conformance of ``MultiprocessingError``, which would change
/// how every other path (a child's failure, a pool's reply) reports the package's errors.
struct CarriedError: Codable, Sendable {
    var code: String
    var message: String
    var errno: Int32?
    var payload: [UInt8]?
    var pid: Int32?
    var signal: Int32?
    var timeout: Duration?

    init(_ error: MultiprocessingError) {
        code = error.code.rawValue
        message = error.message
        errno = error.errno
        payload = error.payload
        pid = error.pid?.rawValue
        signal = error.signal?.rawValue
        timeout = error.timeout
    }

    var error: MultiprocessingError {
        MultiprocessingError(.init(code), message, errno: errno, payload: payload).with(pid: pid, signal: signal, timeout: timeout)
    }
}
