// PulsePolicy/DegradationPolicy.swift — owns when a node keeps the timeline
// itself (REQ-003) and its turn among degraded publishers. Pure: the service
// (`Pulse/Cluster/ClusterNode`) and the whole-cluster simulator
// both run it inside `ClusterCore`.
//
// Guarantees:
// - A node enters degradation only after `degradeAfterNs` without a leader
//   (none known, or none heard for an election timeout), and only with a
//   committed timeline to keep; it leaves as soon as a leader is back.
// - Turns (fault 6 of issue #10): node of rank r (its position among the
//   sorted voters, a total order every node agrees on whatever it can hear)
//   publishes `(1 + r) × turnNs` after the instant, measured on one reference
//   clock for all (the lowest voter's), within half a turn. A turn that would
//   come half a period after the instant or later is no turn at all (the
//   lateness rule): such a node only follows.
import PulseCore
import Raft

/// Whether this node is degraded, from its view of leadership (pure).
public struct DegradationPolicy: Sendable, Equatable {
    /// An election timeout: a leader not heard for this long is gone.
    public let electionNs: Int64
    /// No leader for this long → degradation.
    public var degradeAfterNs: Int64
    public private(set) var degraded = false
    /// When degradation began (monotonic; meaningful while `degraded`).
    public private(set) var sinceMonoNs: Int64 = 0
    private var leaderlessSinceMonoNs: Int64?

    /// What an update changed.
    public enum Change: Equatable, Sendable { case none, entered, left }

    public init(electionNs: Int64, degradeAfterNs: Int64) {
        self.electionNs = electionNs
        self.degradeAfterNs = degradeAfterNs
    }

    /// Updates from the node's view at `nowMonoNs`: whether it leads, the
    /// leader it knows (`noNode`: none), when it last heard that leader, and
    /// whether it may keep a timeline (a committed one, and a voter).
    public mutating func update(
        nowMonoNs now: Int64, isLeader: Bool, leader: NodeID, lastLeaderContactMonoNs: Int64, mayKeepTimeline: Bool
    ) -> Change {
        let hasLeader = isLeader || (leader != noNode && now &- lastLeaderContactMonoNs < electionNs)
        if hasLeader {
            leaderlessSinceMonoNs = nil
            guard degraded else { return .none }
            degraded = false
            return .left
        }
        let since = leaderlessSinceMonoNs ?? now
        leaderlessSinceMonoNs = since
        guard !degraded, mayKeepTimeline, now &- since >= degradeAfterNs else { return .none }
        degraded = true
        sinceMonoNs = now
        return .entered
    }

    /// Leaves degradation now (this node is no longer a voter).
    public mutating func leave() -> Change {
        leaderlessSinceMonoNs = nil
        guard degraded else { return .none }
        degraded = false
        return .left
    }

    /// Whether a node may keep the timeline alone: it has a committed one,
    /// is a voter, and its voter set in force is committed on it. Turns are
    /// ranked on that voter set; two nodes ranking on different ones (a
    /// leader that appended a change and lost office, a follower without it)
    /// could take the same turn (found by the membership simulator, seed 148).
    public static func mayKeepTimeline(hasTimeline: Bool, isVoter: Bool, configIndex: UInt64, commitIndex: UInt64)
        -> Bool
    {
        hasTimeline && isVoter && configIndex <= commitIndex
    }

    /// Beat path (allocation-free): the publish mode of a degraded node of
    /// `rank` for a beat of `periodNs` with turns `turnNs` apart (see the
    /// file header).
    @inline(__always)
    public static func turnMode(rank: Int, turnNs: Int64, periodNs: Int64) -> PublishMode {
        let delay = Int64(1 + rank) &* turnNs
        if delay >= periodNs / 2 { return .follower }
        return .degraded(turnDelayNs: delay, slotNs: turnNs / 2)
    }

    /// Longest best round trip of a usable reference estimate: its offset
    /// error is at most half the round trip, so at most 10 ms, half a turn.
    public static let maxReferenceRttNs: Int64 = 20_000_000

    /// The reference clock estimate turns are measured on, when it is good
    /// enough: one whose best recent round trip is longer than
    /// `maxReferenceRttNs` (e.g. the only samples straddled a stall of the
    /// reference node: found by the simulator at 100,000 seeds, a degraded
    /// frame 1.4 s before its instant) is no reference; the node then uses
    /// its own clock, as without an estimate.
    public static func usableReference(_ sync: ClockSync?) -> ClockSync? {
        guard let sync, sync.hasEstimate, sync.rttNs <= maxReferenceRttNs else { return nil }
        return sync
    }

    /// The clock degraded turns are measured on, from the lowest voter's
    /// estimate (`voter`) and the last leader's (`lastLeader`, the clock
    /// the committed timeline was kept on): the lowest voter's offset when
    /// it is usable — every degraded node measures its turn on that one
    /// clock —, with the rate of whichever of the two was fitted over the
    /// longer span. A follower samples mostly its leader: with another voter
    /// leading from the start, its estimate of the lowest voter came from
    /// one election's messages, one point with no rate of its own, and a
    /// lone degraded node then drifted at its own clock's rate (PER-003:
    /// DriftProcessTests with n2 leading, −0.055 %/h against 0.01 %/h).
    /// The hosts are NTP-disciplined, so the voters' clocks run at one rate
    /// within a few ppm, and the longer fit measures ours against it better.
    /// Outside that premise the choice slides: when the last leader's clock
    /// is the one off rate, the borrowed rate is wrong by its skew and this
    /// node's turns slide against the lowest voter's own by that rate (20 ms,
    /// a turn, after 40 s at 500 ppm; review of 2026-12-07, finding 5); the
    /// rule before slid the same way when this node's clock was the one off.
    /// Without a usable lowest voter: the last leader's estimate (nil: our
    /// own clock).
    public static func turnReference(voter: ClockSync?, lastLeader: ClockSync?) -> ClockSync? {
        let leader = usableReference(lastLeader)
        guard let voter = usableReference(voter) else { return leader }
        if let leader, leader.rateSpanNs > voter.rateSpanNs { return voter.withRate(of: leader) }
        return voter
    }

    /// A node's rank among `voters` (its degraded turn); after every voter
    /// when it is not one (it never degrades then: `mayKeepTimeline`).
    public static func rank(of id: NodeID, among voters: [NodeID]) -> Int {
        let sorted = voters.sorted()
        return sorted.firstIndex(of: id) ?? sorted.count
    }
}
