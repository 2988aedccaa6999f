// The nats-kv mode's model for the simulator (issue 21): three pulses run the
// pure lease and timeline policies (PulsePolicy/KVLease*.swift) against a
// model JetStream KV — linearizable compare-and-set, the key's TTL on the
// server's clock, outages (no quorum, a server failover), partitions between
// a pulse and the servers, lost replies — with drifting clocks, stalls
// (SIGSTOP), hand-overs and tempo changes. Each pulse publishes a beat at its
// instant when the lease policy lets it (`KVLeadership.publishMode`), past
// the take-over guard and the highest index it heard, below the tempo
// barrier. Outages of JetStream long enough for degradation (no quorum for
// seconds, core NATS up) make the pulses keep the timeline with degraded
// frames, in turns ranked among the pulses seen and measured on the lowest
// one's clock as estimated from ping samples (KVLeasePeers, whose reports
// ride on the pings), each only in its turn's slot, past the highest index
// it heard, below the tempo barrier, and only when the strategy allows turns
// (no holder's frame heard for two periods, not just reattached or stalled,
// the ranking settled: KVLeaseLeadership.degradedTurnsAllowed). Tempo
// requests take the service's path: `TempoAdmission.decide`
// (TempoController) and `KVLeadership.prepareTempo` / `KVTempoWrite`
// (KVNode.commitTempo), whose barrier the frames obey. Checked at every
// step and frame:
//   one_publisher    at most one pulse may publish at any instant
//   holder_is_current a frame's publisher holds the key's current revision at the server
//   no_republish     no index published twice: by two holders ever; by a
//                    degraded pulse (or a holder after one) that was on NATS
//                    when the index was first published (degraded frames reach
//                    the others at the end of the step, so two turns taken at
//                    once both count; a pulse cut off from NATS cannot hear the
//                    frame, as in the whole-cluster simulator: such pairs are
//                    only tallied, `unheard_duplicates`)
//   term_order       terms never go down along the indices (leader frames)
//   not_retroactive  a stored tempo change's downbeat is after every published beat
// This model runs the policies, not the service's loop (Pulse/KV/KVNode);
// the process tests (KVLeaseProcessTests) run that against real servers.
//
//   SIM_KV_SEEDS=N   seeds (default 2000); SIM_SEED=S one seed
import Foundation
import PulseCore
import PulsePolicy
import XCTest

final class KVLeaseSimTests: XCTestCase {
    func testSeededKVLeaseSimulation() {
        let env = ProcessInfo.processInfo.environment
        let seeds: [UInt64] =
            env["SIM_SEED"].flatMap { UInt64($0) }.map { [$0] }
            ?? Array(0..<UInt64(env["SIM_KV_SEEDS"].flatMap { Int($0) } ?? 2000))
        var totals = KVSimTotals()
        for seed in seeds {
            var sim = KVSim(seed: seed)
            sim.run()
            totals.add(sim)
            for v in sim.violations.prefix(3) {
                print("violation: nats-kv seed=\(seed) \(v)  (SIM_SEED=\(seed) make sim)")
            }
        }
        print(
            "seeds=\(seeds.count) mode=nats-kv steps=\(totals.steps) frames=\(totals.frames) acquisitions=\(totals.acquisitions) hand_overs=\(totals.handOvers) tempo_changes=\(totals.tempoChanges) change_pending=\(totals.changesPendingRefused) stalls=\(totals.stalls) outages=\(totals.outages) degraded_frames=\(totals.degradedFrames) degraded_held=\(totals.degradedHeld) unheard_duplicates=\(totals.unheardDuplicates) violations=\(totals.violations) "
        )
        XCTAssertEqual(totals.violations, 0)
        XCTAssertGreaterThan(totals.acquisitions, UInt64(seeds.count), "leases change hands")
        XCTAssertGreaterThan(totals.tempoChanges, 0, "tempo changes are exercised")
        if seeds.count >= 100 {
            XCTAssertGreaterThan(totals.handOvers, 0, "hand-overs are exercised")
            XCTAssertGreaterThan(totals.degradedFrames, 0, "degradation is exercised")
        }
        if seeds.count >= 1000 {
            XCTAssertGreaterThan(totals.degradedHeld, 0, "the tempo barrier holds degraded turns")
        }
    }
}

