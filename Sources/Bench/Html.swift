// Bench/Html.swift — `--html FILE`: one self-contained page (inline CSS and
// SVG, no external assets): per scenario a CDF plot of jitter and delivery
// beside the timer-wake and NATS floors (log-scaled µs axis), the percentile
// table, the target verdicts and the pulse/baseline ratios.

import Foundation

private let seriesColors = ["#1f77b4", "#d62728", "#7f7f7f", "#2ca02c"]

func htmlEscape(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}

/// The plot's inner box (left and top margin, width, height) in an SVG of this size.
func plotArea(width: Int, height: Int, left: Double) -> (Double, Double, Double, Double) {
    (left, 15, Double(width) - left - 15, Double(height) - 15 - 40)
}

/// An SVG CDF plot of `series` (label, latencies) on a log10 µs axis.
func cdfSVG(_ series: [(String, Latencies)], width: Int = 640, height: Int = 300) -> String {
    let (left, top, w, h) = plotArea(width: width, height: height, left: 50)
    let curves = series.map { ($0.0, $0.1.cdf()) }
    let all = curves.flatMap { $0.1.map { max($0.0, 0.1) } }
    guard let lo = all.min(), let hi = all.max() else { return "<p>no samples</p>" }
    let minDecade = floor(log10(lo))
    let maxDecade = max(ceil(log10(hi)), minDecade + 1)
    func x(_ v: Double) -> Double { left + (log10(max(v, 0.1)) - minDecade) / (maxDecade - minDecade) * w }
    func y(_ f: Double) -> Double { top + (1 - f) * h }
    var s =
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" font-family=\"sans-serif\" font-size=\"11\">"
    s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(w)\" height=\"\(h)\" fill=\"none\" stroke=\"#999\"/>"
    var d = minDecade
    while d <= maxDecade {
        let xv = x(pow(10, d))
        s += "<line x1=\"\(xv)\" y1=\"\(top)\" x2=\"\(xv)\" y2=\"\(top + h)\" stroke=\"#eee\"/>"
        let label =
            pow(10, d) >= 1000
            ? "\(Int(pow(10, d) / 1000)) ms" : (d < 0 ? String(format: "%.1f µs", pow(10, d)) : "\(Int(pow(10, d))) µs")
        s += "<text x=\"\(xv)\" y=\"\(top + h + 15)\" text-anchor=\"middle\">\(label)</text>"
        d += 1
    }
    for f in [0.0, 0.5, 0.9, 0.99, 1.0] {
        s += "<line x1=\"\(left)\" y1=\"\(y(f))\" x2=\"\(left + w)\" y2=\"\(y(f))\" stroke=\"#eee\"/>"
        s += "<text x=\"\(left - 5)\" y=\"\(y(f) + 4)\" text-anchor=\"end\">\(f)</text>"
    }
    s += "<text x=\"\(left + w / 2)\" y=\"\(Double(height) - 5)\" text-anchor=\"middle\">latency (log scale)</text>"
    for (i, (label, points)) in curves.enumerated() where !points.isEmpty {
        var path = "M\(x(points[0].0)),\(y(0))"
        var prev = 0.0
        for (v, f) in points {
            path += " L\(x(v)),\(y(prev)) L\(x(v)),\(y(f))"
            prev = f
        }
        let color = seriesColors[i % seriesColors.count]
        let dash = label.contains("floor") ? " stroke-dasharray=\"5,3\"" : ""
        s += "<path d=\"\(path)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.8\"\(dash)/>"
        s += "<rect x=\"\(left + 10)\" y=\"\(top + 8 + Double(i) * 15)\" width=\"12\" height=\"3\" fill=\"\(color)\"/>"
        s += "<text x=\"\(left + 27)\" y=\"\(top + 12 + Double(i) * 15)\">\(htmlEscape(label))</text>"
    }
    return s + "</svg>"
}

