#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// Memory shared between processes as a lock's page, a queue's memory and a manager channel are: an
/// anonymous memfd (no name to leak) mapped `MAP_SHARED`, made here or received from another process
/// (a forked child inherits the mapping; another child receives the memfd through
/// ``DescriptorTransfer`` and maps it again). Its first four bytes mark what it holds, so that a
/// descriptor of another kind, or of another size, is refused. Unmapped and closed when it goes away.
final class SharedMapping: @unchecked Sendable {
    /// The memfd.
    let fd: Int32
    /// The start of the mapping.
    let base: UnsafeMutableRawPointer
    /// The mapping's size in bytes.
    let size: Int

    /// New zero-filled memory of `size` bytes whose first four bytes hold `magic`. With `sparse`, no
    /// swap is reserved for it (`MAP_NORESERVE`): only the pages written take memory.
    ///
    /// - Throws: ``MultiprocessingError/Code/system`` when the memory cannot be made or mapped.
    init(size: Int, magic: UInt32, name: String, sparse: Bool = false) throws {
        let fd = mp_memfd_create(name)
        guard fd >= 0 else { throw MultiprocessingError.system("memfd_create") }
        do {
            try Syscall.retrying("ftruncate") { ftruncate(fd, off_t(size)) }
            base = try Self.map(fd, size: size, sparse: sparse)
        } catch {
            Syscall.close(fd)
            throw error
        }
        self.fd = fd
        self.size = size
        base.storeBytes(of: magic, as: UInt32.self)
    }

    /// Maps memory received from another process, taking ownership of `fd` (closed on failure).
    ///
    /// - Throws: ``MultiprocessingError/Code/transport`` ("descriptor N is not `what`'s shared memory")
    ///   unless it has `size` bytes and starts with `magic`; ``MultiprocessingError/Code/system`` when
    ///   it cannot be mapped.
    init(adopting fd: Int32, size: Int, magic: UInt32, what: String, sparse: Bool = false) throws {
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_size == off_t(size) else {
            Syscall.close(fd)
            throw MultiprocessingError(.transport, "descriptor \(fd) is not \(what)'s shared memory")
        }
        do { base = try Self.map(fd, size: size, sparse: sparse) } catch {
            Syscall.close(fd)
            throw error
        }
        guard base.load(as: UInt32.self) == magic else {
            munmap(base, size)
            Syscall.close(fd)
            throw MultiprocessingError(.transport, "descriptor \(fd) is not \(what)'s shared memory")
        }
        self.fd = fd
        self.size = size
    }

    deinit {
        munmap(base, size)
        Syscall.close(fd)
    }

    private static func map(_ fd: Int32, size: Int, sparse: Bool) throws -> UnsafeMutableRawPointer {
        let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | (sparse ? MAP_NORESERVE : 0), fd, 0)
        guard let address, address != MAP_FAILED else { throw MultiprocessingError.system("mmap") }
        return address
    }
}
