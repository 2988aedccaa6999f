// PulsePolicy/KVLeaseLeadership.swift — the election strategy as the beat
// side sees it (issue 21: "the election strategy is a port of the core").
// `BeatShell` reads who may publish, the term to stamp and the committed
// timeline through `BeatLeadership`; the Raft core (`ClusterCore`) and the
// KV lease (`KVLeadership`) both conform, so the beat path — plan, spin,
// confirm, encode, write — is one program for both strategies.
//
// KV mode's publish rule: the lease holder publishes while its lease runs
// (`KVLease.mayPublish`, the argument in KVLease.swift) and once the watch
// applied a timeline record of its own term (`KVLeaseTimeline.holderReady`:
// it then knows every change an earlier holder wrote). Everyone else
// follows. The term a node judges frames by is its lease's while it holds
// the key, else the highest lease revision it watched: frames of a newer
// holding arrive with a term no lower than its creation revision.
//
// Degradation (the same DegradationPolicy as Raft mode): a node whose lease
// writes got no definite answer for `unreachableAfterNs` (JetStream
// unreachable or without quorum; reads do not count), and that has watched no lease-key revision for a TTL
// (the holder renews every 50 ms, each renewal a revision every watch sees),
// enters degradation `degradeAfterNs` later if it has a committed timeline,
// and publishes degraded frames in turns, ranked among the pulses seen and
// measured on the lowest one's clock (KVLeasePeers.swift). It leaves as soon
// as it holds the lease or watches a revision of the key again; a new holder
// publishes only after its take-over guard, past every index it heard.
//
// A holder's own frames are contact too (`leaderFrameHeard`; the 100,000-seed
// run, seeds 20229 and 42853). The lease key is watched through JetStream,
// the frames come over core NATS: a pulse cut off from JetStream (or stalled
// through the renewals) while the holder's lease still runs degraded and took
// its turn beside the holder. The turn (20 ms after the instant on the
// reference clock) does not separate the two: a holder publishes up to half
// a period after the instant on its own clock, which is up to the clock
// offset off the reference. Raft mode has no such gap: the leader's
// heartbeats, which any voter that hears the leader gets, are its contact.
// So: any frame of a cluster publisher not marked degraded, heard from
// another pulse (placed or not: a degraded pulse's timeline may be behind
// the holder's, and then the echo policy refuses its frames), is contact
// with a leader and ends degradation; and a degraded pulse takes turns only
// when no such frame came for two periods and its subject has been attached
// (and its loop running) for two periods (`degradedTurnsAllowed`): a live
// holder publishes every period, at most half a period late, so a pulse
// that listened that long heard it. Raft mode's rule for accepted frames is
// the planner's (BeatPlanner.degradedDecision); this one is the strategy's,
// shared by the service (BeatShell.hear, KVNode) and the KV simulator.
import PulseCore
import Raft

/// What the beat side reads from the election strategy (loop thread only).
public protocol BeatLeadership: AnyObject {
    /// The committed timeline; nil before the first epoch.
    var committedTimeline: Timeline? { get }
    /// The term stamped on frames and frames are judged against.
    var term: UInt64 { get }
    /// The publish mode at `nowMonoNs` for a beat of `periodNs` (beat path).
    func publishMode(nowMonoNs: Int64, periodNs: Int64) -> PublishMode
    /// The first beat an uncommitted tempo write forbids (Int64.max: none).
    var tempoBarrierBeat: Int64 { get }
    /// Whether degraded turns are being taken.
    var degraded: Bool { get }
    /// The clock degraded turns are measured on (nil: our own).
    var degradedReference: ClockSync? { get }
    /// The last leader's clock estimate (the timeline's reference), if any.
    var referenceSync: ClockSync? { get }
    /// A frame not marked degraded, of a cluster publisher, came from another
    /// node (BeatShell.hear: accepted or not placed).
    func leaderFrameHeard(nowMonoNs: Int64)
    /// The beat subject (re)attached at `atMonoNs` (BeatShell notices it).
    func subjectReconnected(atMonoNs: Int64)
}

extension ClusterCore {
    /// Raft mode: the leader's heartbeats are the contact, and the planner
    /// already follows for two periods after an accepted leader frame.
    public func leaderFrameHeard(nowMonoNs: Int64) {}
    /// Raft mode: the planner's own wait after an attach (one period).
    public func subjectReconnected(atMonoNs: Int64) {}
}

