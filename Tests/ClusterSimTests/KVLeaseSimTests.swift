// The nats-kv mode's simulator (issue 21): three pulses (new incarnations
// replace those that stop) against a model JetStream KV — linearizable
// compare-and-set, the key's TTL on the server's clock, outages (no quorum,
// a server failover), partitions between a pulse and the servers, lost
// replies — with drifting clocks, stalls (SIGSTOP), hand-overs (SIGTERM of
// the holder) and tempo changes.
//
// The beat side is the service's: every pulse runs its own `BeatShell`
// (PulsePolicy/BeatShell.swift, BeatPlanner.swift, as Raft mode and the
// whole-cluster simulator do) with the pulse's `KVLeadership` as its
// leadership, over simulated ports (KVSimBeat.swift): beat timers and spins
// at their exact times on an event queue, frames on a simulated NATS link
// (latency, cuts with the kernel's queue and TCP_USER_TIMEOUT, reconnects),
// heard through `BeatShell.hear` / `hearOwn` and an `EchoPolicy`. The shell
// is driven by the service's `KVShell` (PulsePolicy/KVShell.swift, what
// Pulse/KV/KVNode runs) over simulated ports (KVSimShell.swift): the lease
// operations, the timeline writes (term starts, the epoch, tempo changes)
// and their answers (some lost: `.unknown`), the watches of both keys (some
// resuming at the newest entry), the clock pings and their reports (some
// lost), the step-downs, the SIGTERM hand-over. The KV connection is apart
// from the beat connection. Degradation (JetStream without quorum for
// seconds, core NATS up) is the strategy's (KVLeaseLeadership, KVLeasePeers)
// and the planner's degraded turns. Tempo requests take the service's path:
// `TempoAdmission.decide` on the shell's timeline and next beat
// (TempoController), then `KVShell.commitTempo`.
//
// What is still the simulator's own: the model KV (KVModelServer), the
// faults, the SIGTERM housekeeping (PulseNode.housekeeping's rules) and the
// TempoController's admission call.
//
// Checked on every frame handed to the kernel (its bytes decoded, as a
// consumer decodes them) and at every step:
//   one_publisher     at most one pulse's lease lets it publish at any instant
//   holder_is_current a non-degraded frame's term is the server's current
//                     lease term and its publisher the key's owner
//   no_republish      no index published twice: by two holders ever; by a
//                     degraded pulse (or a holder after one) that had read a
//                     frame of that index from the subject before; by two
//                     degraded pulses whose frames both went out on an open
//                     path (the whole-cluster simulator's rule: turns keep
//                     them apart). Other pairs (a frame in flight, or queued
//                     behind a cut, beside one that could not have read it)
//                     are only tallied, `unheard_duplicates`
//   term_order        terms never go down along the indices (holders' frames)
//   not_retroactive   a stored tempo change's downbeat is after every
//                     published beat, and no holder's frame at or past it
//                     carries another tempo
//   lateness          a holder's frame leaves at or after its instant, less
//                     than half a period late
//   on_timeline       a holder's frame carries the tempo and deadline the
//                     server's stored record gives its index
//   monotonic         holders' deadlines strictly increase with the index
//   holder_publishes  an undisturbed holder of the key publishes (2.5 s)
// The process tests (KVLeaseProcessTests) run the whole service against
// real servers.
//
//   SIM_KV_SEEDS=N   seeds (default 2000); SIM_SEED=S one seed
import Foundation
import PulseCore
import PulsePolicy
import XCTest

@testable import Pulse

