// Bench/Soak.swift — `--soak SECONDS` (issue 24): one pulse for a long run
// (an hour or more, offline), at normal priority (no SCHED_FIFO: a shared
// host is not starved for an hour), in its default mode at --bpm, with the
// independent subscriber. Sampled every 10 s: the process's RSS
// (/proc/PID/status VmRSS) and open descriptors (/proc/PID/fd); its
// /debug/beats records are fetched often enough that the ring (4096 beats)
// never wraps between two fetches. Reported per window (10 minutes, or a
// sixth of a shorter run): beats, published, received, jitter (TX stamp −
// instant) p50/p99/max, delivery p99, RSS and descriptors at the window's
// end and peak, CPU per beat, and a bare timerfd sleeper's wake latency at
// the beat period on the same core and priority over the same window (this
// shared host's noise changes over an hour). Verdicts: RSS and descriptors
// flat (the last window's peak within 1 MiB / equal to the first window's),
// jitter not growing (the later half's median of jitter p99 ÷ floor p99 ≤
// 1.5× the first half's), no beat missed, every frame received.

import CLoop
import Foundation
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

/// One window of the soak.
struct SoakWindow {
    /// Jitter p99 over the same window's timer floor p99, or nil without either.
    var jitterOverFloor: Double? {
        jitter.count > 0 && timerFloor.count > 0 && timerFloor.summary.p99 > 0
            ? jitter.summary.p99 / timerFloor.summary.p99 : nil
    }

    var startS: Double
    var endS: Double
    var beats = 0
    var published = 0
    var received = 0
    var jitter = Latencies()
    var delivery = Latencies()
    /// A bare timerfd sleeper at the beat period on the pulse's core and
    /// priority over the same window: the machine's noise the jitter is judged against.
    var timerFloor = Latencies()
    var rssEndKiB = 0
    var rssPeakKiB = 0
    var fdsEnd = 0
    var fdsPeak = 0
    var cpuUsPerBeat: Double? = nil
}

/// One 10 s sample of the process.
struct SoakSample {
    var atS: Double
    var rssKiB: Int
    var fds: Int
}

struct SoakResult {
    var seconds: Int
    var windowSeconds: Int
    var bpm: Int
    var windows: [SoakWindow] = []
    var samples: [SoakSample] = []
    var notes: [String] = []
    /// The least-squares slope of RSS over the samples after the first window, KiB per hour.
    var rssSlopeKiBPerHour: Double? {
        let later = samples.filter { $0.atS >= Double(windowSeconds) }
        return leastSquaresSlope(later.map { ($0.atS / 3600, Double($0.rssKiB)) })
    }

    /// Allowed growth of the RSS peak from the first window to the last.
    static let rssAllowanceKiB = 1024

    var checks: [Check] {
        guard windows.count >= 2, let first = windows.first, let last = windows.last else {
            return [
                Check(
                    scenario: "soak", target: "flat RSS, descriptors, jitter", pass: nil, detail: "fewer than 2 windows"
                )
            ]
        }
        let half = windows.count / 2
        let early = median(windows[..<half].compactMap(\.jitterOverFloor))
        let late = median(windows[half...].compactMap(\.jitterOverFloor))
        let beats = windows.reduce(0) { $0 + $1.beats }
        let published = windows.reduce(0) { $0 + $1.published }
        let received = windows.reduce(0) { $0 + $1.received }
        let slope = rssSlopeKiBPerHour.map { String(format: "; slope after the first window %.0f KiB/h", $0) } ?? ""
        return [
            Check(
                scenario: "soak", target: "RSS flat: last window's peak ≤ first's + 1 MiB",
                pass: last.rssPeakKiB <= first.rssPeakKiB + Self.rssAllowanceKiB,
                detail: "first \(mib(first.rssPeakKiB)), last \(mib(last.rssPeakKiB))\(slope)"),
            Check(
                scenario: "soak", target: "descriptors flat: last window's peak ≤ first's",
                pass: last.fdsPeak <= first.fdsPeak, detail: "first \(first.fdsPeak), last \(last.fdsPeak)"),
            Check(
                scenario: "soak", target: "jitter not growing: (p99 ÷ floor p99), later half ≤ 1.5× first",
                pass: early > 0 ? late <= 1.5 * early : nil,
                detail: String(
                    format: "median %.2f vs %.2f (ratio %.2f; jitter p99 medians %@ vs %@)", late, early,
                    early > 0 ? late / early : 0, us(median(windows[half...].map { $0.jitter.summary.p99 })),
                    us(median(windows[..<half].map { $0.jitter.summary.p99 })))),
            Check(
                scenario: "soak", target: "no beat missed, every frame received",
                pass: beats > 0 && published == beats && received == published,
                detail: "\(beats) beats, \(published) published, \(received) received"),
        ]
    }

