#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// Live pickle interop with CPython: a Python client sends objects (every plain type, every protocol it
// knows, random nested objects from hypothesis, class instances and reduce payloads) to our Listener, which
// answers object for object.

/// A job as the Python client sends it: `{'job': 3, 'args': [1, 2], 'scale': 0.5, 'tag': None}`.
struct PickleJob: Codable, Equatable {
    let job: Int
    let args: [Int]
    let scale: Double
    let tag: String?
}

/// The answer: Python receives it as a dict.
struct PickleJobResult: Codable {
    let job: Int
    let total: Int
    let scaled: Double
    let echo: [UInt8]
    let worker: String
}

/// Serves one Python client: each message is `(protocol, object)` to echo with that protocol, or a job
/// dict to compute; refusals and errors are answered as `('error', code, message)`.
private func servePickles(_ connection: Connection) throws -> Int {
    var served = 0
    while true {
        let message: [UInt8]
        do {
            message = try connection.recvBytes(timeout: .seconds(60))
        } catch let error as MultiprocessingError where error.code == .endOfFile {
            return served
        }
        served += 1
        do {
            let value = try PickleDecoder().value(from: message)
            if case .tuple(let items) = value, items.count == 2, case .int(let version) = items[0] {
                // Typed decoding has a fast path of its own: it must see the very same objects.
                let typed = try PickleDecoder().decode([PythonValue].self, from: message)
                let writer = try PickleEncoder(protocolVersion: 5)
                guard try writer.encode(typed) == writer.encode(items) else {
                    try connection.sendPickle(PythonValue.tuple([.string("error"), .string("typed"), .string("typed decoding differs")]))
                    continue
                }
                try connection.sendPickle(items[1], protocolVersion: version)
            } else {
                let job = try PickleDecoder().decode(PickleJob.self, from: value)
                let result = PickleJobResult(job: job.job, total: job.args.reduce(0, +), scaled: Double(job.args.reduce(0, +)) * job.scale,
                                             echo: Array("\(job.tag ?? "none")".utf8), worker: "swift")
                try connection.sendPickle(result)
            }
        } catch let error as MultiprocessingError {
            try connection.sendPickle(PythonValue.tuple([.string("error"), .string(error.code.rawValue), .string(error.message)]))
        }
    }
}

@Suite("Pickles with CPython")
struct PickleInteropTests {
    private func available(_ interpreter: Interpreter) -> String? {
        guard let path = interpreter.path else {
            print("skipping CPython \(interpreter.label): not installed on this machine")
            return nil
        }
        return path
    }

    @Test("every plain type, every protocol, both ways; jobs into Codable structs; instances and reduce payloads refused",
          arguments: Interpreter.all)
    func pythonClient(interpreter: Interpreter) throws {
        guard let python = available(interpreter) else { return }
        let marker = "/tmp/mp-pickle-marker-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let listener = try Listener(family: .unix, authkey: Array("pickle key".utf8))
        defer { listener.close() }
        let peer = try PythonPeer(python, [listener.address.description, "pickle key", marker, "0"], script: picklePeerScript)
        let connection = try listener.accept(timeout: .seconds(30))
        let served = try servePickles(connection)
        let (status, output) = try peer.finish(timeout: .seconds(60))
        #expect(status == 0 && output.contains("OK"), "\(interpreter.label): \(output)")
        #expect(served > 100, "\(interpreter.label): \(output)")
        #expect(access(marker, F_OK) != 0, "a refused payload ran: \(marker) exists")
        unlink(marker)
    }

    /// 1,000 objects by default keep the suite quick (hypothesis draws cost 3 to 13 ms an object here);
    /// `MP_PICKLE_EXAMPLES=10000` runs the full 10,000.
    @Test("random nested objects from hypothesis round trip exactly, at every protocol")
    func hypothesisObjects() throws {
        let examples = getenv("MP_PICKLE_EXAMPLES").flatMap { Int(String(cString: $0)) } ?? 1000
        let python = "python3"
        let probe = try PythonPeer(python, [], script: "import hypothesis; print('yes')")
        let (_, found) = try probe.finish(timeout: .seconds(30))
        guard found.contains("yes") else {
            print("skipping the hypothesis round trip: hypothesis is not installed for python3")
            return
        }
        let listener = try Listener(family: .unix, authkey: nil)
        defer { listener.close() }
        let peer = try PythonPeer(python, [listener.address.description, "-", "-", String(examples)], script: picklePeerScript)
        let connection = try listener.accept(timeout: .seconds(30))
        let served = try servePickles(connection)
        let (status, output) = try peer.finish(timeout: .seconds(60 + examples / 20))
        #expect(status == 0 && output.contains("HYPOTHESIS \(examples)"), "\(output)")
        #expect(served >= examples * 6)
    }
}