final class KVLeaseSimTests: XCTestCase {
    func testSeededKVLeaseSimulation() {
        let env = ProcessInfo.processInfo.environment
        let seeds: [UInt64] =
            env["SIM_SEED"].flatMap { UInt64($0) }.map { [$0] }
            ?? Array(0..<UInt64(env["SIM_KV_SEEDS"].flatMap { Int($0) } ?? 2000))
        var totals = KVSimTotals()
        for seed in seeds {
            let sim = KVSim(seed: seed)
            sim.run()
            totals.add(sim)
            for v in sim.violations.prefix(3) {
                print("violation: nats-kv seed=\(seed) \(v)  (SIM_SEED=\(seed) make sim)")
            }
        }
        print(
            "seeds=\(seeds.count) mode=nats-kv steps=\(totals.steps) frames=\(totals.frames) acquisitions=\(totals.acquisitions) hand_overs=\(totals.handOvers) hand_overs_echoed=\(totals.handOversEchoed) graceful_take_overs=\(totals.gracefulTakeOvers) tempo_changes=\(totals.tempoChanges) change_pending=\(totals.changesPendingRefused) stalls=\(totals.stalls) outages=\(totals.outages) degraded_frames=\(totals.degradedFrames) degraded_held=\(totals.degradedHeld) unheard_duplicates=\(totals.unheardDuplicates) refused_echoes=\(totals.refusedEchoes) foreign_frames=\(totals.foreignFrames) watch_gaps=\(totals.refusals["timeline_watch_gap", default: 0]) step_downs=\(totals.refusals["holder_not_ready", default: 0] + totals.refusals["tempo_write_unsettled", default: 0]) violations=\(totals.violations) "
        )
        XCTAssertEqual(totals.violations, 0)
        XCTAssertGreaterThan(totals.acquisitions, 0, "leases are taken")
        XCTAssertGreaterThan(totals.frames, 0, "holders publish")
        XCTAssertGreaterThan(totals.tempoChanges, 0, "tempo changes are exercised")
        if seeds.count >= 100 {
            XCTAssertGreaterThan(totals.acquisitions, UInt64(seeds.count), "leases change hands")
            // The epoch starts at 1 s: 50 beats a seed at most.
            XCTAssertGreaterThan(totals.frames, 25 * UInt64(seeds.count), "holders publish most beats")
            XCTAssertGreaterThan(totals.handOvers, 0, "hand-overs are exercised")
            XCTAssertGreaterThan(totals.handOversEchoed, 0, "hand-overs after the last frame came back")
            XCTAssertGreaterThan(totals.gracefulTakeOvers, 0, "take-overs with the hand-over's short guard")
            XCTAssertGreaterThan(totals.degradedFrames, 0, "degradation is exercised")
            XCTAssertGreaterThan(totals.foreignFrames, 0, "degraded pulses hear other timelines")
        }
        if seeds.count >= 1000 {
            XCTAssertGreaterThan(totals.degradedHeld, 0, "the tempo barrier holds degraded turns")
            XCTAssertGreaterThan(totals.refusals["timeline_watch_gap", default: 0], 0, "watch gaps are exercised")
            XCTAssertGreaterThan(totals.changesPendingRefused, 0, "the holder's 409 change_pending is reached")
        }
    }
}

/// nats-kv seeds that failed, each fixed since: they stay as regression
/// tests (the comment says what each one found). Since the simulator runs
/// the service's BeatShell and KVShell (2026-12-07) its random streams are
/// drawn differently, so these seeds no longer replay the schedules that
/// failed; the findings themselves are unit tests (KVLeaseTempoWriteTests,
/// KVShellTests), and the 2,000 seeds of `testSeededKVLeaseSimulation`
/// assert that the holder's 409 `change_pending` is reached.
final class KVRegressionSeedTests: XCTestCase {
    static let seeds: [(seed: UInt64, what: String)] = [
        // The 100,000-seed run of 2026-12-07 (24a5b6a): a holder whose tempo
        // record was stored, not yet watched, wrote a second change on the
        // stale state; refused, it lifted the first one's barrier and beats
        // went out at the old tempo past its downbeat (now 409 change_pending
        // until the watch applied it).
        (3315, "not_retroactive: a second change before the first was watched lifted its barrier"),
        (29151, "the same"),
        (30282, "the same; its degraded turns are held by the barrier too"),
        (38317, "the same"),
        (44686, "the same"),
        (61653, "the same"),
        (66786, "the same"),
        (9512, "the same, found by 40,000 seeds of the model without the refusal"),
        // The same run: the model's degraded turns ignored the barrier the
        // service holds.
        (73673, "no_republish: an ex-holder's degraded frames past its unapplied change's downbeat"),
    ]
    func testKVRegressionSeeds() {
        for (seed, what) in Self.seeds {
            let sim = KVSim(seed: seed)
            sim.run()
            XCTAssertEqual(sim.violations, [], "nats-kv seed \(seed) (\(what))")
        }
    }
}

