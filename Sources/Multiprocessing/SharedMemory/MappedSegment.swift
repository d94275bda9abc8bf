#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// A shared mapping of a whole memory object (a POSIX shared-memory segment or an anonymous memfd),
/// with the descriptor kept open so the mapping can cross to another process.
///
/// It crosses through ``DescriptorTransfer``, like locks and connections: the receiver maps the same
/// object again, so it works under every start method and over a ``Connection``, even after the
/// segment's name was unlinked.
final class MappedSegment: @unchecked Sendable {
    let fd: Int32
    let base: UnsafeMutableRawPointer
    /// The object's size in bytes (what was asked for at creation; the mapping is rounded up to pages).
    let size: Int

    /// Maps `fd` (owned from now on, closed on failure) read-write and shared. `size` nil: the
    /// object's current size. `knownSize`: the caller just sized the object itself, so the check of
    /// its size (one `fstat`) is skipped.
    init(adopting fd: Int32, size: Int? = nil, knownSize: Bool = false) throws {
        do {
            var wanted = size ?? 0
            if !knownSize || size == nil {
                var status = stat()
                try Syscall.retrying("fstat") { fstat(fd, &status) }
                let actual = Int(status.st_size)
                wanted = size ?? actual
                guard wanted <= actual else {
                    throw MultiprocessingError(.invalidArgument, "the shared memory object holds \(actual) bytes, fewer than the \(wanted) expected")
                }
            }
            guard wanted > 0 else {
                throw MultiprocessingError(.invalidArgument, "the shared memory object is empty (size 0), so there is nothing to map")
            }
            let address = mmap(nil, wanted, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            guard let address, address != MAP_FAILED else { throw MultiprocessingError.system("mmap of \(wanted) bytes") }
            self.fd = fd
            self.base = address
            self.size = wanted
        } catch {
            Syscall.close(fd)
            throw error
        }
    }

    /// A new anonymous zero-filled object of `size` bytes (a memfd: no name, nothing to unlink).
    static func anonymous(size: Int) throws -> MappedSegment {
        let fd = mp_memfd_create("multiprocessing-shared")
        guard fd >= 0 else { throw MultiprocessingError.system("memfd_create") }
        do {
            try Syscall.retrying("ftruncate") { ftruncate(fd, off_t(size)) }
        } catch {
            Syscall.close(fd)
            throw error
        }
        return try MappedSegment(adopting: fd, size: size, knownSize: true)
    }

    deinit {
        munmap(base, size)
        Syscall.close(fd)
    }

    var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: size) }

    // MARK: Crossing a process boundary

    /// Adds the descriptor to the encoder's transfer; returns its index.
    func encodeDescriptor(to encoder: any Encoder, as what: String) throws -> Int {
        try DescriptorTransfer.from(encoder.userInfo, for: what).add(fd)
    }

    /// Maps the descriptor at `index` of the decoder's transfer, expecting at least `size` bytes.
    static func decode(from decoder: any Decoder, index: Int, size: Int, as what: String) throws -> MappedSegment {
        let transfer = try DescriptorTransfer.from(decoder.userInfo, for: what)
        do {
            return try MappedSegment(adopting: transfer.take(index), size: size)
        } catch let error as MultiprocessingError where error.code == .invalidArgument {
            throw MultiprocessingError(.transport, "\(what) that arrived is not what was expected: \(error.message)")
        }
    }
}
