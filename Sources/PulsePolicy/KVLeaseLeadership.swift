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
    /// The apply beat of the tempo write in flight (Int64.max: none).
    public var tempoBarrierBeat: Int64 = .max
    /// This node's id (the first word of the lease claim).
    public let nodeId: String
    /// The pulses seen and their clocks (the adapter feeds the pings).
    public var peers: KVLeasePeers
    public private(set) var degradation: DegradationPolicy
    /// Our degraded turn and the pulse whose clock turns are measured on:
    /// recomputed by `updateDegradation`; the beat path only reads them.
    public private(set) var rank = 0
    public private(set) var referenceId: String
    /// When the watch last saw a put of the lease key (monotonic ns).
    public private(set) var lastHolderContactMonoNs: Int64 = 0
    private var holderKnown = false

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

    /// Recomputes the rank and reference among the pulses seen, and enters
    /// or leaves degradation (see the file header). Not on the beat path.
    @discardableResult
    public func updateDegradation(nowMonoNs now: Int64) -> DegradationPolicy.Change {
        let members = peers.members(nowMonoNs: now)
        rank = members.firstIndex(of: nodeId) ?? members.count
        referenceId = members.first ?? nodeId
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
