#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing
import Synchronization

/// A named block of memory that unrelated processes share: Python's
/// `multiprocessing.shared_memory.SharedMemory`, and the same POSIX segments, so a block created here
/// can be attached by a CPython program and the other way round.
///
/// ```swift
/// let block = try SharedMemory(size: 1024)              // a fresh random name
/// try block.withUnsafeMutableBytes { $0[0] = 42 }
/// let other = try SharedMemory(attachingTo: block.name)  // in any process
/// try block.unlink()                                     // the owner destroys it when done
/// ```
///
/// **Ownership.** The process that creates a block owns it: it (or anyone explicitly calling
/// ``unlink()``) destroys the name; attaching never unlinks. If the owner ends without unlinking
/// (returning, crashing, or killed with SIGKILL), a tracker process unlinks its blocks at once, so
/// nothing is left in `/dev/shm`. Hand a block on with ``releaseOwnership()`` (and
/// ``takeOwnership()`` in the receiving process) to let it outlive its creator.
///
/// The tracker is one process per creating process, started with its first block (one spawn of the
/// program, in a session of its own). It sleeps on a pipe whose write end only the owner holds; the
/// owner records each block it owns in a table of memory shared with the tracker (a create or unlink
/// costs a write there, no message and no system call). When the pipe hangs up, the owner has ended
/// however it ended, and the tracker unlinks what the table still holds, printing the names to
/// standard error. A process forked from the owner gets a tracker of its own for its own blocks.
/// Blocks whose owner is killed in the microseconds between creating a name and recording it, or
/// whose tracker was itself killed, are not cleaned up.
///
/// **Crossing to another process.** A block is `Codable`: put it in a child's task or send it over a
/// ``Connection`` and the receiver maps the same memory (through the descriptor, so this works even
/// after the name was unlinked). Anywhere else it encodes its name, and decoding attaches by name.
public final class SharedMemory: @unchecked Sendable, Codable, CustomStringConvertible {
    private struct State {
        var segment: MappedSegment?
        /// This process's record of ownership in its tracker's table, when it owns the block.
        var slot: Int32?
    }

    /// The block's name, without the leading slash (as Python reports it).
    public let name: String
    /// The size in bytes: as requested when created, the segment's size when attached.
    public let size: Int
    private let state: Mutex<State>

    /// The longest name the system accepts, in UTF-8 bytes, not counting the leading slash.
    public static let maximumNameLength = 255

    /// Creates a block of `size` bytes, zero-filled, owned by this process.
    ///
    /// - Parameters:
    ///   - size: the number of bytes; must be positive.
    ///   - name: the name to create (an optional leading `/` is ignored); nil picks a random unused one.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a size of zero or less or a bad name
    ///   (empty, containing `/` or NUL, longer than ``maximumNameLength`` bytes);
    ///   ``MultiprocessingError/Code/alreadyExists`` when a block of that name exists;
    ///   ``MultiprocessingError/Code/system`` when the system refuses (no memory, no permission).
    public init(size: Int, name: String? = nil) throws {
        guard size > 0 else {
            throw MultiprocessingError(.invalidArgument, "a shared memory block needs a positive size, not \(size)")
        }
        var attempts = 0
        while true {
            let candidate = try name.map(Self.validated) ?? Self.randomName()
            let path = "/" + candidate
            let fd: Int32
            do {
                fd = try Syscall.retrying("shm_open of \(candidate)") { mp_shm_open(path, O_CREAT | O_EXCL | O_RDWR, 0o600) }
            } catch let error as MultiprocessingError where error.errno == EEXIST {
                attempts += 1
                if name == nil && attempts < 100 { continue }
                throw MultiprocessingError(.alreadyExists, "a shared memory block named \(candidate) already exists", errno: EEXIST)
            }
            var slot: Int32 = -1
            do {
                try Syscall.retrying("ftruncate of \(candidate) to \(size) bytes") { ftruncate(fd, off_t(size)) }
                slot = try Self.track(path)
                let segment = try MappedSegment(adopting: fd, size: size, knownSize: true)
                self.name = candidate
                self.size = size
                state = Mutex(State(segment: segment, slot: slot))
                return
            } catch {
                if slot < 0 { Syscall.close(fd) } else { mp_shm_untrack(slot, path) }
                _ = mp_shm_unlink(path)
                throw error
            }
        }
    }

    /// Attaches to the existing block `name`, created by this or any other process (Python's
    /// `SharedMemory(name)`). Attaching never makes this process an owner.
    ///
    /// - Throws: ``MultiprocessingError/Code/notFound`` when no block has that name;
    ///   ``MultiprocessingError/Code/invalidArgument`` for a bad name or an empty segment;
    ///   ``MultiprocessingError/Code/system`` when the system refuses (no permission).
    public init(attachingTo name: String) throws {
        let candidate = try Self.validated(name)
        let fd = try Self.open(candidate)
        let segment = try MappedSegment(adopting: fd)
        self.name = candidate
        self.size = segment.size
        state = Mutex(State(segment: segment, slot: nil))
    }

