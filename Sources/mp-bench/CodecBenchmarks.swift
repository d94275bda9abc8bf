import Multiprocessing

// The binary Codable codec on its own, against pickle: the cost of a small message's round trip, and
// the decoding of a dictionary with long keys (paths as keys, say).

/// The small struct of the codec's round trip: Python pickles the tuple `(i, 'piao', 2.5, ['a', 'b'])`.
struct CodecSample: Codable {
    let id: Int
    let name: String
    let score: Double
    let tags: [String]
}

/// Nanoseconds per encode + decode of a small struct: the best of 50 batches of 20,000, so that other
/// work on the machine disturbs the figure less.
private func codecSmallRoundTrip() throws -> Double {
    let encoder = BinaryEncoder()
    let decoder = BinaryDecoder()
    let batch = 20_000
    var checksum = 0
    var best = Double.infinity
    for round in 0..<51 {
        let start = now()
        for id in 0..<batch {
            let sample = CodecSample(id: id, name: "piao", score: 2.5, tags: ["a", "b"])
            checksum &+= try decoder.decode(CodecSample.self, from: encoder.encode(sample)).id
        }
        // The first batch warms up.
        if round > 0 { best = min(best, now() - start) }
    }
    guard checksum != 0 else { throw BenchError("no values decoded") }
    return best / Double(batch) * 1e9
}

/// Milliseconds to decode a dictionary of 40,000 entries whose keys are 200 bytes long.
private func codecLongKeys() throws -> Double {
    var dictionary: [String: Int] = [:]
    for index in 0..<40_000 {
        let number = String(index)
        dictionary[String(repeating: "k", count: 200 - number.count) + number] = index
    }
    let bytes = try BinaryEncoder().encode(dictionary)
    let decoder = BinaryDecoder()
    var best = Double.infinity
    for _ in 0..<5 {
        let start = now()
        let decoded = try decoder.decode([String: Int].self, from: bytes)
        best = min(best, now() - start)
        guard decoded.count == dictionary.count else { throw BenchError("decoded \(decoded.count) entries") }
    }
    return best * 1e3
}

let codecWorkloads: [Workload] = [
    Workload(name: "codec-small-roundtrip", unit: "ns", higherIsBetter: false, swift: codecSmallRoundTrip, python: """
        import pickle, time
        def best(batch, rounds):
            dumps, loads, perf = pickle.dumps, pickle.loads, time.perf_counter
            protocol = pickle.HIGHEST_PROTOCOL
            result = float('inf')
            for round in range(rounds + 1):
                start = perf()
                for i in range(batch):
                    loads(dumps((i, 'piao', 2.5, ['a', 'b']), protocol=protocol))
                if round > 0:
                    result = min(result, perf() - start)
            return result
        print(best(20000, 50) / 20000 * 1e9)
        """),
    Workload(name: "codec-dict-long-keys", unit: "ms", higherIsBetter: false, swift: codecLongKeys, python: """
        import pickle, time
        def make():
            d = {}
            for i in range(40000):
                n = str(i)
                d['k' * (200 - len(n)) + n] = i
            return d
        def best(data, rounds):
            loads, perf = pickle.loads, time.perf_counter
            result = float('inf')
            for _ in range(rounds):
                start = perf()
                loads(data)
                result = min(result, perf() - start)
            return result
        data = pickle.dumps(make(), protocol=pickle.HIGHEST_PROTOCOL)
        print(best(data, 5) * 1e3)
        """),
]
