import CMPI
import Multiprocessing
import Synchronization

/// A worker rank's results, sent by the runner thread the moment a batch ends instead of handed to the
/// MPI thread: while the runner and its local child keep the cores busy, the MPI thread (whose polls
/// yield the core when ranks outnumber cores) could take until the rank's last batch ended to send the
/// first result. Used only where MPI grants `MPI_THREAD_MULTIPLE`; the MPI thread completes the sends.
final class ResultSender: Sendable {
    private let communicator: Communicator
    private let master: Int32
    /// The sends under way with their bytes, which must stay where they are until MPI is done with them.
    private let pending = Mutex<[(request: UnsafeSendableRequest, bytes: [UInt8])]>([])

    init(_ communicator: Communicator, master: Int32) {
        self.communicator = communicator
        self.master = master
    }

    /// Starts sending `result` to rank 0; false when MPI refused (the caller then hands it to the MPI
    /// thread, which reports the error).
    func send(_ result: [UInt8]) -> Bool {
        guard result.count <= Mailbox.sizeLimit else { return false }
        return pending.withLock { pending in
            var request: MPI_Request?
            let status = result.withUnsafeBytes { buffer in
                MPI_Isend(buffer.baseAddress, Int32(buffer.count), cmpi_byte(), master, Tag.result, communicator.raw, &request)
            }
            guard status == MPI_SUCCESS else { return false }
            pending.append((UnsafeSendableRequest(request), result))
            return true
        }
    }

    var hasPending: Bool { pending.withLock { !$0.isEmpty } }

    /// Completes the sends MPI has finished; true when one did. Called on the MPI thread.
    /// - Throws: ``MultiprocessingError/Code/system`` when MPI reports a failed send.
    @discardableResult
    func progress() throws -> Bool {
        try pending.withLock { pending in
            var index = 0
            var any = false
            while index < pending.count {
                var done: Int32 = 0
                try check(MPI_Test(&pending[index].request.raw, &done, cmpi_status_ignore()), "MPI_Test of a result sent to rank 0")
                if done != 0 {
                    pending.remove(at: index)
                    any = true
                } else {
                    index += 1
                }
            }
            return any
        }
    }
}

/// An MPI request handle, kept under ``ResultSender``'s mutex (only one thread touches it at a time).
struct UnsafeSendableRequest: @unchecked Sendable {
    var raw: MPI_Request?
    init(_ raw: MPI_Request?) { self.raw = raw }
}
