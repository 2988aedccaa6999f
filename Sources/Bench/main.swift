// Bench/main.swift — micro-benchmarks of the PulseCore hot-path functions
// (BeatFrame encode, timeline instant/beat lookups), each reported beside a
// same-run floor: an empty loop feeding the same black-hole sink.

import PulseCore

#if canImport(Glibc)
  import Glibc
#endif

/// Monotonic nanoseconds via clock_gettime(CLOCK_MONOTONIC).
@inline(__always)
func monoNs() -> Int64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Black hole: an opaque, non-inlined consumer so the optimizer must compute its input.
var sinkAccumulator: UInt64 = 0
@inline(never)
func sink(_ v: Int64) {
  sinkAccumulator = sinkAccumulator &+ UInt64(bitPattern: v)
}

let iterations: Int64 = 1_000_000
let rounds = 7

/// Runs `body` over `iterations` for `rounds` rounds; returns the median ns per call.
func measure(_ body: (Int64) -> Void) -> Double {
  var samples: [Double] = []
  for _ in 0..<rounds {
    let t0 = monoNs()
    var i: Int64 = 0
    while i < iterations {
      body(i)
      i += 1
    }
    samples.append(Double(monoNs() - t0) / Double(iterations))
  }
  samples.sort()
  return samples[rounds / 2]
}

func fmt(_ v: Double) -> String {
  let scaled = (v * 100).rounded() / 100
  return String(scaled)
}

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

let floorNs = measure { i in sink(i) }
let instantNs = measure { i in sink(timeline.instantNs(ofBeat: epoch.startBeat + i)) }
let beatNs = measure { i in sink(timeline.beat(atOrBeforeNs: epoch.startNs + i &* 1_000_003)) }
let hlcNs = measure { i in sink(hlc.now(wallMs: 1_756_987_200_000 + (i >> 4)).wallMs) }
let encodeNs = measure { i in
  let k = epoch.startBeat + i
  let n = encoder.encode(
    into: frame, beatIndex: k, downbeat: timeline.isDownbeat(k), phaseIndex: timeline.phaseIndex(k),
    hlc: HLCStamp(wallMs: 1_756_987_200_000 + i, counter: UInt32(truncatingIfNeeded: i & 3)),
    deadlineUnixMs: 1_756_987_200_500 + i * 500, tempoBpm: 120, windowId: windowId, term: 3,
    degraded: false)
  sink(Int64(n) &+ Int64(frame.load(fromByteOffset: n - 2, as: UInt8.self)))
}

print("PulseCore micro-benchmark: \(iterations) calls x \(rounds) rounds, median ns/call")
print("  floor (empty loop + sink)       \(fmt(floorNs)) ns")
for (name, v) in [
  ("Timeline.instantNs(ofBeat:)", instantNs),
  ("Timeline.beat(atOrBeforeNs:)", beatNs),
  ("HLC.now(wallMs:)", hlcNs),
  ("BeatFrameEncoder.encode", encodeNs),
] {
  let pad = String(repeating: " ", count: max(0, 32 - name.count))
  print(
    "  \(name)\(pad)\(fmt(v)) ns   (\(fmt(v / floorNs))x floor, \(fmt(v - floorNs)) ns above floor)"
  )
}
print("  sink checksum \(sinkAccumulator)")
