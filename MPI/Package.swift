// swift-tools-version: 6.1
import PackageDescription

// The pool and executor over MPI. A package of its own because it needs the system's MPI (Open MPI from
// Debian: `apt-get install -y --no-install-recommends openmpi-bin libopenmpi-dev pkgconf`), which the core
// package and its README commands never need.
let package = Package(
    name: "MultiprocessingMPI",
    products: [
        .library(name: "MultiprocessingMPI", targets: ["MultiprocessingMPI"]),
        .executable(name: "mp-mpi-demo", targets: ["mp-mpi-demo"]),
        .executable(name: "mp-mpi-bench", targets: ["mp-mpi-bench"]),
    ],
    dependencies: [
        .package(name: "Multiprocessing", path: ".."),
    ],
    targets: [
        // Open MPI's C API, found by pkg-config, with accessors for the handle macros Swift cannot import.
        .systemLibrary(name: "CMPI", pkgConfig: "mpi-c", providers: [.apt(["libopenmpi-dev"])]),
        .target(
            name: "MultiprocessingMPI",
            dependencies: ["CMPI", .product(name: "Multiprocessing", package: "Multiprocessing")],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "mp-mpi-demo",
            dependencies: ["MultiprocessingMPI"],
            swiftSettings: [.swiftLanguageMode(.v6)],
            // A static Swift runtime (MPI itself stays a shared library): each local worker starts faster.
            linkerSettings: [.unsafeFlags(["-static-stdlib"])]
        ),
        .executableTarget(
            name: "mp-mpi-bench",
            dependencies: ["MultiprocessingMPI"],
            swiftSettings: [.swiftLanguageMode(.v6)],
            // A static Swift runtime (MPI itself stays a shared library): each local worker starts faster.
            linkerSettings: [.unsafeFlags(["-static-stdlib"])]
        ),
        // The programs the tests launch with mpirun (MPI starts once per process, so never in the test process).
        .executableTarget(
            name: "mpi-test-jobs",
            dependencies: ["MultiprocessingMPI"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .testTarget(
            name: "MultiprocessingMPITests",
            dependencies: ["mpi-test-jobs", "MultiprocessingMPI"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
