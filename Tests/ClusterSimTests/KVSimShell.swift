// KVSimShell.swift — the nats-kv simulator's lease and timeline side: every
// pulse runs the service's own `KVShell` (PulsePolicy/KVShell.swift, what
// Pulse/KV/KVNode runs) over `KVSimKVPorts`: its drifting clocks and the
// model JetStream KV (KVModelServer), whose answers come back on a later
// step of the pulse's loop (never while it is stalled), as KVNode's come
// back through the loop's completions.
//
// The KV connection is apart from the beat connection (KVBuckets has its own
// NATS connection, which also carries the clock pings): JetStream without
// quorum or a server failover (`outageUntilNs`) and a cut of the KV
// connection alone (`kvCutUntilNs`) stop the KV operations and watches, not
// the beats; a partition cuts both. A lease operation or timeline write
// answers after a round trip (2 × `KVSim.latencyNs`); one answer in 20 is
// lost (`.unknown`, whatever the server did); a pulse that cannot reach the
// KV gets `.notSent` or `.unknown` after 100 ms. The watches deliver every
// entry of both keys in revision order while the KV is reachable; after an
// interruption a watch resumes at the newest entry still stored (History =
// 1: what was replaced meanwhile is gone; an expired claim too), a gap the
// shell re-syncs over. Each clock ping reaches each other pulse with its report unless
// one in 20 is lost.
import Foundation
import PulseCore
import PulsePolicy

/// The simulated ports of one pulse's `KVShell`.
final class KVSimKVPorts: KVPorts {
    unowned let sim: KVSim
    unowned let node: KVSimNode
    init(sim: KVSim, node: KVSimNode) {
        self.sim = sim
        self.node = node
    }

    func nowMonoNs() -> Int64 { node.mono(sim.now) }
    func nowWallNs() -> Int64 { node.wall(sim.now) }

    func lease(_ op: KVLeaseOp, owner: String, marked: Bool, done: @escaping (KVLeaseReply) -> Void) {
        let t = sim.now
        guard sim.kvReachable(node, t) else {
            let reply: KVLeaseReply = sim.kvRng.below(2) == 0 ? .notSent : .unknown
            node.kvInbox.append((t + 100_000_000, { done(reply) }))
            return
        }
        let reply = sim.server.apply(op, owner: owner, marked: marked, atNs: t + KVSim.latencyNs)
        let lost = sim.kvRng.below(20) == 0
        node.kvInbox.append((t + 2 * KVSim.latencyNs, { done(lost ? .unknown : reply) }))
    }

    func writeTimeline(_ value: [UInt8], lastRevision: UInt64, done: @escaping (KVWriteReply) -> Void) {
        let t = sim.now
        guard sim.kvReachable(node, t) else {
            let reply: KVWriteReply = sim.kvRng.below(2) == 0 ? .notSent : .unknown
            node.kvInbox.append((t + 100_000_000, { done(reply) }))
            return
        }
        let reply: KVWriteReply =
            sim.storeTimeline(value, lastRevision: lastRevision).map { .written(revision: $0) }
            ?? .conflict
        let lost = sim.kvRng.below(20) == 0
        node.kvInbox.append((t + 2 * KVSim.latencyNs, { done(lost ? .unknown : reply) }))
    }

    func reject(_ reason: String) { sim.refused(node, reason) }
    func handle(_ event: KVShellEvent) { sim.kvEvent(node, event) }
}

extension KVSim {
    /// What the shell may refuse or give up here: a watch gap (modeled) and
    /// a holder's step-down (under faults). Anything else is a violation:
    /// every record the model stores continues the last one.
    static let expectedRefusals: Set<String> = [
        "timeline_watch_gap", "timeline_resynced_over_passed_beats", "holder_not_ready", "tempo_write_unsettled",
    ]

    /// The KV (JetStream) answers pulse `n` at true time `t`.
    func kvReachable(_ n: KVSimNode, _ t: Int64) -> Bool {
        t >= outageUntilNs && t >= n.partitionedUntilNs && t >= n.kvCutUntilNs
    }

    /// The KV connection carries core NATS (the clock pings) at `t`.
    func kvConnected(_ n: KVSimNode, _ t: Int64) -> Bool { t >= n.partitionedUntilNs && t >= n.kvCutUntilNs }

    func refused(_ n: KVSimNode, _ reason: String) {
        refusals[reason, default: 0] += 1
        if !Self.expectedRefusals.contains(reason) { violations.append("refused: \(reason) on node \(n.index)") }
    }