/// nats-kv seeds that failed, each fixed since: they stay as regression
/// tests (the comment says what each one found). `pending`: the seed must
/// reach the holder's 409 `change_pending` (KVTempoWrite), so it still
/// exercises what it found.
final class KVRegressionSeedTests: XCTestCase {
    static let seeds: [(seed: UInt64, pending: Bool, what: String)] = [
        // The 100,000-seed run of 2026-12-07 (24a5b6a): a holder whose tempo
        // record was stored, not yet watched, wrote a second change on the
        // stale state; refused, it lifted the first one's barrier and beats
        // went out at the old tempo past its downbeat (now 409 change_pending
        // until the watch applied it). Since the model's requests go through
        // TempoAdmission, all but 3315 still fail without the refusal.
        (3315, true, "not_retroactive: a second change before the first was watched lifted its barrier"),
        (29151, true, "the same"),
        (30282, true, "the same; its degraded turns are held by the barrier too"),
        (38317, true, "the same"),
        (44686, true, "the same"),
        (61653, true, "the same"),
        (66786, true, "the same"),
        (9512, true, "the same, found by 40,000 seeds of this model without the refusal"),
        // The same run: the model's degraded turns ignored the barrier the
        // service holds (fails without it only with the old request path).
        (73673, false, "no_republish: an ex-holder's degraded frames past its unapplied change's downbeat"),
    ]

    func testKVRegressionSeeds() {
        for (seed, pending, what) in Self.seeds {
            var sim = KVSim(seed: seed)
            sim.run()
            XCTAssertEqual(sim.violations, [], "nats-kv seed \(seed) (\(what))")
            XCTAssertGreaterThan(sim.tempoChanges, 0, "nats-kv seed \(seed): no tempo change stored")
            if pending {
                XCTAssertGreaterThan(sim.changesPendingRefused, 0, "nats-kv seed \(seed): no 409 change_pending")
            }
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
            var sim = KVSim(seed: seed)
            sim.run()
            XCTAssertEqual(sim.violations, [], "seed \(seed)")
            XCTAssertGreaterThan(sim.acquisitions, 0, "seed \(seed): leases are taken")
        }
    }
}

struct KVSimTotals {
    var steps: UInt64 = 0
    var frames: UInt64 = 0
    var acquisitions: UInt64 = 0
    var handOvers: UInt64 = 0
    var tempoChanges: UInt64 = 0
    var changesPendingRefused: UInt64 = 0
    var degradedHeld: UInt64 = 0
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
    var sequence: UInt64 = 0
    var lease: (rev: UInt64, owner: String, storedNs: Int64, term: UInt64)?
    var timeline: (rev: UInt64, value: [UInt8])?
    /// Every timeline record stored, in revision order (what watches deliver).
    var records: [(rev: UInt64, value: [UInt8])] = []

    mutating func expire(atNs now: Int64) {
        if let l = lease, now >= l.storedNs + ttlNs { lease = nil }
    }

    mutating func apply(_ op: KVLeaseOp, owner: String, atNs now: Int64) -> KVLeaseReply {
        expire(atNs: now)
        switch op {
        case .create:
            guard lease == nil else { return .conflict }
            sequence += 1
            lease = (sequence, owner, now, sequence)
            return .written(revision: sequence)
        case .update(let last):
            guard let l = lease, l.rev == last else { return .conflict }
            sequence += 1
            lease = (sequence, l.owner, now, l.term)
            return .written(revision: sequence)
        case .read:
            guard let l = lease else { return .absent }
            return .found(revision: l.rev, owner: l.owner)
        case .delete(let last):
            guard let l = lease, l.rev == last else { return .conflict }
            sequence += 1
            lease = nil
            return .written(revision: sequence)
        }
    }

    mutating func writeTimeline(_ value: [UInt8], lastRevision: UInt64) -> UInt64? {
        guard (timeline?.rev ?? 0) == lastRevision else { return nil }
        sequence += 1
        timeline = (sequence, value)
        records.append((sequence, value))
        return sequence
    }
}

