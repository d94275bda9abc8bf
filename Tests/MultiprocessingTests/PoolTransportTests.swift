import Testing
@_spi(PoolTransport) @testable import Multiprocessing

@Suite("Pool transport entry point", .ownThread)
struct PoolTransportTests {
    @Test("an encoded job runs by type name; outputs, thrown errors and crashes come back as values")
    func encodedJobs() async throws {
        let pool = try ProcessPool(workers: 1, workerSettings: ChildSettings(standardError: .null))
        let encoder = BinaryEncoder()
        let name = _mangledTypeName(Misbehave.self)!
        let task = try encoder.encode(Misbehave())
        try await withTimeLimit(.seconds(30)) {
            let ok = try await pool.runEncoded(taskType: name, task: task, input: encoder.encode(Deed(value: 7)))
            guard case .output(let bytes) = ok else {
                Issue.record("\(ok)")
                return
            }
            #expect(try BinaryDecoder().decode(Picky.self, from: bytes) == Picky(7))

            let thrown = try await pool.runEncoded(taskType: name, task: task, input: encoder.encode(Deed(value: 9, misdeed: .throwCodable)))
            guard case .thrown(let typeName, _, let valueType, let value?) = thrown, let valueType else {
                Issue.record("\(thrown)")
                return
            }
            #expect(typeName.hasSuffix("ParseFailure"))
            #expect(valueType == _mangledTypeName(ParseFailure.self))
            #expect(try BinaryDecoder().decode(ParseFailure.self, from: value) == ParseFailure(line: 9, reason: "bad input"))

            let crashed = try await pool.runEncoded(taskType: name, task: task, input: encoder.encode(Deed(value: 1, misdeed: .segfault)))
            guard case .failed(let code, _, let pid, let signal) = crashed else {
                Issue.record("\(crashed)")
                return
            }
            #expect(code == MultiprocessingError.Code.childFailed.rawValue && pid != nil && signal == 11)

            let unknown = try await pool.runEncoded(taskType: "no such type", task: [], input: [])
            // The worker could not resolve the type: its error comes back as thrown there.
            guard case .thrown(_, let message, _, _) = unknown else {
                Issue.record("\(unknown)")
                return
            }
            #expect(message.contains("no pool task type named no such type"))
        }
        pool.close()
        #expect(try await pool.join(timeout: .seconds(10)))
    }
}