    func text() -> String {
        var o =
            "soak: \(seconds) s at \(bpm) bpm, default mode, normal priority; \(windows.count) window(s) of \(windowSeconds) s\n"
        o +=
            "  " + pad("window", 13)
            + [
                "beats", "publ.", "recv.", "jit p50", "jit p99", "jit max", "floor p99", "deliv p99", "RSS MiB",
                "RSS peak", "fds", "fds peak", "CPU µs/b",
            ]
            .map { pad($0, 10, right: true) }.joined() + "\n"
        for w in windows {
            let j = w.jitter.summary
            let cells = [
                "\(w.beats)", "\(w.published)", "\(w.received)", num(j.p50), num(j.p99), num(j.max),
                w.timerFloor.count > 0 ? num(w.timerFloor.summary.p99) : "n/a", num(w.delivery.summary.p99),
                String(format: "%.2f", Double(w.rssEndKiB) / 1024),
                String(format: "%.2f", Double(w.rssPeakKiB) / 1024), "\(w.fdsEnd)", "\(w.fdsPeak)",
                w.cpuUsPerBeat.map { String(format: "%.1f", $0) } ?? "n/a",
            ]
            o +=
                "  " + pad(String(format: "%.0f–%.0f min", w.startS / 60, w.endS / 60), 13)
                + cells.map { pad($0, 10, right: true) }.joined() + "\n"
        }
        for note in notes { o += "  note: \(note)\n" }
        return o
    }

    struct WindowJSON: Encodable {
        var start_s, end_s: Double
        var beats, published, received: Int
        var jitter_us, delivery_us, timer_floor_us: PercentilesJSON
        var rss_kib, rss_peak_kib, fds, fds_peak: Int
        var cpu_us_per_beat: Double?
    }
    struct SampleJSON: Encodable {
        var at_s: Double
        var rss_kib, fds: Int
    }
    struct JSON: Encodable {
        var seconds, window_seconds, bpm: Int
        var rss_slope_kib_per_hour: Double?
        var windows: [WindowJSON]
        var samples: [SampleJSON]
        var notes: [String]
    }

    func json() -> JSON {
        JSON(
            seconds: seconds, window_seconds: windowSeconds, bpm: bpm, rss_slope_kib_per_hour: rssSlopeKiBPerHour,
            windows: windows.map {
                WindowJSON(
                    start_s: $0.startS, end_s: $0.endS, beats: $0.beats, published: $0.published,
                    received: $0.received, jitter_us: PercentilesJSON($0.jitter),
                    delivery_us: PercentilesJSON($0.delivery), timer_floor_us: PercentilesJSON($0.timerFloor),
                    rss_kib: $0.rssEndKiB, rss_peak_kib: $0.rssPeakKiB,
                    fds: $0.fdsEnd, fds_peak: $0.fdsPeak, cpu_us_per_beat: $0.cpuUsPerBeat)
            },
            samples: samples.map { SampleJSON(at_s: $0.atS, rss_kib: $0.rssKiB, fds: $0.fds) }, notes: notes)
    }

