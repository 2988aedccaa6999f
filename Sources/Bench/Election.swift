// Bench/Election.swift — the `election` scenario: three real `pulse`
// processes form a Raft cluster on loopback (free ports, own data dirs,
// cluster `bench-election`), the same independent subscriber times every
// frame, and the leader is killed.
//
// Kill rounds (--seconds of them, 3 to 20): wait until a leader has
// published 3 frames, pick a uniformly random moment within the next beat
// period, SIGKILL the leader there, then:
//   failover = receive time of the first non-degraded frame from another node
//              − the kill time (both CLOCK_REALTIME, same machine);
//   missed   = indices between the old leader's last frame and that first
//              new frame that nobody published (the subscriber saw none).
// The killed node is restarted with the same flags and data dir before the
// next round (a 2-node cluster could not lose another leader). Last, a
// graceful round: SIGTERM the current leader (it hands leadership over
// first), same figures; the target there is 0 missed beats.
// Over the whole stream: an index received twice (repeated) or below one
// already received (backwards) is counted; both must be 0.
// Jitter comes from each leader's /debug/beats (fetched just before it is
// killed, and from the survivors at the end); delivery is receive − the
// beat's instant on the cluster's timeline (taken from the first leader's
// records: one epoch, fixed tempo). Placement: 2 cores cannot give each node
// its own, so the loop threads alternate: n1 and n3 on --cpu, n2 on the other
// core, with the same real-time priority and mlock as the other runs.
//
// `election-tls`: the same rounds with Raft over mutual TLS (issue #11):
// certificates for n1..n3 from scripts/certs.sh in the run's temp dir, each
// node started with -raft-tls-cert/-key/-ca. When `election` ran first, its
// block ends with the difference TLS − plain TCP (failover min/median/max in
// ms, beats missed in the kill rounds and in the graceful stop).
//
// `election-kv`: the same rounds with `-election nats-kv` (issue 21): no
// Raft flags, the lease and timeline in the Bench nats-server's JetStream KV
// (started with -js). `--scenarios election,election-kv` runs both
// strategies in one Bench run, one block each.

import CLoop
import Foundation
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

/// One leader stop (SIGKILL round or the graceful SIGTERM) and what the subscriber saw.
struct LeaderStopRound {
    var signal: String  // "SIGKILL" or "SIGTERM"
    var stopped: String  // node id of the leader that was stopped
    var phase: Double  // the stop moment as a fraction of the beat period after an instant
    var failoverMs: Double? = nil  // first frame from another node − stop time; nil: none within 10 s
    var newLeader: String? = nil
    var newTerm: Int64? = nil
    var lastOldIndex: Int64? = nil
    var firstNewIndex: Int64? = nil
    var missed: Int? = nil  // indices in (lastOld, firstNew) that no frame carried
    var firstNewLateMs: Double? = nil  // the first new frame's receive − its scheduled instant
    var exitStatus: Int32? = nil  // the stopped process's exit status (SIGTERM round)
}

struct ElectionResult {
    var kills: [LeaderStopRound] = []
    var graceful: LeaderStopRound? = nil
    var plannedRounds = 0
    var repeated = 0
    var backwards = 0
    var termBackwards = 0
    var degradedFrames = 0
    var placement = ""
    var tls = false  // Raft over mutual TLS (the election-tls scenario)
    var natsKV = false  // -election nats-kv (the election-kv scenario)
    var versusPlain: PlainElectionFigures? = nil  // the plain-TCP Raft run, when both ran
    var cpu: ClusterCPU? = nil  // CPU per beat in a steady window before the kill rounds

    /// What this run is compared with the plain-TCP Raft run as.
    var comparisonLabel: String { natsKV ? "nats-kv − Raft" : "TLS − plain TCP" }

    var failovers: [Double] { kills.compactMap(\.failoverMs) }

