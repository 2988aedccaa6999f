// Bench/Flood.swift — the `flood` scenario (issue 20, item 5): what a flood
// of timeline requests costs the beat, on every node of a 3-node cluster.
// A `BenchCluster` (n1..n3, Raft on loopback, the loop threads alternating
// between the bench core and the other one) at --bpm is measured twice in
// the same run, under the same conditions: idle, then while one client sends
// timeline requests at `ratePerSecond` (10,000/s) on the cluster's request
// subject for the whole window. Every node subscribes to that subject and
// answers every request it takes (protocol: "any node answers"), so one
// request is three replies and every node carries the flood. Reported
// beside each other: the leader's own jitter (publish = TX timestamp −
// instant, /debug/beats; followers publish no frame, so have none) and
// delivery (independent subscriber); per node, over the flood window: NATS
// reconnects and client-side slow-consumer events (both connections,
// /metrics deltas), missed beats, requests dropped over its budget and its
// loop thread's CPU; nats-server's own slow-consumer count (/varz). Verdict:
// the flood's jitter p99 ≤ 1.25× the idle run's, no beat missing on the
// subject and no node disconnected. `flood-control` does the same with
// tempo requests that lack the pulse's admin token (`FloodKind`). (An
// unbounded flood from one client is the process tests':
// Tests/PulseTests/RequestBudgetTests.swift.)

import CLoop
import CNats
import Foundation
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

/// What the flood asks for: the timeline (`flood`), the timeline of nodes
/// that sign (`flood-signed`: `-sign-key` on every node, each reply signed),
/// or a tempo change without the admin token the pulse runs with
/// (`flood-control`: each one parsed for its token and refused 401, the
/// costliest answer a consumer can make a node give; adversarial review of
/// 2026-12-07).
enum FloodKind {
    case timeline, signedTimeline, control

    var scenario: String {
        switch self {
        case .timeline: "flood"
        case .signedTimeline: "flood-signed"
        case .control: "flood-control"
        }
    }
    var what: String {
        switch self {
        case .timeline: "timeline requests"
        case .signedTimeline: "timeline requests (signed replies)"
        case .control: "tempo requests without the token"
        }
    }
    var surface: String { self == .control ? "control_subject" : "timeline_subject" }
    func subject(_ cluster: String) -> String {
        let subjects = BackbeatSubjects(clusterId: cluster)
        return self == .control ? subjects.controlRequest : subjects.timelineRequest
    }
    var body: String { self == .control ? #"{"tempo_bpm":600,"justification":"flood"}"# : "{}" }
    /// The pulses' extra flags: an admin token no request carries, or a signing key.
    func pulseArgs(_ ctx: BenchContext) throws -> [String] {
        switch self {
        case .timeline: []
        case .signedTimeline: ["-sign-key", try writeBenchSignKey(ctx).path]
        case .control: ["-admin-token", "bench-\(UInt64.random(in: 1...UInt64.max))"]
        }
    }
}

/// A node the flood reaches, and whose figures it reads.
struct FloodTarget {
    var name: String
    var run: PulseRun
    var cpu: Int
    var leader: Bool
}

/// One node's figures over the flood window (/metrics deltas, both NATS
/// connections summed; its loop thread's CPU from /proc).
struct FloodNode {
    var name: String
    var cpu: Int
    var leader: Bool
    var reconnects: Double? = nil
    /// Slow-consumer events of the beat connection (its echo dropped by the
    /// client library: must stay 0) and of the requests connection (the
    /// flood's own drops at the client's pending limits: the budget at work).
    var slowConsumers: Double? = nil
    var requestsSlowConsumers: Double? = nil
    var missedBeats: Double? = nil
    var overBudget: Double? = nil
    /// The loop thread's CPU over the window, in % of one core.
    var loopBusyPercent: Double? = nil

    var clean: Bool? {
        guard let r = reconnects, let s = slowConsumers, let m = missedBeats else { return nil }
        return r == 0 && s == 0 && m == 0
    }

    var text: String {
        func n(_ v: Double?) -> String { v.map { String(Int($0)) } ?? "?" }
        return
            "\(name)\(leader ? " (leader)" : "") cpu \(cpu): reconnects \(n(reconnects)), slow-consumer events beat \(n(slowConsumers)) / requests \(n(requestsSlowConsumers)), missed beats \(n(missedBeats)), dropped over budget \(n(overBudget)), loop thread busy \(loopBusyPercent.map { String(format: "%.1f %%", $0) } ?? "?")"
    }
}

/// The requests of the flood and what came of them.
struct FloodResult {
    /// The same leader, idle, measured just before (same run, same flags).
    var idleJitterP99Ns: Double
    var idleDeliveryP99Ns: Double
    var idleSamples: Int
    var ratePerSecond: Int
    var kind = FloodKind.timeline
    var sent = 0
    /// Replies received (up to one per node and request).
    var answered = 0
    /// Per node (one for a single pulse: the scale series).
    var nodes: [FloodNode] = []
    /// nats-server's `slow_consumers` (/varz) over the window: any client it
    /// disconnected as too slow (nil: its monitoring port is not known).
    var serverSlowConsumers: Double? = nil
    var placement = ""
    /// Requests sent per second over the window (the client's own count).
    var sentPerSecond: Double? = nil
    /// Leadership moved during the window: its verdicts would mix leaders.
    var leaderMoved = false

