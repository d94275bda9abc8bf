import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// Tour step: a Python program's multiprocessing Client sends dicts and lists to a Swift worker, which
// answers with computed objects: pickles of plain data both ways, and nothing a pickle asks is ever run.

/// A job as the Python client writes it: `{'op': 'sum', 'numbers': [1, 2, 3]}`.
struct PythonJob: Codable {
    let op: String
    let numbers: [Double]
}

/// The answer, which the Python client receives as a dict.
struct PythonAnswer: Codable {
    let op: String
    let count: Int
    let total: Double
    let mean: Double?
    let worker: Int32
}

/// Serves one Python client until it closes the connection.
struct PythonJobWorker: ProcessTask {
    let connection: Connection
    func run() throws {
        let python = try connection.pickled()
        while true {
            let job: PythonJob
            do {
                job = try python.recv(timeout: .seconds(30))
            } catch let error as MultiprocessingError where error.code == .refused || error.code == .transport {
                try python.send(["error": error.code.rawValue, "message": error.message])
                continue
            } catch {
                return  // the client is done
            }
            let total = job.numbers.reduce(0, +)
            try python.send(PythonAnswer(op: job.op, count: job.numbers.count, total: total,
                                         mean: job.numbers.isEmpty ? nil : total / Double(job.numbers.count), worker: getpid()))
        }
    }
}

private let pythonClientScript = """
import sys
from fractions import Fraction
from multiprocessing.connection import Client
conn = Client(sys.argv[1], authkey=b'tour')
for job in [{'op': 'sum', 'numbers': [1, 2, 3, 4]}, {'op': 'mean', 'numbers': [2.5, 3.5, 9]}, {'op': 'empty', 'numbers': []}]:
    conn.send(job)
    print('  python sent', job, '\\n    and got', conn.recv())
conn.send(Fraction(1, 3))
print('  python sent a Fraction instance and got', conn.recv())
conn.close()
"""

func runPythonPickleTour() throws {
    section("Tour 7: a Python client sends dicts and lists to a Swift worker (pickles both ways)")
    let listener = try Listener(family: .unix, authkey: Array("tour".utf8))
    defer { listener.close() }
    let words: [String] = ["python3", "-u", "-c", pythonClientScript, listener.address.description]
    let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    guard posix_spawnp(&pid, "python3", nil, nil, argv, environ) == 0 else {
        print("  skipped: python3 is not installed")
        return
    }
    defer {
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }
    let connection: Connection
    do {
        connection = try listener.accept(timeout: .seconds(30))
    } catch {
        kill(pid, SIGKILL)
        print("  skipped: the Python client did not connect (\(error))")
        return
    }
    let worker = ChildProcess(PythonJobWorker(connection: connection))
    try worker.start()
    connection.close()
    try worker.join(timeout: .seconds(60))
    fflush(nil)
}
