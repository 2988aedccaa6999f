// Bench/Stats.swift — latency distributions: HDR histograms of nanoseconds
// (`hdrhistogram-swift`, 3 significant digits, 1 ns to 60 s), summarised in
// microseconds as p50/p95/p99/p99.9/max, and sampled as CDF points for plots.

import Histogram

struct Percentiles: Codable {
    var p50: Double
    var p95: Double
    var p99: Double
    var p999: Double
    var max: Double
    var count: Int

    static let empty = Percentiles(p50: 0, p95: 0, p99: 0, p999: 0, max: 0, count: 0)
}

struct Latencies {
    private(set) var histogram = Histogram<UInt64>(
        lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    /// Values below zero (recorded as 0) and above 60 s (recorded as 60 s).
    private(set) var clamped = 0

    var count: Int { Int(histogram.totalCount) }

    mutating func record(ns: Int64, count: UInt64 = 1) {
        var v = ns
        if v < 0 || v > 60_000_000_000 {
            clamped += Int(count)
            v = Swift.min(Swift.max(v, 0), 60_000_000_000)
        }
        _ = histogram.record(UInt64(v), count: count)
    }

    /// Samples above `ns` (e.g. wakes more than 1 ms late: a hypervisor stall).
    func count(above ns: Int64) -> Int {
        var n: UInt64 = 0
        for v in histogram.recordedValues() where Int64(v.value) > ns { n += v.count }
        return Int(n)
    }

    var summary: Percentiles {
        guard histogram.totalCount > 0 else { return .empty }
        func us(_ p: Double) -> Double { Double(histogram.valueAtPercentile(p)) / 1000 }
        return Percentiles(
            p50: us(50), p95: us(95), p99: us(99), p999: us(99.9), max: Double(histogram.max) / 1000,
            count: count)
    }

    /// (µs, cumulative fraction) at every recorded value, at most `limit` points.
    func cdf(limit: Int = 400) -> [(Double, Double)] {
        guard histogram.totalCount > 0 else { return [] }
        var points: [(Double, Double)] = []
        let total = Double(histogram.totalCount)
        for v in histogram.recordedValues() {
            points.append((Double(v.value) / 1000, Double(v.totalCountToThisValue) / total))
        }
        guard points.count > limit else { return points }
        let stride = Double(points.count) / Double(limit)
        var thinned: [(Double, Double)] = []
        var i = 0.0
        while Int(i) < points.count {
            thinned.append(points[Int(i)])
            i += stride
        }
        if let last = points.last { thinned.append(last) }
        return thinned
    }
}

/// Black hole: an opaque, non-inlined consumer so the optimizer must compute its input.
nonisolated(unsafe) var sinkAccumulator: UInt64 = 0
@inline(never)
func sink(_ v: Int64) {
    sinkAccumulator = sinkAccumulator &+ UInt64(bitPattern: v)
}