    /// Why the verdicts cannot judge this run, or nil: a flood that did not
    /// reach 95 % of its rate, or a leader that changed, proves nothing.
    var unjudgeable: String? {
        if leaderMoved { return "leadership moved during the window" }
        if let r = sentPerSecond, r < 0.95 * Double(ratePerSecond) {
            return "the flood reached only \(Int(r))/s of \(ratePerSecond)/s"
        }
        return nil
    }

    var overBudget: Double? {
        nodes.contains { $0.overBudget == nil } ? nil : nodes.compactMap(\.overBudget).reduce(0, +)
    }

    func checks(scenario name: String, _ s: ScenarioResult) -> [Check] {
        let j = s.jitter.summary.p99
        let d = s.delivery.summary.p99
        func ratio(_ v: Double, _ idle: Double) -> String {
            "\(us(v)) vs idle \(us(idle)) (ratio \(String(format: "%.2f", idle > 0 ? v / idle : 0)))"
        }
        let measurable = s.jitter.count > 0 && idleSamples > 0
        let missing = max(0, s.beats - s.received)
        let clean = nodes.map(\.clean)
        let nodesClean: Bool? = clean.contains { $0 == nil } ? nil : clean.allSatisfy { $0 == true }
        // nil (not judged) when the server's count is unknown (--nats, /varz unreadable).
        let serverClean = serverSlowConsumers.map { $0 == 0 }
        let pass: Bool? =
            nodesClean.flatMap { n in serverClean.map { n && $0 && missing == 0 } }
        let who = nodes.count > 1 ? "the leader's " : ""
        let checks = [
            Check(
                scenario: name, target: "issue 20: \(who)jitter p99 under \(ratePerSecond)/s \(kind.what) ≤ 1.25× idle",
                pass: measurable ? j <= 1.25 * idleJitterP99Ns : nil,
                detail: measurable ? ratio(j, idleJitterP99Ns) : "no samples"),
            Check(
                scenario: name, target: "issue 20: delivery p99 under the flood ≤ 1.25× idle",
                pass: s.delivery.count > 0 && idleSamples > 0 ? d <= 1.25 * idleDeliveryP99Ns : nil,
                detail: ratio(d, idleDeliveryP99Ns)),
            Check(
                scenario: name,
                target: "issue 20: no beat missing on the subject, no node disconnected (\(nodes.count) flooded)",
                pass: pass,
                detail:
                    "\(missing) of \(s.beats) beats missing on the subject; reconnects \(sum(\.reconnects)), beat-connection slow-consumer events \(sum(\.slowConsumers)), missed \(sum(\.missedBeats)) over the nodes; nats-server slow consumers \(serverSlowConsumers.map { String(Int($0)) } ?? "not measured"); \(sent) sent, \(answered) answered, \(overBudget.map { String(Int($0)) } ?? "?") dropped over budget"
            ),
        ]
        guard let why = unjudgeable else { return checks }
        return checks.map {
            Check(scenario: $0.scenario, target: $0.target, pass: nil, detail: "not judged: \(why); \($0.detail)")
        }
    }

    private func sum(_ figure: KeyPath<FloodNode, Double?>) -> String {
        nodes.contains { $0[keyPath: figure] == nil }
            ? "?" : String(Int(nodes.compactMap { $0[keyPath: figure] }.reduce(0, +)))
    }
}

/// One client sending requests at a fixed rate on its own thread (10 per
/// millisecond at 10,000/s) on the subject every target subscribes to,
/// replies counted on an inbox; each target's reconnects, slow-consumer
/// events, missed beats and over-budget drops are read from its /metrics
/// before and after.
final class RequestFlood: WindowLoad {
    private var connection: OpaquePointer?
    private var subscription: OpaquePointer?
    private let lock = NSLock()
    private var stopped = false
    private var sentCount = 0
    private var sendingNs: Int64 = 0  // from the first send to the last count (the thread's own clock)
    private var answeredCount = 0
    private let done = DispatchSemaphore(value: 0)
    private let targets: [FloodTarget]
    private let monitorPort: Int?
    private var figures: FloodResult
    private var before: [[String: Double]] = []
    private var loopBefore: [Int64?] = []
    private var serverBefore: Double?
    private let startedNs = cloop_monotonic_ns()
    /// What is read of each node's /metrics, by key: a sample name, summed over its labels, or a whole series.
    static let metricSeries = [
        "reconnects": "backbeat_nats_reconnects_total", "missed": "backbeat_beats_missed_total",
        "beat_slow": #"backbeat_nats_slow_consumer_total{connection="beat"}"#,
        "requests_slow": #"backbeat_nats_slow_consumer_total{connection="requests"}"#,
    ]

