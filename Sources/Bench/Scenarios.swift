// Bench/Scenarios.swift — the measured runs of the real `pulse` binary.
//
// `idle`: the pulse alone on its core. `load`: stress-ng keeps the other
// core(s) busy and wrk (or our own bounded hammer) keeps GETting `/metrics`
// and `/tempo` of the pulse, whose admin API shares the loop thread. `per001`:
// 120 bpm (2 Hz), the rate PER-001/002 are written for.
// Each run: start the pulse pinned to the bench core (SCHED_FIFO, mlock), let
// it settle, then measure a window of `--seconds`: its own per-beat records
// (/debug/beats) give jitter, the independent subscriber gives delivery,
// /metrics gives allocated bytes, /proc gives CPU time. Floors for the run
// come from Floors.swift under the same conditions (for `load`, with the same
// load running against a second, nearly idle pulse at 4 bpm).

import CLoop
import Foundation
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

/// What every scenario needs: where things are, what the machine offers.
final class BenchContext {
    let options: BenchOptions
    let cpu: Int
    let otherCPUs: [Int]
    var priority = 50  // SCHED_FIFO for pulse, floors and baseline; 0 when refused
    var mlock = true
    let tempDir: String
    let pulsePath: String
    let pulse: PulseBinary
    var natsURL = ""
    /// The monitoring port (`-m`) of the nats-server Bench started; nil for `--nats`.
    var natsMonitorPort: Int? = nil
    /// The nats-server Bench started (nil: `--nats` given): the election scenarios read its CPU.
    var natsPid: Int32?
    var notes: [String] = []
    let tools: [String: String?]

    init(options: BenchOptions, pulse: PulseBinary) {
        self.options = options
        let n = onlineCPUs()
        cpu = options.cpu ?? (n - 1)
        otherCPUs = (0..<n).filter { $0 != (options.cpu ?? (n - 1)) }
        tempDir = makeTempDir("run")
        // Resolved (and built when needed) by resolvePulseBinary: PulseBinary.swift.
        pulsePath = pulse.path
        self.pulse = pulse
        var tools: [String: String?] = [:]
        for t in ["cyclictest", "stress-ng", "wrk", "nats-server", "perf", "valgrind"] { tools[t] = findTool(t) }
        self.tools = tools
    }

    func tool(_ name: String) -> String? { tools[name] ?? nil }
}

/// One measured beat source (a pulse scenario or the baseline) beside its floors.
struct ScenarioResult {
    var name: String
    var bpm: Int
    var beats = 0  // beats whose instant fell in the window
    var published = 0
    var received = 0
    var jitter = Latencies()  // |publish − scheduled|, the publisher's own records
    var delivery = Latencies()  // subscriber receive − scheduled
    var timerFloor: Floor
    var natsFloor: Floor
    /// cyclictest at the beat's own sleep length (-i = the period); nil when not measured.
    var periodFloor: Floor? = nil
    /// Where the publish times came from: "tx_timestamp", "write", or "mixed (…)".
    var jitterSource = "none"
    /// |receive interval − period| between consecutive beats at the subscriber.
    var intervalJitter = Latencies()
    /// Per-beat delivery stages (label, distribution), in the order a beat goes through them.
    var stages: [(String, Latencies)] = []
    /// Beats published more than 1 ms after their instant (the pulse's "late wakes").
    var lateOver1ms = 0
    /// The pulse's extra flags (e.g. -spin-max-us 0 for the shared-host mode).
    var mode = "spin"
    /// The fanout scenario's own figures.
    var fanout: FanoutResult? = nil
    var allocatedBytesPerBeat: Double? = nil
    /// CPU per beat of the whole pulse process (every thread: the loop, the
    /// NATS client's helper threads, storage), over the window's beats.
    var cpuUsPerBeat: Double? = nil
    /// CPU per beat of the pulse's loop thread alone (the beat path, the
    /// echo of its own frames, timers, admin): what the beat mode changes,
    /// and what the shared-host target is judged on.
    var loopCpuUsPerBeat: Double? = nil
    /// Times the loop thread woke per beat (`backbeat_loop_wakes_total`).
    var loopWakesPerBeat: Double? = nil
    /// The machine's CPU floor per beat (bare timer wake + one frame write), same run.
    var cpuFloor: CpuFloor? = nil
    /// The bare C publisher woken the same way (spin or timer only), same run.
    var sendFloor: SendFloor? = nil
    /// The pulse's own stages the issue-24 verdicts read: |decision − instant| and decision → TX.
    var decisionJitter = Latencies()
    var decisionToTx = Latencies()
    var crossCheckViolations = 0  // beats received before the publisher says it published
    var notes: [String] = []
    var load: String? = nil
    var election: ElectionResult? = nil  // the election scenario's own figures
    var flood: FloodResult? = nil  // the flood scenario's own figures (Flood.swift)

