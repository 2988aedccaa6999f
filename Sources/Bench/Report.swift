// Bench/Report.swift — the verdicts and the two text forms of the report:
// the terminal table (with pass/fail against PER-001/002 and the ratios of
// requirements §9) and the `--json` document in issue 6's shape.

import Foundation

#if canImport(Glibc)
    import Glibc
#endif

struct Check {
    var scenario: String
    var target: String
    var pass: Bool?  // nil: could not be evaluated
    var detail: String
}

struct MachineInfo {
    var date: String
    var commit: String
    var cpuModel: String
    var cpus: Int
    var kernel: String
    var swift: String
}

struct BenchReport {
    var machine: MachineInfo
    var ctx: BenchContext
    var scenarios: [ScenarioResult] = []
    var baseline: ScenarioResult? = nil
    /// `--soak` (Soak.swift) and the `scale` scenario (Scale.swift).
    var soak: SoakResult? = nil
    var scale: ScaleResult? = nil
    var drift: [DriftResult] = []
    var elapsedSeconds = 0.0

    /// The scenario the baseline is compared with (same conditions: idle, same bpm).
    var baselineReference: ScenarioResult? { scenarios.first { $0.name == "idle" } }

    var checks: [Check] {
        var out: [Check] = []
        for s in scenarios {
            if let e = s.election {
                let f = e.failoverSummary
                out.append(
                    Check(
                        scenario: s.name, target: "§9 failover ≤ 1 s (kill → new frame)",
                        pass: e.failoverPass,
                        detail: f.map {
                            String(
                                format: "max %.1f ms (min %.1f, median %.1f) over %d kill(s)", $0.max, $0.min,
                                $0.median, e.kills.count)
                        }
                            ?? "no kill round completed"))
                out.append(
                    Check(
                        scenario: s.name, target: "§9 graceful stop misses no beat", pass: e.gracefulPass,
                        detail: e.graceful.map { g in
                            g.failoverMs == nil ? "no handover seen" : "\(g.missed.map(String.init) ?? "?") missed"
                        } ?? "not run"))
                out.append(
                    Check(
                        scenario: s.name, target: "§4 no index repeated or backwards", pass: e.orderPass,
                        detail: "\(e.repeated) repeated, \(e.backwards) backwards; \(s.received) distinct indices"))
                continue
            }
            if let f = s.fanout {
                out += f.checks(scenario: s.name)
                continue
            }
            if let f = s.flood {
                out += f.checks(scenario: s.name, s)
                continue
            }
            let j = s.jitter.summary
            let d = s.delivery.summary
            // The jitter is judged against the floor at the beat's own sleep
            // length when it was measured (the matching floor), else the 1 ms one.
            let matching = s.periodFloor ?? s.timerFloor
            let t = matching.latencies.summary
            let n = s.natsFloor.latencies.summary
            let jitterFactor = s.name == "load" || s.name == "shared" ? 1.0 : 0.25
            let floorName = s.periodFloor != nil ? "timer-wake p99 at the period" : "timer-wake p99 (1 ms)"
            if s.name == "idle", let bare = s.sendFloor {
                // §9 since issue 24: the spin's jitter in two parts, each
                // against what it can be judged on: the send path against the
                // bare C publisher's (same bytes, server, socket options, wake),
                // and the spin's exit against the instant.
                out.append(
                    ratioCheck(
                        s.name, "§9 send path: decision→TX p99 ≤ 1.1× bare C", s.decisionToTx.summary.p99,
                        bare.decisionToTx.summary.p99, 1.1, s.decisionToTx.count > 0 && bare.decisionToTx.count > 0))
                let exit = s.decisionJitter.summary.p99
                out.append(
                    Check(
                        scenario: s.name, target: "§9 spin exit − instant p99 ≤ 1 µs",
                        pass: s.decisionJitter.count > 0 ? exit <= 1 : nil,
                        detail: s.decisionJitter.count > 0
                            ? "\(us(exit)) (bare C: \(us(bare.decision.summary.p99)))" : "no samples"))
            } else if s.name == "shared", s.sendFloor != nil || s.cpuFloor != nil {
                // §9 since issue 24: the wake (decision − instant, the frame's
                // send path aside) against the timer-wake floor at the period,
                // and the loop thread's CPU against the bare C publisher's.
                out.append(
                    ratioCheck(
                        s.name, "§9 timer-only wake: |decision−instant| p99 ≤ 1.25× \(floorName)",
                        s.decisionJitter.summary.p99, t.p99, 1.25,
                        s.decisionJitter.count > 0 && matching.latencies.count > 0))
                if let f = s.cpuFloor?.usPerBeat, let loop = s.loopCpuUsPerBeat {
                    var check = ratioCheck(
                        s.name, "§9 timer-only loop CPU/beat ≤ 1.25× bare floor", loop, f, 1.25, true)
                    check.detail =
                        String(
                            format: "loop thread %.1f µs vs limit %.1f (floor %.1f: timer wake + frame write", loop,
                            f * 1.25, f)
                        + String(format: "; ratio %.2f)", loop / f)
                        + (s.cpuUsPerBeat.map { String(format: "; process %.1f", $0) } ?? "")
                    out.append(check)
                } else {
                    out.append(
                        Check(
                            scenario: s.name, target: "§9 timer-only loop CPU/beat ≤ 1.25× bare floor", pass: nil,
                            detail: "not measured"))
                }
            } else if s.name != "per001" {
                out.append(
                    ratioCheck(
                        s.name, "§9 jitter p99 ≤ \(jitterFactor == 1 ? "1×" : "¼ ×") \(floorName)",
                        j.p99, t.p99, jitterFactor, s.jitter.count > 0 && matching.latencies.count > 0))
            }
            if s.name != "per001" {
                out.append(
                    ratioCheck(
                        s.name, "§9 delivery p99 ≤ 1.25× NATS floor p99", d.p99, n.p99, 1.25,
                        s.delivery.count > 0 && s.natsFloor.latencies.count > 0))
            } else {
                out.append(
                    Check(
                        scenario: s.name, target: "PER-001 delivery p95 ≤ 100 ms at 2 Hz",
                        pass: s.delivery.count > 0 ? s.per001Pass : nil, detail: "p95 \(us(d.p95))"))
                out.append(
                    Check(
                        scenario: s.name, target: "PER-002 jitter p95 ≤ 20 ms",
                        pass: s.jitter.count > 0 ? s.per002Pass : nil, detail: "p95 \(us(j.p95))"))
            }
            if let a = s.allocatedBytesPerBeat {
                out.append(
                    Check(
                        scenario: s.name, target: "§9 0 bytes allocated per beat", pass: a == 0,
                        detail: String(format: "%.1f B/beat", a)))
            } else {
                out.append(
                    Check(scenario: s.name, target: "§9 0 bytes allocated per beat", pass: nil, detail: "not measured"))
            }
        }
        return out + (soak?.checks ?? []) + drift.flatMap(\.checks) + (scale?.checks ?? [])
    }

