#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// Sets new values and replaces the array with its prefix sums (V-01, V-02, V-05, V-07).
struct ValueSetter: ProcessTask {
    let int32: SharedValue<Int32>
    let double: SharedValue<Double>
    let int16: RawSharedValue<Int16>
    let int64: RawSharedValue<Int64>
    let byte: SharedValue<UInt8>
    let array: SharedArray<Int32>
    let rawArray: RawSharedArray<Int32>
    func run() throws {
        int32.value = 24234
        double.value = -4.25
        int16.value = 234
        int64.value = 1 << 34
        byte.value = UInt8(ascii: "y")
        array.withLock { buffer in for index in 1..<buffer.count { buffer[index] += buffer[index - 1] } }
        for index in 1..<rawArray.count { rawArray[index] += rawArray[index - 1] }
    }
}

/// Adds 1 `count` times with atomic adds, and `count` more times with a compare-exchange loop.
struct AtomicAdder: ProcessTask {
    let counter: RawSharedValue<Int>
    let array: SharedArray<UInt16>
    let count: Int
    func run() throws {
        for _ in 0..<count {
            counter.add(1)
            array.add(1, at: 1)
            var current = array.load(at: 2)
            while case let (false, found) = array.compareExchange(expected: current, desired: current &+ 1, at: 2) { current = found }
        }
    }
}

/// Checks that the value's lock is held elsewhere (the same lock crossed), then adds under it.
struct LockedAdder: ProcessTask {
    let value: SharedValue<Int>
    let holding: Bool
    func run() throws {
        if holding {
            try syncCheck(!value.lock.acquire(blocking: false, timeout: nil), "the lock is held by the parent")
            return
        }
        for _ in 0..<1000 { value.withLock { $0 += 1 } }
    }
}

/// Holds `lock` for `seconds`, saying when it has it.
struct LockHolder: ProcessTask {
    let lock: ProcessLock
    let held: ProcessEvent
    let seconds: Double
    func run() throws {
        try syncCheck(lock.acquire(blocking: true, timeout: .seconds(30)), "acquire")
        held.set()
        usleep(UInt32(seconds * 1e6))  // the hold itself is what the test measures
        try lock.release()
    }
}

/// Receives a shared array over a connection and doubles its elements.
struct ArrayOverConnection: ProcessTask {
    let connection: Connection
    func run() throws {
        let array = try connection.recv(RawSharedArray<Double>.self, timeout: .seconds(30))
        for index in array.indices { array[index] *= 2 }
        try connection.send(array.count)
    }
}

@Suite("Shared memory: values and arrays")
struct SharedValueTests {
    @Test("a child's writes to values and arrays are seen by the parent (V-01, V-02, V-05, V-07)", arguments: StartMethod.allCases)
    func childWrites(method: StartMethod) throws {
        let task = ValueSetter(
            int32: try SharedValue(4343), double: try SharedValue(3.625), int16: try RawSharedValue(-232),
            int64: try RawSharedValue(1 << 33), byte: try SharedValue(UInt8(ascii: "x")),
            array: try SharedArray([680, 626, 934, 821, 150, 233, 548, 982, 714, 831]),
            rawArray: try RawSharedArray([680, 626, 934, 821, 150, 233, 548, 982, 714, 831]))
        #expect(task.int32.value == 4343 && task.double.value == 3.625 && task.int16.value == -232)
        #expect(task.int64.value == 1 << 33 && task.byte.value == UInt8(ascii: "x"))
        #expect(task.array.count == 10 && task.array[3] == 821 && Array(task.array[2..<7]) == [934, 821, 150, 233, 548])
        for (index, value) in zip(4..<8, [1, 2, 3, 4] as [Int32]) { task.array[index] = value }
        #expect(Array(task.array) == [680, 626, 934, 821, 1, 2, 3, 4, 714, 831])
        try syncExpectEnded(syncStart(task, method))
        #expect(task.int32.value == 24234 && task.double.value == -4.25 && task.int16.value == 234)
        #expect(task.int64.value == 1 << 34 && task.byte.value == UInt8(ascii: "y"))
        #expect(Array(task.array) == [680, 1306, 2240, 3061, 3062, 3064, 3067, 3071, 3785, 4616])
        #expect(Array(task.rawArray) == [680, 1306, 2240, 3061, 3211, 3444, 3992, 4974, 5688, 6519])
    }