    var per001Pass: Bool { delivery.count > 0 && delivery.summary.p95 <= 100_000 }
    var per002Pass: Bool { jitter.count > 0 && jitter.summary.p95 <= 20_000 }
}

// MARK: - nats-server

func startNatsServer(_ ctx: BenchContext) throws -> Child? {
    if let url = ctx.options.natsURL {
        ctx.natsURL = url
        return nil
    }
    guard let binary = ctx.tool("nats-server") else {
        throw BenchError("nats-server not found (apt-get install nats-server), or pass --nats nats://127.0.0.1:PORT")
    }
    let port = freePort()
    let monitorPort = freePort()
    // JetStream on: the election-kv scenario's pulses elect through its KV.
    // Monitoring on: the flood scenario reads its slow consumers (/varz).
    let child = try Child(
        name: "nats-server", path: binary,
        arguments: [
            "-a", "127.0.0.1", "-p", "\(port)", "-m", "\(monitorPort)", "-js", "-sd", ctx.tempDir + "/nats-js",
        ],
        outputPath: ctx.tempDir + "/nats-server.log")
    guard waitUntil(seconds: 10, { canConnect(port: port) }) else {
        child.stop()
        throw BenchError("nats-server did not start on 127.0.0.1:\(port)")
    }
    ctx.natsURL = "nats://127.0.0.1:\(port)"
    ctx.natsMonitorPort = monitorPort
    ctx.natsPid = child.pid
    return child
}

// MARK: - pulse

final class PulseRun {
    let child: Child
    let adminPort: Int
    let dataDir: String

    /// A node started elsewhere (a `BenchCluster`'s leader), measured like a lone pulse.
    init(child: Child, adminPort: Int, dataDir: String) {
        self.child = child
        self.adminPort = adminPort
        self.dataDir = dataDir
    }

    /// Starts `pulse` pinned to the bench core; falls back to no real-time when refused.
    init(_ ctx: BenchContext, name: String, bpm: Int, cluster: String = "bench", extraArgs: [String] = []) throws {
        guard access(ctx.pulsePath, X_OK) == 0 else {
            throw BenchError(
                "no pulse binary at \(ctx.pulsePath); build it first (swift build -c release --product pulse) or set PULSE_BINARY"
            )
        }
        var attempt = 0
        while true {
            attempt += 1
            let port = freePort()
            let dir = ctx.tempDir + "/\(name)-\(attempt)"
            var args = [
                "-bootstrap", "-cluster", cluster, "-bpm", "\(bpm)", "-min-bpm", "1", "-max-bpm", "\(max(600, bpm))",
                "-nats", ctx.natsURL, "-admin-port", "\(port)", "-data-dir", dir, "-cpu", "\(ctx.cpu)",
            ]
            if ctx.priority > 0 { args += ["-rt-priority", "\(ctx.priority)"] }
            if ctx.mlock { args += ["-mlock"] }
            args += extraArgs
            let child = try Child(name: "pulse", path: ctx.pulsePath, arguments: args, outputPath: dir + ".log")
            let up = waitUntil(seconds: 15) { !child.isRunning || canConnect(port: port) }
            if up && child.isRunning {
                self.child = child
                adminPort = port
                dataDir = dir
                return
            }
            let status = child.stop()
            let log = child.output.split(separator: "\n").suffix(3).joined(separator: " | ")
            if attempt == 1 && (ctx.priority > 0 || ctx.mlock) {
                ctx.notes.append(
                    "pulse refused -rt-priority/-mlock (exit \(status): \(log)); everything runs without them")
                ctx.priority = 0
                ctx.mlock = false
                continue
            }
            throw BenchError("pulse did not start (exit \(status)): \(log)")
        }
    }