    private func ratioCheck(
        _ name: String, _ target: String, _ value: Double, _ floor: Double, _ factor: Double,
        _ measurable: Bool
    ) -> Check {
        guard measurable else { return Check(scenario: name, target: target, pass: nil, detail: "no samples") }
        let limit = floor * factor
        return Check(
            scenario: name, target: target, pass: value <= limit,
            detail:
                "\(us(value)) vs limit \(us(limit)) (floor \(us(floor)); ratio \(String(format: "%.2f", floor > 0 ? value / floor : 0)))"
        )
    }

    // MARK: terminal

    func text() -> String {
        var o = ""
        let c = ctx
        o += "BACKBEAT pulse benchmark — \(machine.date) — commit \(machine.commit)\n"
        o += "machine: \(machine.cpuModel), \(machine.cpus) cores, Linux \(machine.kernel), \(machine.swift)\n"
        o +=
            "pulse: cpu \(c.cpu), " + (c.priority > 0 ? "SCHED_FIFO \(c.priority)" : "no real-time priority")
            + (c.mlock ? ", mlock" : "") + "; nats-server \(c.natsURL); \(c.options.seconds) s per run and per floor\n"
        o += "pulse binary: \(c.pulsePath) — \(c.pulse.version), \(c.pulse.mode) build (\(c.pulse.origin))\n"
        let tools = ["cyclictest", "stress-ng", "wrk", "perf", "valgrind"].map {
            "\($0) \(c.tool($0) == nil ? "MISSING" : "ok")"
        }
        o += "tools: " + tools.joined(separator: ", ") + "\n\n"
        if !scenarios.isEmpty || baseline != nil {
            o +=
                pad("scenario", 10) + pad("bpm", 5, right: true) + pad("beats", 7, right: true) + "  "
                + pad("µs", 13) + ["p50", "p95", "p99", "p99.9", "max", "n"].map { pad($0, 10, right: true) }.joined()
                + "\n"
            for s in scenarios + (baseline.map { [$0] } ?? []) {
                if let f = s.fanout {
                    o += f.text(name: s.name, bpm: s.bpm)
                    for note in s.notes { o += String(repeating: " ", count: 24) + "note: \(note)\n" }
                    continue
                }
                var rows: [(String, Latencies)] = [
                    ("jitter", s.jitter), ("delivery", s.delivery), ("interval jit.", s.intervalJitter),
                    ("timer floor", s.timerFloor.latencies),
                ]
                if let p = s.periodFloor, s.election == nil { rows.append(("timer@period", p.latencies)) }
                rows.append(("NATS floor", s.natsFloor.latencies))
                for (i, (label, lat)) in rows.enumerated() {
                    let p = lat.summary
                    o +=
                        (i == 0
                            ? pad(s.name, 10) + pad("\(s.bpm)", 5, right: true) + pad("\(s.beats)", 7, right: true)
                            : String(repeating: " ", count: 22)) + "  " + pad(label, 13)
                    o += [p.p50, p.p95, p.p99, p.p999, p.max].map { pad(num($0), 10, right: true) }.joined()
                    o += pad("\(p.count)", 10, right: true) + "\n"
                }
                let alloc = s.allocatedBytesPerBeat.map { String(format: "%.1f B/beat", $0) } ?? "n/a"
                var cpu = s.cpuUsPerBeat.map { String(format: "%.1f µs CPU/beat", $0) } ?? "n/a"
                if let l = s.loopCpuUsPerBeat {
                    cpu += String(format: " (loop thread %.1f", l)
                    cpu += s.loopWakesPerBeat.map { String(format: ", %.2f wakes/beat)", $0) } ?? ")"
                }
                if let e = s.election {
                    o +=
                        String(repeating: " ", count: 24)
                        + "\(s.received) distinct indices received over \(s.beats) beats of the timeline (the rest: missed in failovers)\n"
                    for line in e.lines(bpm: s.bpm) { o += String(repeating: " ", count: 24) + line + "\n" }
                } else {
                    o +=
                        String(repeating: " ", count: 24)
                        + "allocated \(alloc), \(cpu), published \(s.published)/\(s.beats), received \(s.received)\n"
                    o += String(repeating: " ", count: 24) + "mode \(s.mode); jitter source: \(s.jitterSource)\n"
                    if let f = s.cpuFloor, let total = f.usPerBeat {
                        o +=
                            String(repeating: " ", count: 24)
                            + String(
                                format:
                                    "CPU floor: %.1f µs/beat (timer wake + frame write; the write %.1f), %d wakes\n",
                                total, f.writeUsPerBeat ?? 0, f.wakes)
                    }
                    o += String(repeating: " ", count: 24) + "wakes > 1 ms late: " + lateLine(s) + "\n"
                    if !s.stages.isEmpty {
                        o += String(repeating: " ", count: 24) + "stages (µs):" + String(repeating: " ", count: 20)
                        o += ["p50", "p99", "max"].map { pad($0, 10, right: true) }.joined() + "\n"
                        for (label, lat) in s.stages {
                            let p = lat.summary
                            o += String(repeating: " ", count: 26) + pad(label, 30)
                            o += [p.p50, p.p99, p.max].map { pad(num($0), 10, right: true) }.joined() + "\n"
                        }
                    }
                }
                if let load = s.load { o += String(repeating: " ", count: 24) + "load: \(load)\n" }
                for note in s.notes + s.timerFloor.notes + s.natsFloor.notes {
                    o += String(repeating: " ", count: 24) + "note: \(note)\n"
                }
            }
            o += "\n  floors: timer = \(scenarios.first?.timerFloor.source ?? baseline?.timerFloor.source ?? "-")\n"
            if let p = scenarios.first(where: { $0.periodFloor != nil })?.periodFloor {
                o += "          timer@period = \(p.source) (the beat's own sleep length)\n"
            }
            o += "          NATS  = \(scenarios.first?.natsFloor.source ?? baseline?.natsFloor.source ?? "-")\n\n"
        }
        if let soak { o += soak.text() + "\n" }
        for d in drift { o += d.text() + "\n" }
        if let scale { o += scale.text() + "\n" }
        let cs = checks
        if !cs.isEmpty {
            o += "targets\n"
            for ch in cs {
                let mark = ch.pass == nil ? "[ -- ]" : (ch.pass! ? "[PASS]" : "[FAIL]")
                o += "  \(mark) \(pad(ch.scenario, 9)) \(pad(ch.target, 42)) \(ch.detail)\n"
            }
            let failed = cs.filter { $0.pass == false }
            o +=
                failed.isEmpty
                ? "  every evaluated target is met\n\n"
                : "  MISSED: \(failed.count) target(s): "
                    + failed.map { "\($0.scenario) \($0.target)" }.joined(separator: "; ") + "\n\n"
        }
        if let spin = scenarios.first(where: { $0.name == "idle" }),
            let shared = scenarios.first(where: { $0.name == "shared" })
        {
            o += "modes side by side (same core, priority and bpm)\n"
            o +=
                "  " + pad("mode", 34)
                + ["loop µs/beat", "proc µs/beat", "jitter p50", "jitter p99", "deliv. p99"].map {
                    pad($0, 13, right: true)
                }.joined() + "\n"
            for s in [spin, shared] {
                let label = s.name == "idle" ? "spin (default -spin-max-us 2000)" : "timer only (-spin-max-us 0)"
                o +=
                    "  " + pad(label, 34)
                    + [
                        s.loopCpuUsPerBeat.map { String(format: "%.1f", $0) } ?? "n/a",
                        s.cpuUsPerBeat.map { String(format: "%.1f", $0) } ?? "n/a", num(s.jitter.summary.p50),
                        num(s.jitter.summary.p99), num(s.delivery.summary.p99),
                    ].map { pad($0, 13, right: true) }.joined() + "\n"
            }
            if let f = shared.cpuFloor ?? spin.cpuFloor, let total = f.usPerBeat {
                o +=
                    "  " + pad("CPU floor (timer wake + write)", 34)
                    + pad(String(format: "%.1f", total), 13, right: true) + "\n"
            }
            o += "  (loop = the pulse's loop thread, which the target judges; proc = every thread of the process)\n"
            o += "\n"
        }
        if let b = baseline, let r = baselineReference {
            o +=
                "pulse / baseline (\(r.name) vs baseline, both \(b.bpm) bpm, same core and priority; < 1 means the pulse is better)\n"
            for (label, value) in ratios(pulse: r, baseline: b) {
                o += "  \(pad(label, 26)) \(value)\n"
            }
            o += "\n"
        }
        if !c.notes.isEmpty { o += "notes\n" + c.notes.map { "  - \($0)\n" }.joined() + "\n" }
        o += String(format: "total %.0f s\n", elapsedSeconds)
        return o
    }

