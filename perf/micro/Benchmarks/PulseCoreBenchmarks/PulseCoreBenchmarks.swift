// The beat path's pure functions, each beside a floor measured in the same
// run (`Floor.blackHole`: the same loop feeding the same sink). What they
// prove, and how `make bench-micro` judges them:
// - Malloc (total): exact, absolute tolerance 0 against the stored
//   thresholds (Thresholds/): 0 for the timeline math, HLC and encoder, like
//   the floor; the decoder's count is pinned (it builds Strings).
// - Wall clock p90: judged against the stored thresholds with a relative
//   tolerance of 100 % (`timeTolerance`), so a 2x regression fails while the
//   shared VM's noise does not.
import Benchmark
import PulseCore

/// Set-up shared by the benchmarks (allocates once, outside the measurement).
struct Fixture: @unchecked Sendable {
    let epoch = TempoEpoch(startBeat: 1_000_000, startNs: 1_756_987_200_000_000_000, bpm: 120)
    let timeline: Timeline
    let encoder = BeatFrameEncoder(clusterId: "chorus-aus-01", phases: ["plan", "work", "review"], nodeId: "node-abcd")
    let windows = WindowIdCache(clusterId: "chorus-aus-01")
    let windowId: UnsafeRawPointer
    let frame: UnsafeMutableRawBufferPointer

    init() {
        timeline = Timeline(epoch: epoch, bar: 8, phaseCount: 3)
        windows.prepare(barStart: 0)
        windowId = windows.lookup(barStart: 0)!
        frame = UnsafeMutableRawBufferPointer.allocate(byteCount: encoder.maxFrameBytes, alignment: 8)
    }

    func encode(_ i: Int64) -> Int {
        let k = epoch.startBeat + i
        return encoder.encode(
            into: frame, beatIndex: k, downbeat: timeline.isDownbeat(k), phaseIndex: timeline.phaseIndex(k),
            hlc: HLCStamp(wallMs: 1_756_987_200_000 + i, counter: UInt32(truncatingIfNeeded: i & 3)),
            deadlineUnixMs: 1_756_987_200_500 + i * 500, tempoBpm: 120, windowId: windowId, term: 3,
            degraded: false)
    }
}

let benchmarks: @Sendable () -> Void = {
    // Tolerances for `swift package benchmark thresholds check`. Instruction
    // counts would be steadier than time, but this VM has no perf counters.
    // (`thresholds check` compares the p90 of a run with the stored p90.)
    let mallocExact = BenchmarkThresholds(absolute: [.p90: 0])
    let timeTolerance = BenchmarkThresholds(relative: [.p90: 100.0])
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal],
        timeUnits: .nanoseconds,
        warmupIterations: 1_000,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000,
        thresholds: [.mallocCountTotal: mallocExact, .wallClock: timeTolerance]
    )
    let f = Fixture()

    Benchmark("Floor.blackHole") { b in
        for i in b.scaledIterations { blackHole(Int64(i)) }
    }
    Benchmark("Timeline.instantNs(ofBeat:)") { b in
        for i in b.scaledIterations { blackHole(f.timeline.instantNs(ofBeat: f.epoch.startBeat + Int64(i))) }
    }
    Benchmark("Timeline.beat(atOrBeforeNs:)") { b in
        for i in b.scaledIterations {
            blackHole(f.timeline.beat(atOrBeforeNs: f.epoch.startNs + Int64(i) &* 1_000_003))
        }
    }
    Benchmark("HLC.now(wallMs:)") { b in
        var hlc = HLC()
        for i in b.scaledIterations { blackHole(hlc.now(wallMs: 1_756_987_200_000 + Int64(i >> 4)).wallMs) }
    }
    Benchmark("BeatFrameEncoder.encode") { b in
        for i in b.scaledIterations { blackHole(f.encode(Int64(i))) }
    }
    // The decoder builds a value with Strings (it runs on the echo and in
    // consumers, not on the publish path): its allocations are reported,
    // and the stored threshold pins their count.
    Benchmark("BeatFrameDecoder.decode") { b in
        let n = f.encode(7)
        let bytes = Array(UnsafeRawBufferPointer(rebasing: f.frame[0..<n]))
        b.startMeasurement()
        for _ in b.scaledIterations { blackHole(try? BeatFrameDecoder.decode(bytes)) }
    }
}