    /// The committed epoch as the running node serves it (`GET /timeline`,
    /// requirements §12: the same for a single node, a one-voter cluster,
    /// and a cluster's nodes), or nil.
    func epoch() -> TempoEpoch? {
        guard let (status, body) = httpGet(port: adminPort, path: "/timeline"), status == 200,
            let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            let epoch = object["epoch"] as? [String: Any],
            let startNs = (epoch["start_ns"] as? NSNumber)?.int64Value,
            let startBeat = (epoch["start_beat"] as? NSNumber)?.int64Value,
            let bpm = (epoch["bpm"] as? NSNumber)?.int64Value
        else { return nil }
        return TempoEpoch(startBeat: startBeat, startNs: startNs, bpm: bpm)
    }

    /// The timeline at a constant `bpm` through the node's last published beat, or nil.
    func epochFromRecords(bpm: Int) -> TempoEpoch? {
        beats().last { $0.published }.map { TempoEpoch(startBeat: $0.index, startNs: $0.scheduled_ns, bpm: Int64(bpm)) }
    }

    /// Sums every sample of `names` in the Prometheus text of /metrics.
    func metrics(_ names: [String]) -> [String: Double] {
        guard let (status, body) = httpGet(port: adminPort, path: "/metrics"), status == 200 else { return [:] }
        var out: [String: Double] = [:]
        for line in String(decoding: body, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ")
            guard parts.count >= 2, let value = Double(parts[1]) else { continue }
            let name = String(parts[0].prefix(while: { $0 != "{" }))
            if names.contains(name) { out[name, default: 0] += value }
        }
        return out
    }

    /// One /debug/beats record. `publish_ns` is the honest publish time (TX
    /// timestamp, else write return); the stage fields are absent from
    /// pulse binaries older than the TX timestamps.
    struct BeatRecord: Decodable {
        var index: Int64
        var scheduled_ns: Int64
        var wake_ns: Int64
        var publish_ns: Int64
        var done_ns: Int64
        var published: Bool
        var decision_ns: Int64?
        var write_ns: Int64?
        var tx_ns: Int64?
        var source: String?
    }

    func beats() -> [BeatRecord] {
        struct Body: Decodable { var beats: [BeatRecord] }
        guard let (status, body) = httpGet(port: adminPort, path: "/debug/beats"), status == 200,
            let decoded = try? JSONDecoder().decode(Body.self, from: Data(body))
        else { return [] }
        return decoded.beats
    }

    func stop() -> Int32 { child.stop(seconds: 5) }
}

// MARK: - Load

/// stress-ng on the other core(s); wrk (or our own hammer) on /metrics and /tempo.
final class CPULoad {
    private var child: Child?
    var description = "none"

    init(_ ctx: BenchContext, seconds: Int) {
        guard !ctx.otherCPUs.isEmpty else {
            description = "no other core to load"
            return
        }
        let cpus = ctx.otherCPUs.map(String.init).joined(separator: ",")
        if let stress = ctx.tool("stress-ng"),
            let c = try? Child(
                name: "stress-ng", path: stress,
                arguments: [
                    "--cpu", "\(ctx.otherCPUs.count)", "--taskset", cpus, "--timeout", "\(seconds)s", "--quiet",
                ])
        {
            child = c
            description = "stress-ng --cpu \(ctx.otherCPUs.count) on cpu \(cpus)"
        } else {
            // Fallback: one busy thread per other core, bounded by `seconds`.
            let deadline = cloop_monotonic_ns() + Int64(seconds) * 1_000_000_000
            for cpu in ctx.otherCPUs {
                Thread.detachNewThread {
                    _ = cloop_pin_to_cpu(Int32(cpu))
                    var x: UInt64 = 1
                    while cloop_monotonic_ns() < deadline {
                        for _ in 0..<10_000 { x = x &* 6_364_136_223_846_793_005 &+ 1 }
                    }
                    sink(Int64(bitPattern: x))
                }
            }
            description = "stress-ng not installed: own busy threads on cpu \(cpus)"
        }
    }

    func stop() { child?.stop(seconds: 3) }
}

final class HTTPLoad {
    private var children: [Child] = []
    private var stopFlag = false
    private var hammerCount = 0
    private var hammerErrors = 0
    private let lock = NSLock()
    private let started = cloop_monotonic_ns()
    let usesWrk: Bool

