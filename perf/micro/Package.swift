// swift-tools-version:6.1
import PackageDescription

// Micro-benchmarks of the beat path's pure Swift code (timeline math, HLC,
// BeatFrame encoder and decoder) on ordo-one/benchmark: percentiles, exact
// malloc counts and static thresholds that fail a regression
// (`make bench-micro`; thresholds in Thresholds/, tolerances in the code).
//
// A package of its own, beside the service's: package-benchmark and its
// dependencies are built only when these benchmarks run, never by `make test`
// or the service build. The end-to-end timing report stays in `Sources/Bench`.
let package = Package(
    name: "pulse-micro",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "backbeat-pulse", path: "../.."),
        // MallocInterposer: malloc counts on Swift 6.3 without the runtime
        // interposer package (which is not among this toolchain's packages).
        .package(url: "https://github.com/ordo-one/benchmark", exact: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "PulseCoreBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "PulseCore", package: "backbeat-pulse"),
            ],
            path: "Benchmarks/PulseCoreBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    ]
)