    private init(name: String, segment: MappedSegment) {
        self.name = name
        self.size = segment.size
        state = Mutex(State(segment: segment, slot: nil))
    }

    /// Records `path` in this process's tracker table (starting the tracker the first time); returns the slot.
    private static func track(_ path: String) throws -> Int32 {
        let slot = mp_shm_track(path)
        if slot < 0 { throw MultiprocessingError.system("starting the shared memory tracker", errno: -slot) }
        return slot
    }

    private static func open(_ name: String) throws -> Int32 {
        do {
            return try Syscall.retrying("shm_open of \(name)") { mp_shm_open("/" + name, O_RDWR, 0) }
        } catch let error as MultiprocessingError where error.errno == ENOENT {
            throw MultiprocessingError(.notFound, "no shared memory block is named \(name)", errno: ENOENT)
        }
    }

    /// `name` without its optional leading slash, or an error saying what is wrong with it.
    static func validated(_ name: String) throws -> String {
        let bare = name.hasPrefix("/") ? String(name.dropFirst()) : name
        guard !bare.isEmpty else {
            throw MultiprocessingError(.invalidArgument, "a shared memory name cannot be empty")
        }
        guard !bare.utf8.contains(UInt8(ascii: "/")), !bare.utf8.contains(0) else {
            throw MultiprocessingError(.invalidArgument, "a shared memory name cannot contain '/' or NUL after its first character: \(name.debugDescription)")
        }
        guard bare != ".", bare != ".." else {
            throw MultiprocessingError(.invalidArgument, "\(name.debugDescription) is not a usable shared memory name")
        }
        guard bare.utf8.count <= maximumNameLength else {
            throw MultiprocessingError(
                .invalidArgument, "a shared memory name has at most \(maximumNameLength) bytes; this one has \(bare.utf8.count)")
        }
        return bare
    }

    /// The state behind random names: seeded once from the kernel, then advanced without a system call.
    private static let nameState = Mutex<UInt64>(0)

    /// `msm_` and 16 hex digits: a SplitMix64 sequence seeded from getrandom and mixed with the pid (a
    /// forked child continues its parent's sequence). Collisions are caught by O_EXCL and retried.
    private static func randomName() throws -> String {
        let value = try nameState.withLock { state -> UInt64 in
            if state == 0 {
                var seed: UInt64 = 0
                guard mp_getrandom(&seed, 8) == 8 else { throw MultiprocessingError.system("getrandom") }
                state = seed | 1
            }
            state &+= 0x9E37_79B9_7F4A_7C15
            var mixed = state ^ (UInt64(UInt32(bitPattern: getpid())) << 17)
            mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
            mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
            return mixed ^ (mixed >> 31)
        }
        let hex = String(value, radix: 16)
        return "msm_" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The mapping, or an error once closed.
    private func segment() throws -> MappedSegment {
        guard let segment = state.withLock({ $0.segment }) else {
            throw MultiprocessingError(.closed, "shared memory block \(name) is closed in this process")
        }
        return segment
    }

    /// Runs `body` with the block's bytes. The pointer is valid only inside `body`.
    /// - Throws: ``MultiprocessingError/Code/closed`` after ``close()``, or what `body` throws.
    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) throws -> R {
        let segment = try segment()
        return try withExtendedLifetime(segment) { try body(segment.bytes) }
    }

    /// Runs `body` with the block's bytes from `byteOffset` viewed as `count` values of type `T`
    /// (nil: as many as fit). The pointer is valid only inside `body`.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` when the offset is negative or not
    ///   aligned for `T`, or the view does not fit in the block; ``MultiprocessingError/Code/closed``
    ///   after ``close()``; or what `body` throws.
    public func withUnsafeMutableBufferPointer<T: BitwiseCopyable, R>(
        of type: T.Type, byteOffset: Int = 0, count: Int? = nil, _ body: (UnsafeMutableBufferPointer<T>) throws -> R
    ) throws -> R {
        let stride = MemoryLayout<T>.stride
        guard byteOffset >= 0, byteOffset <= size, byteOffset % MemoryLayout<T>.alignment == 0 else {
            throw MultiprocessingError(.invalidArgument, "byte offset \(byteOffset) is outside the \(size)-byte block or not aligned for \(T.self)")
        }
        let available = stride == 0 ? 0 : (size - byteOffset) / stride
        let wanted = count ?? available
        guard wanted >= 0, wanted <= available else {
            throw MultiprocessingError(.invalidArgument, "\(wanted) values of \(T.self) from byte \(byteOffset) do not fit in the \(size)-byte block")
        }
        let segment = try segment()
        return try withExtendedLifetime(segment) {
            let start = (segment.base + byteOffset).bindMemory(to: T.self, capacity: wanted)
            return try body(UnsafeMutableBufferPointer(start: start, count: wanted))
        }
    }