    /// (min, median, max) of the kill rounds' failover times in ms.
    var failoverSummary: (min: Double, median: Double, max: Double)? {
        let v = failovers.sorted()
        guard !v.isEmpty else { return nil }
        let median = v.count % 2 == 1 ? v[v.count / 2] : (v[v.count / 2 - 1] + v[v.count / 2]) / 2
        return (v.first!, median, v.last!)
    }

    /// Every kill round failed over, the slowest within 1 s. nil: no round ran.
    var failoverPass: Bool? {
        guard !kills.isEmpty else { return nil }
        return kills.allSatisfy { $0.failoverMs != nil } && (failovers.max() ?? .infinity) <= 1000
    }

    /// The graceful stop handed over and no beat was missed. nil: not run.
    var gracefulPass: Bool? { graceful.map { $0.failoverMs != nil && $0.missed == 0 } }

    var orderPass: Bool { repeated == 0 && backwards == 0 }

    /// Beats missed over all kill rounds (rounds without a new frame count nothing).
    var missedInKills: Int { kills.compactMap(\.missed).reduce(0, +) }

    /// What a TLS run is compared with.
    var figures: PlainElectionFigures {
        PlainElectionFigures(
            failover: failoverSummary, kills: kills.count, missedInKills: missedInKills,
            gracefulMissed: graceful?.missed, failovers: failovers, cpu: cpu)
    }
}

extension ElectionResult {
    /// The JSON `tls_minus_plain` of a TLS run: null when `election` did not run first.
    var versusPlainJSON: ComparisonJSON? {
        guard let p = versusPlain else { return nil }
        var out = ComparisonJSON(
            plain_failover_ms: p.failover.map { MinMedianMax(min: $0.min, median: $0.median, max: $0.max) },
            plain_kill_rounds_missed: p.missedInKills, kill_rounds_missed: missedInKills,
            plain_graceful_missed: p.gracefulMissed, graceful_missed: graceful?.missed)
        if let t = failoverSummary, let q = p.failover {
            out.failover_ms_difference = MinMedianMax(
                min: t.min - q.min, median: t.median - q.median, max: t.max - q.max)
        }
        return out
    }

    struct MinMedianMax: Encodable { var min, median, max: Double }

    /// Explicit nulls (not missing keys) where a run has no figure.
    struct ComparisonJSON: Encodable {
        var plain_failover_ms: MinMedianMax?
        var failover_ms_difference: MinMedianMax? = nil
        var plain_kill_rounds_missed: Int
        var kill_rounds_missed: Int
        var plain_graceful_missed: Int?
        var graceful_missed: Int?

        enum CodingKeys: String, CodingKey {
            case plain_failover_ms, failover_ms_difference, plain_kill_rounds_missed, kill_rounds_missed,
                plain_graceful_missed, graceful_missed
        }

        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(plain_failover_ms, forKey: .plain_failover_ms)
            try c.encode(failover_ms_difference, forKey: .failover_ms_difference)
            try c.encode(plain_kill_rounds_missed, forKey: .plain_kill_rounds_missed)
            try c.encode(kill_rounds_missed, forKey: .kill_rounds_missed)
            try c.encode(plain_graceful_missed, forKey: .plain_graceful_missed)
            try c.encode(graceful_missed, forKey: .graceful_missed)
        }
    }
}

/// The plain-TCP Raft election run's figures, kept beside the TLS or nats-kv run's for the difference.
struct PlainElectionFigures {
    var failover: (min: Double, median: Double, max: Double)?
    var kills: Int
    var missedInKills: Int
    var gracefulMissed: Int?
    var failovers: [Double] = []
    var cpu: ClusterCPU? = nil
}

/// CPU time per beat of a steady cluster (all threads of each process,
/// /proc schedstat), over a window with no kill: what each strategy costs
/// while nothing fails. The nats-server's share is where a KV lease's work
/// lands (JetStream writes the renewals); with Raft it carries only frames.
struct ClusterCPU: Encodable {
    var window_s: Double
    var beats: Double
    var leader_us_per_beat: Double
    var follower_us_per_beat: Double  // the mean of the followers
    var nats_server_us_per_beat: Double?  // nil: --nats given, not Bench's own server

