// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Multiprocessing",
    products: [
        .library(name: "Multiprocessing", targets: ["Multiprocessing"]),
        .executable(name: "mp-demo", targets: ["mp-demo"]),
        .executable(name: "mp-bench", targets: ["mp-bench"]),
    ],
    dependencies: [
        // Diagnostics go to a Logger the program can set (nothing is printed by default).
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // `swift package generate-documentation` builds the DocC catalog.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(name: "CMultiprocessing"),
        // The machine's limits for `mp-bench --limits`: the benchmark's jobs written directly in C.
        .target(name: "CBenchLimits"),
        .target(
            name: "Multiprocessing",
            dependencies: ["CMultiprocessing", .product(name: "Logging", package: "swift-log")],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "mp-demo",
            dependencies: ["Multiprocessing"],
            swiftSettings: [.swiftLanguageMode(.v6)],
            // A fully static executable: no dynamic loader resolving the C++ runtime's symbols at each
            // start, so a spawned child starts in about half the time of a `-static-stdlib` build and a
            // quarter of a dynamically linked one. lld, because glibc's static archive makes GNU gold
            // print link-time notes about getaddrinfo and dlopen (both work with this machine's glibc).
            linkerSettings: [.unsafeFlags(["-static-executable", "-use-ld=lld"])]
        ),
        .executableTarget(
            name: "mp-bench",
            dependencies: ["Multiprocessing", "CBenchLimits"],
            swiftSettings: [.swiftLanguageMode(.v6)],
            linkerSettings: [.unsafeFlags(["-static-executable", "-use-ld=lld"])]
        ),
        .testTarget(
            name: "MultiprocessingTests",
            dependencies: ["Multiprocessing"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