    init(_ ctx: BenchContext, port: Int, seconds: Int) {
        let paths = ["/metrics", "/tempo"]
        if let wrk = ctx.tool("wrk") {
            usesWrk = true
            for (i, path) in paths.enumerated() {
                if let c = try? Child(
                    name: "wrk", path: wrk,
                    arguments: ["-t1", "-c2", "-d\(seconds)s", "--timeout", "2s", "http://127.0.0.1:\(port)\(path)"],
                    outputPath: ctx.tempDir + "/wrk-\(port)-\(i).out")
                {
                    children.append(c)
                }
            }
        } else {
            usesWrk = false
            // Own hammer: 2 threads per path, sequential GETs, bounded by time and count.
            let deadline = cloop_monotonic_ns() + Int64(seconds) * 1_000_000_000
            for path in paths {
                for _ in 0..<2 {
                    Thread.detachNewThread { [self] in
                        var n = 0
                        while n < 5_000_000 && cloop_monotonic_ns() < deadline && !isStopped {
                            let ok = httpGet(port: port, path: path, timeoutMs: 1000)?.status == 200
                            lock.lock()
                            if ok { hammerCount += 1 } else { hammerErrors += 1 }
                            lock.unlock()
                            n += 1
                        }
                    }
                }
            }
        }
    }

    private var isStopped: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopFlag
    }

    /// Stops and describes what was done (wrk's Requests/sec, or our own count).
    func stop() -> String {
        lock.lock()
        stopFlag = true
        lock.unlock()
        if usesWrk {
            var rates: [String] = []
            for c in children {
                c.stop(seconds: 3, signal: SIGINT)  // wrk prints its summary on SIGINT
                let line = c.output.split(separator: "\n").first { $0.hasPrefix("Requests/sec:") }
                rates.append(
                    line.map {
                        $0.replacingOccurrences(of: "Requests/sec:", with: "").trimmingCharacters(in: .whitespaces)
                    } ?? "?")
            }
            return "wrk -t1 -c2 on /metrics (\(rates.first ?? "?") req/s) and /tempo (\(rates.last ?? "?") req/s)"
        }
        let elapsed = Double(cloop_monotonic_ns() - started) / 1e9
        lock.lock()
        defer { lock.unlock() }
        return String(
            format: "wrk not installed: own hammer, 4 threads on /metrics and /tempo, %.0f req/s, %d errors",
            Double(hammerCount) / max(elapsed, 0.001), hammerErrors)
    }
}

// MARK: - A measured pulse run

/// Load that runs over a measured window (e.g. the flood's requests).
protocol WindowLoad: AnyObject {
    /// Ends the load when the window ends; the text becomes the run's `load`.
    func stop() -> String
    /// Adds the load's own figures to the run's result.
    func report(into result: inout ScenarioResult)
}