extension KVLeaseSimTests {
    /// The 100,000-seed run's degraded duplicates (issue 21): a pulse that
    /// lost JetStream took degraded turns beside a holder whose lease still
    /// ran (20229: after a stall; 42853: 27 ms after its subject came back),
    /// and a pulse stalled through the first pings ranked on a list without
    /// a pulse that had stopped (48489). Each fails without its fix
    /// (KVLeaseLeadership.degradedTurnsAllowed, KVLeasePeers' reports).
    func testDegradedTurnRegressionSeeds() {
        for seed: UInt64 in [20229, 42853, 48489] {
            let sim = KVSim(seed: seed)
            sim.run()
            XCTAssertEqual(sim.violations, [], "seed \(seed)")
            XCTAssertGreaterThan(sim.acquisitions, 0, "seed \(seed): leases are taken")
        }
    }
}

extension KVLeaseSimTests {
    /// The 100,000-seed run of the twin model (before the pulses ran the
    /// service's BeatShell) found two degraded pulses on different committed
    /// timelines publishing one index. The service's planner yields to a
    /// publisher it hears on another timeline (BeatPlanner.noteForeignTimeline;
    /// PlannerTests). With the BeatShell alone in the model, 4 of these seeds
    /// failed without that rule; since the model runs KVShell too its
    /// streams are drawn differently and they no longer meet the case (no
    /// seed of the first 3,000 failed without the rule). They stay as runs
    /// without violations; the 2,000 seeds assert frames heard on another
    /// timeline (`foreign_frames`).
    func testForeignTimelineRegressionSeeds() {
        for seed: UInt64 in [10194, 35780, 41445, 84995, 94664] {
            let sim = KVSim(seed: seed)
            sim.run()
            XCTAssertEqual(sim.violations, [], "seed \(seed)")
        }
    }
}

struct KVSimTotals {
    var steps: UInt64 = 0
    var frames: UInt64 = 0
    var acquisitions: UInt64 = 0
    var handOvers: UInt64 = 0
    var handOversEchoed: UInt64 = 0
    var tempoChanges: UInt64 = 0
    var changesPendingRefused: UInt64 = 0
    var degradedHeld: UInt64 = 0
    var refusedEchoes: UInt64 = 0
    var foreignFrames: UInt64 = 0
    /// What the shells refused or gave up, by reason (KVSimShell.swift).
    var refusals: [String: UInt64] = [:]
    var gracefulTakeOvers: UInt64 = 0
    var stalls: UInt64 = 0
    var outages: UInt64 = 0
    var degradedFrames: UInt64 = 0
    var unheardDuplicates: UInt64 = 0
    var violations: UInt64 = 0

    mutating func add(_ sim: KVSim) {
        steps += sim.steps
        frames += UInt64(sim.published.count)
        acquisitions += sim.acquisitions
        handOvers += sim.handOvers
        handOversEchoed += sim.handOversEchoed
        refusedEchoes += sim.refusedEchoes
        foreignFrames += sim.foreignFrames
        refusals.merge(sim.refusals, uniquingKeysWith: +)
        gracefulTakeOvers += sim.gracefulTakeOvers
        tempoChanges += sim.tempoChanges
        changesPendingRefused += sim.changesPendingRefused
        degradedHeld += sim.degradedHeld
        stalls += sim.stalls
        outages += sim.outages
        degradedFrames += UInt64(sim.degradedPublished.count)
        unheardDuplicates += sim.unheardDuplicates
        violations += UInt64(sim.violations.count)
    }
}

