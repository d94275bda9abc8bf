#if canImport(Glibc)
import Glibc
#endif

/// The one mechanism by which OS resources cross a process boundary.
///
/// Every object that owns a descriptor (a ``Connection``, a lock's shared memory, a shared-memory
/// block) encodes itself by adding its descriptor here and encoding the index it gets back. The
/// carrier (a child's bootstrap message, or ``Connection/send(_:)``) ships the descriptors beside the
/// bytes as SCM_RIGHTS; on the other side the decoder takes them back by index. So anything Codable
/// that contains such objects can be handed to a child at start or sent to a running process.
final class DescriptorTransfer: @unchecked Sendable {
    /// Descriptors to send, in index order (encoding side). Borrowed: the sender keeps them open.
    private(set) var outgoing: [Int32] = []
    /// Descriptors received (decoding side), owned here until taken.
    private var incoming: [Int32]

    /// A transfer to fill while encoding.
    init() { incoming = [] }

    /// A transfer holding descriptors that arrived with a message.
    init(received: [Int32]) { incoming = received }

    /// Adds `fd` to the descriptors to send; returns its index for the encoded value.
    func add(_ fd: Int32) throws -> Int {
        guard outgoing.count < MultiprocessingLimits.descriptorsPerMessage else {
            throw MultiprocessingError(.transport, "a message can carry at most \(MultiprocessingLimits.descriptorsPerMessage) descriptors")
        }
        outgoing.append(fd)
        return outgoing.count - 1
    }

    /// Takes ownership of the descriptor received at `index`.
    func take(_ index: Int) throws -> Int32 {
        guard incoming.indices.contains(index), incoming[index] >= 0 else {
            throw MultiprocessingError(.transport, "message refers to descriptor #\(index), which did not arrive with it")
        }
        defer { incoming[index] = -1 }
        return incoming[index]
    }

    /// Closes every received descriptor nobody took (after a decode, whether it succeeded or not).
    func closeUntaken() {
        for fd in incoming where fd >= 0 { Syscall.close(fd) }
        incoming = []
    }

    /// The transfer in an encoder's or decoder's user info.
    static func from(_ userInfo: [CodingUserInfoKey: Any], for what: String) throws -> DescriptorTransfer {
        guard let transfer = userInfo[.descriptorTransfer] as? DescriptorTransfer else {
            throw MultiprocessingError(
                .transport,
                "\(what) can cross to another process only inside a child's task or a Connection.send message")
        }
        return transfer
    }
}

extension CodingUserInfoKey {
    /// The key under which encoders and decoders carry a ``DescriptorTransfer``.
    static let descriptorTransfer = CodingUserInfoKey(rawValue: "multiprocessing.descriptorTransfer")!
}

/// Fixed limits of the wire format.
enum MultiprocessingLimits {
    /// Descriptors one message may carry (the kernel's SCM_RIGHTS limit is 253).
    static let descriptorsPerMessage = 250
}
