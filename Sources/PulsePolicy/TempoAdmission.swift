// PulsePolicy/TempoAdmission.swift — owns what a node does with a tempo
// request (§5, REQ-004) before it proposes one: the contract's rules on the
// timeline in force, one change being committed at a time, only a leader
// that has applied its term's first entry proposes, and the apply beat.
// Pure; the service's TempoController and the simulator both call `decide`
// (adversarial review of #19: the simulator had its own copy, with a
// term-start gate the service lacked and no 409 for a change in flight).
import PulseCore

/// The decision on one tempo request.
public enum TempoAdmission: Sendable, Hashable {
    /// Propose this change (its apply beat is decided here, at proposal).
    case propose(TempoChange)
    /// A rule of §5 is broken (422, or 409 `change_pending`).
    case refused(TempoRefusal)
    /// This node is committing another change: 409 `change_pending`.
    case inFlight
    /// This node cannot commit (not the leader): forward it, or 503 `no_leader`.
    case notLeader
    /// The leader has not applied its term's first entry yet: its timeline
    /// may lack a change committed in an earlier term, so a change planned
    /// on it could be placed wrongly; 503 `not_caught_up` (retry).
    case notCaughtUp

    /// Decides on a request for `requestedBpm` on `timeline` (the committed
    /// one; a pending change due before `firstUnpublishedBeat` is in force).
    public static func decide(
        requestedBpm: Int64, timeline: Timeline, minBpm: Int64, maxBpm: Int64, inFlight: Bool, isLeader: Bool,
        appliedTermStart: Bool, nowWallNs: Int64, commitRoundNs: Int64, firstUnpublishedBeat: Int64
    ) -> TempoAdmission {
        let t = inForce(timeline, firstUnpublishedBeat: firstUnpublishedBeat)
        if let refusal = TempoRules.check(
            requested: requestedBpm, current: t.epoch.bpm, minBpm: minBpm, maxBpm: maxBpm, pending: t.pending)
        {
            return .refused(refusal)
        }
        if inFlight { return .inFlight }
        guard isLeader else { return .notLeader }
        guard appliedTermStart else { return .notCaughtUp }
        let atBeat = tempoApplyBeat(
            timeline: t, nowNs: nowWallNs, commitRoundNs: commitRoundNs, firstUnpublishedBeat: firstUnpublishedBeat)
        return .propose(TempoChange(atBeat: atBeat, bpm: requestedBpm))
    }

    /// `timeline` with a pending change folded in once its downbeat is
    /// before `firstUnpublishedBeat` (it took effect: no longer pending).
    public static func inForce(_ timeline: Timeline, firstUnpublishedBeat: Int64) -> Timeline {
        var t = timeline
        _ = t.applyDue(beat: firstUnpublishedBeat &- 1)
        return t
    }
}
