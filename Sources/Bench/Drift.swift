// Bench/Drift.swift — the `drift` scenario (PER-003 on real processes, issue
// 24), run twice: a 3-node cluster in timer-only mode in which n3's wall
// clock runs 500 ppm fast (libClockSkew.so preloaded, Sources/ClockSkew: its
// CLOCK_REALTIME reads and absolute realtime timers; monotonic untouched;
// libfaketime cannot start a jemalloc-linked process). n3 follows a leader
// on a true clock — n1 (the lowest voter) in the first run, n2 in the
// second — for `syncSeconds` (its offset and rate estimates converge on the
// leader's frames), then the other two are killed: n3 publishes degraded
// frames on its own estimate of the leader's timeline. Each degraded frame's
// error is its receive time (Bench's clock, a true one) minus its instant on
// the leader's timeline (the leader's own records); the drift is the
// least-squares slope of that error over the instants, with its standard
// error, in % per hour (1 %/h = 10,000 ppm; 0.01 %/h = 100 ppm; the skew
// uncorrected is 0.05 %/h). Judged: the upper end of the ~95 % interval
// (slope + 2 σ) against the seed's 1 %/h and the contract's 0.01 %/h.

import CLoop
import Foundation
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

struct DriftResult {
    var skewPpm: Double
    var skewedNode = "n3"
    /// Who led while n3 followed: n1 (the lowest voter, whose clock degraded
    /// turns use) or n2 (the open finding's case).
    var leaderName = "n1"
    var syncSeconds: Int
    var windowSeconds: Int
    var bpm: Int
    var frames = 0
    /// Seconds of error per second of timeline, and its standard error.
    var slope: Double? = nil
    var slopeError: Double? = nil
    /// The skewed node's own estimate of its rate against the leader just
    /// before the cut (`GET /drift` → `timer_drift_percent`, a ratio).
    var estimatedRate: Double? = nil
    var notes: [String] = []

    var percentPerHour: Double? { slope.map { $0 * 100 } }
    var errorPercentPerHour: Double? { slopeError.map { 2 * $0 * 100 } }

    var checks: [Check] {
        func check(_ limit: Double, _ name: String) -> Check {
            guard let d = percentPerHour, let e = errorPercentPerHour else {
                return Check(
                    scenario: "drift", target: name + ", \(leaderName) led", pass: nil,
                    detail: "no slope: \(frames) degraded frames")
            }
            return Check(
                scenario: "drift", target: name + ", \(leaderName) led", pass: abs(d) + e <= limit,
                detail: String(
                    format:
                        "%+.5f ± %.5f %%/h (%+.1f ± %.1f ppm) over %d frames; limit %g %%/h; uncorrected skew %.3f %%/h",
                    d, e, d * 1e4, e * 1e4, frames, limit, skewPpm / 1e4))
        }
        return [
            check(1, "PER-003 (seed) drift ≤ 1 %/h without a leader"),
            check(0.01, "PER-003 drift ≤ 0.01 %/h without a leader"),
        ]
    }

    func text() -> String {
        var o =
            "drift (PER-003), \(leaderName) leading: \(skewedNode)'s clock \(String(format: "%+.0f", skewPpm)) ppm (libClockSkew), \(syncSeconds) s following a leader, then \(windowSeconds) s alone (degraded) at \(bpm) bpm\n"
        if let d = percentPerHour, let e = errorPercentPerHour {
            o += String(
                format: "  drift of its degraded instants: %+.5f ± %.5f %%/h (2σ; %+.1f ± %.1f ppm), %d frames\n", d, e,
                d * 1e4, e * 1e4, frames)
        } else {
            o += "  drift: not measured (\(frames) degraded frames)\n"
        }
        if let r = estimatedRate {
            o += String(format: "  the node's own rate estimate before the cut: |rate| %.1f ppm\n", r * 1e6)
        }
        for n in notes { o += "  note: \(n)\n" }
        return o
    }

    struct JSON: Encodable {
        var skew_ppm: Double
        var skewed_node, leader: String
        var sync_seconds, window_seconds, bpm, frames: Int
        var drift_percent_per_hour, error_percent_per_hour, estimated_rate: Double?
        var notes: [String]
    }

    func json() -> JSON {
        JSON(
            skew_ppm: skewPpm, skewed_node: skewedNode, leader: leaderName, sync_seconds: syncSeconds,
            window_seconds: windowSeconds,
            bpm: bpm, frames: frames, drift_percent_per_hour: percentPerHour,
            error_percent_per_hour: errorPercentPerHour, estimated_rate: estimatedRate, notes: notes)
    }
}

