// swift-tools-version:6.0
import PackageDescription

// BACKBEAT pulse: one beat timeline for a cluster, published on NATS.
//
// Modules, in dependency order:
//   CLoop      C: epoll + timerfd + eventfd loop, real-time helpers, jemalloc counters
//   CNats      system library: the NATS C client (Debian libnats-dev)
//   CHttpParser system library: node's http-parser (Debian libhttp-parser-dev)
//   Raft       pure Swift consensus core (etcd-raft style): tick/step/ready/advance, no I/O
//   PulseCore  pure Swift, no I/O: timeline math, HLC, BeatFrame encoder (allocation-free)
//   PulsePolicy pure Swift, no I/O: beat planner, cluster policy (ticks, lease, degradation), replicated timeline
//   Pulse      the service as a library: config, loop wiring, NATS transport, cluster, admin
//   PulseMain  the `pulse` executable: a thin main over Pulse
//   Bench      micro-benchmarks and the timing report
let package = Package(
    name: "backbeat-pulse",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "pulse", targets: ["PulseMain"]),
        .executable(name: "Bench", targets: ["Bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        .target(
            name: "CLoop",
            path: "Sources/CLoop",
            cSettings: [.unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])],
            linkerSettings: [.linkedLibrary("jemalloc")]
        ),
        .systemLibrary(
            name: "CNats",
            path: "Sources/CNats",
            pkgConfig: "libnats",
            providers: [.apt(["libnats-dev"])]
        ),
        .systemLibrary(
            name: "CHttpParser",
            path: "Sources/CHttpParser",
            providers: [.apt(["libhttp-parser-dev"])]
        ),
        .target(
            name: "Raft",
            path: "Sources/Raft"
        ),
        .target(
            name: "PulseCore",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")],
            path: "Sources/PulseCore"
        ),
        .target(
            name: "PulsePolicy",
            dependencies: ["PulseCore", "Raft"],
            path: "Sources/PulsePolicy"
        ),
        .target(
            name: "Pulse",
            dependencies: [
                "CLoop", "CNats", "CHttpParser", "PulseCore", "PulsePolicy", "Raft",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Sources/Pulse",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .executableTarget(
            name: "PulseMain",
            dependencies: ["Pulse"],
            path: "Sources/PulseMain",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .executableTarget(
            name: "Bench",
            dependencies: [
                "CLoop", "CNats", "PulseCore", .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Sources/Bench",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .testTarget(
            name: "PulseCoreTests",
            dependencies: ["PulseCore", .product(name: "Crypto", package: "swift-crypto")],
            path: "Tests/PulseCoreTests"
        ),
        .testTarget(
            name: "ClusterSimTests",
            dependencies: ["PulsePolicy", "PulseCore", "Raft"],
            path: "Tests/ClusterSimTests"
        ),
        .testTarget(
            name: "RaftTests",
            dependencies: ["Raft"],
            path: "Tests/RaftTests"
        ),
        .testTarget(
            name: "PulseTests",
            dependencies: [
                "Pulse", "PulseCore", "CLoop", "CNats", .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Tests/PulseTests",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
    ]
)