    /// The whole cluster's cost per beat: every pulse and the nats-server.
    var total_us_per_beat: Double { leader_us_per_beat + 2 * follower_us_per_beat + (nats_server_us_per_beat ?? 0) }

    var line: String {
        String(
            format: "CPU per beat (%.0f beats, steady): leader %.1f µs, follower %.1f µs, nats-server %@, all %.1f µs",
            beats, leader_us_per_beat, follower_us_per_beat,
            nats_server_us_per_beat.map { String(format: "%.1f µs", $0) } ?? "not measured", total_us_per_beat)
    }

    /// Samples every node's and the nats-server's CPU over `seconds`; nil
    /// when a process could not be read.
    static func measure(_ cluster: BenchCluster, leader: Int, natsPid: Int32?, periodNs: Int64, seconds: Double)
        -> ClusterCPU?
    {
        let pids = cluster.children.map { $0?.pid }
        func sample() -> [Int64?] { pids.map { $0.flatMap(processCPUNs) } + [natsPid.flatMap(processCPUNs)] }
        let before = sample()
        let t0 = cloop_monotonic_ns()
        sleepSeconds(seconds)
        let after = sample()
        let elapsedNs = cloop_monotonic_ns() - t0
        var usPerBeat: [Double?] = []
        let beats = Double(elapsedNs) / Double(periodNs)
        for i in before.indices {
            guard let b = before[i], let a = after[i] else {
                usPerBeat.append(nil)
                continue
            }
            usPerBeat.append(Double(a - b) / 1000 / beats)
        }
        guard let leaderCost = usPerBeat[leader] else { return nil }
        let followers = (0..<pids.count).filter { $0 != leader }.compactMap { usPerBeat[$0] }
        guard !followers.isEmpty else { return nil }
        return ClusterCPU(
            window_s: Double(elapsedNs) / 1e9, beats: beats, leader_us_per_beat: leaderCost,
            follower_us_per_beat: followers.reduce(0, +) / Double(followers.count),
            nats_server_us_per_beat: usPerBeat[pids.count])
    }
}

// MARK: - The cluster

final class BenchCluster {
    let ctx: BenchContext
    let clusterId: String
    let bpm: Int
    let names: [String]
    let raftPorts: [Int]
    let adminPorts: [Int]
    let cpus: [Int]
    let dir: String
    let tlsDir: String?  // ca.pem and NAME.pem/NAME.key for -raft-tls-*; nil: plain TCP
    private(set) var children: [Child?]
    private var starts = 0
    /// Flags every node gets besides the cluster's (e.g. `-spin-max-us 0`).
    let extraArgs: [String]
    /// Environment added per node (by index): the drift scenario's skewed clock.
    let environments: [Int: [String: String]]
    /// `-election nats-kv`: no Raft flags; the lease in the nats-server's JetStream KV.
    let natsKV: Bool

    /// `size` nodes (3 for the election scenarios; the scale report's
    /// cluster series takes 3, 5 and 7), alternating between the bench core
    /// and the other one.
    init(
        _ ctx: BenchContext, clusterId: String, bpm: Int, tlsDir: String? = nil, size: Int = 3,
        extraArgs: [String] = [], environments: [Int: [String: String]] = [:], natsKV: Bool = false
    ) {
        self.ctx = ctx
        self.natsKV = natsKV
        self.extraArgs = extraArgs
        self.environments = environments
        names = (1...size).map { "n\($0)" }
        children = Array(repeating: nil, count: size)
        self.tlsDir = tlsDir
        self.clusterId = clusterId
        self.bpm = bpm
        var ports: Set<Int> = []
        func port() -> Int {
            while true {
                let p = freePort()
                if ports.insert(p).inserted { return p }
            }
        }
        raftPorts = (0..<size).map { _ in port() }
        adminPorts = (0..<size).map { _ in port() }
        let other = ctx.otherCPUs.first ?? ctx.cpu
        cpus = (0..<size).map { $0 % 2 == 0 ? ctx.cpu : other }
        dir = ctx.tempDir + "/\(clusterId)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    var placement: String {
        let rt = ctx.priority > 0 ? "SCHED_FIFO \(ctx.priority)" : "no real-time priority"
        return names.indices.map { "\(names[$0]) cpu \(cpus[$0])" }.joined(separator: ", ") + "; \(rt)"
            + (ctx.mlock ? ", mlock" : "")
    }