/// The model KV: the lease key (TTL on the server clock) and the timeline key.
struct KVModelServer {
    let ttlNs: Int64
    /// The two buckets' streams (KVBuckets: `backbeat_<cluster>_lease` and
    /// the timeline bucket) number their revisions apart.
    var sequence: UInt64 = 0
    var timelineSequence: UInt64 = 0
    var lease: (rev: UInt64, owner: String, storedNs: Int64, term: UInt64)?
    var timeline: (rev: UInt64, value: [UInt8])?
    /// Every timeline record stored, in revision order (what watches deliver).
    var records: [(rev: UInt64, value: [UInt8])] = []
    /// Every put and delete of the lease key, in revision order (what the
    /// lease watch delivers; an expiry at the TTL leaves no entry, as in JetStream).
    var leaseEntries: [KVWatched] = []

    mutating func expire(atNs now: Int64) {
        if let l = lease, now >= l.storedNs + ttlNs { lease = nil }
    }

    /// A lease operation at the server (KVBuckets.leaseNow): the claim is
    /// the owner; a delete carries the release marker when `marked`.
    mutating func apply(_ op: KVLeaseOp, owner: String, marked: Bool = true, atNs now: Int64) -> KVLeaseReply {
        expire(atNs: now)
        switch op {
        case .create:
            guard lease == nil else { return .conflict }
            sequence += 1
            lease = (sequence, owner, now, sequence)
            leaseEntries.append(KVWatched(revision: sequence, value: Array(owner.utf8)))
            return .written(revision: sequence)
        case .update(let last):
            guard let l = lease, l.rev == last else { return .conflict }
            sequence += 1
            lease = (sequence, l.owner, now, l.term)
            leaseEntries.append(KVWatched(revision: sequence, value: Array(l.owner.utf8)))
            return .written(revision: sequence)
        case .read:
            guard let l = lease else { return .absent }
            return .found(revision: l.rev, owner: l.owner)
        case .delete(let last):
            guard let l = lease, l.rev == last else { return .conflict }
            sequence += 1
            lease = nil
            let marker = marked ? KVLease.releaseMarker(claim: Array(l.owner.utf8)) : []
            leaseEntries.append(KVWatched(revision: sequence, value: nil, markerBody: marker))
            return .written(revision: sequence)
        }
    }

    mutating func writeTimeline(_ value: [UInt8], lastRevision: UInt64) -> UInt64? {
        guard (timeline?.rev ?? 0) == lastRevision else { return nil }
        timelineSequence += 1
        timeline = (timelineSequence, value)
        records.append((timelineSequence, value))
        return timelineSequence
    }
}

/// One simulated pulse (one incarnation: a restart is a new node).
final class KVSimNode {
    let index: Int
    let leadership: KVLeadership
    let ratePpm: Int64  // its monotonic clock against the server's
    /// Its wall clock: the server's time off by `offsetNs` and drifting by
    /// `wallPpm` (NTP-disciplined hosts; the whole-cluster simulator's ±500 ppm).
    let wallPpm: Int64
    let offsetNs: Int64
    var stalledUntilNs: Int64 = 0
    var partitionedUntilNs: Int64 = 0
    var gone = false

    /// Its KV connection alone is cut (not the beat connection) until then.
    var kvCutUntilNs: Int64 = 0
    /// The last step it was stalled, cut, detached or without the KV.
    var lastDisturbedNs: Int64 = 0

    // The lease and timeline side: the service's shell over the simulated ports (KVSimShell.swift).
    var kv: KVShell!
    var kvPorts: KVSimKVPorts!
    /// Answers of KV operations on their way back: run on the first step
    /// of its loop at or after `dueNs` (KVNode's loop completions).
    var kvInbox: [(dueNs: Int64, answer: () -> Void)] = []
    /// How many entries of each key the watches delivered, and whether the
    /// KV was out of reach since the last delivery.
    var timelineWatched = 0
    var leaseWatched = 0
    var watchInterrupted = false
    /// A tempo request is being committed (TempoController's in-flight: another is 409).
    var tempoInFlight = false
    /// SIGTERM on the holder: hands over once its last frame came back
    /// (PulseNode.handOver), else after a period and a second.
    var stopRequestedNs: Int64?
    var handOverPending = false