extension ClusterCore: BeatLeadership {
    public var committedTimeline: Timeline? { machine.timeline }
}

/// One node's KV-mode leadership: its lease and its view of the timeline.
public final class KVLeadership: BeatLeadership {
    public var lease: KVLease
    public var timeline: KVLeaseTimeline
    /// The highest lease-key revision the watch reported.
    public private(set) var watchedRevision: UInt64 = 0
    /// The holder's tempo write in flight or not applied yet (KVTempoWrite.swift).
    public var tempoWrite = KVTempoWrite()
    /// The apply beat of that write's change (Int64.max: none).
    public var tempoBarrierBeat: Int64 { tempoWrite.barrierBeat }
    /// This node's id (the first word of the lease claim).
    public let nodeId: String
    /// The pulses seen and their clocks (the adapter feeds the pings).
    public var peers: KVLeasePeers
    public private(set) var degradation: DegradationPolicy
    /// Our degraded turn and the pulse whose clock turns are measured on:
    /// recomputed by `updateDegradation`; the beat path only reads them.
    public private(set) var rank = 0
    public private(set) var referenceId: String
    /// When the watch last saw a put of the lease key, or a holder's frame
    /// was heard (monotonic ns).
    public private(set) var lastHolderContactMonoNs: Int64 = 0
    private var holderKnown = false
    /// When a frame of a publishing holder (not degraded) was last heard.
    public private(set) var lastLeaderFrameMonoNs: Int64 = .min / 4
    /// When the beat subject last (re)attached, or the loop resumed after a
    /// stall: degraded turns wait (`degradedTurnsAllowed`).
    public private(set) var listeningSinceMonoNs: Int64 = .min / 4
    /// When the pulses seen (the ranking) last changed.
    public private(set) var membersChangedMonoNs: Int64 = .min / 4
    /// `rank` and `referenceId` were computed once (the first settles).
    private var ranked = false

    public init(lease: KVLease, timeline: KVLeaseTimeline, degradeAfterNs: Int64 = 1_000_000_000) {
        self.lease = lease
        self.timeline = timeline
        nodeId = String(lease.owner.split(separator: " ").first ?? "")
        peers = KVLeasePeers(selfId: nodeId)
        referenceId = nodeId
        degradation = DegradationPolicy(electionNs: lease.timing.ttlNs, degradeAfterNs: degradeAfterNs)
    }

    /// The lease watch saw a revision of the key (a put or a delete).
    public func watched(revision: UInt64) {
        watchedRevision = max(watchedRevision, revision)
        lease.noteRevision(revision)
    }

    // MARK: how the key was freed (review of 2026-12-07, finding 3)
    //
    // Only the holder's own hand-over earns the short take-over guard: its
    // delete carries the release marker of the claim it deletes
    // (`KVLease.releaseMarker`), sent after its last frame came back and with
    // the revision check, so the claim was still its own and it had stopped
    // publishing. Any other delete or purge (an operator's `nats kv del`, a
    // purge, a forged marker of another claim) frees the key while the
    // deleted holder may still be inside its lease: the lease argument no
    // longer protects the next holder, so it waits until that lease has run
    // out for sure — a TTL after this node last watched the claim renewed
    // (the renewal was sent before it was watched; `ttlNs − validNs` is the
    // clock margin) — and then takes the full no-republish guard.

    /// The claim the watch last saw put (nil: none, or deleted since).
    public private(set) var lastClaim: [UInt8]?
    /// When that claim was last watched put (monotonic ns).
    public private(set) var lastClaimWatchedMonoNs: Int64?
    /// The key was last freed by its holder's hand-over (short guard).
    /// Consumed by the take-over it grants (`consumeHandOver`): one hand-over
    /// earns one short guard, never a later term's (review of 2026-12-07,
    /// finding 4: a node that took over after a hand-over, lost the key to
    /// an expiry no watch reported, and took it again kept the flag).
    public private(set) var freedByHandOver = false
    /// No frame as holder before this (monotonic ns): a foreign delete's wait.
    public private(set) var publishNotBeforeMonoNs: Int64 = .min

    /// The take-over of this node's current term: whether it follows a
    /// hand-over (short guard). Clears the flag, so a later term of this node
    /// takes the full guard unless the watch reports another hand-over.
    public func consumeHandOver() -> Bool {
        defer { freedByHandOver = false }
        return freedByHandOver
    }

