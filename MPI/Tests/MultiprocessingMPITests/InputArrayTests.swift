@testable import MultiprocessingMPI
import Testing

/// Sequences of every shape the pool's calls take: the bulk paths give what walking them gives.
@Suite("MPI pool inputs as one array")
struct InputArrayTests {
    @Test("Int ranges, arrays, slices and contiguous arrays come out element for element")
    func bulkPaths() {
        #expect(inputArray(0..<10_000) == Array(0..<10_000))
        #expect(inputArray(-5...5) == Array(-5...5))
        #expect(inputArray(7..<7).isEmpty)
        #expect(inputArray(Int.max...Int.max) == [Int.max])
        #expect(inputArray([3, 1, 2]) == [3, 1, 2])
        #expect(inputArray(Array(0..<100)[40..<60]) == Array(40..<60))
        #expect(inputArray(ContiguousArray([9, 8])) == [9, 8])
        #expect(inputArray(["a", "bc"]) == ["a", "bc"])
        #expect(inputArray(["a", "bc", "d"][1...]) == ["bc", "d"])
    }

    @Test("other sequences are walked: lazy maps, strides, ranges of other integer types")
    func walkedSequences() {
        #expect(inputArray((0..<5).lazy.map { $0 * 3 }) == [0, 3, 6, 9, 12])
        #expect(inputArray(stride(from: 0, to: 10, by: 4)) == [0, 4, 8])
        #expect(inputArray(Int32(2)..<Int32(5)) == [2, 3, 4])
        #expect(inputArray(UInt8(250)...UInt8(255)) == [250, 251, 252, 253, 254, 255])
        #expect(inputArray(Set([4])) == [4])
    }
}