    func ratios(pulse r: ScenarioResult, baseline b: ScenarioResult) -> [(String, String)] {
        func ratio(_ a: Double?, _ b: Double?) -> String {
            guard let a, let b else { return "n/a" }
            if b == 0 { return a == 0 ? "1 (both 0)" : "∞" }
            return String(format: "%.3f (%@ / %@)", a / b, num(a), num(b))
        }
        return [
            ("jitter p99", ratio(r.jitter.summary.p99, b.jitter.summary.p99)),
            ("delivery p99", ratio(r.delivery.summary.p99, b.delivery.summary.p99)),
            ("allocated bytes per beat", ratio(r.allocatedBytesPerBeat, b.allocatedBytesPerBeat)),
            ("CPU µs per beat", ratio(r.cpuUsPerBeat, b.cpuUsPerBeat)),
        ]
    }

    func ratioValues(pulse r: ScenarioResult, baseline b: ScenarioResult) -> [String: Double?] {
        func ratio(_ a: Double?, _ b: Double?) -> Double? {
            guard let a, let b, b != 0 else { return nil }
            return a / b
        }
        return [
            "jitter_p99": ratio(r.jitter.summary.p99, b.jitter.summary.p99),
            "delivery_p99": ratio(r.delivery.summary.p99, b.delivery.summary.p99),
            "allocated_bytes_per_beat": ratio(r.allocatedBytesPerBeat, b.allocatedBytesPerBeat),
            "cpu_us_per_beat": ratio(r.cpuUsPerBeat, b.cpuUsPerBeat),
        ]
    }