/// One simulated pulse.
struct KVSimNode {
    var leadership: KVLeadership
    let ratePpm: Int64  // its monotonic clock against the server's
    /// Its wall clock: the server's time off by `offsetNs` and drifting by
    /// `wallPpm` (NTP-disciplined hosts; the whole-cluster simulator's ±500 ppm).
    let wallPpm: Int64
    let offsetNs: Int64
    var stalledUntilNs: Int64 = 0
    var partitionedUntilNs: Int64 = 0
    /// The operation in flight: when its answer arrives, and the answer.
    var pending: (dueNs: Int64, reply: KVLeaseReply)?
    /// A timeline write in flight: its answer's time, whether it was stored,
    /// and whether it is a tempo change (its answer goes to the production
    /// `KVTempoWrite`, which holds the barrier until the watch applied a
    /// record past its base, as in KVNode).
    var timelineWrite: (dueNs: Int64, stored: Bool, tempo: Bool)?
    var appliedRecords = 0
    var lastSeen: Int64 = -1
    var floorBeat: Int64 = .max
    var tookOverTerm: UInt64 = 0
    var releasing = false
    var gone = false
    /// The lease-key revision the watch last delivered.
    var watchedLeaseRev: UInt64 = 0
    /// Attached to NATS (the beat subject) at its last step.
    var onSubject = false

    func mono(_ t: Int64) -> Int64 { t * ratePpm / 1_000_000 }
    func wall(_ t: Int64) -> Int64 { t + t / 1_000_000 * wallPpm + offsetNs }
}

struct KVSim {
    static let stepNs: Int64 = 5_000_000
    static let durationNs: Int64 = 6_000_000_000
    static let guardNs: Int64 = 295_000_000
    static let latencyNs: Int64 = 2_000_000
    var rng: SimRNG
    var server: KVModelServer
    var nodes: [KVSimNode] = []
    var published: [Int64: (term: UInt64, node: Int, bpm: Int64)] = [:]
    /// Degraded frames that reached NATS: index → node.
    var degradedPublished: [Int64: Int] = [:]
    /// Per index: the pulses on NATS when a frame of it was published.
    var heard: [Int64: Set<Int>] = [:]
    /// Degraded frames on their way to the other pulses (delivered at the end of the step).
    var inFlight: [(index: Int64, to: [Int])] = []
    var unheardDuplicates: UInt64 = 0
    var violations: [String] = []
    var steps: UInt64 = 0
    var acquisitions: UInt64 = 0
    var handOvers: UInt64 = 0
    var tempoChanges: UInt64 = 0
    /// Tempo requests the holder refused with 409 `change_pending` (its last
    /// change stored, not yet watched).
    var changesPendingRefused: UInt64 = 0
    /// Steps in which a degraded turn's beat was held by the tempo barrier.
    var degradedHeld: UInt64 = 0
    var stalls: UInt64 = 0
    var outages: UInt64 = 0
    var outageUntilNs: Int64 = 0
    var incarnation = 0
    /// The pending change of the last stored record (the committed one).
    var committedPending: TempoChange.Stored?
    let shape: TimelineShape
    let epochStartNs: Int64 = 1_000_000_000

    init(seed: UInt64) {
        rng = SimRNG(seed: seed &* 0x9E37_79B9 &+ 21)
        let timing = KVLeaseTiming()
        server = KVModelServer(ttlNs: timing.ttlNs)
        shape = (try? TimelineShape(bar: 4, phases: ["beat"]))!
        for _ in 0..<3 { nodes.append(makeNode()) }
    }

    mutating func makeNode() -> KVSimNode {
        incarnation += 1
        // Within the lease's stated clock-rate margin (1 %) and the guard's offset.
        let rate = 1_000_000 + Int64(rng.below(18_000)) - 9_000
        let offset = Int64(rng.below(20_000_000)) - 10_000_000
        let wallPpm = Int64(rng.below(1_001)) - 500
        let lease = KVLease(timing: KVLeaseTiming(), owner: "n\(incarnation)", nowMonoNs: 0)
        return KVSimNode(
            leadership: KVLeadership(lease: lease, timeline: KVLeaseTimeline(flags: shape)), ratePpm: rate,
            wallPpm: wallPpm, offsetNs: offset)
    }

    func reachable(_ n: KVSimNode, _ t: Int64) -> Bool { t >= outageUntilNs && t >= n.partitionedUntilNs }

    mutating func run() {
        var t: Int64 = 0
        while t < Self.durationNs {
            t += Self.stepNs
            steps += 1
            faults(t)
            server.expire(atNs: t)
            for i in nodes.indices where !nodes[i].gone && t >= nodes[i].stalledUntilNs { act(i, t) }
            for frame in inFlight {
                for j in frame.to { nodes[j].lastSeen = max(nodes[j].lastSeen, frame.index) }
            }
            inFlight.removeAll()
            checkOnePublisher(t)
        }
    }