    // The beat side: the service's shell over the simulated ports (KVSimBeat.swift).
    var beat: BeatShell!
    var ports: KVSimBeatPorts!
    /// The beat subscription's echo policy (one per incarnation, as in the service).
    var echo = EchoPolicy(clusterId: KVSim.clusterId, publishers: .any, maxTermLead: EchoPolicy.clusterTermLead)
    var link = KVSimLink()
    var beatTimer = 0
    var beatPending = false
    var emitPending: (Int64, Bool, Int64)?
    /// Frames delivered while stalled, read when the loop runs again.
    var backlog: [KVSimFrame] = []

    init(index: Int, leadership: KVLeadership, ratePpm: Int64, wallPpm: Int64, offsetNs: Int64) {
        self.index = index
        self.leadership = leadership
        self.ratePpm = ratePpm
        self.wallPpm = wallPpm
        self.offsetNs = offsetNs
    }

    func stalled(_ t: Int64) -> Bool { t < stalledUntilNs }
    func mono(_ t: Int64) -> Int64 { t * ratePpm / 1_000_000 }
    func wall(_ t: Int64) -> Int64 { t + t * wallPpm / 1_000_000 + offsetNs }
    /// The earliest true time at which the wall clock reads at least `w`.
    func trueAt(wall w: Int64) -> Int64 {
        var t = max(0, (w - offsetNs) * 1_000_000 / (1_000_000 + wallPpm))
        while wall(t) < w { t += 1 }
        while t > 0 && wall(t - 1) >= w { t -= 1 }
        return t
    }
}

final class KVSim {
    static let stepNs: Int64 = 5_000_000
    static let durationNs: Int64 = 6_000_000_000
    static let latencyNs: Int64 = 2_000_000
    static let clusterId = "sim-kv"
    /// The service's planner settings (BeatDriver, the default -spin-max-us).
    static let planner = PlannerConfig(maxLeadNs: 2_000_000, handoffGuardNs: BeatDriver.handoffGuardNs)
    var rng: SimRNG
    /// NATS latencies and reconnect delays (their own stream).
    var netRng: SimRNG
    /// Lost KV answers and pings, watch gaps (their own stream).
    var kvRng: SimRNG
    /// What the pulses' shells refused or gave up, by reason.
    var refusals: [String: UInt64] = [:]
    /// Take-overs with the short guard (the key freed by a hand-over's marked delete).
    var gracefulTakeOvers: UInt64 = 0
    /// True time (ns): the step's, or the event's being handled.
    var now: Int64 = 0
    var events = EventQueue<KVSimEvent>()
    var server: KVModelServer
    var nodes: [KVSimNode] = []
    /// Holders' frames handed to a kernel: index → term, node, tempo.
    var published: [Int64: (term: UInt64, node: Int, bpm: Int64)] = [:]
    /// Holders' frames' deadlines by index (the monotonic check).
    var publishedDeadlines: [Int64: Int64] = [:]
    /// The liveness check: per term, since when its holder was undisturbed,
    /// its last frame, and terms already reported.
    var termSinceNs: [UInt64: Int64] = [:]
    var lastHolderFrameNs: [UInt64: Int64] = [:]
    var silentTerms: Set<UInt64> = []
    /// Degraded frames handed to a kernel: index → the first node.
    var degradedPublished: [Int64: Int] = [:]
    /// Per index: the pulses that read a frame of it from the subject (the
    /// shell's `hear`/`hearOwn`), which a later frame of theirs must obey.
    /// A frame still in flight, or queued behind a cut, is not heard: a pair
    /// of frames where the second publisher had not read the first is only
    /// tallied (`unheard_duplicates`), as the whole-cluster simulator counts
    /// only frames handed off on an open path.
    var heard: [Int64: Set<Int>] = [:]
    /// Per index: the pulses whose degraded frame of it went out on an open path.
    var openDegraded: [Int64: Set<Int>] = [:]
    var unheardDuplicates: UInt64 = 0
    /// Frames an echo policy refused (another term or timeline, a stale one).
    var refusedEchoes: UInt64 = 0
    /// Frames a pulse heard on another committed timeline than its own
    /// (BeatPlanner.noteForeignTimeline: its degraded turns yield).
    var foreignFrames: UInt64 = 0
    var violations: [String] = []
    var steps: UInt64 = 0
    var acquisitions: UInt64 = 0
    var handOvers: UInt64 = 0
    /// Of those, after the holder's last frame came back (the release marker).
    var handOversEchoed: UInt64 = 0
    var tempoChanges: UInt64 = 0
    /// Tempo requests the holder refused with 409 `change_pending` (its last
    /// change stored, not yet watched).
    var changesPendingRefused: UInt64 = 0
    /// Degraded turns the tempo barrier held (planner retries, KVSim.armBeat).
    var degradedHeld: UInt64 = 0
    var stalls: UInt64 = 0
    var outages: UInt64 = 0
    var outageUntilNs: Int64 = 0
    var incarnation = 0
    /// The pending change of the last stored record (the committed one).
    var committedPending: TempoChange.Stored?
    let shape: TimelineShape