    private var peers: String { names.indices.map { "\(names[$0])@127.0.0.1:\(raftPorts[$0])" }.joined(separator: ",") }

    /// Starts node `i` (same flags and data dir every time) and waits for its admin port.
    func start(_ i: Int) throws {
        starts += 1
        let election =
            natsKV
            ? ["-election", "nats-kv"]
            : ["-bootstrap", "-raft-bind", "127.0.0.1:\(raftPorts[i])", "-peers", peers]
        var args =
            election + [
                "-node-id", names[i],
                "-admin-port", "\(adminPorts[i])", "-nats", ctx.natsURL, "-data-dir", "\(dir)/\(names[i])",
                "-cluster", clusterId, "-bpm", "\(bpm)", "-min-bpm", "1", "-max-bpm", "\(max(600, bpm))", "-cpu",
                "\(cpus[i])",
            ]
        if ctx.priority > 0 { args += ["-rt-priority", "\(ctx.priority)"] }
        if ctx.mlock { args += ["-mlock"] }
        args += extraArgs
        if let t = tlsDir {
            args += [
                "-raft-tls-cert", "\(t)/\(names[i]).pem", "-raft-tls-key", "\(t)/\(names[i]).key", "-raft-tls-ca",
                "\(t)/ca.pem",
            ]
        }
        let child = try Child(
            name: "pulse-\(names[i])", path: ctx.pulsePath, arguments: args,
            outputPath: "\(dir)/\(names[i])-\(starts).log", environment: environments[i] ?? [:])
        children[i] = child
        let port = adminPorts[i]
        guard waitUntil(seconds: 15, { !child.isRunning || canConnect(port: port) }), child.isRunning else {
            let status = child.stop(seconds: 2, signal: SIGKILL)
            children[i] = nil
            let log = child.output.split(separator: "\n").suffix(3).joined(separator: " | ")
            throw BenchError("election: \(names[i]) did not start (exit \(status)): \(log)")
        }
    }

    /// Starts every node; retries once without -rt-priority/-mlock when they are refused.
    func startAll() throws {
        do {
            for i in names.indices { try start(i) }
        } catch {
            guard ctx.priority > 0 || ctx.mlock else { throw error }
            stopAll()
            ctx.notes.append("election: pulse refused -rt-priority/-mlock (\(error)); everything runs without them")
            ctx.priority = 0
            ctx.mlock = false
            for i in names.indices { try start(i) }
        }
    }

    /// SIGKILL (reaped at once) or SIGTERM (bounded wait, then SIGKILL); returns the exit status.
    @discardableResult
    func stop(_ i: Int, signal: Int32) -> Int32? {
        guard let child = children[i] else { return nil }
        children[i] = nil
        return child.stop(seconds: 5, signal: signal)
    }

    func stopAll() {
        for i in names.indices { stop(i, signal: SIGTERM) }
    }

