#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

/// A value that encodes whatever it holds but refuses to be decoded holding 13.
struct Fussy: Codable, Sendable, Equatable {
    let value: Int
    init(_ value: Int) { self.value = value }
    init(from decoder: any Decoder) throws {
        value = try decoder.singleValueContainer().decode(Int.self)
        guard value != 13 else { throw MultiprocessingError(.invalidArgument, "13 stays encoded") }
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(value)
    }
}

/// Returns its input plus one: input 13 cannot be decoded in the worker, output 13 (of input 12) not
/// in the parent.
struct FussyIncrement: PoolTask {
    func run(_ input: Fussy) throws -> Fussy { Fussy(input.value + 1) }
}

@Suite("Process pool batches")
struct PoolBatchTests {
    @Test("a map's chunks travel as one array each, and every input keeps its own fate: crashes, throws, unencodable and undecodable values")
    func batchesKeepEachInputsFate() throws {
        let pool = try ProcessPool(workers: 2, workerSettings: ChildSettings(standardError: .null))
        // Chunks of 50: input 10 kills its worker after 0...9 ran (their outputs were not sent yet), and
        // 120 segfaults in another chunk; 200 and 201 throw; 250's output cannot be encoded.
        let special: [Int: Deed] = [
            10: Deed(value: 10, misdeed: .killSelf), 120: Deed(value: 120, misdeed: .segfault),
            200: Deed(value: 200, misdeed: .throwCodable), 201: Deed(value: 201, misdeed: .throwOpaque),
            250: Deed(value: 250, misdeed: .badOutput),
        ]
        let result = try pool.submitMap(Misbehave(), deeds(400, special), chunkSize: 50)
        #expect(result.call.batches)
        #expect(result.wait(timeout: .seconds(60)))
        let outcomes = (0..<400).map { index in Result { try result.call.value(index, as: Picky.self) } }
        for (index, outcome) in outcomes.enumerated() where special[index] == nil {
            #expect((try? outcome.get()) == Picky(index), "input \(index): \(outcome)")
        }
        func failure(_ index: Int) -> (any Error)? {
            if case .failure(let error) = outcomes[index] { return error }
            return nil
        }
        let killed = failure(10) as? MultiprocessingError
        #expect(killed?.code == .childFailed && killed?.signal == .kill && killed?.message.contains("input 10 ") == true, "\(String(describing: killed))")
        let segfault = failure(120) as? MultiprocessingError
        #expect(segfault?.code == .childFailed && segfault?.signal == .segmentationViolation, "\(String(describing: segfault))")
        #expect(failure(200) as? ParseFailure == ParseFailure(line: 200, reason: "bad input"))
        #expect((failure(201) as? MultiprocessingError)?.code == .remote)
        #expect(failure(250) != nil)
        // The map as a whole throws the first failure in input order.
        #expect(throws: MultiprocessingError.self) { try result.get(timeout: .seconds(1)) }

        // An input that cannot be encoded fails alone, its chunk going input by input.
        let picky = try pool.mapResults(PickyEcho(), (0..<20).map { Picky($0 == 7 ? -1 : $0) }, chunkSize: 5)
        for (index, outcome) in picky.enumerated() where index != 7 { #expect((try? outcome.get()) == Picky(index)) }
        if case .failure(let error as MultiprocessingError) = picky[7] { #expect(error.code == .transport) } else { Issue.record("input 7 should fail") }

        // Input 13 cannot be decoded in the worker, output 13 (of input 12) not in the parent: each fails
        // alone, and the rest of their chunk's outputs still arrive.
        let fussy = try pool.mapResults(FussyIncrement(), (0..<30).map(Fussy.init), chunkSize: 10)
        for (index, outcome) in fussy.enumerated() where index != 12 && index != 13 {
            #expect((try? outcome.get()) == Fussy(index + 1), "input \(index): \(outcome)")
        }
        if case .failure(let error as MultiprocessingError) = fussy[12] {
            #expect(error.code == .transport && error.message.contains("output of input 12"), "\(error)")
        } else {
            Issue.record("the output of input 12 should fail to decode")
        }
        #expect((try? fussy[13].get()) == nil)
        #expect(throws: MultiprocessingError.self) { try pool.map(FussyIncrement(), (0..<30).map(Fussy.init), chunkSize: 10) }

        // Big batches, as a default map of many inputs makes them.
        let big = try pool.submitMap(Square(), 0..<50_000)
        #expect(big.call.batches)
        #expect(try big.get(timeout: .seconds(60)) == (0..<50_000).map { $0 * $0 })
        #expect(pool.workerIdentifiers.count == 2)
        pool.terminate()
        #expect(try pool.join(timeout: .seconds(10)))
    }

    @Test("async tasks and closure pools run batches; per-input timeouts and recycling pools keep single inputs")
    func batchKinds() async throws {
        let pool = try ProcessPool(workers: 2)
        let naps = try await withTimeLimit(.seconds(30)) { try await pool.map(AsyncNap(), (0..<40).map { $0 % 3 }, chunkSize: 10) }
        #expect(naps == (0..<40).map { $0 % 3 })
        #expect(try pool.submitMap(Square(), 0..<100, chunkSize: 10, timeout: .seconds(30)).call.batches == false)
        pool.close()
        #expect(try await pool.join(timeout: .seconds(10)))

        let recycling = try ProcessPool(workers: 1, maxTasksPerChild: 30)
        let result = try recycling.submitMap(WorkerPid(), 0..<90, chunkSize: 10)
        #expect(result.call.batches == false)
        #expect(Set(try result.get(timeout: .seconds(30))).count == 3)
        recycling.close()
        #expect(try await recycling.join(timeout: .seconds(10)))

        // A closure pool forks its workers, which is safe only in a process without other threads
        // (the Swift runtime's locks held by another thread at the fork stay held in the worker): it
        // runs in a spawned probe, away from the suite's threads.
        let (reader, writer) = try makePipe(duplex: false)
        let probe = ChildProcess(ClosurePoolBatchProbe(report: writer))
        try probe.start()
        let failures = try await reader.recv([String].self, timeout: .seconds(60))
        #expect(failures.isEmpty, "\(failures)")
        #expect(try await probe.join(timeout: .seconds(30)))
        #expect(probe.exitCode == 0)
    }
}

/// Maps over a closure pool whose closure kills its worker at input 33, and sends what went wrong.
struct ClosurePoolBatchProbe: ProcessTask {
    let report: Connection
    func run() throws {
        var failures: [String] = []
        let offset = Int(getpid() % 1000)
        let closures = try ClosurePool(workers: 2, workerSettings: ChildSettings(standardError: .null)) { (x: Int) -> Int in
            if x == 33 { kill(getpid(), SIGKILL) }
            return x + offset
        }
        let outcomes = try closures.mapResults(0..<100, chunkSize: 20)
        for (index, outcome) in outcomes.enumerated() where index != 33 && (try? outcome.get()) != index + offset {
            failures.append("input \(index): \(outcome)")
        }
        if case .failure(let error as MultiprocessingError) = outcomes[33], error.code == .childFailed, error.signal == .kill {
        } else {
            failures.append("input 33 should fail with SIGKILL: \(outcomes[33])")
        }
        if try closures.map(34..<134, chunkSize: 20) != (34..<134).map({ $0 + offset }) { failures.append("second map") }
        closures.close()
        if try !closures.join(timeout: .seconds(10)) { failures.append("join timed out") }
        try report.send(failures)
    }
}