    init(seed: UInt64) {
        rng = SimRNG(seed: seed &* 0x9E37_79B9 &+ 21)
        netRng = SimRNG(seed: seed ^ 0x4E41_5453)
        kvRng = SimRNG(seed: seed ^ 0x4B56_5348)
        let timing = KVLeaseTiming()
        server = KVModelServer(ttlNs: timing.ttlNs)
        shape = (try? TimelineShape(bar: 4, phases: ["beat"]))!
        for _ in 0..<3 { nodes.append(makeNode()) }
    }

    func makeNode() -> KVSimNode {
        incarnation += 1
        // Within the lease's stated clock-rate margin (1 %) and the guard's offset.
        let rate = 1_000_000 + Int64(rng.below(18_000)) - 9_000
        let offset = Int64(rng.below(20_000_000)) - 10_000_000
        let wallPpm = Int64(rng.below(1_001)) - 500
        // The claim's first word is the node id, as KVNode's; the HLC suffix
        // its frames carry (the id's last 4 characters) tells incarnations apart.
        let nodeId = "kvsim-\(1000 + incarnation)"
        let lease = KVLease(timing: KVLeaseTiming(), owner: "\(nodeId) \(incarnation)", nowMonoNs: 0)
        let n = KVSimNode(
            index: nodes.count, leadership: KVLeadership(lease: lease, timeline: KVLeaseTimeline(flags: shape)),
            ratePpm: rate, wallPpm: wallPpm, offsetNs: offset)
        n.ports = KVSimBeatPorts(sim: self, node: n)
        n.beat = BeatShell(
            ports: n.ports, planner: Self.planner, handOverGuardNs: BeatDriver.handOverGuardNs,
            clusterId: Self.clusterId, phases: shape.phases, nodeId: nodeId, maxOffsetMs: 500)
        n.kvPorts = KVSimKVPorts(sim: self, node: n)
        // The shell hands its leadership to the beat shell (as KVNode's).
        n.kv = KVShell(
            ports: n.kvPorts, leadership: n.leadership, beat: n.beat, shape: shape, bootstrapBpm: 600,
            recordLimitBytes: KVTimelineRecord.maxBytes)
        // A new watch starts at the newest entry of each key still stored.
        resumeWatches(n)
        // The NATS connection attaches shortly after the start.
        events.push(now + netRng.range(5_000_000, 100_000_000), .reconnect(node: n.index, link: n.link.gen))
        return n
    }