    /// "pulse N of M beats; floor 1 ms N of M; floor at the period N of M".
    func lateLine(_ s: ScenarioResult) -> String {
        var parts = ["pulse \(s.lateOver1ms) of \(s.published) beats"]
        let t = s.timerFloor.latencies
        parts.append("1 ms floor \(t.count(above: 1_000_000)) of \(t.count) wakes")
        if let p = s.periodFloor?.latencies {
            parts.append("period floor \(p.count(above: 1_000_000)) of \(p.count) wakes")
        }
        return parts.joined(separator: "; ")
    }

    // MARK: JSON (issue 6's shape)

    func json() throws -> Data {
        var baselineJSON: BaselineJSON? = nil
        if let b = baseline {
            baselineJSON = BaselineJSON(
                scenario: ScenarioJSON(b), compared_with: baselineReference?.name,
                pulse_over_baseline: baselineReference.map { ratioValues(pulse: $0, baseline: b) } ?? [:])
        }
        let c = ctx
        var tools: [String: Bool] = [:]
        for t in ["cyclictest", "stress-ng", "wrk", "nats-server", "perf", "valgrind"] { tools[t] = c.tool(t) != nil }
        var modes: [String: ModeJSON] = [:]
        for s in scenarios where s.name == "idle" || s.name == "shared" {
            modes[s.name == "idle" ? "spin" : "timer_only"] = ModeJSON(
                flags: s.mode, cpu_us_per_beat: s.cpuUsPerBeat, loop_cpu_us_per_beat: s.loopCpuUsPerBeat,
                cpu_floor_us_per_beat: s.cpuFloor?.usPerBeat, jitter_us: PercentilesJSON(s.jitter),
                delivery_us: PercentilesJSON(s.delivery))
        }
        let doc = ReportJSON(
            scenarios: scenarios.map(ScenarioJSON.init), baseline: baselineJSON, modes: modes, soak: soak?.json(),
            scale: scale?.json(), drift: drift.isEmpty ? nil : drift.map { $0.json() },
            machine: MachineJSON(
                date: machine.date, commit: machine.commit, cpu_model: machine.cpuModel, cpus: machine.cpus,
                kernel: machine.kernel, swift: machine.swift, pulse_cpu: c.cpu, rt_priority: c.priority, mlock: c.mlock,
                seconds: c.options.seconds, tools: tools,
                timer_floor_source: scenarios.first?.timerFloor.source ?? baseline?.timerFloor.source,
                nats_floor_source: scenarios.first?.natsFloor.source ?? baseline?.natsFloor.source,
                notes: c.notes
                    + scenarios.flatMap { s in
                        (s.notes + s.timerFloor.notes + s.natsFloor.notes).map { "\(s.name): \($0)" }
                    },
                checks: checks.map {
                    CheckJSON(scenario: $0.scenario, target: $0.target, pass: $0.pass, detail: $0.detail)
                }))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(doc)
    }
}

