// Bench/Scale.swift — the `scale` scenario (issue 24): how the pulse's cost
// grows with its work. Four series, each a set of measured runs of the
// real binary in timer-only mode (`-spin-max-us 0`: the spin's ~1 ms per
// beat would hide the work's own cost), on the bench core at the bench
// priority, `--seconds` per point:
//
// - cluster size 1, 3, 5, 7 (1: a single node; 3+: a `BenchCluster`, the
//   leader measured);
// - subscribers 1, 100, 1000, 5000 on the pulse's subject (one server, up to
//   4 connections; delivery over every subscriber's receptions);
// - timeline requests per second 0, 1000, 2000, 5000, 10,000, 20,000,
//   50,000 (one client, `RequestFlood`); a point over budget (requests
//   dropped over the node's budget, or fewer than 95 % answered) is marked,
//   and the series stops after the first point where the loop saturates
//   (its thread busy ≥ 90 % of the time);
// - tempo 12, 60, 120, 600, 1200, 3000, 6000 bpm (a window of at least 20
//   beats).
//
// Per point: the loop thread's CPU per beat (the leader's in a cluster),
// jitter p99 (TX stamp − instant) and delivery p99. Per series and figure:
// the exponent b of a least-squares fit of log y on log x (points with x > 0)
// named flat (|b| < 0.2), falling (b ≤ −0.2), sublinear (< 0.7), linear
// (≤ 1.3) or superlinear; and the knee: the first x whose figure exceeds
// 1.25× the series' lightest point (the budget the §9 ratios use).

import CLoop
import CNats
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

struct ScalePoint {
    var x: Double
    var loopCpuUsPerBeat: Double?
    var cpuUsPerBeat: Double?
    var jitterP99Us: Double?
    var deliveryP99Us: Double?
    var beats = 0
    var published = 0
    /// Why this point ends the series (the loop saturated), or nil.
    var saturated: String? = nil
    var note: String? = nil

    /// The three figures every series reports, by name.
    static let figures: [(name: String, key: String, value: (ScalePoint) -> Double?)] = [
        ("loop CPU µs/beat", "loop_cpu_us_per_beat", { $0.loopCpuUsPerBeat }),
        ("jitter p99 µs", "jitter_p99_us", { $0.jitterP99Us }),
        ("delivery p99 µs", "delivery_p99_us", { $0.deliveryP99Us }),
    ]
}

/// How one figure grows along one series.
struct ScaleFit: Encodable {
    var exponent: Double?
    var shape: String
    /// The first x whose figure exceeds 1.25× the lightest point's; nil: none.
    var knee: Double?

    init(_ points: [(Double, Double)]) {
        let logs = points.filter { $0.0 > 0 && $0.1 > 0 }.map { (log($0.0), log($0.1)) }
        exponent = leastSquaresSlope(logs)
        switch exponent {
        case nil: shape = "n/a"
        case let b? where b <= -0.2: shape = "falling"
        case let b? where b < 0.2: shape = "flat"
        case let b? where b < 0.7: shape = "sublinear"
        case let b? where b <= 1.3: shape = "linear"
        default: shape = "superlinear"
        }
        let base = points.first?.1
        knee = base.flatMap { b in points.dropFirst().first { $0.1 > 1.25 * b }?.0 }
    }
}

struct ScaleSeries {
    var name: String
    var xLabel: String
    var points: [ScalePoint] = []
    var notes: [String] = []

    func fit(_ figure: (ScalePoint) -> Double?) -> ScaleFit {
        ScaleFit(points.compactMap { p in figure(p).map { (p.x, $0) } })
    }
}

struct ScaleResult {
    var series: [ScaleSeries] = []
    var mode = "-spin-max-us 0 (timer only)"