    func run() {
        var t: Int64 = 0
        while t < Self.durationNs {
            t += Self.stepNs
            runEvents(through: t)  // the beat side, at its exact times
            now = t
            steps += 1
            faults(t)
            server.expire(atNs: t)
            for i in nodes.indices where !nodes[i].gone && !nodes[i].stalled(t) { act(nodes[i], t) }
            checkOnePublisher(t)
        }
    }

    func faults(_ t: Int64) {
        switch rng.below(2_000) {
        case 0:
            outageUntilNs = max(outageUntilNs, t + Int64(rng.below(1_500)) * 1_000_000)  // a server failover
            outages += 1
        case 1 where rng.below(2) == 0:
            // JetStream without quorum for seconds (core NATS up): degradation.
            outageUntilNs = max(outageUntilNs, t + 1_500_000_000 + Int64(rng.below(2_500)) * 1_000_000)
            outages += 1
        default: break
        }
        let n = nodes[Int(rng.below(UInt64(nodes.count)))]
        guard !n.gone else { return }
        switch rng.below(3_000) {
        case 0:
            n.stalledUntilNs = t + Int64(rng.below(2_000)) * 1_000_000
            events.push(n.stalledUntilNs, .stallEnds(node: n.index))
            trace("n\(n.index) stalled for \((n.stalledUntilNs - t) / 1_000_000) ms")
            stalls += 1
        case 1:
            n.partitionedUntilNs = t + Int64(rng.below(1_500)) * 1_000_000
            trace("n\(n.index) partitioned for \((n.partitionedUntilNs - t) / 1_000_000) ms")
            events.push(n.partitionedUntilNs, .partitionEnds(node: n.index))
            pathCut(n)
        case 3:
            // The KV connection alone (its own NATS connection): the beats go on.
            n.kvCutUntilNs = t + Int64(rng.below(1_500)) * 1_000_000
            trace("n\(n.index) KV connection cut for \((n.kvCutUntilNs - t) / 1_000_000) ms")
        case 2:
            // SIGTERM (PulseNode): the holder hands over after its next
            // frame came back, anyone else stops; a new incarnation starts.
            guard n.stopRequestedNs == nil else { break }
            if n.leadership.isHolder {
                n.stopRequestedNs = t
                n.handOverPending = true
            } else {
                stop(n)
            }
        default: break
        }
    }

    /// The process ends; a new incarnation starts.
    func stop(_ n: KVSimNode) {
        guard !n.gone else { return }
        n.gone = true
        nodes.append(makeNode())
    }

    /// PulseNode.handOver: the holder releases the key (marked when its last
    /// frame came back: the successor's short guard); anyone else stops.
    func handOver(_ n: KVSimNode, echoed: Bool) {
        guard n.handOverPending else { return }
        n.handOverPending = false
        let holder = n.leadership.isHolder
        if holder {
            handOvers += 1
            if echoed { handOversEchoed += 1 }
        }
        // KVShell.release: `.released` (KVSimShell.kvEvent) stops the process.
        guard n.kv.release(echoed: echoed) else { return stop(n) }
    }

    /// The hand-over's delete is done: the process stops (the others' lease
    /// watch delivers the delete with its release marker).
    func released(_ n: KVSimNode) { stop(n) }

    /// One step of pulse `n`'s loop (not stalled): its KV shell (answers,
    /// watches, the 20 ms lease timer: KVSimShell.swift), the stop's
    /// housekeeping, then now and then a tempo request; the beat side runs
    /// on its own events.
    func act(_ n: KVSimNode, _ t: Int64) {
        driveKV(n, t)
        guard !n.gone else { return }
        if let since = n.stopRequestedNs {
            // PulseNode.housekeeping: no echo within a period and a second: hand over anyway.
            let periodNs =
                n.beat.timeline.map {
                    $0.instantNs(ofBeat: n.beat.nextBeat + 1) - $0.instantNs(ofBeat: n.beat.nextBeat)
                } ?? 100_000_000
            if n.handOverPending && t - since > periodNs + 1_000_000_000 { handOver(n, echoed: false) }
            if !n.gone && (!n.kv.holdsOrReleases || t - since > periodNs + 3_000_000_000) { stop(n) }
            guard !n.gone else { return }
        }
        tempoRequest(n, t)
    }