    func kvEvent(_ n: KVSimNode, _ event: KVShellEvent) {
        switch event {
        case .acquired(let term):
            acquisitions += 1
            trace("n\(n.index) acquired term \(term)")
        case .released, .nothingToRelease: released(n)
        case .tookOver(_, let afterHandOver): if afterHandOver { gracefulTakeOvers += 1 }
        case .shapeMismatch(let why): violations.append("record_refused: node \(n.index): \(why)")
        case .steppedDown(let reason, let term, _, let waitedMs):
            // A holder undisturbed all along gets its term start applied: a
            // step-down as never ready then is a wedge (liveness).
            trace("n\(n.index) \(event)")
            if reason == "holder_not_ready" && now - n.lastDisturbedNs > waitedMs * 1_000_000 {
                violations.append("holder_ready: node \(n.index) term \(term) never got ready while undisturbed")
            }
        default: trace("n\(n.index) \(event)")
        }
    }

    /// A timeline write reaches the server: stored if its base is the key's
    /// revision. A stored tempo change is checked against what was published.
    func storeTimeline(_ value: [UInt8], lastRevision: UInt64) -> UInt64? {
        guard let rev = server.writeTimeline(value, lastRevision: lastRevision) else { return nil }
        let pending = KVTimelineRecord.decoded(value, bar: shape.bar)?.state.pending
        if pending != committedPending, let p = pending {
            tempoChanges += 1
            if let last = published.keys.max(), p.atBeat <= last {
                violations.append("not_retroactive: change at beat \(p.atBeat) stored at rev \(rev) after beat \(last)")
            }
        }
        committedPending = pending
        return rev
    }

    /// One step of pulse `n`'s loop for its KV side: the answers due, then
    /// the watches' entries, then the 20 ms lease timer (KVNode.loopEvent).
    func driveKV(_ n: KVSimNode, _ t: Int64) {
        while let i = n.kvInbox.firstIndex(where: { $0.dueNs <= t }), !n.gone {
            let answer = n.kvInbox.remove(at: i).answer
            answer()
        }
        guard !n.gone else { return }
        watch(n, t)
        guard !n.gone else { return }
        if t % 20_000_000 == 0 {
            if t % 100_000_000 == 0 { pings(n, t) }
            n.kv.tick()
        }
    }

    /// The watches of the timeline and lease keys (every entry in order
    /// while the KV is reachable; after an interruption, from the newest
    /// entry still stored: `resumeWatches`).
    func watch(_ n: KVSimNode, _ t: Int64) {
        guard kvReachable(n, t) else {
            n.watchInterrupted = true
            return
        }
        if n.watchInterrupted {
            n.watchInterrupted = false
            resumeWatches(n)
        }
        while n.timelineWatched < server.records.count && !n.gone {
            let r = server.records[n.timelineWatched]
            n.timelineWatched += 1
            n.kv.timelineWatched(KVWatched(revision: r.rev, value: r.value))
        }
        while n.leaseWatched < server.leaseEntries.count && !n.gone {
            let e = server.leaseEntries[n.leaseWatched]
            n.leaseWatched += 1
            n.kv.leaseWatched(e)
        }
    }

    /// A watch (re)starts: the buckets keep one entry per key (History = 1)
    /// and a lease claim expires with the TTL (max age), so it delivers the
    /// newest timeline record and the newest lease entry still stored, and
    /// nothing that was replaced or expired meanwhile.
    func resumeWatches(_ n: KVSimNode) {
        n.timelineWatched = max(n.timelineWatched, server.records.count - 1)
        server.expire(atNs: now)
        let last = server.leaseEntries.count - 1
        let stored = server.leaseEntries.last.map { $0.value == nil || server.lease?.rev == $0.revision } ?? false
        n.leaseWatched = max(n.leaseWatched, stored ? last : last + 1)
    }

    /// Pulse `n` pings the pulses it reaches over NATS (every 100 ms, on
    /// its KV connection, as KVClockPing): one round trip of 2 ms each,
    /// timestamps on both pulses' wall clocks; the ping carries `n`'s report
    /// of the pulses it saw. One in 20 is lost.
    func pings(_ n: KVSimNode, _ t: Int64) {
        guard kvConnected(n, t) else { return }
        let report = n.kv.pingReport()
        for o in nodes where o !== n && !o.gone && !o.stalled(t) && kvConnected(o, t) {
            guard kvRng.below(20) != 0 else { continue }
            let sample = SyncSample(
                t1: n.wall(t), t2: o.wall(t + 1_000_000), t3: o.wall(t + 1_000_000), t4: n.wall(t + 2_000_000))
            o.kv.peerSeen(n.leadership.nodeId)
            o.kv.peerReport(report)
            n.kv.peerSample(o.leadership.nodeId, sample)
        }
    }
}