    func html() -> String {
        var o = "<h2>soak — \(seconds) s at \(bpm) bpm</h2>"
        o += lineSVG(
            [
                ("RSS MiB", samples.map { ($0.atS / 60, Double($0.rssKiB) / 1024) }),
                ("open descriptors", samples.map { ($0.atS / 60, Double($0.fds)) }),
            ],
            xLabel: "minutes", logX: false, logY: false)
        o += lineSVG(
            [
                ("jitter p99 µs", windows.map { ($0.endS / 60, $0.jitter.summary.p99) }),
                ("jitter p50 µs", windows.map { ($0.endS / 60, $0.jitter.summary.p50) }),
                ("delivery p99 µs", windows.map { ($0.endS / 60, $0.delivery.summary.p99) }),
            ],
            xLabel: "minutes (window end)", logX: false, logY: true)
        o += "<pre>\(htmlEscape(text()))</pre>"
        return o
    }
}

private func mib(_ kib: Int) -> String { String(format: "%.2f MiB", Double(kib) / 1024) }

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return 0 }
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/// The least-squares slope of y over x, or nil with fewer than 2 distinct x.
func leastSquaresSlope(_ points: [(Double, Double)]) -> Double? {
    guard points.count >= 2 else { return nil }
    let n = Double(points.count)
    let mx = points.reduce(0) { $0 + $1.0 } / n
    let my = points.reduce(0) { $0 + $1.1 } / n
    let sxx = points.reduce(0) { $0 + ($1.0 - mx) * ($1.0 - mx) }
    guard sxx > 0 else { return nil }
    return points.reduce(0) { $0 + ($1.0 - mx) * ($1.1 - my) } / sxx
}

/// VmRSS of `pid` in KiB, or nil.
func residentKiB(_ pid: Int32) -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.dropFirst(6).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
    }
    return nil
}

/// The number of open descriptors of `pid`, or nil.
func openDescriptors(_ pid: Int32) -> Int? {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"))?.count
}