    mutating func faults(_ t: Int64) {
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
        let i = Int(rng.below(UInt64(nodes.count)))
        guard !nodes[i].gone else { return }
        switch rng.below(3_000) {
        case 0:
            nodes[i].stalledUntilNs = t + Int64(rng.below(2_000)) * 1_000_000
            stalls += 1
        case 1: nodes[i].partitionedUntilNs = t + Int64(rng.below(1_500)) * 1_000_000
        case 2:
            // SIGTERM: the holder hands over, anyone else leaves; a new incarnation starts.
            if nodes[i].leadership.isHolder && !nodes[i].releasing {
                _ = nodes[i].leadership.lease.release()
                nodes[i].releasing = true
                handOvers += 1
            } else if !nodes[i].releasing {
                nodes[i].gone = true
                nodes.append(makeNode())
            }
        default: break
        }
    }

    mutating func act(_ i: Int, _ t: Int64) {
        let mono = nodes[i].mono(t)
        let connected = reachable(nodes[i], t)
        // The loop runs (a stall ends here) and the subject (re)attaches, as
        // KVNode and BeatShell tell the strategy in the service.
        nodes[i].leadership.loopTick(nowMonoNs: mono)
        let onSubject = t >= nodes[i].partitionedUntilNs
        if onSubject && !nodes[i].onSubject { nodes[i].leadership.subjectReconnected(atMonoNs: mono) }
        nodes[i].onSubject = onSubject
        // Answers that are due.
        if let p = nodes[i].pending, t >= p.dueNs {
            nodes[i].pending = nil
            for event in nodes[i].leadership.lease.complete(p.reply, nowMonoNs: mono) {
                switch event {
                case .acquired: acquisitions += 1
                case .released:
                    nodes[i].gone = true
                    nodes.append(makeNode())
                    for j in nodes.indices where j != i {  // the watch saw the delete
                        nodes[j].leadership.lease.keyGone()
                        nodes[j].leadership.holderWatched(present: false, nowMonoNs: nodes[j].mono(t))
                    }
                case .lost, .fenced: break
                }
            }
        }
        if let w = nodes[i].timelineWrite, t >= w.dueNs {
            nodes[i].timelineWrite = nil
            // Not stored: refused on the revision, or never sent (cut off): certainly not stored.
            if w.tempo { nodes[i].leadership.tempoWrite.answered(w.stored ? .written : .notStored) }
        }
        guard !nodes[i].gone else { return }
        // The watches: timeline records in revision order.
        if connected {
            while nodes[i].appliedRecords < server.records.count {
                let r = server.records[nodes[i].appliedRecords]
                nodes[i].appliedRecords += 1
                // Every stored record continues the last one: none is refused.
                // (KVNode's call: applies it and settles our tempo write.)
                if case .refused(let why) = nodes[i].leadership.applyWatched(r.value, revision: r.rev) {
                    violations.append("record_refused: rev \(r.rev) on node \(i): \(why)")
                }
            }
            if let l = server.lease {
                nodes[i].leadership.watched(revision: l.rev)
                if l.rev != nodes[i].watchedLeaseRev {  // a put the watch delivers
                    nodes[i].watchedLeaseRev = l.rev
                    nodes[i].leadership.holderWatched(present: true, nowMonoNs: mono)
                }
            }
        }
        if t % 100_000_000 == 0 { pings(i, t) }
        nodes[i].leadership.updateDegradation(nowMonoNs: mono)
        // The next lease operation: applied at the server after the latency, or lost.
        if nodes[i].pending == nil, let op = nodes[i].leadership.lease.next(nowMonoNs: mono) {
            if connected {
                let reply = server.apply(op, owner: nodes[i].leadership.lease.owner, atNs: t + Self.latencyNs)
                let lost = rng.below(20) == 0
                nodes[i].pending = (t + 2 * Self.latencyNs, lost ? .unknown : reply)
            } else {
                nodes[i].pending = (t + 100_000_000, rng.below(2) == 0 ? .notSent : .unknown)
            }
        }
        timelineWrites(i, t, connected: connected)
        publish(i, t)
    }

