#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// The shared memory behind a queue: a header page of counters and locks, then a ring of records.
///
/// An anonymous memfd (no name to leak), sized to a header page plus ``capacity`` bytes of ring but
/// sparse: only the pages records have touched take memory, and the producer returns pages above the
/// working set to the system when it moves back to the start of the ring (see ``QueueRing``). Handed
/// to other processes through ``DescriptorTransfer`` like a lock's page.
final class QueueMemory: @unchecked Sendable {
    /// Marks a queue's header, so that a descriptor decoded as the wrong kind is refused.
    static let magic: UInt32 = 0x4D50_5131
    /// The header's size; the ring starts here.
    static let headerSize = 4096
    /// The ring's size in bytes (virtual; untouched pages cost nothing).
    static let capacity = 1 << 31

    /// The header and the ring.
    private let mapping: SharedMapping
    /// The start of the mapping (the header).
    let base: UnsafeMutableRawPointer
    /// The start of the ring.
    var ring: UnsafeMutableRawPointer { base + Self.headerSize }

    /// A new zeroed queue memory whose header says `maxSize` (0: unbounded).
    init(maxSize: UInt32) throws {
        mapping = try SharedMapping(size: Self.headerSize + Self.capacity, magic: Self.magic, name: "multiprocessing-queue", sparse: true)
        base = mapping.base
        base.storeBytes(of: maxSize, toByteOffset: 4, as: UInt32.self)
    }

    /// Maps a queue's memory received from another process, checking that it is one.
    private init(adopting fd: Int32) throws {
        mapping = try SharedMapping(adopting: fd, size: Self.headerSize + Self.capacity, magic: Self.magic, what: "a queue", sparse: true)
        base = mapping.base
    }

    /// The maximum number of items, 0 for none.
    var maxSize: UInt32 { base.load(fromByteOffset: 4, as: UInt32.self) }

    /// The 32-bit atomic at header `offset`.
    func atomic32(_ offset: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + offset).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    /// The 64-bit atomic at header `offset`.
    func atomic64(_ offset: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        (base + offset).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    /// How many bytes of memory the queue's pages take now (the header and the ring pages touched
    /// and not given back).
    var residentBytes: Int {
        var status = stat()
        guard fstat(mapping.fd, &status) == 0 else { return 0 }
        return Int(status.st_blocks) * 512
    }

    /// Gives the pages of ring bytes `range` back to the system (they read as zeros afterwards).
    func release(ringBytes range: Range<Int>) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (range.lowerBound + page - 1) / page * page
        let end = range.upperBound / page * page
        guard end > start else { return }
        // MADV_REMOVE frees a shared mapping's backing pages; failure only costs memory.
        _ = try? Syscall.retrying("madvise") { madvise(ring + start, end - start, 9) }
    }

    // MARK: Crossing a process boundary

    private enum CodingKeys: String, CodingKey { case memory }

    /// Encodes the memfd through the encoder's ``DescriptorTransfer``.
    func encode(to encoder: any Encoder, as what: String) throws {
        let transfer = try DescriptorTransfer.from(encoder.userInfo, for: what)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(transfer.add(mapping.fd), forKey: .memory)
    }

    /// Takes the memfd from the decoder's ``DescriptorTransfer`` and maps it.
    convenience init(from decoder: any Decoder, as what: String) throws {
        let transfer = try DescriptorTransfer.from(decoder.userInfo, for: what)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(adopting: transfer.take(container.decode(Int.self, forKey: .memory)))
    }
}