    /// `GET /leader` of node `i`: (is_leader, leader address) or nil.
    func leaderStatus(_ i: Int) -> (isLeader: Bool, leader: String?)? {
        guard children[i] != nil, let (status, body) = httpGet(port: adminPorts[i], path: "/leader", timeoutMs: 1000),
            status == 200, let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]
        else { return nil }
        return ((object["is_leader"] as? Bool) ?? false, object["leader"] as? String)
    }

    /// The node that says it leads, waiting (bounded) for exactly one.
    func leader(seconds: Double) -> Int? {
        var found: Int? = nil
        waitUntil(seconds: seconds) {
            let leaders = names.indices.filter { leaderStatus($0)?.isLeader == true }
            found = leaders.count == 1 ? leaders[0] : nil
            return found != nil
        }
        return found
    }

    func beats(_ i: Int) -> [PulseRun.BeatRecord] {
        struct Body: Decodable { var beats: [PulseRun.BeatRecord] }
        guard children[i] != nil, let (status, body) = httpGet(port: adminPorts[i], path: "/debug/beats"),
            status == 200,
            let decoded = try? JSONDecoder().decode(Body.self, from: Data(body))
        else { return [] }
        return decoded.beats
    }

    func logTail(_ i: Int, lines: Int = 3) -> String {
        (children[i]?.output ?? "").split(separator: "\n").suffix(lines).joined(separator: " | ")
    }

    deinit { stopAll() }
}

// MARK: - The scenario

/// SIGKILL rounds: one per measured second, at least 3, at most 20 (each takes ~1–2 s).
func electionRounds(seconds: Int) -> Int { max(3, min(20, seconds)) }

/// scripts/certs.sh of the source tree Bench was built from (BENCH_CERTS_SCRIPT overrides).
func certsScriptPath() -> String {
    if let p = ProcessInfo.processInfo.environment["BENCH_CERTS_SCRIPT"] { return p }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    return root.appendingPathComponent("scripts/certs.sh").path
}

/// A throwaway CA and certificates for n1..n3 in `dir` (scripts/certs.sh, bounded to 60 s).
func makeElectionCertificates(_ ctx: BenchContext, dir: String) throws {
    let script = certsScriptPath()
    guard access(script, R_OK) == 0 else { throw BenchError("election-tls: no \(script) (set BENCH_CERTS_SCRIPT)") }
    let child = try Child(
        name: "certs.sh", path: "/bin/sh", arguments: [script, dir, "n1", "n2", "n3"],
        outputPath: ctx.tempDir + "/certs.out")
    let status = child.wait(seconds: 60)
    guard status == 0 else {
        throw BenchError("election-tls: scripts/certs.sh exited \(status): \(child.output.suffix(200))")
    }
}