    /// Every series ran with at least two measured points (slopes need two).
    var checks: [Check] {
        series.map { s in
            let measured = s.points.filter { $0.jitterP99Us != nil && $0.loopCpuUsPerBeat != nil }.count
            let shapes = ScalePoint.figures.map { "\($0.name.split(separator: " ").first!) \(s.fit($0.value).shape)" }
            return Check(
                scenario: "scale", target: "series '\(s.name)' measured with its slopes",
                pass: measured >= 2,
                detail: "\(measured) of \(s.points.count) points; " + shapes.joined(separator: ", "))
        }
    }

    func text() -> String {
        var o = "scale: how cost grows (\(mode); loop CPU = the loop thread, the leader's in a cluster)\n"
        for s in series {
            o += "  \(s.name)\n"
            o +=
                "    " + pad(s.xLabel, 14)
                + ["loop µs/b", "proc µs/b", "jit p99", "deliv p99", "beats", "publ."].map { pad($0, 11, right: true) }
                .joined() + "\n"
            for p in s.points {
                let cells = [
                    p.loopCpuUsPerBeat.map { String(format: "%.1f", $0) } ?? "n/a",
                    p.cpuUsPerBeat.map { String(format: "%.1f", $0) } ?? "n/a", p.jitterP99Us.map(num) ?? "n/a",
                    p.deliveryP99Us.map(num) ?? "n/a", "\(p.beats)", "\(p.published)",
                ]
                o += "    " + pad(String(format: "%.0f", p.x), 14) + cells.map { pad($0, 11, right: true) }.joined()
                if let sat = p.saturated { o += "  saturated: \(sat)" }
                if let note = p.note { o += "  (\(note))" }
                o += "\n"
            }
            for f in ScalePoint.figures {
                let fit = s.fit(f.value)
                o +=
                    "    " + pad(f.name, 18) + " "
                    + pad(fit.exponent.map { String(format: "slope %+.2f", $0) } ?? "slope n/a", 12) + " "
                    + pad(fit.shape, 12) + " knee (> 1.25× lightest): "
                    + (fit.knee.map { String(format: "%.0f", $0) } ?? "none in range") + "\n"
            }
            for note in s.notes { o += "    note: \(note)\n" }
        }
        return o
    }

    struct PointJSON: Encodable {
        var x: Double
        var loop_cpu_us_per_beat, cpu_us_per_beat, jitter_p99_us, delivery_p99_us: Double?
        var beats, published: Int
        var saturated, note: String?
    }
    struct SeriesJSON: Encodable {
        var name, x_label: String
        var points: [PointJSON]
        var fits: [String: ScaleFit]
        var notes: [String]
    }
    struct JSON: Encodable {
        var mode: String
        var series: [SeriesJSON]
    }

    func json() -> JSON {
        JSON(
            mode: mode,
            series: series.map { s in
                var fits: [String: ScaleFit] = [:]
                for f in ScalePoint.figures { fits[f.key] = s.fit(f.value) }
                return SeriesJSON(
                    name: s.name, x_label: s.xLabel,
                    points: s.points.map {
                        PointJSON(
                            x: $0.x, loop_cpu_us_per_beat: $0.loopCpuUsPerBeat, cpu_us_per_beat: $0.cpuUsPerBeat,
                            jitter_p99_us: $0.jitterP99Us, delivery_p99_us: $0.deliveryP99Us, beats: $0.beats,
                            published: $0.published, saturated: $0.saturated, note: $0.note)
                    }, fits: fits, notes: s.notes)
            })
    }

    func html() -> String {
        var o = "<h2>scale — how cost grows</h2><p>\(htmlEscape(mode))</p>"
        for s in series {
            o += "<h3>\(htmlEscape(s.name))</h3>"
            let curves = ScalePoint.figures.map { f in
                (f.name, s.points.compactMap { p in f.value(p).map { (p.x, $0) } })
            }
            o += lineSVG(curves, xLabel: s.xLabel, logX: s.points.contains { $0.x > 0 }, logY: true)
        }
        return o + "<pre>\(htmlEscape(text()))</pre>"
    }
}

