// Bench/Flood.swift — the `flood` scenario (issue 20, item 5): what a flood
// of timeline requests costs the beat. One pulse at --bpm is measured twice
// in the same run, under the same conditions: idle, then while one client
// sends timeline requests at `ratePerSecond` (10,000/s) for the whole
// window, each with a reply subject (the node answers every one it takes,
// from the reply cache, or drops and counts it over its budget). Reported
// beside each other: the pulse's own jitter (publish = TX timestamp −
// instant, /debug/beats) and delivery (independent subscriber); verdict:
// the flood's jitter p99 ≤ 1.25× the idle run's, no NATS reconnect and no
// missed beat during the flood. `flood-control` does the same with tempo
// requests that lack the pulse's admin token (`FloodKind`). (An unbounded
// flood from one client is the process test's:
// Tests/PulseTests/RequestBudgetTests.swift.)

import CLoop
import CNats
import Foundation
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

/// What the flood asks for: the timeline (`flood`), or a tempo change
/// without the admin token the pulse runs with (`flood-control`: each one
/// parsed for its token and refused 401, the costliest answer a consumer
/// can make a node give; adversarial review of 2026-12-07).
enum FloodKind {
    case timeline, control

    var scenario: String { self == .timeline ? "flood" : "flood-control" }
    var what: String { self == .timeline ? "timeline requests" : "tempo requests without the token" }
    var surface: String { self == .timeline ? "timeline_subject" : "control_subject" }
    func subject(_ cluster: String) -> String {
        let subjects = BackbeatSubjects(clusterId: cluster)
        return self == .timeline ? subjects.timelineRequest : subjects.controlRequest
    }
    var body: String { self == .timeline ? "{}" : #"{"tempo_bpm":600,"justification":"flood"}"# }
    /// The pulse's extra flags: an admin token no request carries.
    var pulseArgs: [String] { self == .timeline ? [] : ["-admin-token", "bench-\(UInt64.random(in: 1...UInt64.max))"] }
}

/// The requests of the flood and what came of them.
struct FloodResult {
    /// The same pulse, idle, measured just before (same run, same flags).
    var idleJitterP99Ns: Double
    var idleDeliveryP99Ns: Double
    var idleSamples: Int
    var ratePerSecond: Int
    var kind = FloodKind.timeline
    var sent = 0
    var answered = 0
    /// NATS reconnects and missed beats of the pulse over the flood window (/metrics deltas).
    var reconnects: Double? = nil
    var missedBeats: Double? = nil
    /// Requests the node dropped over its budget (`rejected{reason="over_budget"}` delta).
    var overBudget: Double? = nil

    func checks(scenario name: String, _ s: ScenarioResult) -> [Check] {
        let j = s.jitter.summary.p99
        let d = s.delivery.summary.p99
        func ratio(_ v: Double, _ idle: Double) -> String {
            "\(us(v)) vs idle \(us(idle)) (ratio \(String(format: "%.2f", idle > 0 ? v / idle : 0)))"
        }
        let measurable = s.jitter.count > 0 && idleSamples > 0
        return [
            Check(
                scenario: name, target: "issue 20: jitter p99 under \(ratePerSecond)/s \(kind.what) ≤ 1.25× idle",
                pass: measurable ? j <= 1.25 * idleJitterP99Ns : nil,
                detail: measurable ? ratio(j, idleJitterP99Ns) : "no samples"),
            Check(
                scenario: name, target: "issue 20: delivery p99 under the flood ≤ 1.25× idle",
                pass: s.delivery.count > 0 && idleSamples > 0 ? d <= 1.25 * idleDeliveryP99Ns : nil,
                detail: ratio(d, idleDeliveryP99Ns)),
            Check(
                scenario: name, target: "issue 20: no NATS reconnect, no missed beat under the flood",
                pass: reconnects.flatMap { r in missedBeats.map { r == 0 && $0 == 0 } },
                detail:
                    "reconnects \(reconnects.map { String(Int($0)) } ?? "?"), missed \(missedBeats.map { String(Int($0)) } ?? "?"); \(sent) sent, \(answered) answered, \(overBudget.map { String(Int($0)) } ?? "?") dropped over budget"
            ),
        ]
    }
}

/// One client sending timeline requests at a fixed rate on its own thread
/// (10 per millisecond at 10,000/s), replies counted on an inbox; the
/// pulse's reconnects, missed beats and over-budget drops are read from its
/// /metrics before and after.
final class RequestFlood: WindowLoad {
    private var connection: OpaquePointer?
    private var subscription: OpaquePointer?
    private let lock = NSLock()
    private var stopped = false
    private var sentCount = 0
    private var answeredCount = 0
    private let done = DispatchSemaphore(value: 0)
    private let pulse: PulseRun
    private var figures: FloodResult
    private let before: [String: Double]
    static let metricNames = ["backbeat_nats_reconnects_total", "backbeat_beats_missed_total"]

