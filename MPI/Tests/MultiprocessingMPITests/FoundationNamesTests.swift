import Foundation
import Multiprocessing
import MultiprocessingMPI
import Testing

/// The package's public names, used unqualified beside Foundation: this file compiles only if none clashes.
@Suite("MPI names beside Foundation")
struct MPIFoundationNamesTests {
    @Test("MPIPool, MPIFuture, MPIResults and MPIProgress need no module prefix")
    func names() {
        let types: [Any.Type] = [MPIPool.self, MPIFuture<Int>.self, MPIResults<Int>.self]
        let progress: MPIProgress = { _, _ in }
        progress(0, 0)
        #expect(types.count == 3)
        #expect(MultiprocessingError.Code.rankLost.rawValue == "rankLost")
    }
}