/// `tls`: the election-tls scenario (Raft over mutual TLS); `plain`: the plain-TCP
/// run's result when it ran before, for the difference in the report.
func runElectionScenario(
    _ ctx: BenchContext, bpm: Int, timerFloor: Floor, natsFloor: Floor, tls: Bool = false, natsKV: Bool = false,
    plain: ElectionResult? = nil
) throws -> ScenarioResult {
    let clusterId = natsKV ? "bench-election-kv" : tls ? "bench-election-tls" : "bench-election"
    var result = ScenarioResult(
        name: natsKV ? "election-kv" : tls ? "election-tls" : "election", bpm: bpm, timerFloor: timerFloor,
        natsFloor: natsFloor)
    var election = ElectionResult()
    election.tls = tls
    election.natsKV = natsKV
    if tls || natsKV { election.versusPlain = plain?.figures }
    election.plannedRounds = electionRounds(seconds: ctx.options.seconds)
    let receiver = try Receiver(url: ctx.natsURL, subject: "backbeat.\(clusterId).beat", payload: .clusterFrame)
    defer { receiver.close() }
    guard access(ctx.pulsePath, X_OK) == 0 else {
        throw BenchError(
            "no pulse binary at \(ctx.pulsePath); build it first (swift build -c release --product pulse) or set PULSE_BINARY"
        )
    }
    var tlsDir: String? = nil
    if tls {
        tlsDir = ctx.tempDir + "/\(clusterId)-certs"
        try makeElectionCertificates(ctx, dir: tlsDir!)
    }
    let cluster = BenchCluster(ctx, clusterId: clusterId, bpm: bpm, tlsDir: tlsDir, natsKV: natsKV)
    defer { cluster.stopAll() }
    try cluster.startAll()
    election.placement =
        cluster.placement
        + (natsKV
            ? "; -election nats-kv (JetStream KV lease, TTL 450 ms)"
            : tls ? "; Raft over mutual TLS 1.3" : "; Raft over plain TCP")
    let periodNs = Int64(60_000_000_000 / bpm)
    let period = Double(periodNs) / 1e9

    guard let firstLeader = cluster.leader(seconds: 15) else {
        throw BenchError("election: no leader within 15 s (\(cluster.logTail(0)))")
    }
    guard waitUntil(seconds: 5 + 3 * period, { receiver.received >= 3 }) else {
        throw BenchError("election: no frames from the cluster within \(Int(5 + 3 * period)) s")
    }
    // The peers' connections log `tls=true` once the mutual handshake is done.
    if tls && !(0..<3).contains(where: { cluster.children[$0]?.output.contains("tls=true") ?? false }) {
        result.notes.append("no node logged a TLS peer connection (tls=true)")
    }
    // The cluster's timeline: one epoch at a fixed tempo, from the first leader's own records.
    var published: [Int64: PulseRun.BeatRecord] = [:]
    func collect(_ i: Int) {
        for r in cluster.beats(i) where r.published && published[r.index] == nil { published[r.index] = r }
    }
    guard let r0 = cluster.beats(firstLeader).min(by: { $0.index < $1.index }) else {
        throw BenchError("election: /debug/beats of the first leader is empty")
    }
    let epoch = TempoEpoch(startBeat: r0.index, startNs: r0.scheduled_ns, bpm: Int64(bpm))
    let measureFrom = receiver.snapshot().count  // frames before this are the settle
    election.cpu = ClusterCPU.measure(
        cluster, leader: firstLeader, natsPid: ctx.natsPid, periodNs: periodNs, seconds: max(3, 30 * period))
    if election.cpu == nil { result.notes.append("CPU per beat not measured (a process's /proc could not be read)") }
    let names = cluster.names

    /// Stops the leader at a random moment within a beat and reads what the subscriber saw.
    func stopLeader(signal: Int32) -> (LeaderStopRound, Int)? {
        guard let leader = cluster.leader(seconds: 10) else {
            result.notes.append("no leader within 10 s before the \(signal == SIGKILL ? "kill" : "graceful") round")
            return nil
        }
        let old = names[leader]
        // Settle: three frames from this leader.
        let since = receiver.received
        let settled = waitUntil(seconds: 5 + 4 * period) {
            receiver.snapshot().dropFirst(since).filter { $0.fromName == old && !$0.degraded }.count >= 3
        }
        if !settled {
            result.notes.append("\(old) leads but published fewer than 3 frames in \(Int(5 + 4 * period)) s")
        }
        collect(leader)
        let now = cloop_realtime_ns()
        let next = epoch.instantNs(ofBeat: epoch.beat(atOrBeforeNs: now) + 1)
        let phase = Double.random(in: 0..<1)
        sleepUntilRealtime(next + Int64(phase * Double(periodNs)))
        let stopNs = cloop_realtime_ns()
        var round = LeaderStopRound(signal: signal == SIGKILL ? "SIGKILL" : "SIGTERM", stopped: old, phase: phase)
        // SIGKILL: reaped at once. SIGTERM: the leader hands over, then exits (bounded wait,
        // 5 s); the subscriber keeps timing frames meanwhile on its own thread.
        let status = cluster.stop(leader, signal: signal)
        if signal == SIGTERM { round.exitStatus = status }
        let isNew: (Reception) -> Bool = { $0.receivedNs > stopNs && $0.fromName != old && !$0.degraded }
        let found = waitUntil(seconds: 10) { receiver.snapshot().contains(where: isNew) }
        sleepSeconds(min(1, 2 * period))  // frames still in flight
        let frames = receiver.snapshot()
        round.lastOldIndex = frames.filter { $0.fromName == old }.map(\.value).max()
        if found, let first = frames.first(where: isNew) {
            round.failoverMs = Double(first.receivedNs - stopNs) / 1e6
            round.newLeader = first.fromName
            round.newTerm = first.term
            round.firstNewIndex = first.value
            round.firstNewLateMs = Double(first.receivedNs - epoch.instantNs(ofBeat: first.value)) / 1e6
            if let lastOld = round.lastOldIndex {
                let seen = Set(frames.map(\.value))
                round.missed =
                    lastOld + 1 < first.value ? (lastOld + 1..<first.value).filter { !seen.contains($0) }.count : 0
            }
        } else {
            result.notes.append("\(round.signal) \(old): no frame from another node within 10 s")
        }
        return (round, leader)
    }

    for _ in 0..<election.plannedRounds {
        guard let (round, killed) = stopLeader(signal: SIGKILL) else { break }
        election.kills.append(round)
        do {
            try cluster.start(killed)
            if !waitUntil(seconds: 10, { cluster.leaderStatus(killed)?.leader != nil }) {
                result.notes.append("restarted \(names[killed]) did not learn the leader within 10 s")
            }
        } catch {
            result.notes.append("restart of \(names[killed]) failed: \(error)")
            break
        }
        if round.failoverMs == nil { break }
    }
    if cluster.children.allSatisfy({ $0 != nil }), let (round, _) = stopLeader(signal: SIGTERM) {
        election.graceful = round
        if let status = round.exitStatus, status != 0 {
            result.notes.append("\(round.stopped) exited \(status) on SIGTERM")
        }
    } else {
        result.notes.append("graceful round not run (a node is down or there is no leader)")
    }
    for i in 0..<3 { collect(i) }

    // The whole measured stream: order, delivery, jitter.
    let frames = Array(receiver.snapshot().dropFirst(measureFrom))
    var seen = Set<Int64>()
    var maxIndex = Int64.min
    var maxTerm = Int64.min
    for f in frames {
        if f.degraded { election.degradedFrames += 1 }
        if seen.contains(f.value) {
            election.repeated += 1
        } else if f.value < maxIndex {
            election.backwards += 1
        }
        if f.term < maxTerm { election.termBackwards += 1 }
        maxIndex = max(maxIndex, f.value)
        maxTerm = max(maxTerm, f.term)
        if seen.insert(f.value).inserted {
            result.received += 1
            result.delivery.record(ns: f.receivedNs - epoch.instantNs(ofBeat: f.value))
            if let r = published[f.value], f.receivedNs < r.publish_ns { result.crossCheckViolations += 1 }
        }
    }
    if let lo = frames.map(\.value).min(), let hi = frames.map(\.value).max() { result.beats = Int(hi - lo + 1) }
    result.published = seen.count
    var mismatch = 0
    var jitterSamples = 0
    for (index, r) in published where seen.contains(index) {
        result.jitter.record(ns: abs(r.publish_ns - r.scheduled_ns))
        jitterSamples += 1
        if r.scheduled_ns != epoch.instantNs(ofBeat: index) { mismatch += 1 }
    }
    result.notes.append(
        "jitter from \(jitterSamples) of \(seen.count) frames (the leaders' /debug/beats; a killed leader's last records are lost)"
    )
    let lateFirsts = (election.kills + (election.graceful.map { [$0] } ?? [])).compactMap(\.firstNewLateMs)
    if let worst = lateFirsts.max(), worst > 1 {
        result.notes.append(
            String(
                format:
                    "jitter and delivery include each new leader's first frame, which it may publish up to half a period late by design (here up to %.1f ms after its instant)",
                worst))
    }
    if mismatch > 0 { result.notes.append("\(mismatch) beats' scheduled_ns differ from the first leader's timeline") }
    if election.termBackwards > 0 { result.notes.append("term went backwards \(election.termBackwards) times") }
    if election.degradedFrames > 0 {
        result.notes.append("\(election.degradedFrames) degraded frames (a node without a leader)")
    }
    if result.crossCheckViolations > 0 {
        result.notes.append(
            "cross-check: \(result.crossCheckViolations) frames received before their recorded publish time")
    }
    if timerFloor.latencies.count == 0 {
        result.notes.append("floors not measured (run with idle, baseline or per001)")
    }
    result.election = election
    return result
}