extension BenchReport {
    func html() -> String {
        var o = "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>BACKBEAT pulse benchmark</title><style>"
        o += "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        o +=
            "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        o += "td:first-child,th:first-child{text-align:left}.pass{color:#070}.fail{color:#b00;font-weight:bold}"
        o += "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}</style></head><body>"
        o += "<h1>BACKBEAT pulse benchmark</h1><p>\(htmlEscape(machine.date)) · commit \(htmlEscape(machine.commit)) · "
        o +=
            "\(htmlEscape(machine.cpuModel)), \(machine.cpus) cores, Linux \(htmlEscape(machine.kernel)) · pulse on cpu \(ctx.cpu)"
        o += ctx.priority > 0 ? ", SCHED_FIFO \(ctx.priority)" : ", no real-time priority"
        o += " · \(ctx.options.seconds) s per run and per floor</p>"
        let cs = checks
        if !cs.isEmpty {
            o += "<h2>Targets</h2><table><tr><th>scenario</th><th>target</th><th>verdict</th><th>measured</th></tr>"
            for c in cs {
                let v =
                    c.pass == nil ? "<td>n/a</td>" : (c.pass! ? "<td class=pass>PASS</td>" : "<td class=fail>FAIL</td>")
                o +=
                    "<tr><td>\(htmlEscape(c.scenario))</td><td>\(htmlEscape(c.target))</td>\(v)<td>\(htmlEscape(c.detail))</td></tr>"
            }
            o += "</table>"
        }
        for s in scenarios + (baseline.map { [$0] } ?? []) {
            o += "<h2>\(htmlEscape(s.name)) — \(s.bpm) bpm, \(s.beats) beats</h2>"
            let series: [(String, Latencies)] = [
                ("jitter |publish − scheduled|", s.jitter), ("delivery (receive − scheduled)", s.delivery),
                ("timer-wake floor", s.timerFloor.latencies), ("NATS loopback floor", s.natsFloor.latencies),
            ]
            o += cdfSVG(series)
            o += "<table><tr><th>µs</th><th>p50</th><th>p95</th><th>p99</th><th>p99.9</th><th>max</th><th>n</th></tr>"
            for (label, l) in series {
                let p = l.summary
                o +=
                    "<tr><td>\(htmlEscape(label))</td>"
                    + [p.p50, p.p95, p.p99, p.p999, p.max].map { "<td>\(num($0))</td>" }.joined()
                o += "<td>\(p.count)</td></tr>"
            }
            o += "</table>"
            if let e = s.election {
                o += electionHTML(e, s)
            } else {
                o +=
                    "<p>allocated: \(s.allocatedBytesPerBeat.map { String(format: "%.1f", $0) } ?? "n/a") B/beat · CPU: "
                o +=
                    "\(s.cpuUsPerBeat.map { String(format: "%.1f", $0) } ?? "n/a") µs/beat · published \(s.published)/\(s.beats) · received \(s.received)</p>"
            }
            if let load = s.load { o += "<p>load: \(htmlEscape(load))</p>" }
            let notes = s.notes + s.timerFloor.notes + s.natsFloor.notes
            if !notes.isEmpty { o += "<ul>" + notes.map { "<li>\(htmlEscape($0))</li>" }.joined() + "</ul>" }
        }
        if let b = baseline, let r = baselineReference {
            o += "<h2>pulse / baseline</h2><table><tr><th>figure</th><th>ratio (pulse / baseline)</th></tr>"
            for (label, v) in ratios(pulse: r, baseline: b) {
                o += "<tr><td>\(htmlEscape(label))</td><td>\(htmlEscape(v))</td></tr>"
            }
            o += "</table>"
        }
        if let soak { o += soak.html() }
        for d in drift { o += "<h2>drift (PER-003), \(d.leaderName) led</h2><pre>\(htmlEscape(d.text()))</pre>" }
        if let scale { o += scale.html() }
        o += "<h2>Full terminal report</h2><pre>\(htmlEscape(text()))</pre></body></html>\n"
        return o
    }
}

/// The election scenario's rounds as a table, with the verdicts.
func electionHTML(_ e: ElectionResult, _ s: ScenarioResult) -> String {
    func ms(_ v: Double?) -> String { v.map { String(format: "%.1f", $0) } ?? "—" }
    func verdict(_ p: Bool?) -> String {
        p == nil ? "<span>n/a</span>" : (p! ? "<span class=pass>PASS</span>" : "<span class=fail>FAIL</span>")
    }
    var o =
        "<p>\(htmlEscape(e.placement)) · \(s.received) distinct indices received over \(s.beats) beats of the timeline</p>"
    o +=
        "<table><tr><th>round</th><th>signal</th><th>stopped</th><th>phase</th><th>failover ms</th><th>new leader (term)</th>"
    o += "<th>old last</th><th>new first</th><th>missed</th><th>first new frame after its instant, ms</th></tr>"
    let rows =
        e.kills.enumerated().map { ("kill \($0.offset + 1)", $0.element) }
        + (e.graceful.map { [("graceful", $0)] } ?? [])
    for (label, r) in rows {
        o +=
            "<tr><td>\(label)</td><td>\(r.signal)</td><td>\(htmlEscape(r.stopped))</td><td>\(String(format: "%.0f%%", r.phase * 100))</td>"
        o +=
            "<td>\(ms(r.failoverMs))</td><td>\(htmlEscape(r.newLeader ?? "—"))\(r.newTerm.map { " (\($0))" } ?? "")</td>"
        o += "<td>\(r.lastOldIndex.map(String.init) ?? "—")</td><td>\(r.firstNewIndex.map(String.init) ?? "—")</td>"
        o += "<td>\(r.missed.map(String.init) ?? "—")</td><td>\(ms(r.firstNewLateMs))</td></tr>"
    }
    o += "</table><p>"
    if let f = e.failoverSummary {
        o += String(format: "failover min %.1f / median %.1f / max %.1f ms (target ≤ 1000 ms) ", f.min, f.median, f.max)
    } else {
        o += "failover: no kill round completed "
    }
    o +=
        verdict(e.failoverPass)
        + " · graceful stop missed \(e.graceful?.missed.map(String.init) ?? "—") beats (target 0) "
    o +=
        verdict(e.gracefulPass) + " · repeated \(e.repeated), backwards \(e.backwards) (target 0) "
        + verdict(e.orderPass) + "</p>"
    if let cpu = e.cpu { o += "<p>\(htmlEscape(cpu.line))</p>" }
    if let p = e.versusPlain {
        o += "<p>" + e.comparisonLines(p).map(htmlEscape).joined(separator: "<br>") + "</p>"
        // Each strategy's failover times as a distribution: the fraction of kill rounds failed over by x ms.
        func cdf(_ values: [Double]) -> [(Double, Double)] {
            let sorted = values.sorted()
            return sorted.enumerated().map { ($0.element, Double($0.offset + 1) / Double(sorted.count)) }
        }
        let this = e.natsKV ? "nats-kv" : "Raft over TLS"
        o += lineSVG(
            [("Raft over plain TCP", cdf(p.failovers)), (this, cdf(e.failovers))],
            xLabel: "failover ms (fraction of kill rounds done by then)", logX: false, logY: false)
    }
    return o
}

/// An x/y line plot with points marked (linear or log axes); for the soak's
/// timeline and the scale report's series.
func lineSVG(
    _ series: [(String, [(Double, Double)])], xLabel: String, logX: Bool, logY: Bool, width: Int = 640,
    height: Int = 300
) -> String {
    let (left, top, w, h) = plotArea(width: width, height: height, left: 60)
    let points = series.flatMap { $0.1 }.filter { (!logX || $0.0 > 0) && (!logY || $0.1 > 0) }
    guard let xs = points.map(\.0).min(), let xe = points.map(\.0).max(), let ys = points.map(\.1).min(),
        let ye = points.map(\.1).max()
    else { return "<p>no points</p>" }
    func axis(_ lo: Double, _ hi: Double, _ log: Bool) -> (Double, Double) {
        if log {
            return (Foundation.floor(log10(lo)), max(Foundation.ceil(log10(hi)), Foundation.floor(log10(lo)) + 1))
        }
        return hi > lo ? (Swift.min(lo, 0), hi) : (lo - 1, hi + 1)
    }
    let (x0, x1) = axis(xs, xe, logX)
    let (y0, y1) = axis(ys, ye, logY)
    func x(_ v: Double) -> Double { left + ((logX ? log10(v) : v) - x0) / (x1 - x0) * w }
    func y(_ v: Double) -> Double { top + (1 - ((logY ? log10(v) : v) - y0) / (y1 - y0)) * h }
    func label(_ v: Double) -> String { v >= 1000 || v == v.rounded() ? String(format: "%.0f", v) : num(v) }
    var s =
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" font-family=\"sans-serif\" font-size=\"11\">"
    s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(w)\" height=\"\(h)\" fill=\"none\" stroke=\"#999\"/>"
    for i in 0...4 {
        let fx = x0 + (x1 - x0) * Double(i) / 4
        let vx = logX ? pow(10, fx) : fx
        s += "<text x=\"\(x(vx))\" y=\"\(top + h + 15)\" text-anchor=\"middle\">\(label(vx))</text>"
        let fy = y0 + (y1 - y0) * Double(i) / 4
        let vy = logY ? pow(10, fy) : fy
        s += "<line x1=\"\(left)\" y1=\"\(y(vy))\" x2=\"\(left + w)\" y2=\"\(y(vy))\" stroke=\"#eee\"/>"
        s += "<text x=\"\(left - 5)\" y=\"\(y(vy) + 4)\" text-anchor=\"end\">\(label(vy))</text>"
    }
    s +=
        "<text x=\"\(left + w / 2)\" y=\"\(Double(height) - 5)\" text-anchor=\"middle\">\(htmlEscape(xLabel))\(logX ? " (log)" : "")\(logY ? ", y log" : "")</text>"
    for (i, (name, raw)) in series.enumerated() {
        let pts = raw.filter { (!logX || $0.0 > 0) && (!logY || $0.1 > 0) }
        guard !pts.isEmpty else { continue }
        let color = seriesColors[i % seriesColors.count]
        let path = pts.enumerated().map { "\($0.offset == 0 ? "M" : "L")\(x($0.element.0)),\(y($0.element.1))" }
        s += "<path d=\"\(path.joined(separator: " "))\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.8\"/>"
        for p in pts { s += "<circle cx=\"\(x(p.0))\" cy=\"\(y(p.1))\" r=\"2.5\" fill=\"\(color)\"/>" }
        s += "<rect x=\"\(left + 10)\" y=\"\(top + 8 + Double(i) * 15)\" width=\"12\" height=\"3\" fill=\"\(color)\"/>"
        s += "<text x=\"\(left + 27)\" y=\"\(top + 12 + Double(i) * 15)\">\(htmlEscape(name))</text>"
    }
    return s + "</svg>"
}