    /// The holder's term start (or the epoch) and, now and then, a tempo
    /// request: the service's path (TempoController → `TempoAdmission.decide`,
    /// KVNode.commitTempo → `KVLeadership.prepareTempo`), whose barrier
    /// holds the beats; refused requests (409, 503) write nothing.
    mutating func timelineWrites(_ i: Int, _ t: Int64, connected: Bool) {
        let mono = nodes[i].mono(t)
        let l = nodes[i].leadership
        guard l.lease.mayPublish(nowMonoNs: mono), nodes[i].timelineWrite == nil else { return }
        var write: (value: [UInt8], lastRevision: UInt64)?
        var tempo = false
        if !l.timeline.holderReady(term: l.lease.term) {
            write =
                l.timeline.termStart(term: l.lease.term)
                ?? l.timeline.write(
                    .epoch(startBeat: 0, startNs: epochStartNs, bpm: 600, bar: 4, phases: ["beat"]), term: l.lease.term
                ).map { ($0.value, $0.lastRevision) }
        } else if rng.below(300) == 0, let timeline = l.timeline.machine.timeline {
            let first = max(nodes[i].lastSeen + 1, timeline.beat(atOrBeforeNs: nodes[i].wall(t)) + 1)
            let current = TempoAdmission.inForce(timeline, firstUnpublishedBeat: first).epoch.bpm
            let decision = TempoAdmission.decide(
                requestedBpm: current == 600 ? 570 : 600, timeline: timeline, minBpm: 1, maxBpm: 6000,
                inFlight: false, isLeader: l.isReadyHolder, appliedTermStart: true, nowWallNs: nodes[i].wall(t),
                commitRoundNs: 200_000_000, firstUnpublishedBeat: first)
            if case .propose(let change) = decision {
                switch l.prepareTempo(change, justification: "", nowMonoNs: mono) {
                case .success(let w):
                    write = (w.value, w.lastRevision)
                    tempo = true
                case .failure(.changePending): changesPendingRefused += 1
                case .failure: break
                }
            }
        }
        guard let write else { return }
        var stored = false
        if connected, let rev = server.writeTimeline(write.value, lastRevision: write.lastRevision) {
            stored = true
            let pending = KVTimelineRecord.decoded(write.value, bar: 4)?.state.pending
            if pending != committedPending, let p = pending {
                tempoChanges += 1
                if let last = published.keys.max(), p.atBeat <= last {
                    violations.append(
                        "not_retroactive: change at beat \(p.atBeat) stored at rev \(rev) after beat \(last)")
                }
            }
            committedPending = pending
        }
        nodes[i].timelineWrite = (t + 2 * Self.latencyNs, stored, tempo)
    }

    /// Node i pings the pulses it reaches over NATS (every 100 ms): one
    /// round trip of 2 ms each, timestamps on both nodes' wall clocks.
    mutating func pings(_ i: Int, _ t: Int64) {
        guard t >= nodes[i].partitionedUntilNs else { return }
        for j in nodes.indices where j != i && !nodes[j].gone && t >= nodes[j].stalledUntilNs {
            guard t >= nodes[j].partitionedUntilNs else { continue }
            let sample = SyncSample(
                t1: nodes[i].wall(t), t2: nodes[j].wall(t + 1_000_000), t3: nodes[j].wall(t + 1_000_000),
                t4: nodes[i].wall(t + 2_000_000))
            _ = nodes[j].leadership.peers.seen(nodes[i].leadership.nodeId, nowMonoNs: nodes[j].mono(t))
            // The ping's report of the pulses i saw, through the wire form
            // KVClockPing publishes and KVNode decodes and merges.
            let text = KVLeasePeers.encodeReport(
                from: nodes[i].leadership.nodeId, nodes[i].leadership.peers.report(nowMonoNs: nodes[i].mono(t)))
            if case .success(let report) = KVLeasePeers.decodeReport(text) {
                nodes[j].leadership.peers.merge(from: report.from, report.entries, nowMonoNs: nodes[j].mono(t))
            } else {
                violations.append("peer_report_refused: \(text)")
            }
            _ = nodes[i].leadership.peers.add(sample, from: nodes[j].leadership.nodeId, nowMonoNs: nodes[i].mono(t))
        }
    }

