// Bench/Micro.swift — the `micro` scenario: micro-benchmarks of the PulseCore
// hot-path functions (BeatFrame encode, timeline instant/beat lookups, HLC),
// each reported beside a same-run floor: an empty loop feeding the same
// black-hole sink.

import CLoop
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

/// Black hole: an opaque, non-inlined consumer so the optimizer must compute its input.
var sinkAccumulator: UInt64 = 0
@inline(never)
func sink(_ v: Int64) {
    sinkAccumulator = sinkAccumulator &+ UInt64(bitPattern: v)
}

struct MicroResult {
    var name: String
    var nsPerCall: Double
}

struct MicroReport {
    var iterations: Int64
    var rounds: Int
    var floorNs: Double
    var results: [MicroResult]
}

/// Runs `body` over `iterations` for `rounds` rounds; returns the median ns per call.
private func measure(iterations: Int64, rounds: Int, _ body: (Int64) -> Void) -> Double {
    var samples: [Double] = []
    for _ in 0..<rounds {
        let t0 = cloop_monotonic_ns()
        var i: Int64 = 0
        while i < iterations {
            body(i)
            i += 1
        }
        samples.append(Double(cloop_monotonic_ns() - t0) / Double(iterations))
    }
    samples.sort()
    return samples[rounds / 2]
}

func runMicro(iterations: Int64 = 1_000_000, rounds: Int = 7) -> MicroReport {
    // Set-up (allocates; not measured).
    let epoch = TempoEpoch(startBeat: 1_000_000, startNs: 1_756_987_200_000_000_000, bpm: 120)
    let timeline = Timeline(epoch: epoch, bar: 8, phaseCount: 3)
    let encoder = BeatFrameEncoder(
        clusterId: "chorus-aus-01", phases: ["plan", "work", "review"], nodeId: "node-abcd")
    let windows = WindowIdCache(clusterId: "chorus-aus-01")
    windows.prepare(barStart: 0)
    let windowId = windows.lookup(barStart: 0)!
    let frame = UnsafeMutableRawBufferPointer.allocate(byteCount: encoder.maxFrameBytes, alignment: 8)
    defer { frame.deallocate() }
    var hlc = HLC()

    let floorNs = measure(iterations: iterations, rounds: rounds) { i in sink(i) }
    let instantNs = measure(iterations: iterations, rounds: rounds) { i in
        sink(timeline.instantNs(ofBeat: epoch.startBeat + i))
    }
    let beatNs = measure(iterations: iterations, rounds: rounds) { i in
        sink(timeline.beat(atOrBeforeNs: epoch.startNs + i &* 1_000_003))
    }
    let hlcNs = measure(iterations: iterations, rounds: rounds) { i in
        sink(hlc.now(wallMs: 1_756_987_200_000 + (i >> 4)).wallMs)
    }
    let encodeNs = measure(iterations: iterations, rounds: rounds) { i in
        let k = epoch.startBeat + i
        let n = encoder.encode(
            into: frame, beatIndex: k, downbeat: timeline.isDownbeat(k), phaseIndex: timeline.phaseIndex(k),
            hlc: HLCStamp(wallMs: 1_756_987_200_000 + i, counter: UInt32(truncatingIfNeeded: i & 3)),
            deadlineUnixMs: 1_756_987_200_500 + i * 500, tempoBpm: 120, windowId: windowId, term: 3,
            degraded: false)
        sink(Int64(n) &+ Int64(frame.load(fromByteOffset: n - 2, as: UInt8.self)))
    }
    return MicroReport(
        iterations: iterations, rounds: rounds, floorNs: floorNs,
        results: [
            MicroResult(name: "Timeline.instantNs(ofBeat:)", nsPerCall: instantNs),
            MicroResult(name: "Timeline.beat(atOrBeforeNs:)", nsPerCall: beatNs),
            MicroResult(name: "HLC.now(wallMs:)", nsPerCall: hlcNs),
            MicroResult(name: "BeatFrameEncoder.encode", nsPerCall: encodeNs),
        ])
}
