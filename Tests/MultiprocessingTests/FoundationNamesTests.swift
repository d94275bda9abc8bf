import Foundation
import Multiprocessing
import Testing

// This file imports Foundation and Multiprocessing together and uses every public type unqualified: it
// compiles only while no name of ours clashes with Foundation's, Glibc's or the standard library's.

@Suite("Names beside Foundation")
struct FoundationNamesTests {
    @Test("public names resolve unqualified next to Foundation")
    func unqualifiedNames() throws {
        let types: [Any.Type] = [
            ChildProcess.self, ProcessContext.self, StartMethod.self, CurrentProcess.self, ParentProcess.self,
            Connection.self, Listener.self, ConnectionAddress.self, AddressFamily.self,
            ProcessLock.self, ProcessRLock.self, ProcessSemaphore.self, ProcessBoundedSemaphore.self,
            ProcessCondition.self, ProcessEvent.self, ProcessBarrier.self,
            BinaryEncoder.self, BinaryDecoder.self, MultiprocessingError.self,
            SharedMemory.self, ShareableList.self, ShareableList.Item.self, SharedValue<Int>.self, SharedArray<Double>.self,
            RawSharedValue<Int32>.self, RawSharedArray<UInt8>.self,
            BinaryDecoder.MemoryBudget.self,
            PickleEncoder.self, PickleDecoder.self, PythonValue.self, PythonDictItem.self, PickledConnection.self,
            ChildFailure.self, (any AsyncProcessTask).self,
            ProcessQueue<Int>.self, ProcessSimpleQueue<Int>.self, ProcessJoinableQueue<Int>.self,
            Signal.self, TerminationStatus.self, ProcessIdentifier.self, ResourceLimits.self, LimitExceeded.self,
            ChildInput.self, ChildOutput.self, ChildSettings.self,
            ProcessPool.self, ProcessPoolExecutor.self, ClosurePool<Int, Int>.self, PoolResult<Int>.self, PoolResults<Int>.self,
            (any PoolTask).self, (any AsyncPoolTask).self,
            SharedObjectManager.self, ManagerServer.self, (any SharedObject).self, ManagerActorSystem.self, SharedObjectID.self,
            SharedDictionary<String, Int>.self, SharedList<Int>.self, SharedNamespace.self, SharedQueue<Int>.self,
            SharedLock.self, SharedEvent.self, SharedBox<Int>.self,
            ManagerInvocationEncoder.self, ManagerInvocationDecoder.self, ManagerResultHandler.self,
        ]
        #expect(types.count == 67)
        let (a, b) = try makePipe()
        try b.send("hello")
        #expect(try wait([a], timeout: .seconds(5)).count == 1)
        #expect(try a.recv(String.self, timeout: .seconds(5)) == "hello")
        // Foundation's own types stay usable beside ours.
        #expect(Foundation.Process().arguments == nil)
        #expect(FileManager.default.fileExists(atPath: "/"))
    }
}