/// `size` subscribers on the pulse's subject over the window (a `WindowLoad`).
private final class SubscriberLoad: WindowLoad {
    let subscribers: FanoutSubscribers
    let pulse: PulseRun
    let size: Int
    let startNs = cloop_realtime_ns()
    var endNs: Int64 = 0

    init(_ ctx: BenchContext, pulse: PulseRun, size: Int, subject: String, beats: Int) throws {
        self.pulse = pulse
        self.size = size
        subscribers = try FanoutSubscribers(
            urls: [ctx.natsURL], subject: subject, count: size, capacity: size * (beats + 32))
    }

    func stop() -> String {
        endNs = cloop_realtime_ns()
        sleepSeconds(0.5)  // the last frames
        return "\(size) subscriber(s) on \(subscribers.connectionCount) connection(s)"
    }

    /// Delivery over every subscriber's receptions of the window's beats.
    func report(into result: inout ScenarioResult) {
        defer { subscribers.close() }
        guard let epoch = pulse.epoch() else { return }
        let first = epoch.beat(atOrBeforeNs: startNs + 500_000_000) + 1  // after the settle
        let last = epoch.beat(atOrBeforeNs: endNs - 1)
        var delivery = Latencies()
        for r in subscribers.snapshot() where r.index >= first && r.index <= last {
            delivery.record(ns: r.ns - epoch.instantNs(ofBeat: r.index))
        }
        let expected = Int(max(0, last - first + 1)) * size
        if delivery.count < expected {
            result.notes.append("\(expected - delivery.count) of \(expected) receptions missing")
        }
        result.delivery = delivery
    }
}

private func point(_ x: Double, _ r: ScenarioResult) -> ScalePoint {
    var p = ScalePoint(x: x)
    p.loopCpuUsPerBeat = r.loopCpuUsPerBeat
    p.cpuUsPerBeat = r.cpuUsPerBeat
    p.jitterP99Us = r.jitter.count > 0 ? r.jitter.summary.p99 : nil
    p.deliveryP99Us = r.delivery.count > 0 ? r.delivery.summary.p99 : nil
    p.beats = r.beats
    p.published = r.published
    if !r.notes.isEmpty { p.note = r.notes.joined(separator: "; ") }
    return p
}