    init(_ ctx: BenchContext, pulse: PulseRun, idle: ScenarioResult, ratePerSecond: Int, kind: FloodKind = .timeline)
        throws
    {
        self.pulse = pulse
        figures = FloodResult(
            idleJitterP99Ns: idle.jitter.summary.p99, idleDeliveryP99Ns: idle.delivery.summary.p99,
            idleSamples: idle.jitter.count, ratePerSecond: ratePerSecond, kind: kind)
        before = pulse.metrics(Self.metricNames).merging(["over_budget": overBudgetCount(pulse, kind) ?? 0]) {
            a, _ in a
        }
        var opts: OpaquePointer?
        natsOptions_Create(&opts)
        defer { natsOptions_Destroy(opts) }
        natsOptions_SetURL(opts, ctx.natsURL)
        natsOptions_SetName(opts, "pulse-bench-flood")
        var status = natsConnection_Connect(&connection, opts)
        guard status == NATS_OK else { throw BenchError("flood connect: \(natsStatusText(status))") }
        let inbox = "_INBOX.bench-flood-\(UInt64.random(in: 1...UInt64.max))"
        status = natsConnection_Subscribe(
            &subscription, connection, inbox + ".>",
            { _, _, msg, closure in
                natsMsg_Destroy(msg)
                let flood = Unmanaged<RequestFlood>.fromOpaque(closure!).takeUnretainedValue()
                flood.lock.withLock { flood.answeredCount += 1 }
            }, Unmanaged.passUnretained(self).toOpaque())
        guard status == NATS_OK else { throw BenchError("flood inbox: \(natsStatusText(status))") }
        natsSubscription_SetPendingLimits(subscription, 1 << 20, 1 << 30)
        natsConnection_Flush(connection)
        let (subject, body) = (kind.subject("bench"), kind.body)
        let perMs = max(1, ratePerSecond / 1000)
        // Bounded in time whatever happens to `stop`.
        let deadline = cloop_monotonic_ns() + Int64(ctx.options.seconds + 10) * 1_000_000_000
        let thread = Thread { [self] in
            var k = 0
            let start = cloop_monotonic_ns()
            var tick: Int64 = 0
            while cloop_monotonic_ns() < deadline && !lock.withLock({ stopped }) {
                for _ in 0..<perMs {
                    _ = natsConnection_PublishRequestString(connection, subject, "\(inbox).\(k % 1024)", body)
                    k += 1
                }
                lock.withLock { sentCount = k }
                tick += 1
                let wait = start + tick * 1_000_000 - cloop_monotonic_ns()
                if wait > 0 { usleep(useconds_t(wait / 1000)) }
            }
            done.signal()
        }
        thread.start()
    }

    func stop() -> String {
        lock.withLock { stopped = true }
        _ = done.wait(timeout: .now() + 5)
        natsConnection_FlushTimeout(connection, 2000)
        usleep(200_000)  // the last answers
        (figures.sent, figures.answered) = lock.withLock { (sentCount, answeredCount) }
        let after = pulse.metrics(Self.metricNames)
        figures.reconnects = after[Self.metricNames[0]].map { $0 - (before[Self.metricNames[0]] ?? 0) }
        figures.missedBeats = after[Self.metricNames[1]].map { $0 - (before[Self.metricNames[1]] ?? 0) }
        figures.overBudget = overBudgetCount(pulse, figures.kind).map { $0 - (before["over_budget"] ?? 0) }
        return
            "one client, \(figures.ratePerSecond) \(figures.kind.what)/s: \(figures.sent) sent, \(figures.answered) answered"
    }

    func report(into result: inout ScenarioResult) { result.flood = figures }

    deinit {
        if let subscription { natsSubscription_Unsubscribe(subscription) }
        natsSubscription_Destroy(subscription)
        natsConnection_Destroy(connection)
    }
}

/// Idle, then flooded: two measured windows of the same pulse set-up.
func runFloodScenario(
    _ ctx: BenchContext, bpm: Int, timerFloor: Floor, natsFloor: Floor, kind: FloodKind = .timeline
) throws -> ScenarioResult {
    let args = kind.pulseArgs
    let idle = try runPulseScenario(
        ctx, name: kind.scenario + "-idle", bpm: bpm, timerFloor: timerFloor, natsFloor: natsFloor,
        withHTTPLoad: false, extraArgs: args)
    var result = try runPulseScenario(
        ctx, name: kind.scenario, bpm: bpm, timerFloor: timerFloor, natsFloor: natsFloor, withHTTPLoad: false,
        extraArgs: args
    ) { pulse in try RequestFlood(ctx, pulse: pulse, idle: idle, ratePerSecond: 10_000, kind: kind) }
    let (j, d, e) = (idle.jitter.summary, idle.delivery.summary, idle.decisionJitter.summary)
    result.notes.append(
        "idle reference (same run, same flags), over \(idle.jitter.count) beats: jitter p50 \(us(j.p50)), p95 \(us(j.p95)), p99 \(us(j.p99)), max \(us(j.max)); delivery p50 \(us(d.p50)), p95 \(us(d.p95)), p99 \(us(d.p99)); |decision − instant| p99 \(us(e.p99)), max \(us(e.max))"
    )
    return result
}

/// `backbeat_rejected_input_total{surface=<the kind's>,reason="over_budget"}` of `pulse`.
private func overBudgetCount(_ pulse: PulseRun, _ kind: FloodKind) -> Double? {
    guard let (status, body) = httpGet(port: pulse.adminPort, path: "/metrics"), status == 200 else { return nil }
    return String(decoding: body, as: UTF8.self).split(separator: "\n").filter {
        $0.hasPrefix("backbeat_rejected_input_total{") && $0.contains(kind.surface) && $0.contains("over_budget")
    }.compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0, +)
}