    /// Now and then a tempo request on the holder, by the service's path:
    /// TempoController (`TempoAdmission.decide` on the shell's timeline and
    /// next beat, one request in flight) → `KVShell.commitTempo`, whose
    /// write the model KV stores (KVSimKVPorts) and whose barrier the beat
    /// shell obeys; refused requests (409, 503) write nothing.
    func tempoRequest(_ n: KVSimNode, _ t: Int64) {
        let l = n.leadership
        guard l.lease.mayPublish(nowMonoNs: n.mono(t)), l.timeline.holderReady(term: l.lease.term),
            rng.below(300) == 0, let timeline = n.beat.timeline
        else { return }
        let first = n.beat.nextBeat
        let current = TempoAdmission.inForce(timeline, firstUnpublishedBeat: first).epoch.bpm
        let decision = TempoAdmission.decide(
            requestedBpm: current == 600 ? 570 : 600, timeline: timeline, minBpm: 1, maxBpm: 6000,
            inFlight: n.tempoInFlight, isLeader: l.isReadyHolder, appliedTermStart: true, nowWallNs: n.wall(t),
            commitRoundNs: 200_000_000, firstUnpublishedBeat: first)
        guard case .propose(let change) = decision else { return }
        n.tempoInFlight = true
        n.kv.commitTempo(change, justification: "") { [self] answer in
            n.tempoInFlight = false
            if answer == "change_pending" { changesPendingRefused += 1 }
        }
    }

    /// When each pulse was last stalled, cut, detached or without the KV.
    func noteDisturbed(_ t: Int64) {
        for n in nodes where !n.gone {
            if n.link.attachedMonoNs == nil || n.stalled(t) || cut(n) || !kvReachable(n, t) { n.lastDisturbedNs = t }
        }
    }

    func checkOnePublisher(_ t: Int64) {
        noteDisturbed(t)
        let publishing = nodes.indices.filter { i in
            !nodes[i].gone && !nodes[i].stalled(t) && nodes[i].leadership.lease.mayPublish(nowMonoNs: nodes[i].mono(t))
        }
        if publishing.count > 1 { violations.append("one_publisher: nodes \(publishing) at \(t / 1_000_000) ms") }
        checkHolderPublishes(t)
    }

    /// holder_publishes (liveness): a pulse that holds the key at the server,
    /// undisturbed (not stalled, cut, detached, no outage) with a timeline
    /// committed, publishes: no 2.5 s (more than the 4 TTLs after which a
    /// holder that cannot get ready steps down, and its guard) without a
    /// frame of its term. A pulse wedged on an old timeline shows here, not
    /// only as step-downs.
    func checkHolderPublishes(_ t: Int64) {
        guard let l = server.lease, !silentTerms.contains(l.term), server.timeline != nil,
            let n = nodes.first(where: { !$0.gone && $0.leadership.lease.owner == l.owner })
        else { return }
        if termSinceNs[l.term] == nil { termSinceNs[l.term] = t }
        if n.lastDisturbedNs == t { termSinceNs[l.term] = t }  // disturbed: counts from when it is not
        let since = max(termSinceNs[l.term] ?? t, lastHolderFrameNs[l.term] ?? .min)
        if t - since > 2_500_000_000 {
            silentTerms.insert(l.term)
            violations.append(
                "holder_publishes: node \(n.index) holds term \(l.term), no frame for 2.5 s at \(t / 1_000_000) ms")
        }
    }
}

extension SimRNG {
    /// Uniform in 0..<n (the simulator's SplitMix64, SimSupport.swift).
    mutating func below(_ n: UInt64) -> UInt64 { next() % n }
}