/// The Python side: connects to our Listener and checks every answer.
/// Arguments: address, authkey ('-' for none), marker path a refused payload would create, and how many
/// hypothesis examples to run (0 runs the fixed checks instead).
private let picklePeerScript = #"""
import sys, os, math, pickle, struct
from multiprocessing.connection import Client

address, key, marker, examples = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conn = Client(address, authkey=None if key == '-' else key.encode())

def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return struct.pack('>d', a) == struct.pack('>d', b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    if isinstance(a, (set, frozenset)):
        rest = list(b)
        for x in a:
            match = next((i for i, y in enumerate(rest) if same(x, y)), None)
            if match is None:
                return False
            rest.pop(match)
        return not rest
    return a == b

def echo(obj, protocol):
    conn.send_bytes(pickle.dumps((protocol, obj), protocol=protocol))
    data = conn.recv_bytes()
    if protocol >= 2:
        assert data[:2] == bytes([0x80, protocol]), (protocol, data[:100])
    back = pickle.loads(data)
    assert same(obj, back), (protocol, repr(obj)[:300], repr(back)[:300])

if examples:
    from hypothesis import given, settings, strategies as st, HealthCheck
    keys = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
    hashables = st.recursive(keys, lambda c: st.lists(c, max_size=3).map(tuple) | st.frozensets(c, max_size=3), max_leaves=4)
    values = st.recursive(
        keys | st.binary().map(bytearray),
        lambda c: st.lists(c, max_size=5) | st.lists(c, max_size=4).map(tuple) | st.dictionaries(hashables, c, max_size=4)
            | st.sets(hashables, max_size=4) | st.frozensets(hashables, max_size=4),
        max_leaves=10)
    count = [0]
    @settings(max_examples=examples, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[__import__('hypothesis').Phase.generate])
    @given(values)
    def roundtrip(obj):
        count[0] += 1
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            echo(obj, protocol)
    roundtrip()
    conn.close()
    print('HYPOTHESIS', count[0])
    sys.exit(0)

samples = [
    None, True, False, 0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, -2**31, 2**31, 2**63 - 1, -2**63, 2**63, 2**64,
    -2**64 - 1, 10**100, -(10**100), 0.0, -0.0, 1.5, -2.25e-308, 5e-324, 1.7976931348623157e308, float('inf'),
    float('-inf'), float('nan'), '', 'ascii', 'caf\xe9', '\u1234\U0001F600', 'back\\slash\nnew\rline\x00nul\x1asub',
    'x' * 300, b'', b'\x00\xff\x80abc', bytes(range(256)) * 2, bytearray(), bytearray(b'xy\x00\xff'), [], [1, [2, [3]]],
    list(range(2500)), (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), {}, {'a': 1, 'b': [None]}, {1: 'one', (2, 3): b'x', None: 0.5},
    {str(i): i for i in range(1500)}, set(), {1, 'two', (3,)}, set(range(1200)), frozenset(), frozenset({1.5, b'y'}),
    {'nested': ({'deep': [frozenset({1}), {2}, bytearray(b'z')]},)},
]
shared = [1, 2]
samples.append([shared, shared, {'k': shared}])
rounds = 0
for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
    for obj in samples:
        echo(obj, protocol)
        rounds += 1
    echo(samples, protocol)

# Connection.send / recv with the default protocol, into Swift structs and back as dicts.
conn.send({'job': 3, 'args': [1, 2, 39], 'scale': 0.5, 'tag': 'piao'})
answer = conn.recv()
assert answer == {'job': 3, 'total': 42, 'scaled': 21.0, 'echo': b'piao', 'worker': 'swift'}, answer
conn.send({'job': 4, 'args': [], 'scale': 1.0, 'tag': None})
assert conn.recv()['echo'] == b'none'
conn.send({'job': 'three', 'args': [], 'scale': 1.0, 'tag': None})
answer = conn.recv()
assert answer[:2] == ('error', 'transport') and 'job' in answer[2], answer
conn.send({'job': 2**70, 'args': [], 'scale': 1.0, 'tag': None})
answer = conn.recv()
assert answer[:2] == ('error', 'transport') and 'does not fit' in answer[2], answer

# Nothing is ever imported or run: class instances and reduce payloads are refused, naming what they ask for.
class Point:
    def __init__(self, x): self.x = x
class Payload:
    def __reduce__(self): return (os.mkdir, (marker,))
for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
    for obj, name in [(Point(1), '__main__.Point'), (Payload(), 'mkdir'), ([1, {'a': Point(2)}], '__main__.Point')]:
        conn.send_bytes(pickle.dumps(obj, protocol=protocol))
        answer = conn.recv()
        assert answer[:2] == ('error', 'refused') and name in answer[2], (protocol, answer)
assert not os.path.exists(marker), 'a payload ran'
conn.close()
print('OK', rounds)
"""#