struct PercentilesJSON: Encodable {
    var p50, p95, p99, p999, max: Double
    let count: Int  // not encoded: an empty distribution is written as null
    init(_ l: Latencies) {
        let p = l.summary
        (p50, p95, p99, p999, max) = (p.p50, p.p95, p.p99, p.p999, p.max)
        count = p.count
    }
    enum CodingKeys: String, CodingKey { case p50, p95, p99, p999, max }
}

/// One beat mode (spin or timer only) for the side-by-side comparison.
struct ModeJSON: Encodable {
    var flags: String
    /// Whole process (every thread).
    var cpu_us_per_beat: Double?
    /// The loop thread alone: what the shared-host target judges.
    var loop_cpu_us_per_beat: Double?
    /// Bare timer wake + one frame write on the same core (the machine's floor).
    var cpu_floor_us_per_beat: Double?
    var cpu_judged = "loop_cpu_us_per_beat"
    var jitter_us, delivery_us: PercentilesJSON
}

struct ScenarioJSON: Encodable {
    var name: String
    var beats: Int
    var s: ScenarioResult
    var jitter_us, delivery_us, timer_floor_us, nats_floor_us: PercentilesJSON
    var allocated_bytes_per_beat: Double?
    var cpu_us_per_beat: Double?
    var per001_pass, per002_pass: Bool
    var election: ElectionResult?

