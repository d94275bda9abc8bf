import Multiprocessing
#if canImport(Glibc)
import Glibc
#endif

// mp-demo                 the seed's examples, then a short tour
// mp-demo --fast          the same with sleeps in tenths of seconds instead of seconds
// mp-demo serve-echo --address HOST:PORT --authkey KEY
//                         an echo Listener for Python or Swift clients

let arguments = Array(CommandLine.arguments.dropFirst())
do {
    if arguments.first == "serve-echo" {
        try await runServeEcho(Array(arguments.dropFirst()))
    } else if arguments.allSatisfy({ $0 == "--fast" }) {
        let pace = Pace(fast: arguments.contains("--fast"))
        try runSeedExamples(pace: pace)
        try runQueueExamples()
        try runTour()
        try await runManagerTour()
    } else {
        print("usage: mp-demo [--fast] | mp-demo serve-echo --address HOST:PORT --authkey KEY")
        exit(2)
    }
} catch {
    print("mp-demo: \(error)")
    exit(1)
}
