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
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
    ],
    targets: [
        .target(name: "CMultiprocessing"),
        .target(
            name: "Multiprocessing",
            dependencies: [
                "CMultiprocessing",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "mp-demo",
            dependencies: ["Multiprocessing"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "mp-bench",
            dependencies: ["Multiprocessing"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .testTarget(
            name: "MultiprocessingTests",
            dependencies: ["Multiprocessing"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