    /// A lone pulse on cluster `bench` (the scale series).
    convenience init(
        _ ctx: BenchContext, pulse: PulseRun, idle: ScenarioResult, ratePerSecond: Int, kind: FloodKind = .timeline
    ) throws {
        try self.init(
            ctx, targets: [FloodTarget(name: "pulse", run: pulse, cpu: ctx.cpu, leader: true)], cluster: "bench",
            idle: idle, ratePerSecond: ratePerSecond, kind: kind)
    }

    init(
        _ ctx: BenchContext, targets: [FloodTarget], cluster: String, idle: ScenarioResult, ratePerSecond: Int,
        kind: FloodKind = .timeline
    ) throws {
        self.targets = targets
        monitorPort = ctx.natsMonitorPort
        figures = FloodResult(
            idleJitterP99Ns: idle.jitter.summary.p99, idleDeliveryP99Ns: idle.delivery.summary.p99,
            idleSamples: idle.jitter.count, ratePerSecond: ratePerSecond, kind: kind)
        figures.nodes = targets.map { FloodNode(name: $0.name, cpu: $0.cpu, leader: $0.leader) }
        before = targets.map { Self.figures($0.run, kind) }
        loopBefore = targets.map { threadCPUNs($0.run.child.pid, tid: $0.run.child.pid) }
        serverBefore = monitorPort.flatMap(serverSlowConsumers)
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
        let (subject, body) = (kind.subject(cluster), kind.body)
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
                lock.withLock {
                    sentCount = k
                    sendingNs = cloop_monotonic_ns() - start
                }
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
        let elapsedNs = Double(cloop_monotonic_ns() - startedNs)
        (figures.sent, figures.answered) = lock.withLock { (sentCount, answeredCount) }
        for (i, target) in targets.enumerated() {
            let after = Self.figures(target.run, figures.kind)
            func delta(_ name: String) -> Double? { after[name].map { $0 - (before[i][name] ?? 0) } }
            figures.nodes[i].reconnects = delta("reconnects")
            figures.nodes[i].missedBeats = delta("missed")
            figures.nodes[i].slowConsumers = delta("beat_slow")
            figures.nodes[i].requestsSlowConsumers = delta("requests_slow")
            figures.nodes[i].overBudget = delta("over_budget")
            if let b = loopBefore[i], let a = threadCPUNs(target.run.child.pid, tid: target.run.child.pid) {
                figures.nodes[i].loopBusyPercent = Double(a - b) / elapsedNs * 100
            }
        }
        if let port = monitorPort, let b = serverBefore, let a = serverSlowConsumers(port) {
            figures.serverSlowConsumers = a - b
        }
        let sendingNs = lock.withLock { self.sendingNs }
        if sendingNs > 0 { figures.sentPerSecond = Double(figures.sent) / (Double(sendingNs) / 1e9) }
        let to = targets.count > 1 ? " to each of \(targets.count) nodes" : ""
        return
            "one client, \(figures.ratePerSecond) \(figures.kind.what)/s\(to): \(figures.sent) sent, \(figures.answered) answered"
    }

    func report(into result: inout ScenarioResult) { result.flood = figures }

    /// `metricSeries` and the kind's over-budget drops of one node (one GET /metrics).
    private static func figures(_ pulse: PulseRun, _ kind: FloodKind) -> [String: Double] {
        guard let (status, body) = httpGet(port: pulse.adminPort, path: "/metrics"), status == 200 else { return [:] }
        var out: [String: Double] = ["over_budget": 0]  // a series appears with its first drop
        for line in String(decoding: body, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                continue
            }
            let series = line[..<space]
            let name = series.prefix { $0 != "{" }
            for (key, wanted) in metricSeries where wanted == series || wanted == name {
                out[key, default: 0] += value
            }
            if name == "backbeat_rejected_input_total", series.contains(kind.surface),
                series.contains(#"reason="over_budget""#)
            {
                out["over_budget", default: 0] += value
            }
        }
        return out
    }