    /// This node's holding ended (lost or released): a hand-over flag set
    /// meanwhile — the lease watch is apart from the timeline watch, so the
    /// delete it took over after can arrive once it took over — belongs to
    /// no later term of ours (review of 2026-12-07, kvfix F4).
    public func holdingEnded() { freedByHandOver = false }

    /// What the watch of the lease key delivered: a put of a claim, or a
    /// delete (`deleted`, with its body) or purge (`purged`). Returns whether
    /// the key is now gone (candidates try at once).
    @discardableResult
    public func leaseEntryWatched(
        revision: UInt64, value: [UInt8]?, deleted: Bool, purged: Bool, nowMonoNs now: Int64
    ) -> (gone: Bool, degradation: DegradationPolicy.Change) {
        watched(revision: revision)
        guard deleted || purged else {
            let claim = value ?? []
            // Another's claim: a later take-over of ours follows its expiry.
            if claim != Array(lease.owner.utf8) { freedByHandOver = false }
            lastClaim = claim
            lastClaimWatchedMonoNs = now
            return (false, holderWatched(present: true, nowMonoNs: now))
        }
        if !purged, let claim = lastClaim, value == KVLease.releaseMarker(claim: claim) {
            freedByHandOver = true
        } else {
            freedByHandOver = false
            // The deleted claim's lease may still run: wait a TTL from its
            // last renewal watched (or from now, when none was watched).
            let from = lastClaimWatchedMonoNs ?? now
            publishNotBeforeMonoNs = max(publishNotBeforeMonoNs, from &+ lease.timing.ttlNs)
        }
        lastClaim = nil
        return (true, holderWatched(present: false, nowMonoNs: now))
    }

    /// The lease watch saw the key put (a holder's claim: `present`) or
    /// deleted, at `nowMonoNs`; a put ends degradation at once.
    @discardableResult
    public func holderWatched(present: Bool, nowMonoNs now: Int64) -> DegradationPolicy.Change {
        holderKnown = present
        if present { lastHolderContactMonoNs = now }
        return updateDegradation(nowMonoNs: now)
    }

    /// A frame of a cluster publisher not marked degraded was heard from
    /// another pulse at `nowMonoNs` (accepted or not placed): a holder
    /// publishes, which is contact with a leader (see the file header). The
    /// beat path stops degraded turns at once (`degradedTurnsAllowed`); the
    /// next `updateDegradation` (the lease timer's) leaves degradation.
    public func leaderFrameHeard(nowMonoNs now: Int64) {
        lastLeaderFrameMonoNs = max(lastLeaderFrameMonoNs, now)
        holderKnown = true
        lastHolderContactMonoNs = max(lastHolderContactMonoNs, now)
    }

    /// The beat subject (re)attached at `atMonoNs`, or the loop resumed
    /// after a stall: what was published meanwhile went unheard, so no
    /// degraded turn until this node has listened again.
    public func subjectReconnected(atMonoNs at: Int64) {
        listeningSinceMonoNs = max(listeningSinceMonoNs, at)
    }

    /// A gap this long between two loop ticks (`loopTick`) was a stall.
    public static let stallNs: Int64 = 100_000_000
    /// The last loop tick (monotonic ns; nil: none yet).
    public private(set) var lastTickMonoNs: Int64?

    /// The loop is running at `nowMonoNs` (the service: every lease drive,
    /// at least every 20 ms; the simulator: every step the node runs). After
    /// a gap of `stallNs` (SIGSTOP, a starved loop) the node listens again
    /// as after a reconnect: the frames and the gossip of the gap may not
    /// have been read yet.
    public func loopTick(nowMonoNs now: Int64) {
        if let last = lastTickMonoNs, now &- last >= Self.stallNs { subjectReconnected(atMonoNs: now) }
        lastTickMonoNs = now
    }