    /// A degraded frame: in this node's turn on the reference clock, within
    /// the turn's slot, past every index it heard; it reaches NATS unless
    /// the node is cut off from the servers.
    mutating func publishDegraded(_ i: Int, _ t: Int64, delayNs: Int64, slotNs: Int64) {
        let l = nodes[i].leadership
        guard let timeline = l.committedTimeline else { return }
        let wall = nodes[i].wall(t)
        let reference = l.degradedReference.map { $0.referenceNs(atLocal: wall) } ?? wall
        let k = timeline.beat(atOrBeforeNs: reference - delayNs)
        let intoTurn = reference - delayNs - timeline.instantNs(ofBeat: k)
        guard k >= 0, k > nodes[i].lastSeen, intoTurn >= 0, intoTurn < slotNs else { return }
        // The service's barrier holds degraded frames too (BeatPlanner's
        // slot decision: retried while held, missed once the slot passed):
        // an ex-holder whose change is not applied yet may not publish past
        // its downbeat with the old tempo (seed 73673).
        guard k < l.tempoBarrierBeat else {
            degradedHeld += 1
            return
        }
        nodes[i].lastSeen = k
        guard t >= nodes[i].partitionedUntilNs else { return }  // nowhere to publish
        let first = published[k].map { "the holder of term \($0.term)" } ?? degradedPublished[k].map { "node \($0)" }
        if let first, heard[k, default: []].contains(i) {
            violations.append("no_republish: degraded beat \(k) by node \(i), first by \(first)")
        } else if first != nil {
            unheardDuplicates += 1
        }
        degradedPublished[k] = i
        let to = nodes.indices.filter { t >= nodes[$0].partitionedUntilNs && !nodes[$0].gone }
        heard[k, default: []].formUnion(to)
        inFlight.append((k, to))
    }

    mutating func publish(_ i: Int, _ t: Int64) {
        let l = nodes[i].leadership
        guard let timeline = l.committedTimeline else { return }
        let wall = nodes[i].wall(t)
        let mono = nodes[i].mono(t)
        let mode = l.publishMode(nowMonoNs: mono, periodNs: 100_000_000)
        if case .degraded(let delay, let slot) = mode { return publishDegraded(i, t, delayNs: delay, slotNs: slot) }
        guard case .leader = mode else { return }
        if nodes[i].tookOverTerm != l.lease.term {
            nodes[i].tookOverTerm = l.lease.term
            nodes[i].floorBeat = timeline.nextBeat(afterNs: wall + Self.guardNs - 1)
        }
        let k = timeline.beat(atOrBeforeNs: wall)
        guard k >= nodes[i].floorBeat, k > nodes[i].lastSeen, k < l.tempoBarrierBeat, k >= 0,
            wall - timeline.instantNs(ofBeat: k) < 50_000_000
        else { return }
        var now = timeline
        _ = now.applyDue(beat: k)
        // The frame: checked against the server's state at this instant.
        if let old = published[k] {
            violations.append("no_republish: beat \(k) by node \(i) term \(l.lease.term), first term \(old.term)")
        }
        if let other = degradedPublished[k] {
            if heard[k, default: []].contains(i) {
                violations.append(
                    "no_republish: beat \(k) by node \(i) term \(l.lease.term), first degraded by node \(other)")
            } else {
                unheardDuplicates += 1
            }
        }
        if let previous = published.filter({ $0.key < k }).max(by: { $0.key < $1.key }),
            previous.value.term > l.lease.term
        {
            violations.append("term_order: beat \(k) term \(l.lease.term) after term \(previous.value.term)")
        }
        if server.lease?.term != l.lease.term || server.lease?.owner != l.lease.owner {
            violations.append(
                "holder_is_current: beat \(k) by term \(l.lease.term), server holds \(String(describing: server.lease))"
            )
        }
        if let p = committedPending, k >= p.atBeat, now.epoch.bpm != p.bpm {
            violations.append(
                "not_retroactive: beat \(k) at \(now.epoch.bpm) bpm after the change to \(p.bpm) at \(p.atBeat)")
        }
        published[k] = (l.lease.term, i, now.epoch.bpm)
        // Delivered to the pulses that hear NATS (the lease and NATS outages are apart).
        for j in nodes.indices where t >= nodes[j].partitionedUntilNs || j == i {
            nodes[j].lastSeen = max(nodes[j].lastSeen, k)
            heard[k, default: []].insert(j)
            // A holder's frame heard elsewhere (BeatShell.hear in the service).
            if j != i { nodes[j].leadership.leaderFrameHeard(nowMonoNs: nodes[j].mono(t)) }
        }
    }

    mutating func checkOnePublisher(_ t: Int64) {
        let publishing = nodes.indices.filter { i in
            !nodes[i].gone && t >= nodes[i].stalledUntilNs
                && nodes[i].leadership.lease.mayPublish(nowMonoNs: nodes[i].mono(t))
        }
        if publishing.count > 1 { violations.append("one_publisher: nodes \(publishing) at \(t / 1_000_000) ms") }
    }
}

extension SimRNG {
    /// Uniform in 0..<n (the simulator's SplitMix64, SimSupport.swift).
    mutating func below(_ n: UInt64) -> UInt64 { next() % n }
}
