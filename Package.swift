// swift-tools-version:6.0
import PackageDescription

// BACKBEAT pulse: one beat timeline for a cluster, published on NATS.
//
// Modules, in dependency order:
//   CLoop      C: epoll + timerfd + eventfd loop, real-time helpers, jemalloc counters
//   CNats      system library: the NATS C client (Debian libnats-dev)
//   CHttpParser system library: node's http-parser (Debian libhttp-parser-dev)
//   COpenSSL   system library: OpenSSL 3 for the Raft transport's mutual TLS (Debian libssl-dev)
//   CSodium    system library: libsodium's Ed25519 for signed publications, allocation-free (Debian libsodium-dev)
//   Raft       pure Swift consensus core (etcd-raft style): tick/step/ready/advance, no I/O
//   PulseCore  pure Swift, no I/O: timeline math, HLC, BeatFrame encoder (allocation-free)
//   PulsePolicy pure Swift, no I/O: beat planner, cluster policy (ticks, lease, degradation), replicated timeline
//   Pulse      the service as a library: config, loop wiring, NATS transport, cluster, admin
//   PulseTools the command-line tools that talk to a node (`pulse watch`, `backup`, `restore`,
//              `members`): clients of the admin API and the beat subject, not the server
//   PulseMain  the `pulse` executable: a thin main over Pulse and PulseTools
//   Bench      micro-benchmarks and the timing report
//   ClockSkew  C, LD_PRELOAD: a process's wall clock skewed by N ppm (the PER-003 drift test)
//   Fuzz*      libFuzzer harnesses, one executable per surface (list at the end; docs/fuzzing.md)
//   BackbeatClient  the consumer library: the timeline in hand, frames as confirmation (NATS C client)
let package = Package(
    name: "backbeat-pulse",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "pulse", targets: ["PulseMain"]),
        .executable(name: "Bench", targets: ["Bench"]),
        // For consumers: the timeline math and frame decoder, and the client library.
        .library(name: "PulseCore", targets: ["PulseCore"]),
        .library(name: "BackbeatClient", targets: ["BackbeatClient"]),
        .executable(name: "backbeat-example", targets: ["BackbeatExample"]),
        // LD_PRELOAD: one process's wall clock skewed (PER-003's drift test and Bench scenario).
        .library(name: "ClockSkew", type: .dynamic, targets: ["ClockSkew"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // `swift package generate-documentation --target BackbeatClient` (make docs): build-time only.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
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
        .systemLibrary(
            name: "COpenSSL",
            path: "Sources/COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CSodium",
            path: "Sources/CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
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
                "CLoop", "CNats", "CHttpParser", "COpenSSL", "CSodium", "PulseCore", "PulsePolicy", "Raft",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Sources/Pulse",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .target(
            name: "PulseTools",
            dependencies: [
                "Pulse", "PulseCore", "PulsePolicy", "Raft", "CLoop", "CNats",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/PulseTools",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .executableTarget(
            name: "PulseMain",
            dependencies: ["Pulse", "PulseTools"],
            path: "Sources/PulseMain",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        // The bare C publisher Bench measures the pulse's send path and CPU against.
        .target(
            name: "BenchFloor",
            path: "Sources/BenchFloor",
            cSettings: [.unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])]
        ),
        .target(
            name: "ClockSkew",
            path: "Sources/ClockSkew",
            cSettings: [.unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])]
        ),
        .executableTarget(
            name: "Bench",
            dependencies: [
                "CLoop", "CNats", "CSodium", "BenchFloor", "PulseCore",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Sources/Bench",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .target(
            name: "BackbeatClient",
            dependencies: ["PulseCore", "CNats"],
            path: "Sources/BackbeatClient"
        ),
        .executableTarget(
            name: "BackbeatExample",
            dependencies: ["BackbeatClient"],
            path: "examples/swift"
        ),
        .testTarget(
            name: "BackbeatClientTests",
            dependencies: ["BackbeatClient", "PulseCore", "CNats", .product(name: "Crypto", package: "swift-crypto")],
            path: "Tests/BackbeatClientTests"
        ),
        .testTarget(
            name: "PulseCoreTests",
            dependencies: ["PulseCore", .product(name: "Crypto", package: "swift-crypto")],
            path: "Tests/PulseCoreTests"
        ),
        .testTarget(
            name: "ClusterSimTests",
            dependencies: [
                "PulsePolicy", "PulseCore", "Raft", "Pulse", .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/ClusterSimTests"
        ),
        .testTarget(
            name: "KVLeaseTests",
            dependencies: ["PulsePolicy", "PulseCore"],
            path: "Tests/KVLeaseTests"
        ),
        .testTarget(
            name: "RaftTests",
            dependencies: ["Raft"],
            path: "Tests/RaftTests"
        ),
        .testTarget(
            name: "PulseTests",
            dependencies: [
                "Pulse", "PulseTools", "PulseCore", "CLoop", "CNats", "COpenSSL",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Tests/PulseTests",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
    ]
)

// libFuzzer harnesses: one executable target per harness, Sources/Fuzz<Name>/Fuzz<Name>.swift,
// with `@_cdecl("LLVMFuzzerTestOneInput")` and no main. `make fuzz` builds them with
// `--sanitize=fuzzer` (libFuzzer supplies main) in .build-fuzz; a normal build links
// them as empty programs, so they stay type-checked. Adding one: docs/fuzzing.md.
let fuzzHarnesses: [(name: String, dependencies: [Target.Dependency])] = [
    ("FuzzRaft", ["Raft"]),
    ("FuzzControl", ["Pulse", "PulseCore"]),
    ("FuzzHttp", ["Pulse", "CLoop", .product(name: "Logging", package: "swift-log")]),
    ("FuzzBeat", ["PulseCore"]),
    ("FuzzDatadir", ["Pulse", "PulseCore", "Raft"]),
]
package.targets += fuzzHarnesses.map { harness in
    .executableTarget(
        name: harness.name, dependencies: harness.dependencies, path: "Sources/\(harness.name)",
        swiftSettings: [.swiftLanguageMode(.v5)])
}