    /// Whether this process owns the block: its tracker unlinks it if the process ends without
    /// calling ``unlink()``.
    public var isOwner: Bool { state.withLock { $0.slot != nil } }

    /// Hands ownership away: this process will no longer unlink the block when it ends, so the block
    /// outlives it until someone calls ``unlink()`` (or another process calls ``takeOwnership()``).
    /// Does nothing when this process does not own the block.
    public func releaseOwnership() {
        state.withLock { state in
            guard let slot = state.slot else { return }
            mp_shm_untrack(slot, "/" + name)
            state.slot = nil
        }
    }

    /// Makes this process an owner of an attached block: if it ends without calling ``unlink()``, its
    /// tracker unlinks the block. The other side of ``releaseOwnership()``.
    /// - Throws: ``MultiprocessingError/Code/system`` when the tracker cannot be started or told.
    public func takeOwnership() throws {
        try state.withLock { state in
            guard state.slot == nil else { return }
            state.slot = try Self.track("/" + name)
        }
    }

    /// Unmaps the block from this process (Python's `close()`); the block and its name live on for
    /// other processes. Calls already inside ``withUnsafeMutableBytes(_:)`` keep their mapping until
    /// they return. Closing twice does nothing.
    public func close() {
        let segment = state.withLock { state in
            defer { state.segment = nil }
            return state.segment
        }
        withExtendedLifetime(segment) {}
    }

    /// Destroys the block's name (Python's `unlink()`): nobody can attach any more, and the memory is
    /// freed once every process has closed it. Mappings that are open keep working.
    /// - Throws: ``MultiprocessingError/Code/notFound`` when the name is already gone (unlinked
    ///   twice); ``MultiprocessingError/Code/system`` when the system refuses.
    public func unlink() throws {
        let path = "/" + name
        // Forget it first: a tracker must never unlink a block that someone else created later.
        state.withLock { state in
            if let slot = state.slot { mp_shm_untrack(slot, path) }
            state.slot = nil
        }
        try Self.unlinkPath(path)
    }

    /// Destroys the block named `name` without attaching to it.
    /// - Throws: ``MultiprocessingError/Code/invalidArgument`` for a bad name;
    ///   ``MultiprocessingError/Code/notFound`` when no block has that name;
    ///   ``MultiprocessingError/Code/system`` when the system refuses.
    public static func unlink(name: String) throws {
        let path = try "/" + validated(name)
        mp_shm_untrack_name(path)
        try unlinkPath(path)
    }

    private static func unlinkPath(_ path: String) throws {
        do {
            try Syscall.retrying("shm_unlink of \(path.dropFirst())") { mp_shm_unlink(path) }
        } catch let error as MultiprocessingError where error.errno == ENOENT {
            throw MultiprocessingError(.notFound, "no shared memory block is named \(path.dropFirst())", errno: ENOENT)
        }
    }

    /// `SharedMemory(name: "msm_…", size: 1024)`.
    public var description: String { "SharedMemory(name: \(name.debugDescription), size: \(size))" }

    // MARK: Crossing a process boundary

    private enum CodingKeys: String, CodingKey { case name, size, memory }

    /// Encodes the block: its descriptor through a child's task or a ``Connection`` message,
    /// otherwise its name. Ownership stays with this process.
    /// - Throws: ``MultiprocessingError/Code/closed`` after ``close()``.
    public func encode(to encoder: any Encoder) throws {
        let segment = try segment()
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(size, forKey: .size)
        if encoder.userInfo[.descriptorTransfer] != nil {
            try container.encode(segment.encodeDescriptor(to: encoder, as: "a SharedMemory"), forKey: .memory)
        }
    }

    /// Decodes a block sent by another process: the same memory, attached, not owned.
    /// - Throws: ``MultiprocessingError/Code/transport`` when the descriptor is missing;
    ///   ``MultiprocessingError/Code/notFound`` when sent by name and the name is gone.
    public convenience init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let name = try Self.validated(container.decode(String.self, forKey: .name))
        let size = try container.decode(Int.self, forKey: .size)
        if let index = try container.decodeIfPresent(Int.self, forKey: .memory) {
            self.init(name: name, segment: try MappedSegment.decode(from: decoder, index: index, size: size, as: "a SharedMemory"))
        } else {
            try self.init(attachingTo: name)
        }
    }
}

extension SharedMemory {
    /// The pid of this process's shared-memory tracker, or nil before this process created a block.
    static var trackerPID: Int32? {
        let pid = mp_shm_tracker_pid()
        return pid == 0 ? nil : pid
    }
}