// MARK: - Report lines

extension ElectionResult {
    /// The lines under the election block of the terminal table (also used in the HTML).
    func lines(bpm: Int) -> [String] {
        func ms(_ v: Double?) -> String { v.map { String(format: "%.1f ms", $0) } ?? "—" }
        func verdict(_ p: Bool?) -> String { p == nil ? "[ -- ]" : (p! ? "[PASS]" : "[FAIL]") }
        var o: [String] = []
        o.append("placement: \(placement)")
        if let s = failoverSummary {
            o.append(
                String(
                    format: "failover ms  min %.1f  median %.1f  max %.1f  over %d SIGKILL round(s)  (target ≤ 1000)  ",
                    s.min,
                    s.median, s.max, kills.count) + verdict(failoverPass))
        } else {
            o.append("failover: no kill round completed  " + verdict(failoverPass))
        }
        for (n, r) in kills.enumerated() { o.append("kill \(n + 1): " + r.line) }
        if let g = graceful {
            o.append("graceful: " + g.line + "  (target 0 missed)  " + verdict(gracefulPass))
        } else {
            o.append("graceful: not run  " + verdict(nil))
        }
        o.append("repeated indices \(repeated), backwards indices \(backwards)  (target 0)  " + verdict(orderPass))
        if let cpu { o.append(cpu.line) }
        if let p = versusPlain { o += comparisonLines(p) }
        return o
    }

