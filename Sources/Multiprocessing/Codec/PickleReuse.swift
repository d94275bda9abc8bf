#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// What the pickle coders keep between calls: each thread keeps the state of its last encode and of its
// last decode (buffers, stacks, container boxes), so a call of a small message allocates only what it
// returns. A state is taken out of its thread's slot for a call and put back only when nothing made
// during the call still refers to it (an encoder or decoder that escaped its `encode(to:)` or
// `init(from:)` keeps its own state, which then goes away with it), so states are never shared.

/// A thread's slot for one reused object, released when the thread exits.
struct PickleThreadSlot<State: AnyObject>: Sendable {
    private let key: pthread_key_t

    init() {
        var key = pthread_key_t()
        #if canImport(Darwin)
        pthread_key_create(&key) { Unmanaged<AnyObject>.fromOpaque($0).release() }
        #else
        pthread_key_create(&key) { if let state = $0 { Unmanaged<AnyObject>.fromOpaque(state).release() } }
        #endif
        self.key = key
    }

    /// The object this thread kept, now out of the slot (a nested call finds the slot empty), or nil.
    @inline(__always)
    func take() -> State? {
        guard let kept = pthread_getspecific(key) else { return nil }
        pthread_setspecific(key, nil)
        return Unmanaged<State>.fromOpaque(kept).takeRetainedValue()
    }

    /// Keeps `state` for this thread's next call if no one else holds it and the slot is empty.
    @inline(__always)
    func keep(_ state: inout State) {
        guard isKnownUniquelyReferenced(&state), pthread_getspecific(key) == nil else { return }
        pthread_setspecific(key, Unmanaged.passRetained(state).toOpaque())
    }
}

/// The boxes of keyed containers, kept by a reused state.
///
/// `KeyedEncodingContainer(_:)` and `KeyedDecodingContainer(_:)` allocate a box and look up two generic
/// metadata records each time. The containers put in these boxes keep everything that changes from one
/// use to the next in a `Frame` object, so a box that no one but this cache holds any more can be handed
/// out again (for the same key type) with its frame refilled. `KeyedEncodingContainer<K>` and
/// `KeyedDecodingContainer<K>` hold nothing but the reference to their box, so a box converts to them
/// (``reusedContainer(_:as:)``) and from them (`unsafeBitCast`); ``keyedBoxesConvert`` checks that
/// layout, and without it nothing is cached.
///
/// The containers hold their frame unretained (a copy of a container then retains nothing), so this cache
/// owns every frame it hands out for as long as its box may be held: a cached one in its slot, one that
/// did not fit until its box is no longer held by anyone else (checked when a call ends). A frame whose
/// box is still held when the cache goes away (a container kept past its call, on a thread that then
/// ended) is left allocated, detached, so that the container still only throws.
struct PickleBoxCache<Frame: AnyObject> {
    static var capacity: Int { 16 }

    private let types = UnsafeMutablePointer<ObjectIdentifier>.allocate(capacity: PickleBoxCache.capacity)
    private let boxes = UnsafeMutablePointer<AnyObject>.allocate(capacity: PickleBoxCache.capacity)
    private let frameStorage = UnsafeMutablePointer<Frame>.allocate(capacity: PickleBoxCache.capacity)
    private(set) var count = 0

    /// The boxes and frames handed out that did not fit in the cache, kept while their boxes are held.
    private var strays: [(box: AnyObject, frame: Frame)] = []

    /// Ends a call: runs `detach` on the frame of every container handed out (cached or not), so that
    /// a container kept past its call no longer reaches the call's state, and lets go of the frames
    /// that did not fit once no one else holds their box.
    mutating func detachFrames(_ detach: (Frame) -> Void) {
        for slot in 0..<count { detach(frameStorage[slot]) }
        if !strays.isEmpty {
            var kept = 0
            for index in strays.indices {
                detach(strays[index].frame)
                if !isKnownUniquelyReferenced(&strays[index].box) {
                    strays.swapAt(kept, index)
                    kept += 1
                }
            }
            strays.removeLast(strays.count - kept)
        }
    }

    /// Frees the storage; the owner calls this when it goes away. (Its frames are already detached.)
    mutating func deallocate() {
        for slot in 0..<count where !isKnownUniquelyReferenced(&boxes[slot]) {
            _ = Unmanaged.passRetained(frameStorage[slot])  // its container is still held: it outlives this
        }
        for index in strays.indices where !isKnownUniquelyReferenced(&strays[index].box) {
            _ = Unmanaged.passRetained(strays[index].frame)
        }
        types.deallocate()
        boxes.deinitialize(count: count)
        boxes.deallocate()
        frameStorage.deinitialize(count: count)
        frameStorage.deallocate()
    }

    /// A cached box of a `Key` container that no one else holds, after `attach` has run on its frame.
    @inline(__always)
    func reuse<Key>(_: Key.Type, _ attach: (Frame) -> Void) -> AnyObject? {
        let type = ObjectIdentifier(Key.self)
        for slot in 0..<count where types[slot] == type && isKnownUniquelyReferenced(&boxes[slot]) {
            attach(frameStorage[slot])
            return boxes[slot]
        }
        return nil
    }

    /// Keeps a new box of a `Key` container, and its frame, while there is room.
    mutating func keep<Key>(_ box: AnyObject, frame: Frame, of _: Key.Type) {
        guard keyedBoxesConvert, count < Self.capacity else { return strays.append((box, frame)) }
        (types + count).initialize(to: ObjectIdentifier(Key.self))
        (boxes + count).initialize(to: box)
        (frameStorage + count).initialize(to: frame)
        count += 1
    }
}