    deinit {
        if let subscription { natsSubscription_Unsubscribe(subscription) }
        natsSubscription_Destroy(subscription)
        natsConnection_Destroy(connection)
    }
}

/// A 3-node cluster, idle then flooded: two measured windows of its leader,
/// the flood reaching every node.
func runFloodScenario(
    _ ctx: BenchContext, bpm: Int, timerFloor: Floor, natsFloor: Floor, kind: FloodKind = .timeline
) throws -> ScenarioResult {
    let id = "bench-\(kind.scenario)"
    let cluster = BenchCluster(ctx, clusterId: id, bpm: bpm, size: 3, extraArgs: try kind.pulseArgs(ctx))
    defer { cluster.stopAll() }
    try cluster.startAll()
    guard var leader = cluster.leader(seconds: 15) else { throw BenchError("\(kind.scenario): no leader within 15 s") }
    // The leader on the bench core, as every single-pulse scenario's pulse:
    // the other core carries nats-server, the flooding client and the
    // kernel's network work for them (hand-overs, as the drift scenario does).
    var handOvers: [String] = []
    for _ in 0..<6 where cluster.cpus[leader] != ctx.cpu {
        let stopped = leader
        cluster.stop(stopped, signal: SIGTERM)
        guard let next = cluster.leader(seconds: 15) else {
            throw BenchError("\(kind.scenario): no leader after a hand-over")
        }
        leader = next
        try cluster.start(stopped)
        handOvers.append(
            "\(cluster.names[stopped]) (cpu \(cluster.cpus[stopped])) handed over to \(cluster.names[leader])")
    }
    // Every node answers (its timeline committed) before the measurement.
    waitUntil(seconds: 15) {
        cluster.names.indices.allSatisfy { httpGet(port: cluster.adminPorts[$0], path: "/timeline")?.status == 200 }
    }
    var targets: [FloodTarget] = []
    for i in cluster.names.indices {
        guard let child = cluster.children[i] else { throw BenchError("\(kind.scenario): \(cluster.names[i]) is down") }
        targets.append(
            FloodTarget(
                name: cluster.names[i],
                run: PulseRun(
                    child: child, adminPort: cluster.adminPorts[i], dataDir: "\(cluster.dir)/\(cluster.names[i])"),
                cpu: cluster.cpus[i], leader: i == leader))
    }
    let subject = BackbeatSubjects(clusterId: id).beat
    let idle = try runPulseScenario(
        ctx, name: kind.scenario + "-idle", bpm: bpm, timerFloor: timerFloor, natsFloor: natsFloor,
        withHTTPLoad: false, existing: targets[leader].run, subject: subject)
    var result = try runPulseScenario(
        ctx, name: kind.scenario, bpm: bpm, timerFloor: timerFloor, natsFloor: natsFloor, withHTTPLoad: false,
        windowLoad: { _ in
            try RequestFlood(ctx, targets: targets, cluster: id, idle: idle, ratePerSecond: 10_000, kind: kind)
        }, existing: targets[leader].run, subject: subject)
    result.mode = "3-node cluster, \(cluster.names[leader]) leading" + (kind == .signedTimeline ? ", -sign-key" : "")
    result.flood?.placement = cluster.placement
    if cluster.leader(seconds: 2) != leader {
        result.notes.append("leadership moved during the run: the verdicts mix leaders, so they judge nothing")
        result.flood?.leaderMoved = true
    }
    let (j, d, e) = (idle.jitter.summary, idle.delivery.summary, idle.decisionJitter.summary)
    result.notes.append(
        "idle reference (same run, same cluster and leader), over \(idle.jitter.count) beats: jitter p50 \(us(j.p50)), p95 \(us(j.p95)), p99 \(us(j.p99)), max \(us(j.max)); delivery p50 \(us(d.p50)), p95 \(us(d.p95)), p99 \(us(d.p99)); |decision − instant| p99 \(us(e.p99)), max \(us(e.max))"
    )
    result.notes.append("placement: \(cluster.placement); only the leader publishes frames, so only its jitter exists")
    if !handOvers.isEmpty {
        result.notes.append("leader moved to the bench core: " + handOvers.joined(separator: "; "))
    }
    for node in result.flood?.nodes ?? [] { result.notes.append("under the flood: " + node.text) }
    result.notes += idle.notes.map { "idle: " + $0 }
    return result
}

/// nats-server's `slow_consumers` (`GET /varz` on its monitoring port), or nil.
private func serverSlowConsumers(_ port: Int) -> Double? {
    guard let (status, body) = httpGet(port: port, path: "/varz"), status == 200,
        let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]
    else { return nil }
    return (object["slow_consumers"] as? NSNumber)?.doubleValue
}