    /// This run − the plain-TCP Raft run (TLS, or the nats-kv strategy), in
    /// ms, beats and µs of CPU per beat (positive: this run slower, missed
    /// more, or cost more).
    func comparisonLines(_ p: PlainElectionFigures) -> [String] {
        var o: [String] = []
        let label = comparisonLabel
        if let t = failoverSummary, let q = p.failover {
            o.append(
                String(
                    format:
                        "%@ failover ms  min %+.1f  median %+.1f  max %+.1f  (Raft over plain TCP: %.1f / %.1f / %.1f over %d round(s))",
                    label, t.min - q.min, t.median - q.median, t.max - q.max, q.min, q.median, q.max, p.kills))
        } else {
            o.append("\(label) failover: not comparable (a run has no completed kill round)")
        }
        let g = graceful?.missed.map(String.init) ?? "?"
        o.append(
            "missed beats \(natsKV ? "nats-kv vs Raft" : "TLS vs plain TCP"): kill rounds \(missedInKills) vs \(p.missedInKills), graceful \(g) vs \(p.gracefulMissed.map(String.init) ?? "?")"
        )
        if let c = cpu, let q = p.cpu {
            o.append(
                String(
                    format: "%@ CPU µs per beat  leader %+.1f  follower %+.1f  nats-server %@  all %+.1f",
                    label, c.leader_us_per_beat - q.leader_us_per_beat,
                    c.follower_us_per_beat - q.follower_us_per_beat,
                    (c.nats_server_us_per_beat.flatMap { a in q.nats_server_us_per_beat.map { a - $0 } })
                        .map { String(format: "%+.1f", $0) } ?? "—",
                    c.total_us_per_beat - q.total_us_per_beat))
        }
        return o
    }
}

extension LeaderStopRound {
    var line: String {
        var s = String(format: "%@ %@ at %.0f%% of a beat", signal, stopped, phase * 100)
        guard let f = failoverMs, let to = newLeader else { return s + " → no new publisher within 10 s" }
        s += String(format: " → first frame from %@ (term %lld) after %.1f ms", to, newTerm ?? -1, f)
        s += "; missed \(missed.map(String.init) ?? "?")"
        s += " (old last \(lastOldIndex.map(String.init) ?? "?"), new first \(firstNewIndex.map(String.init) ?? "?")"
        if let late = firstNewLateMs { s += String(format: " received %.1f ms after its instant", late) }
        s += ")"
        if let e = exitStatus { s += ", exit \(e)" }
        return s
    }
}
