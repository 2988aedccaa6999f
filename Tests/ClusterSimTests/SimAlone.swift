// SimAlone.swift — one-voter runs (a single node: `pulse` without -peers is
// a one-voter Raft cluster). The node crashes and restarts from its
// simulated disk through the service's store and shell
// (`ClusterShell.start`: a lone voter campaigns at once); the classic
// invariants hold as for any cluster, and `aloneResumes` adds that its beat
// continues after each restart, on indices it never handed off before.
import PulseCore
import PulsePolicy

extension Simulation {
    /// How soon a restarted single node publishes again when nothing
    /// disturbs it: a campaign and the no-op's sync (a few ms), the planner's
    /// hand-over guard, NATS's reconnect (up to 0.1 s) and one period at
    /// 120 bpm, with room to spare.
    static let aloneResumeNs: Int64 = 3_000_000_000

    /// After a restart from the disk: checks at `aloneResumeNs` that the
    /// node published since, unless it crashed again, was stalled, or lost
    /// its NATS path in the meantime (then nothing can be expected of it).
    func expectResumed(_ n: SimNode) {
        n.restartedAtNs = now
        let (gen, restartedAt) = (n.gen, now)
        at(now + Self.aloneResumeNs, always: true) { s in
            guard n.up, n.gen == gen, !s.natsCut[n.index], n.disturbedUntilNs < restartedAt else { return }
            s.count(.aloneResumes)
            if n.lastHandoffNs < restartedAt {
                s.fail(
                    .aloneResumes,
                    "node \(n.id) (one voter) published nothing in the \(Double(Self.aloneResumeNs) / 1e9) s after its restart from disk at \(Double(restartedAt) / 1e9) s"
                )
            }
        }
    }

    /// A single node's frame reaches the kernel: never an index it handed
    /// off before, in this incarnation or an earlier one. Counted only
    /// after a restart from the disk (adversarial review of #19, item 4:
    /// every frame after the first was counted, so a run with no restart at
    /// all exercised the invariant).
    func checkAloneHandoff(_ n: SimNode, _ f: SimFrame) {
        guard !f.degraded else { return }
        if let last = n.highestHandedOff {
            if n.restartedAtNs > 0 { count(.aloneResumes) }
            if f.index <= last {
                fail(
                    .aloneResumes,
                    "node \(n.id) (one voter) handed off beat \(f.index) after beat \(last) (restarted at \(Double(n.restartedAtNs) / 1e9) s)"
                )
            }
        }
        n.highestHandedOff = max(n.highestHandedOff ?? f.index, f.index)
        n.lastHandoffNs = now
    }
}
