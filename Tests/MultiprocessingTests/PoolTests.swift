#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import Multiprocessing

/// Squares its input.
struct Square: PoolTask {
    func run(_ input: Int) throws -> Int { input * input }
}

@Suite("Process pool")
struct PoolTests {
    @Test("map squares 100 inputs in order")
    func mapInOrder() throws {
        let pool = try ProcessPool(workers: 2)
        let squares = try pool.submitMap(Square(), 0..<100).get(timeout: .seconds(30))
        #expect(squares == (0..<100).map { $0 * $0 })
        pool.close()
        #expect(try pool.join(timeout: .seconds(10)))
    }
}