/// The soak run: bounded by `seconds` plus the pulse's start and stop.
func runSoak(_ ctx: BenchContext, seconds: Int, bpm: Int, log: (String) -> Void) throws -> SoakResult {
    // Normal priority and memory for an hour on a shared host (the pulse
    // still pins to --cpu): RSS then counts the pages it touched.
    ctx.priority = 0
    ctx.mlock = false
    let windowSeconds = min(600, max(10, seconds / 6))
    var result = SoakResult(seconds: seconds, windowSeconds: windowSeconds, bpm: bpm)
    let receiver = try Receiver(url: ctx.natsURL, subject: "backbeat.bench.beat", payload: .beatFrame)
    defer { receiver.close() }
    let pulse = try PulseRun(ctx, name: "soak", bpm: bpm)
    defer {
        let status = pulse.stop()
        if status != 0 { ctx.notes.append("soak: pulse exited with status \(status) on SIGTERM") }
    }
    let period = 60.0 / Double(bpm)
    guard waitUntil(seconds: 5 + 3 * period, { receiver.received >= 2 }) else {
        throw BenchError("soak: no frames from the pulse within \(Int(5 + 3 * period)) s")
    }
    guard let epoch = pulse.epoch() else { throw BenchError("soak: cannot read the pulse's GET /timeline") }
    let pid = pulse.child.pid
    let startNs = cloop_realtime_ns()
    let windowCount = max(1, seconds / windowSeconds)
    result.windows = (0..<windowCount).map {
        SoakWindow(startS: Double($0 * windowSeconds), endS: Double(($0 + 1) * windowSeconds))
    }
    // Fetch /debug/beats at least twice per ring turn (4096 beats).
    let fetchEvery = max(1.0, min(60.0, 4096 * period / 2))
    var records: [Int64: PulseRun.BeatRecord] = [:]
    var lastFetch = 0.0
    var cpuAtWindowStart = (processCPUNs(pid), pulse.metrics(["backbeat_beats_total"])["backbeat_beats_total"])
    var nextSample = 0.0
    var window = 0
    // One bare timerfd sleeper per window, on its own thread (Floors.swift).
    let floors = FloorCollector(count: windowCount)
    func startFloor(_ w: Int) {
        let cpu = ctx.cpu
        let periodUs = 60_000_000 / bpm
        Thread.detachNewThread {
            floors.set(w, timerfdProbe(seconds: windowSeconds, cpu: cpu, priority: 0, intervalUs: periodUs).latencies)
        }
    }
    startFloor(0)
    while window < windowCount {
        let now = Double(cloop_realtime_ns() - startNs) / 1e9
        if now >= nextSample {
            guard let rss = residentKiB(pid), let fds = openDescriptors(pid) else {
                throw BenchError(
                    "soak: the pulse (pid \(pid)) is gone at \(Int(now)) s: \(pulse.child.output.suffix(300))")
            }
            result.samples.append(SoakSample(atS: now, rssKiB: rss, fds: fds))
            let w = min(window, windowCount - 1)
            result.windows[w].rssPeakKiB = max(result.windows[w].rssPeakKiB, rss)
            result.windows[w].fdsPeak = max(result.windows[w].fdsPeak, fds)
            nextSample += 10
        }
        if now - lastFetch >= fetchEvery {
            for r in pulse.beats() { records[r.index] = r }
            lastFetch = now
        }
        if now >= result.windows[window].endS {
            let last = result.samples.last
            result.windows[window].rssEndKiB = last?.rssKiB ?? 0
            result.windows[window].fdsEnd = last?.fds ?? 0
            let cpu = processCPUNs(pid)
            let beats = pulse.metrics(["backbeat_beats_total"])["backbeat_beats_total"]
            if let c0 = cpuAtWindowStart.0, let b0 = cpuAtWindowStart.1, let cpu, let beats, beats > b0 {
                result.windows[window].cpuUsPerBeat = Double(cpu - c0) / 1000 / (beats - b0)
            }
            cpuAtWindowStart = (cpu, beats)
            log(
                "soak: window \(window + 1)/\(windowCount) done (RSS \(mib(result.windows[window].rssEndKiB)), \(result.windows[window].fdsEnd) fds)"
            )
            window += 1
            if window < windowCount { startFloor(window) }
            continue
        }
        sleepSeconds(0.5)
    }
    for r in pulse.beats() { records[r.index] = r }
    sleepSeconds(min(1.0, 0.2 + period))
    // Beats and receptions into windows by their instant on the timeline.
    func windowOf(_ index: Int64) -> Int? {
        let at = Double(epoch.instantNs(ofBeat: index) - startNs) / 1e9
        guard at >= 0 else { return nil }
        let w = Int(at / Double(windowSeconds))
        return w < windowCount ? w : nil
    }
    let first = epoch.beat(atOrBeforeNs: startNs - 1) + 1
    let last = epoch.beat(atOrBeforeNs: startNs + Int64(windowCount * windowSeconds) * 1_000_000_000 - 1)
    var missingRecords = 0
    for k in first...max(first, last) where k <= last {
        guard let w = windowOf(k) else { continue }
        result.windows[w].beats += 1
        guard let r = records[k] else {
            missingRecords += 1
            continue
        }
        if r.published {
            result.windows[w].published += 1
            result.windows[w].jitter.record(ns: abs(r.publish_ns - r.scheduled_ns))
        }
    }
    _ = waitUntil(seconds: 20) { floors.done }
    for w in result.windows.indices { result.windows[w].timerFloor = floors.get(w) ?? Latencies() }
    var seen = Set<Int64>()
    for rx in receiver.snapshot() where rx.value >= first && rx.value <= last && seen.insert(rx.value).inserted {
        guard let w = windowOf(rx.value) else { continue }
        result.windows[w].received += 1
        result.windows[w].delivery.record(ns: rx.receivedNs - epoch.instantNs(ofBeat: rx.value))
    }
    if missingRecords > 0 {
        result.notes.append("\(missingRecords) beats have no /debug/beats record (counted as not published)")
    }
    if receiver.dropped > 0 { result.notes.append("subscriber storage full: \(receiver.dropped) frames not kept") }
    return result
}

/// The per-window floors, written by their probe threads.
private final class FloorCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var floors: [Latencies?]
    private var finished = 0

    init(count: Int) { floors = Array(repeating: nil, count: count) }

    func set(_ w: Int, _ l: Latencies) {
        lock.withLock {
            floors[w] = l
            finished += 1
        }
    }

    func get(_ w: Int) -> Latencies? { lock.withLock { floors[w] } }
    var done: Bool { lock.withLock { finished == floors.count } }
}