/// Least-squares slope of y over x and its standard error, or nil with fewer than 3 points.
func slopeWithError(_ points: [(Double, Double)]) -> (slope: Double, error: Double)? {
    guard points.count >= 3, let b = leastSquaresSlope(points) else { return nil }
    let n = Double(points.count)
    let mx = points.reduce(0) { $0 + $1.0 } / n
    let my = points.reduce(0) { $0 + $1.1 } / n
    let sxx = points.reduce(0) { $0 + ($1.0 - mx) * ($1.0 - mx) }
    let residuals = points.reduce(0) { acc, p in
        let r = p.1 - (my + b * (p.0 - mx))
        return acc + r * r
    }
    return (b, (residuals / (n - 2) / sxx).squareRoot())
}

/// libClockSkew.so beside the Bench executable (`swift build -c release --product ClockSkew`), or nil.
func clockSkewLibrary() -> String? {
    let path = executableDirectory() + "/libClockSkew.so"
    return access(path, R_OK) == 0 ? path : nil
}

/// One run with node `wanted` (0: n1, 1: n2) leading while n3 follows.
func runDriftScenario(_ ctx: BenchContext, bpm: Int, leader wanted: Int, skewPpm: Double = 500, syncSeconds: Int = 60)
    throws -> DriftResult
{
    guard let library = clockSkewLibrary() else {
        throw BenchError(
            "drift: no libClockSkew.so beside Bench (swift build -c release --product ClockSkew; make bench does)")
    }
    let windowSeconds = max(30, ctx.options.seconds)
    var result = DriftResult(skewPpm: skewPpm, syncSeconds: syncSeconds, windowSeconds: windowSeconds, bpm: bpm)
    let skewed = 2
    let id = "bench-drift-\(wanted + 1)"
    let cluster = BenchCluster(
        ctx, clusterId: id, bpm: bpm, size: 3, extraArgs: ["-spin-max-us", "0"],
        environments: [
            skewed: ["LD_PRELOAD": library, "BACKBEAT_CLOCK_SKEW_PPM": "\(Int(skewPpm))"]
        ])
    defer { cluster.stopAll() }
    let receiver = try Receiver(url: ctx.natsURL, subject: "backbeat.\(id).beat", payload: .clusterFrame)
    defer { receiver.close() }
    try cluster.startAll()
    guard var leader = cluster.leader(seconds: 15) else { throw BenchError("drift: no leader within 15 s") }
    // A lone degraded node takes its turns on the lowest voter's clock
    // (ClusterCore.degradedReference): with n1 leading the two references
    // coincide; with n2 leading n3 heard n1 only around elections and takes
    // the rate of its estimate of n2 (DegradationPolicy.turnReference,
    // docs/benchmark.md).
    for _ in 0..<6 where leader != wanted {
        let stopped = leader
        cluster.stop(stopped, signal: SIGTERM)
        guard let next = cluster.leader(seconds: 15) else { throw BenchError("drift: no leader after a hand-over") }
        leader = next
        try cluster.start(stopped)
        result.notes.append("\(cluster.names[stopped]) led: handed over to \(cluster.names[leader]), restarted")
    }
    guard leader == wanted else {
        throw BenchError("drift: \(cluster.names[wanted]) did not lead after 6 hand-overs")
    }
    result.leaderName = cluster.names[wanted]
    sleepSeconds(Double(syncSeconds))
    if let (status, body) = httpGet(port: cluster.adminPorts[skewed], path: "/drift"), status == 200,
        let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]
    {
        result.estimatedRate = (object["timer_drift_percent"] as? NSNumber).map { $0.doubleValue / 100 }
    }
    // The leader's timeline from its own records (a true clock).
    guard let reference = cluster.beats(leader).last(where: { $0.published }) else {
        throw BenchError("drift: the leader has no published beat")
    }
    let epoch = TempoEpoch(startBeat: reference.index, startNs: reference.scheduled_ns, bpm: Int64(bpm))
    for i in cluster.names.indices where i != skewed { cluster.stop(i, signal: SIGKILL) }
    let cutNs = cloop_realtime_ns()
    let n3 = packed(cluster.names[skewed])
    func degraded() -> [Reception] {
        receiver.snapshot().filter { $0.receivedNs >= cutNs && $0.degraded && $0.from == n3 }
    }
    guard waitUntil(seconds: 15, { degraded().count >= 2 }) else {
        throw BenchError("drift: n3 published no degraded frame within 15 s: \(cluster.logTail(skewed))")
    }
    let firstNs = degraded().first!.receivedNs
    sleepSeconds(Double(windowSeconds))
    var seen = Set<Int64>()
    var points: [(Double, Double)] = []
    var startInstant: Int64? = nil
    for rx in degraded() where rx.receivedNs >= firstNs && seen.insert(rx.value).inserted {
        let instant = epoch.instantNs(ofBeat: rx.value)
        let start = startInstant ?? instant
        startInstant = start
        points.append((Double(instant - start) / 1e9, Double(rx.receivedNs - instant) / 1e9))
    }
    result.frames = points.count
    if let fit = slopeWithError(points) { (result.slope, result.slopeError) = (fit.slope, fit.error) }
    return result
}