func runScale(_ ctx: BenchContext, log: (String) -> Void) throws -> ScaleResult {
    var result = ScaleResult()
    let timerOnly = ["-spin-max-us", "0"]
    let bpm = ctx.options.bpm
    let none = Floor(source: "not measured")
    func measure(
        _ name: String, bpm: Int, seconds: Int? = nil, existing: PulseRun? = nil,
        subject: String = "backbeat.bench.beat",
        load: ((PulseRun) throws -> WindowLoad)? = nil
    ) throws -> ScenarioResult {
        try runPulseScenario(
            ctx, name: name, bpm: bpm, timerFloor: none, natsFloor: none, withHTTPLoad: false, extraArgs: timerOnly,
            windowLoad: load, existing: existing, subject: subject, seconds: seconds)
    }

    var cluster = ScaleSeries(name: "cluster size (nodes)", xLabel: "nodes")
    for size in [1, 3, 5, 7] {
        log("scale: cluster of \(size)…")
        do {
            if size == 1 {
                cluster.points.append(point(1, try measure("scale-cluster-1", bpm: bpm)))
                continue
            }
            let id = "bench-scale-\(size)"
            let nodes = BenchCluster(ctx, clusterId: id, bpm: bpm, size: size, extraArgs: timerOnly)
            defer { nodes.stopAll() }
            try nodes.startAll()
            guard let leader = nodes.leader(seconds: 15), let child = nodes.children[leader] else {
                throw BenchError("no single leader within 15 s")
            }
            let run = PulseRun(
                child: child, adminPort: nodes.adminPorts[leader], dataDir: "\(nodes.dir)/\(nodes.names[leader])")
            var p = point(
                Double(size),
                try measure("scale-cluster-\(size)", bpm: bpm, existing: run, subject: "backbeat.\(id).beat"))
            p.note = ["leader \(nodes.names[leader]); \(nodes.placement)", p.note].compactMap { $0 }.joined(
                separator: "; ")
            cluster.points.append(p)
        } catch {
            cluster.notes.append("\(size) nodes: \(error)")
        }
    }
    cluster.notes.append("1 node: a single node (no -peers); 3+: a Raft cluster, nodes alternating between the cores")
    result.series.append(cluster)

    var subscribers = ScaleSeries(name: "subscribers", xLabel: "subscribers")
    let beatsPerWindow = ctx.options.seconds * bpm / 60 + 2
    for size in [1, 100, 1000, 5000] {
        log("scale: \(size) subscriber(s)…")
        do {
            let r = try measure("scale-subscribers-\(size)", bpm: bpm) { pulse in
                try SubscriberLoad(
                    ctx, pulse: pulse, size: size, subject: "backbeat.bench.beat", beats: beatsPerWindow)
            }
            subscribers.points.append(point(Double(size), r))
        } catch {
            subscribers.notes.append("\(size) subscribers: \(error)")
        }
    }
    subscribers.notes.append(
        "delivery over every subscriber's receptions, timed in the client's pooled delivery callbacks (its queueing included)"
    )
    result.series.append(subscribers)

    var requests = ScaleSeries(name: "timeline requests per second", xLabel: "requests/s")
    for rate in [0, 1000, 2000, 5000, 10_000, 20_000, 50_000] {
        log("scale: \(rate) timeline requests/s…")
        do {
            if rate == 0 {
                requests.points.append(point(0, try measure("scale-requests-0", bpm: bpm)))
                continue
            }
            let idle = ScenarioResult(name: "none", bpm: bpm, timerFloor: none, natsFloor: none)
            let r = try measure("scale-requests-\(rate)", bpm: bpm) { pulse in
                try RequestFlood(ctx, pulse: pulse, idle: idle, ratePerSecond: rate)
            }
            var p = point(Double(rate), r)
            if let f = r.flood {
                var over: [String] = []
                if f.sent > 0 && Double(f.answered) < 0.95 * Double(f.sent) {
                    over.append("\(f.answered) of \(f.sent) answered")
                }
                if let dropped = f.overBudget, dropped > 0 { over.append("\(Int(dropped)) dropped over budget") }
                let busy = (r.loopCpuUsPerBeat ?? 0) * Double(bpm) / 60 / 1e6
                if busy >= 0.9 { p.saturated = String(format: "loop thread busy %.0f %%", busy * 100) }
                let sentRate = Double(f.sent) / Double(ctx.options.seconds)
                var notes = [String(format: "%.0f/s sent, loop busy %.0f %%", sentRate, busy * 100)]
                if !over.isEmpty { notes.append("over budget: " + over.joined(separator: ", ")) }
                p.note = (notes + [p.note].compactMap { $0 }).joined(separator: "; ")
            }
            requests.points.append(p)
            if p.saturated != nil { break }
        } catch {
            requests.notes.append("\(rate)/s: \(error)")
        }
    }
    if requests.points.last?.saturated == nil {
        requests.notes.append("the loop did not saturate up to the highest rate measured")
    }
    if let first = requests.points.first(where: { $0.note?.contains("over budget") == true }) {
        requests.notes.append(String(format: "the node's request budget drops requests from %.0f/s", first.x))
    }
    result.series.append(requests)

    var tempo = ScaleSeries(name: "tempo (bpm)", xLabel: "bpm")
    for t in [12, 60, 120, 600, 1200, 3000, 6000] {
        log("scale: \(t) bpm…")
        do {
            // At least 20 beats per window (100 s at 12 bpm).
            let seconds = max(ctx.options.seconds, (20 * 60 + t - 1) / t)
            tempo.points.append(point(Double(t), try measure("scale-tempo-\(t)", bpm: t, seconds: seconds)))
        } catch {
            tempo.notes.append("\(t) bpm: \(error)")
        }
    }
    result.series.append(tempo)
    return result
}
