import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// The seed tutorial's examples, with real child processes.

/// How long the seed's "random sleep" lasts: whole seconds by default, tenths with --fast.
struct Pace: Codable, Sendable {
    let fast: Bool
    func sleep(randomIn range: Range<Int>) {
        let units = Int.random(in: range)
        usleep(UInt32(units * (fast ? 100_000 : 1_000_000)))
    }
}

/// The seed's function: `def piao(name): print('%s piaoing' % name); time.sleep(random.randrange(1,5)); print('%s piao end' % name)`.
/// The daemon example's class says "is piaoing" and sleeps `randrange(1,3)`: the same shape, so the same code.
func piao(_ name: String, pace: Pace, verb: String = "", seconds: Range<Int> = 1..<5) {
    print("\(name) \(verb)piaoing")
    fflush(nil)
    pace.sleep(randomIn: seconds)
    print("\(name) \(verb)piao end")
    fflush(nil)
}

/// Method one: `Process(target=piao, args=('User1',))`. Under the default start method (spawn) the
/// child is a fresh copy of this program, so the call travels as a small value naming the function
/// and carrying its arguments.
struct PiaoTarget: ProcessTask {
    let args: String
    let pace: Pace
    func run() throws { piao(args, pace: pace) }
}

/// Method two: the seed's `class Piao(Process)` overriding `run()`: in Swift, a task type.
struct Piao: ProcessTask {
    let name: String
    let pace: Pace
    func run() throws { piao(name, pace: pace) }
}

/// The seed's daemon class: `p.daemon = True` before `start()`.
struct DaemonPiao: ProcessTask {
    let name: String
    let pace: Pace
    func run() throws { piao(name, pace: pace, verb: "is ", seconds: 1..<3) }
}

/// The seed's daemon example as a whole program: it starts a daemon, prints "master" and ends,
/// and its daemon ends with it. Run in a child here so the demo can go on afterwards.
struct DaemonExample: ProcessTask {
    let pace: Pace
    func run() throws {
        let p = ChildProcess(DaemonPiao(name: "Egon", pace: pace))
        try p.setDaemon(true)  // must be set before start()
        try p.start()
        print("master")
        fflush(nil)
    }
}

func runSeedExamples(pace: Pace) throws {
    section("Python's tutorial, creating processes, method one: Process(target=piao, args=('User1',))")
    let users = ["User1", "User2", "User3", "User4"].map { ChildProcess(PiaoTarget(args: $0, pace: pace)) }
    try startThenJoin(users)

    section("Python's tutorial, method one again, under the fork start method: a capturing closure")
    let forked = ["User1", "User2", "User3", "User4"].map { user in
        ChildProcess(context: ProcessContext(.fork)) { piao(user, pace: pace) }
    }
    try startThenJoin(forked)

    section("Python's tutorial, creating processes, method two: class Piao(Process) with run()")
    let named = ["Egon", "Alex", "Wupeiqi", "Yuanhao"].map { ChildProcess(Piao(name: $0, pace: pace)) }
    try startThenJoin(named)

    section("Python's tutorial, daemon processes: the parent prints 'master' and ends; its daemon child ends with it")
    let program = ChildProcess(DaemonExample(pace: pace))
    try program.start()
    try program.join(timeout: .seconds(30))
    print("(the parent exited with code \(program.exitCode ?? -1); its daemon was terminated, so 'Egon is piao end' never appears)")
}

/// The seed's pattern: start every child, print "main thread" at once (the parent does not wait), then join.
func startThenJoin(_ processes: [ChildProcess]) throws {
    for p in processes { try p.start() }
    print("main thread")
    fflush(nil)
    for p in processes { try p.join(timeout: .seconds(30)) }
}

func section(_ title: String) {
    print("\n== \(title) ==")
    fflush(nil)
}