func runPulseScenario(
    _ ctx: BenchContext, name: String, bpm: Int, timerFloor: Floor, natsFloor: Floor,
    withHTTPLoad: Bool, periodFloor: Floor? = nil, cpuFloor: CpuFloor? = nil, sendFloor: SendFloor? = nil,
    extraArgs: [String] = [], windowLoad: ((PulseRun) throws -> WindowLoad)? = nil,
    existing: PulseRun? = nil, subject: String = "backbeat.bench.beat", seconds windowSeconds: Int? = nil
) throws -> ScenarioResult {
    let seconds = windowSeconds ?? ctx.options.seconds
    var result = ScenarioResult(name: name, bpm: bpm, timerFloor: timerFloor, natsFloor: natsFloor)
    result.periodFloor = periodFloor
    result.cpuFloor = cpuFloor
    result.sendFloor = sendFloor
    if !extraArgs.isEmpty { result.mode = extraArgs.joined(separator: " ") }
    let receiver = try Receiver(url: ctx.natsURL, subject: subject, payload: .beatFrame)
    defer { receiver.close() }
    // An `existing` pulse (a cluster's leader) is its owner's to stop.
    let pulse = try existing ?? PulseRun(ctx, name: name, bpm: bpm, extraArgs: extraArgs)
    defer {
        if existing == nil {
            let status = pulse.stop()
            if status != 0 { ctx.notes.append("\(name): pulse exited with status \(status) on SIGTERM") }
        }
    }
    let period = 60.0 / Double(bpm)
    // Settle: two frames received (the first beat is on the next whole second).
    guard waitUntil(seconds: 5 + 3 * period, { receiver.received >= 2 }) else {
        throw BenchError("\(name): no frames from the pulse within \(Int(5 + 3 * period)) s")
    }
    guard let epoch = pulse.epoch() ?? pulse.epochFromRecords(bpm: bpm) else {
        throw BenchError("\(name): cannot read the node's GET /timeline or /debug/beats")
    }
    var http: HTTPLoad? = nil
    if withHTTPLoad {
        http = HTTPLoad(ctx, port: pulse.adminPort, seconds: seconds + 10)
        sleepSeconds(0.5)
    }
    let window = try windowLoad?(pulse)
    if window != nil { sleepSeconds(0.5) }
    let metricNames = ["backbeat_hot_path_allocated_bytes_total", "backbeat_beats_total", "backbeat_loop_wakes_total"]
    let m0 = pulse.metrics(metricNames)
    let cpu0 = processCPUNs(pulse.child.pid)
    let loop0 = threadCPUNs(pulse.child.pid, tid: pulse.child.pid)
    let steal0 = stealTicks(cpu: ctx.cpu)
    let windowStart = cloop_realtime_ns()
    sleepSeconds(Double(seconds))
    let windowEnd = cloop_realtime_ns()
    if let s0 = steal0, let s1 = stealTicks(cpu: ctx.cpu) {
        // The hypervisor's share of the pulse's vCPU: what a spin cannot beat.
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        result.notes.append(
            String(
                format: "hypervisor steal on cpu %d during the window: %.2f %% (/proc/stat)", ctx.cpu,
                Double(s1 - s0) / ticks / (Double(windowEnd - windowStart) / 1e9) * 100))
    }
    let loop1 = threadCPUNs(pulse.child.pid, tid: pulse.child.pid)
    let cpu1 = processCPUNs(pulse.child.pid)
    let m1 = pulse.metrics(metricNames)
    if let http { result.load = http.stop() }
    if let window { result.load = window.stop() }
    sleepSeconds(min(1.0, 0.2 + period))  // let the last frames arrive
    let records = pulse.beats()

    // The window's beats, by the timeline (first instant ≥ start, last < end).
    let first = epoch.beat(atOrBeforeNs: windowStart - 1) + 1
    let last = epoch.beat(atOrBeforeNs: windowEnd - 1)
    result.beats = Int(max(0, last - first + 1))
    var recordByIndex: [Int64: PulseRun.BeatRecord] = [:]
    for r in records where r.index >= first && r.index <= last { recordByIndex[r.index] = r }
    var scheduleMismatch = 0
    var sources: [String: Int] = [:]
    var lead = Latencies()
    var wakeToDecision = Latencies()
    var decisionJitter = Latencies()
    var decisionToWrite = Latencies()
    var decisionToTx = Latencies()
    var publishToReceive = Latencies()
    for r in recordByIndex.values where r.published {
        result.published += 1
        result.jitter.record(ns: abs(r.publish_ns - r.scheduled_ns))
        if r.publish_ns - r.scheduled_ns > 1_000_000 { result.lateOver1ms += 1 }
        sources[r.source ?? "decision (old pulse)", default: 0] += 1
        if r.scheduled_ns != epoch.instantNs(ofBeat: r.index) { scheduleMismatch += 1 }
        guard let decision = r.decision_ns, let written = r.write_ns else { continue }
        lead.record(ns: r.scheduled_ns - r.wake_ns)
        wakeToDecision.record(ns: decision - r.wake_ns)
        decisionJitter.record(ns: abs(decision - r.scheduled_ns))
        decisionToWrite.record(ns: written - decision)
        if let tx = r.tx_ns, tx != 0 { decisionToTx.record(ns: tx - decision) }
    }
    result.jitterSource =
        sources.count == 1
        ? sources.keys.first!
        : sources.isEmpty
            ? "none"
            : "mixed (" + sources.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
                + ")"
    var seen = Set<Int64>()
    var receivedAt: [Int64: Int64] = [:]
    for rx in receiver.snapshot() where rx.value >= first && rx.value <= last && !seen.contains(rx.value) {
        seen.insert(rx.value)
        receivedAt[rx.value] = rx.receivedNs
        result.received += 1
        let scheduled = epoch.instantNs(ofBeat: rx.value)
        result.delivery.record(ns: rx.receivedNs - scheduled)
        if let r = recordByIndex[rx.value], r.published {
            if rx.receivedNs < r.publish_ns { result.crossCheckViolations += 1 }
            publishToReceive.record(ns: rx.receivedNs - r.publish_ns)
        }
    }
    // The subscriber's interval jitter: consecutive beats only.
    for (k, t) in receivedAt {
        guard let previous = receivedAt[k - 1] else { continue }
        let period = epoch.instantNs(ofBeat: k) - epoch.instantNs(ofBeat: k - 1)
        result.intervalJitter.record(ns: abs((t - previous) - period))
    }
    result.decisionJitter = decisionJitter
    result.decisionToTx = decisionToTx
    if lead.count > 0 {
        result.stages = [
            ("timer lead (instant − wake)", lead), ("wake → decision", wakeToDecision),
            ("|decision − instant|", decisionJitter), ("decision → write returned", decisionToWrite),
            ("decision → TX timestamp", decisionToTx), ("publish → subscriber", publishToReceive),
        ]
        if let bare = sendFloor {
            result.stages += [
                ("bare C: |decision − instant|", bare.decision), ("bare C: decision → write", bare.decisionToWrite),
                ("bare C: decision → TX", bare.decisionToTx),
            ]
        }
    }
    if recordByIndex.count < result.beats {
        result.notes.append("/debug/beats holds \(recordByIndex.count) of the window's \(result.beats) beats")
    }
    if result.published < result.beats {
        result.notes.append("\(result.beats - result.published) beats not published (missed)")
    }
    if result.received < result.published {
        result.notes.append("\(result.published - result.received) published frames not received by the subscriber")
    }
    if scheduleMismatch > 0 {
        result.notes.append("\(scheduleMismatch) beats' scheduled_ns differ from GET /timeline's")
    }
    if result.crossCheckViolations > 0 {
        result.notes.append(
            "cross-check: \(result.crossCheckViolations) frames received before their recorded publish time")
    }
    if let b0 = m0["backbeat_beats_total"], let b1 = m1["backbeat_beats_total"], b1 > b0 {
        let beats = b1 - b0
        if let a0 = m0["backbeat_hot_path_allocated_bytes_total"],
            let a1 = m1["backbeat_hot_path_allocated_bytes_total"]
        {
            result.allocatedBytesPerBeat = (a1 - a0) / beats
        } else {
            result.notes.append("/metrics has no backbeat_hot_path_allocated_bytes_total")
        }
        if let cpu0, let cpu1 { result.cpuUsPerBeat = Double(cpu1 - cpu0) / 1000 / beats }
        if let loop0, let loop1 { result.loopCpuUsPerBeat = Double(loop1 - loop0) / 1000 / beats }
        if let w0 = m0["backbeat_loop_wakes_total"], let w1 = m1["backbeat_loop_wakes_total"] {
            result.loopWakesPerBeat = (w1 - w0) / beats
        }
    } else {
        result.notes.append("/metrics gave no beat count for the window")
    }
    window?.report(into: &result)
    if withHTTPLoad, result.cpuUsPerBeat != nil {
        result.notes.append("CPU per beat includes serving the HTTP load (same process, same thread)")
    }
    return result
}

/// The floors under `load`: stress-ng is already running; wrk hammers a
/// second pulse at 4 bpm on the same core, so the admin API load is real.
func measureFloorsUnderLoad(_ ctx: BenchContext, bpm: Int) throws -> (Floor, Floor, String) {
    let seconds = ctx.options.seconds
    let target = try PulseRun(ctx, name: "load-floor-target", bpm: 4, cluster: "bench-floor")
    defer { _ = target.stop() }
    let http = HTTPLoad(ctx, port: target.adminPort, seconds: 2 * seconds + 10)
    sleepSeconds(0.5)
    let timer = measureTimerFloor(seconds: seconds, cpu: ctx.cpu, priority: ctx.priority, tempDir: ctx.tempDir)
    let nats = measureNatsFloor(url: ctx.natsURL, bpm: bpm, seconds: seconds, cpu: ctx.cpu, priority: ctx.priority)
    return (timer, nats, http.stop())
}