    @Test("arrays from a size are zero-filled, also on reused memory (V-06)")
    func zeroFilled() throws {
        for _ in 0..<3 {
            let array = try SharedArray<Int32>(repeating: 0, count: 10)
            #expect(array.allSatisfy { $0 == 0 })
            for index in array.indices { array[index] = Int32(index) }
            #expect(Array(array) == Array(0..<10))
        }
        #expect(Array(try RawSharedArray(repeating: 7.5, count: 3)) == [7.5, 7.5, 7.5])
        #expect(try RawSharedArray<Int>(repeating: 0, count: 0).isEmpty)
        #expect { _ = try RawSharedArray<Int>(repeating: 0, count: -1) } throws: { ($0 as? MultiprocessingError)?.code == .invalidArgument }
        #expect { _ = try RawSharedArray<Int>(repeating: 0, count: .max / 4) } throws: { ($0 as? MultiprocessingError)?.code == .invalidArgument }
    }

    @Test("atomic add and compare-exchange from two processes lose no update")
    func atomics() throws {
        let counter = try RawSharedValue<Int>(0)
        let array = try SharedArray<UInt16>(repeating: 0, count: 3)
        #expect(counter.add(5) == 5 && counter.load() == 5)
        counter.store(0)
        #expect(counter.compareExchange(expected: 1, desired: 2) == (false, 0))
        #expect(counter.compareExchange(expected: 0, desired: 0) == (true, 0))
        #expect(array.add(UInt16.max, at: 0) == UInt16.max && array.add(1, at: 0) == 0, "wrapping")
        let count = 20_000
        let children = try (0..<2).map { _ in try syncStart(AtomicAdder(counter: counter, array: array, count: count)) }
        for child in children { try syncExpectEnded(child) }
        #expect(counter.load() == 2 * count)
        #expect(array.load(at: 1) == UInt16(2 * count) && array.load(at: 2) == UInt16(2 * count))
    }

    @Test("the default lock is a ProcessRLock; a given lock is used and crosses with the value (V-03, V-08)")
    func locks() throws {
        let value = try SharedValue<Int>(0)
        #expect(value.lock is ProcessRLock)
        let lock = try ProcessLock()
        let locked = try SharedValue<Int>(0, lock: lock)
        #expect(locked.lock as? ProcessLock === lock)
        lock.acquire()
        try syncExpectEnded(syncStart(LockedAdder(value: locked, holding: true)))
        try lock.release()
        let children = try (0..<2).map { _ in try syncStart(LockedAdder(value: locked, holding: false)) }
        for child in children { try syncExpectEnded(child) }
        #expect(locked.value == 2000)
        let array = try SharedArray<Int>([1, 2, 3], lock: lock)
        #expect(array.lock as? ProcessLock === lock)
        #expect(array.withLock { $0.reduce(0, +) } == 6)
    }

    @Test("async withLock waits for a lock another process holds, without blocking the caller's thread", .ownThread)
    func asyncWithLock() async throws {
        let lock = try ProcessLock()
        let value = try SharedValue<Int>(1, lock: lock)
        let array = try SharedArray<Int>([1, 2, 3])
        let created = try ProcessEvent()
        let holder = try syncStart(LockHolder(lock: lock, held: created, seconds: 0.3))
        #expect(created.wait(timeout: .seconds(30)))
        let (doubled, elapsed) = try await syncTimed { try await value.withLock { $0 *= 2; return $0 } }
        #expect(doubled == 2 && elapsed >= 0.2, "waited \(elapsed) s for the holder")
        #expect(try await array.withLock { $0.reduce(0, +) } == 6)
        try syncExpectEnded(holder)
    }

    @Test("a shared array sent over a Connection to a running child is the same memory")
    func overConnection() throws {
        let (parent, child) = try makePipe()
        let process = try syncStart(ArrayOverConnection(connection: child))
        let array = try RawSharedArray<Double>([1, 2.5, -3])
        try parent.send(array)
        #expect(try parent.recv(Int.self, timeout: .seconds(30)) == 3)
        try syncExpectEnded(process)
        #expect(Array(array) == [2, 5, -6])
    }

    @Test("shared memory decoded as another element type or outside a message is refused")
    func wrongType() throws {
        let (a, b) = try makePipe()
        try b.send(try RawSharedArray<Int32>([1, 2, 3, 4]))
        #expect { _ = try a.recv(RawSharedArray<Int64>.self, timeout: .seconds(10)) } throws: {
            ($0 as? MultiprocessingError)?.code == .transport
        }
        #expect { _ = try BinaryEncoder().encode(try RawSharedValue(1)) } throws: {
            ($0 as? MultiprocessingError)?.code == .transport
        }
    }
}