    init(_ s: ScenarioResult) {
        self.s = s
        election = s.election
        name = s.name
        beats = s.beats
        jitter_us = PercentilesJSON(s.jitter)
        delivery_us = PercentilesJSON(s.delivery)
        timer_floor_us = PercentilesJSON(s.timerFloor.latencies)
        nats_floor_us = PercentilesJSON(s.natsFloor.latencies)
        allocated_bytes_per_beat = s.allocatedBytesPerBeat
        cpu_us_per_beat = s.cpuUsPerBeat
        per001_pass = s.per001Pass
        per002_pass = s.per002Pass
    }

    enum CodingKeys: String, CodingKey {
        case name, beats, jitter_us, delivery_us, timer_floor_us, nats_floor_us, allocated_bytes_per_beat,
            cpu_us_per_beat, loop_cpu_us_per_beat, cpu_floor_us_per_beat, per001_pass, per002_pass
        case mode, jitter_source, interval_jitter_us, timer_period_floor_us, stages_us, late_over_1ms
        case send_floor
        case fanout
        // election only
        case placement, failover_ms, failover_pass, kill_rounds, graceful, graceful_beats_missed, graceful_pass,
            repeated_indices, backwards_indices, order_pass, degraded_frames, raft_tls, tls_minus_plain,
            election_strategy, cpu_per_beat, kv_minus_raft
    }

