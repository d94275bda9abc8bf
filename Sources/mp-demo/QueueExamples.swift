import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

/// Puts the tutorial's three items from a child process, then tries a fourth every way it can.
struct TutorialQueueFiller: ProcessTask {
    let queue: ProcessQueue<Int>
    func run() throws {
        try queue.put(1)
        try queue.put(2)
        try queue.put(3)
        print("  child \(getpid()): q.full() -> \(queue.isFull)")
        for (form, attempt) in [("q.put(4, timeout: 0.1 s)", { try queue.put(4, timeout: .milliseconds(100)) }),
                                ("q.put(4, blocking: false)", { try queue.put(4, blocking: false) }),
                                ("q.put_nowait(4)", { try queue.putNoWait(4) })] as [(String, () throws -> Void)] {
            do { try attempt() } catch let error as MultiprocessingError where error.code == .full {
                print("  child: \(form) -> queue.Full (\(error.message))")
            }
        }
    }
}

/// The seed's queue examples, across real processes: a child fills a Queue(3); the parent reads it.
func runQueueExamples() throws {
    section("Python's tutorial, queues: Queue(3), put/get with block and timeout, full/empty, the no-wait forms, qsize")
    let queue = try ProcessQueue<Int>(maxSize: 3)
    let child = ChildProcess(TutorialQueueFiller(queue: queue))
    try child.start()
    _ = try child.join(timeout: .seconds(30))
    print("  parent: child ended with \(child.exitCode ?? -1); q.qsize() -> \(queue.count)")
    print("  parent: q.get() -> \(try queue.get())")
    print("  parent: q.get(blocking: false) -> \(try queue.get(blocking: false))")
    print("  parent: q.get_nowait() -> \(try queue.getNoWait())")
    print("  parent: q.empty() -> \(queue.isEmpty)")
    for (form, attempt) in [("q.get(timeout: 0.1 s)", { try queue.get(timeout: .milliseconds(100)) }),
                            ("q.get(blocking: false)", { try queue.get(blocking: false) }),
                            ("q.get_nowait()", { try queue.getNoWait() })] as [(String, () throws -> Int)] {
        do { _ = try attempt() } catch let error as MultiprocessingError where error.code == .empty {
            print("  parent: \(form) -> queue.Empty (\(error.message))")
        }
    }
}

/// A pipeline stage: squares the numbers it gets until it gets nil, passing nil on.
struct SquareStage: ProcessTask {
    let input: ProcessQueue<Int?>
    let output: ProcessQueue<Int?>
    func run() throws {
        while let number = try input.get(timeout: .seconds(30)) { try output.put(number * number) }
        try output.put(nil)
    }
}

/// Sums what it gets until nil, then reports the sum.
struct SumStage: ProcessTask {
    let input: ProcessQueue<Int?>
    let result: ProcessSimpleQueue<Int>
    func run() throws {
        var total = 0
        while let number = try input.get(timeout: .seconds(30)) { total += number }
        try result.put(total)
    }
}

/// Tour: a producer -> square -> sum pipeline of processes joined by bounded queues.
func runQueueTour() throws {
    section("Tour 8: a pipeline of processes over bounded queues (producer -> square -> sum)")
    let numbers = try ProcessQueue<Int?>(maxSize: 64)
    let squares = try ProcessQueue<Int?>(maxSize: 64)
    let result = try ProcessSimpleQueue<Int>()
    let stages = [ChildProcess(SquareStage(input: numbers, output: squares)), ChildProcess(SumStage(input: squares, result: result))]
    for stage in stages { try stage.start() }
    let count = 100_000
    let start = monotonicSeconds()
    for number in 1...count { try numbers.put(number) }
    try numbers.put(nil)
    let total = try result.get()
    let elapsed = monotonicSeconds() - start
    for stage in stages { _ = try stage.join(timeout: .seconds(30)) }
    print("  sum of squares 1...\(count) = \(total) (expected \(count * (count + 1) * (2 * count + 1) / 6)), "
        + "\(Int(Double(count) / elapsed)) items/s through two stages")
}