    /// Whether a degraded node may take its turns at `nowMonoNs` for a beat
    /// of `periodNs` (beat path, allocation-free): no holder's frame heard
    /// for two periods, listening for two periods and `KVLeasePeers.settleNs`
    /// since the subject attached or the loop stalled (and no stall going
    /// unnoticed), and the ranking unchanged for `settleNs`
    /// (the arguments: the file header, KVLeasePeers.swift).
    @inline(__always)
    public func degradedTurnsAllowed(nowMonoNs now: Int64, periodNs: Int64) -> Bool {
        let listen = max(2 &* periodNs, KVLeasePeers.settleNs)
        // No tick for a stall's length: the loop just woke and has not
        // noticed yet (the beat timer can fire first).
        let ticking = lastTickMonoNs.map { now &- $0 < Self.stallNs } ?? true
        return ticking && now &- lastLeaderFrameMonoNs >= 2 &* periodNs && now &- listeningSinceMonoNs >= listen
            && now &- membersChangedMonoNs >= KVLeasePeers.settleNs
    }

    /// Recomputes the rank and reference among the pulses seen, and enters
    /// or leaves degradation (see the file header). Not on the beat path.
    @discardableResult
    public func updateDegradation(nowMonoNs now: Int64) -> DegradationPolicy.Change {
        let members = peers.members(nowMonoNs: now)
        let newRank = members.firstIndex(of: nodeId) ?? members.count
        let newReference = members.first ?? nodeId
        // Only a pulse whose own turn or reference clock moved settles: a
        // change elsewhere in the list leaves its turn where it was, and the
        // pulse whose rank moved onto another's waits (review of 2026-12-07,
        // kvpeers F8: every change held every degraded pulse for 300 ms, a
        // missed beat for the cluster at 200 bpm and above).
        if !ranked || newRank != rank || newReference != referenceId {
            ranked = true
            membersChangedMonoNs = now
        }
        rank = newRank
        referenceId = newReference
        return degradation.update(
            nowMonoNs: now, isLeader: lease.mayPublish(nowMonoNs: now), leader: holderKnown ? 1 : noNode,
            lastLeaderContactMonoNs: lastHolderContactMonoNs,
            mayKeepTimeline: committedTimeline != nil && lease.unreachable(nowMonoNs: now))
    }

    public var isHolder: Bool { lease.role == .holder }
    /// Holding the key with a record of its term applied: may publish and write.
    public var isReadyHolder: Bool { isHolder && timeline.holderReady(term: lease.term) }

    public var committedTimeline: Timeline? { timeline.machine.timeline }
    /// The term this node's frames carry: the holder's lease revision, else
    /// the term of the last timeline record applied (its degraded frames).
    public var term: UInt64 { isHolder ? lease.term : timeline.recordTerm }

    /// The fencing token consumers are told (timeline replies): the term the
    /// frames they should accept carry. The holder's is its lease's; any
    /// other node's — degraded or not — is the term of the last timeline
    /// record it applied: the publishing holder's, which publishes only once
    /// a record of its term is applied (`holderReady`). Never
    /// `watchedRevision`: every renewal moves that past the holder's term
    /// (by ~20 a second), it differs per node, and a consumer that raised its
    /// fence to it would refuse the next holder's frames as `stale_term`
    /// (review of 2026-12-07 11:25, item 2: degraded nodes used it).
    public var fencingToken: UInt64 { term }

    @inline(__always)
    public func publishMode(nowMonoNs: Int64, periodNs: Int64) -> PublishMode {
        if lease.mayPublish(nowMonoNs: nowMonoNs) {
            return timeline.holderReady(term: lease.term) && nowMonoNs >= publishNotBeforeMonoNs
                ? .leader(leaseUntilMonoNs: lease.leaseUntilMonoNs) : .waiting
        }
        if degradation.degraded {
            guard degradedTurnsAllowed(nowMonoNs: nowMonoNs, periodNs: periodNs) else { return .follower }
            return DegradationPolicy.turnMode(rank: rank, turnNs: ClusterCore.degradedTurnNs, periodNs: periodNs)
        }
        return lease.role == .holder ? .waiting : .follower
    }

    public var degraded: Bool { degradation.degraded }
    /// The lowest pulse's clock (nil: our own, when we are it or have no usable estimate).
    public var degradedReference: ClockSync? {
        guard referenceId != nodeId else { return nil }
        return DegradationPolicy.usableReference(peers.syncs[referenceId])
    }
    /// No timeline reference clock in this mode: the timeline's instants are
    /// on the holders' wall clocks, which the degraded turns' reference
    /// approximates (NTP-disciplined hosts).
    public var referenceSync: ClockSync? { nil }
}