    func encode(to encoder: Encoder) throws {  // explicit nulls rather than missing keys
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(beats, forKey: .beats)
        // A distribution without samples (e.g. floors not measured) is null, not zeros.
        try c.encode(jitter_us.count > 0 ? jitter_us : nil, forKey: .jitter_us)
        try c.encode(delivery_us.count > 0 ? delivery_us : nil, forKey: .delivery_us)
        try c.encode(timer_floor_us.count > 0 ? timer_floor_us : nil, forKey: .timer_floor_us)
        try c.encode(nats_floor_us.count > 0 ? nats_floor_us : nil, forKey: .nats_floor_us)
        try c.encode(allocated_bytes_per_beat, forKey: .allocated_bytes_per_beat)
        try c.encode(cpu_us_per_beat, forKey: .cpu_us_per_beat)
        try c.encode(s.loopCpuUsPerBeat, forKey: .loop_cpu_us_per_beat)
        try c.encode(s.cpuFloor?.usPerBeat, forKey: .cpu_floor_us_per_beat)
        try c.encode(per001_pass, forKey: .per001_pass)
        try c.encode(per002_pass, forKey: .per002_pass)
        if let f = s.fanout {
            try c.encode(f.json(), forKey: .fanout)
            return
        }
        try c.encode(s.mode, forKey: .mode)
        try c.encode(s.jitterSource, forKey: .jitter_source)
        let interval = PercentilesJSON(s.intervalJitter)
        try c.encode(interval.count > 0 ? interval : nil, forKey: .interval_jitter_us)
        try c.encode(s.periodFloor.map { PercentilesJSON($0.latencies) }, forKey: .timer_period_floor_us)
        var stages: [String: PercentilesJSON] = [:]
        for (label, lat) in s.stages where lat.count > 0 { stages[label] = PercentilesJSON(lat) }
        try c.encode(stages.isEmpty ? nil : stages, forKey: .stages_us)
        if let f = s.sendFloor {
            /// The bare C publisher (issue 24): its stages are in `stages_us` ("bare C: …").
            struct SendFloorJSON: Encodable {
                var source: String
                var lead_us: Double
                var beats, frame_bytes: Int
                var cpu_wake_write_us_per_beat, cpu_write_us_per_beat, cpu_tx_stamp_us_per_beat: Double?
            }
            try c.encode(
                SendFloorJSON(
                    source: f.source, lead_us: Double(f.leadNs) / 1000, beats: f.beats, frame_bytes: f.frameBytes,
                    cpu_wake_write_us_per_beat: f.cpuWakeWriteUs, cpu_write_us_per_beat: f.cpuWriteUs,
                    cpu_tx_stamp_us_per_beat: f.cpuTxUs), forKey: .send_floor)
        }
        struct Late: Encodable { var pulse_beats, timer_floor_wakes: Int, period_floor_wakes: Int? }
        try c.encode(
            Late(
                pulse_beats: s.lateOver1ms, timer_floor_wakes: s.timerFloor.latencies.count(above: 1_000_000),
                period_floor_wakes: s.periodFloor?.latencies.count(above: 1_000_000)), forKey: .late_over_1ms)
        guard let e = election else { return }
        struct MinMedianMax: Encodable { var min, median, max: Double }
        try c.encode(e.placement, forKey: .placement)
        try c.encode(
            e.failoverSummary.map { MinMedianMax(min: $0.min, median: $0.median, max: $0.max) }, forKey: .failover_ms)
        try c.encode(e.failoverPass, forKey: .failover_pass)
        try c.encode(e.kills.map(RoundJSON.init), forKey: .kill_rounds)
        try c.encode(e.graceful.map(RoundJSON.init), forKey: .graceful)
        try c.encode(e.graceful?.missed, forKey: .graceful_beats_missed)
        try c.encode(e.gracefulPass, forKey: .graceful_pass)
        try c.encode(e.repeated, forKey: .repeated_indices)
        try c.encode(e.backwards, forKey: .backwards_indices)
        try c.encode(e.orderPass, forKey: .order_pass)
        try c.encode(e.degradedFrames, forKey: .degraded_frames)
        try c.encode(e.tls, forKey: .raft_tls)
        if e.tls { try c.encode(e.versusPlainJSON, forKey: .tls_minus_plain) }
        try c.encode(e.natsKV ? "nats-kv" : "raft", forKey: .election_strategy)
        try c.encode(e.cpu, forKey: .cpu_per_beat)
        if e.natsKV { try c.encode(e.versusPlainJSON, forKey: .kv_minus_raft) }
    }
}

/// One leader stop of the election scenario; explicit nulls where nothing was seen.
struct RoundJSON: Encodable {
    var r: LeaderStopRound
    init(_ r: LeaderStopRound) { self.r = r }

    enum Keys: String, CodingKey {
        case signal, stopped, phase, failover_ms, new_leader, new_term, last_old_index, first_new_index, beats_missed,
            first_new_late_ms, exit_status
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(r.signal, forKey: .signal)
        try c.encode(r.stopped, forKey: .stopped)
        try c.encode(r.phase, forKey: .phase)
        try c.encode(r.failoverMs, forKey: .failover_ms)
        try c.encode(r.newLeader, forKey: .new_leader)
        try c.encode(r.newTerm, forKey: .new_term)
        try c.encode(r.lastOldIndex, forKey: .last_old_index)
        try c.encode(r.firstNewIndex, forKey: .first_new_index)
        try c.encode(r.missed, forKey: .beats_missed)
        try c.encode(r.firstNewLateMs, forKey: .first_new_late_ms)
        if r.signal == "SIGTERM" { try c.encode(r.exitStatus, forKey: .exit_status) }
    }
}

/// The baseline: a scenario's fields plus what it is compared with and the ratios pulse/baseline.
struct BaselineJSON: Encodable {
    var scenario: ScenarioJSON
    var compared_with: String?
    var pulse_over_baseline: [String: Double?]

    enum Keys: String, CodingKey { case compared_with, pulse_over_baseline }

    func encode(to encoder: Encoder) throws {
        try scenario.encode(to: encoder)
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(compared_with, forKey: .compared_with)
        try c.encode(pulse_over_baseline, forKey: .pulse_over_baseline)
    }
}

struct CheckJSON: Encodable {
    var scenario, target: String
    var pass: Bool?
    var detail: String
}

struct MachineJSON: Encodable {
    var date, commit, cpu_model: String
    var cpus: Int
    var kernel, swift: String
    var pulse_cpu, rt_priority: Int
    var mlock: Bool
    var seconds: Int
    var tools: [String: Bool]
    var timer_floor_source, nats_floor_source: String?
    var notes: [String]
    var checks: [CheckJSON]
}

struct ReportJSON: Encodable {
    var scenarios: [ScenarioJSON]
    var baseline: BaselineJSON?
    /// "spin" and "timer_only": CPU per beat and jitter per beat mode.
    var modes: [String: ModeJSON]
    var soak: SoakResult.JSON?
    var scale: ScaleResult.JSON?
    var drift: [DriftResult.JSON]?
    var machine: MachineJSON

    enum CodingKeys: String, CodingKey { case scenarios, baseline, modes, soak, scale, drift, machine }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(scenarios, forKey: .scenarios)
        try c.encode(baseline, forKey: .baseline)
        try c.encode(modes, forKey: .modes)
        try c.encodeIfPresent(soak, forKey: .soak)
        try c.encodeIfPresent(scale, forKey: .scale)
        try c.encodeIfPresent(drift, forKey: .drift)
        try c.encode(machine, forKey: .machine)
    }
}

// MARK: - formatting

func pad(_ s: String, _ width: Int, right: Bool = false) -> String {
    let n = s.count
    guard n < width else { return s + (right ? "" : " ") }
    let fill = String(repeating: " ", count: width - n)
    return right ? fill + s : s + fill
}

/// A µs figure with sensible precision.
func num(_ v: Double) -> String {
    if v >= 1000 { return String(format: "%.0f", v) }
    if v >= 10 { return String(format: "%.1f", v) }
    return String(format: "%.2f", v)
}

func us(_ v: Double) -> String { v >= 10_000 ? String(format: "%.2f ms", v / 1000) : num(v) + " µs" }
