// PulsePolicy/BeatPlanner.swift — owns the beat decision: given the wake
// time, the publish mode and what the subject has shown, which beat (if any)
// to emit, and when. No I/O and no clock reads: the driver (BeatDriver in the
// service, SimNode in the simulator) reads its clock, asks, spins, encodes,
// publishes and records.
//
// Guarantees, each checked by Tests/ClusterSimTests after every step:
// - Lateness (§2): a beat is emitted at or after its instant and less than
//   half a period after it; older beats are counted missed, never sent late.
// - Lease (fault 2): a non-degraded frame is handed to the kernel only while
//   the lease holds, checked by `confirm` immediately before the write, after
//   the spin; once the lease lapses with frames not yet echoed the driver
//   drops the connection (and the kernel's TCP_USER_TIMEOUT,
//   `staleBytesBoundNs`, bounds how late queued bytes can still arrive
//   while the process itself is stopped).
// - Hand-over (fault 3): a leader publishes only beats whose instant is at
//   least `handoffGuardNs` after it became leader (on its clock). Any earlier
//   leader's lease had expired when this one was elected (Raft's lease
//   proof), so an earlier leader emitted only beats with instant ≤ election
//   time + clock offset, and its queued bytes arrive within the stale-bytes
//   bound: the guard covers both, without trusting the node's own echo
//   (which a restarted or reconnected node does not have).
// - Tempo (fault 4): no beat at or after the apply beat of an uncommitted
//   tempo entry is emitted (`tempoBarrierBeat`): retried until committed or
//   missed.
import PulseCore

/// How this node treats the next beat.
public enum PublishMode: Equatable, Sendable {
    /// A single node: publish at the instant.
    case single
    /// The leader holding its lease until this monotonic time (and, with the
    /// fixes, having applied its own term's first entry).
    case leader(leaseUntilMonoNs: Int64)
    /// A leader whose lease or log is not confirmed yet: retry shortly.
    case waiting
    /// No leader for too long: publish `"degraded":true` frames this long
    /// after the instant on the agreed reference clock, and only within
    /// `slotNs` of that (a late frame must not land in the next node's turn).
    case degraded(turnDelayNs: Int64, slotNs: Int64)
    /// A follower: keep the timeline, publish nothing.
    case follower
}

/// What the driver tells the planner at each wake.
public struct BeatInputs: Sendable {
    public var wallNs: Int64
    public var monoNs: Int64
    public var mode: PublishMode
    /// Monotonic time the NATS socket was (re)attached to the loop, nil when detached.
    public var natsAttachedMonoNs: Int64?
    /// First beat an uncommitted tempo entry forbids (Int64.max: none).
    public var tempoBarrierBeat: Int64
    /// Degraded: the reference clock (local ↔ timeline), nil to use the local clock.
    public var reference: ClockSync?
    /// This node's Raft term (0: not known to the driver, no term rule).
    public var term: UInt64

    public init(
        wallNs: Int64, monoNs: Int64, mode: PublishMode, natsAttachedMonoNs: Int64?,
        tempoBarrierBeat: Int64 = .max, reference: ClockSync? = nil, term: UInt64 = 0
    ) {
        self.term = term
        self.wallNs = wallNs
        self.monoNs = monoNs
        self.mode = mode
        self.natsAttachedMonoNs = natsAttachedMonoNs
        self.tempoBarrierBeat = tempoBarrierBeat
        self.reference = reference
    }
}

/// The planner's answer.
public enum BeatDecision: Equatable, Sendable {
    /// Spin until `atWallNs`, `confirm`, then publish beat `index`.
    case emit(index: Int64, atWallNs: Int64, degraded: Bool)
    /// Not ours to publish: a follower keeps the timeline, or a degraded
    /// node stays quiet this turn (counted as followed).
    case follow
    /// Already on the subject (another publisher).
    case skip
    /// `count` beats passed unpublished.
    case missed(count: Int64)
    /// Not decided yet: wake again at `atWallNs`.
    case retry(atWallNs: Int64)
    /// Drop the NATS connection (queued bytes must not arrive late) and publish nothing.
    case dropConnection
    /// Woke far too early (re-armed under us): re-plan.
    case early
}

/// Tunables of the planner.
public struct PlannerConfig: Sendable {
    /// How long before an instant the timer may fire at most (the spin bound).
    public var maxLeadNs: Int64
    /// A new leader's first beat is at least this long after its election.
    public var handoffGuardNs: Int64
    /// How long a `.waiting` leader waits before asking again.
    public var retryNs: Int64

    public init(maxLeadNs: Int64, handoffGuardNs: Int64, retryNs: Int64 = 1_000_000) {
        self.maxLeadNs = maxLeadNs
        self.handoffGuardNs = handoffGuardNs
        self.retryNs = retryNs
    }
}

/// The beat decision state of one node (value type, no I/O).
public struct BeatPlanner: Sendable {
    public let config: PlannerConfig
    public private(set) var nextBeat: Int64 = 0
    /// The highest beat index seen on the subject, or -1.
    public private(set) var lastSeenIndex: Int64 = -1
    /// The last beat this node published, or -1.
    public private(set) var lastPublishedIndex: Int64 = -1
    /// The last degraded frame published, until it is seen on the subject.
    public private(set) var lastDegradedIndex: Int64 = -1
    /// Local wall time a non-degraded frame from another node was last seen.
    public private(set) var lastLeaderFrameWallNs: Int64 = .min / 2
    /// The highest term seen in frames on the subject.
    public private(set) var seenTerm: UInt64 = 0
    /// Beats below this are never published in the current leadership (hand-over guard).
    public private(set) var takeoverFloorBeat: Int64 = .min
    /// Whether the previous wake held a lease (to notice it lapse).
    private var heldLease = false
    /// The last few indices a cluster publisher put on the subject that this
    /// node's echo policy refused (another term or timeline), newest last; -1 empty.
    /// A degraded node skips them (`noteUnplaced`). A tuple, not an array:
    /// the planner is copied on every wake and must not allocate.
    private var unplaced: (Int64, Int64, Int64, Int64) = (-1, -1, -1, -1)
    /// The latest run of consecutive unplaced indices (empty: low > high):
    /// a node more than four beats behind a peer's timeline still knows
    /// every index that peer put on the subject (100,000-seed run of
    /// b359e50, seed 4349: beat 23 was refused, then forgotten behind 24–27).
    private var unplacedRun: (low: Int64, high: Int64) = (-1, -2)
    /// Local wall time a cluster publisher's frame on another committed
    /// timeline was last heard (`noteForeignTimeline`), and its period.
    public private(set) var lastForeignFrameWallNs: Int64 = .min / 2
    public private(set) var foreignPeriodNs: Int64 = 0
    /// The lateness bound of the beat last decided `.emit`.
    private var emitDeadlineWallNs: Int64 = .max

    public init(config: PlannerConfig) { self.config = config }

    /// Resumes with state a driver keeps in its own fields (the service's
    /// BeatDriver builds one per wake; a value type, no allocation).
    public init(
        config: PlannerConfig, nextBeat: Int64, lastSeenIndex: Int64, lastPublishedIndex: Int64,
        lastDegradedIndex: Int64, lastLeaderFrameWallNs: Int64
    ) {
        self.config = config
        self.nextBeat = nextBeat
        self.lastSeenIndex = lastSeenIndex
        self.lastPublishedIndex = lastPublishedIndex
        self.lastDegradedIndex = lastDegradedIndex
        self.lastLeaderFrameWallNs = lastLeaderFrameWallNs
    }

    @inline(__always)
    func halfPeriodNs(_ t: Timeline, _ k: Int64) -> Int64 {
        (t.instantNs(ofBeat: k + 1) - t.instantNs(ofBeat: k)) / 2
    }

    /// Starts with the first beat whose instant is still ahead, or passed
    /// less than half a period ago.
    public mutating func start(timeline t: Timeline, wallNs: Int64) {
        let k = max(t.beat(atOrBeforeNs: wallNs), t.epoch.startBeat - 1)
        nextBeat = k + 1
        if k >= t.epoch.startBeat && wallNs - t.instantNs(ofBeat: k) < halfPeriodNs(t, k) { nextBeat = k }
        // A re-plan after a wall-clock step back never repeats a beat this
        // node already published (e72aafc's `start` did).
        nextBeat = max(nextBeat, lastPublishedIndex + 1)
    }

    /// Just became the leader at local wall time `wallNs`. `guardNs`
    /// replaces `config.handoffGuardNs` when the caller knows a smaller bound
    /// holds (the service: a graceful hand-over, whose predecessor voided its
    /// lease before asking this node to campaign and whose own last frame
    /// had come back on the subject: the clock offset and NATS latency).
    public mutating func takeOver(timeline t: Timeline, wallNs: Int64, guardNs: Int64? = nil) {
        // Fault 3: never a beat the previous leader may have published (its
        // echo may not have reached us yet): the first after the guard.
        let next = t.nextBeat(afterNs: wallNs + (guardNs ?? config.handoffGuardNs) - 1)
        takeoverFloorBeat = next
        nextBeat = max(next, lastSeenIndex + 1, lastPublishedIndex + 1, t.epoch.startBeat)
    }

    /// The local wall time at which beat `k` is due in `mode`.
    public func targetNs(_ t: Timeline, _ k: Int64, _ mode: PublishMode, _ reference: ClockSync?) -> Int64 {
        let instant = t.instantNs(ofBeat: k)
        guard case .degraded(let delayNs, _) = mode else { return instant }
        return (reference?.localNs(atReference: instant) ?? instant) + delayNs
    }

    /// The decision for the wake described by `i`. Advances `nextBeat`
    /// except for `.emit` (see `published`), `.retry` and `.early`. In order:
    /// a lapsed lease with unechoed frames drops the connection; the beat
    /// due (catching up on missed ones, never half a period late); what the
    /// subject already holds; the mode's own rules; the tempo barrier and
    /// the degraded slot.
    public mutating func plan(_ i: BeatInputs, timeline t: Timeline) -> BeatDecision {
        let before = nextBeat
        let decision = decide(i, timeline: t)
        // Postconditions (TigerBeetle's style: the planner's own invariants,
        // never a check of input; a few compares, allocation-free).
        precondition(nextBeat >= before, "the planner's next beat went back")
        if case .emit(let k, _, _) = decision {
            precondition(k >= before && k > lastPublishedIndex, "a beat emitted twice or out of order")
        }
        return decision
    }

    /// True when `plan` in `mode` at `monoNs` would find the lease it held
    /// at the last wake lapsed (and drop the connection if frames of ours
    /// were not seen back): a driver whose echoes may wait for the
    /// loop's turn hears them first (`BeatPorts.catchUp`).
    public func leaseLapsed(_ mode: PublishMode, monoNs: Int64) -> Bool {
        guard heldLease else { return false }
        if case .leader(let lease) = mode, monoNs < lease { return false }
        return true
    }

    private mutating func decide(_ i: BeatInputs, timeline t: Timeline) -> BeatDecision {
        let leading: Bool
        if case .leader(let lease) = i.mode { leading = i.monoNs < lease } else { leading = false }
        // Fault 2: the lease lapsed with our own frames not echoed back:
        // they may sit behind a dead link; abort before they arrive late.
        let lapsed = heldLease && !leading && lastPublishedIndex > lastSeenIndex
        heldLease = leading
        if lapsed { return .dropConnection }
        var k = nextBeat
        var target = targetNs(t, k, i.mode, i.reference)
        if i.wallNs < target - config.maxLeadNs - 1_000_000 { return .early }
        if case .follower = i.mode {
            nextBeat = max(k, t.beat(atOrBeforeNs: max(i.wallNs, target))) + 1
            return .follow
        }
        var missed: Int64 = 0
        if i.wallNs > target {
            let current = t.beat(atOrBeforeNs: referenceNs(i))
            if current > k {
                missed = current - k
                k = current
                target = targetNs(t, k, i.mode, i.reference)
            }
            if i.wallNs - target >= halfPeriodNs(t, k) {
                nextBeat = k + 1
                return .missed(count: missed + 1)
            }
        }
        if missed > 0 { nextBeat = k }
        if let early = modeDecision(i, leading: leading, timeline: t, beat: k) { return early }
        return slotDecision(i, timeline: t, beat: k, target: target, missed: missed)
    }

    /// The wall time `i` stands for on the reference clock: a degraded node's
    /// turn is measured there, `delayNs` after the instant.
    private func referenceNs(_ i: BeatInputs) -> Int64 {
        guard case .degraded(let delayNs, _) = i.mode else { return i.wallNs }
        return i.reference?.referenceNs(atLocal: i.wallNs - delayNs) ?? i.wallNs - delayNs
    }

    /// What the subject and the publish mode decide for beat `k` before it
    /// is emitted, or nil to go on.
    private mutating func modeDecision(_ i: BeatInputs, leading: Bool, timeline t: Timeline, beat k: Int64)
        -> BeatDecision?
    {
        // Echoes steer only a node that may not be the one publisher. A
        // single node, or a leader holding its lease (§4: no other
        // non-degraded publisher can exist, and the hand-over guard already
        // moved past what earlier publishers may have sent), is the only
        // publisher: a frame already on the subject at its next index is a
        // forgery (anyone with publish rights can copy a real frame's HLC
        // suffix: adversarial review of issue 9) and must not make it skip.
        var soleWriter = leading
        if case .single = i.mode { soleWriter = true }
        if !soleWriter && k <= lastSeenIndex {
            nextBeat = lastSeenIndex + 1  // already on the subject (another publisher)
            return .skip
        }
        switch i.mode {
        case .waiting:
            return .retry(atWallNs: i.wallNs + config.retryNs)
        case .leader:
            if !leading { return .retry(atWallNs: i.wallNs + config.retryNs) }
            guard k >= takeoverFloorBeat else {
                nextBeat = takeoverFloorBeat  // hand-over guard (fault 3)
                return .missed(count: takeoverFloorBeat - k)
            }
            return nil
        case .single:
            return nil
        case .degraded:
            return degradedDecision(i, timeline: t, beat: k)
        case .follower:
            return .follow
        }
    }

    /// A degraded node's turn at beat `k`: only while no leader is heard, its
    /// subscription is old enough to know, no newer term is on the subject,
    /// and its previous degraded frame came back.
    private mutating func degradedDecision(_ i: BeatInputs, timeline t: Timeline, beat k: Int64) -> BeatDecision? {
        let periodNs = t.instantNs(ofBeat: k + 1) - t.instantNs(ofBeat: k)
        // Consumers still hear a leader, or the subscription is too fresh to know.
        if i.wallNs - lastLeaderFrameWallNs < 2 * periodNs || i.natsAttachedMonoNs == nil
            || i.monoNs - (i.natsAttachedMonoNs ?? 0) < periodNs
        {
            nextBeat = k + 1
            return .follow
        }
        // A frame of a newer term was on the subject: its publisher has
        // followed a newer leader, so our committed timeline may be behind
        // (a tempo change we never applied: the same index at another
        // instant), and consumers fence on term (BackbeatClient refuses
        // `stale_term`), so our frames would be refused anyway. Yield until
        // our own term catches up. Found by the simulator at 100,000 seeds
        // (seed 84314).
        if i.term > 0 && seenTerm > i.term {
            nextBeat = k + 1
            return .follow
        }
        // A publisher on another committed timeline was heard lately
        // (`noteForeignTimeline`): yield to it. See the argument there.
        if i.wallNs - lastForeignFrameWallNs < 2 * max(periodNs, foreignPeriodNs) {
            nextBeat = k + 1
            return .follow
        }
        if isUnplaced(k) {
            nextBeat = k + 1  // another cluster publisher's timeline put it on the subject
            return .skip
        }
        if lastDegradedIndex >= 0 && lastSeenIndex < lastDegradedIndex {
            // Our previous degraded frame never came back: the path is broken.
            lastDegradedIndex = -1
            nextBeat = k + 1
            return .dropConnection
        }
        return nil
    }

    /// The emission of beat `k` at `target`: held by the tempo barrier,
    /// within half a period, and a degraded frame within its slot.
    private mutating func slotDecision(
        _ i: BeatInputs, timeline t: Timeline, beat k: Int64, target: Int64, missed: Int64
    ) -> BeatDecision {
        if k >= i.tempoBarrierBeat {
            // Fault 4: a tempo entry not yet committed may change this beat.
            return .retry(atWallNs: i.wallNs + config.retryNs)
        }
        emitDeadlineWallNs = target + halfPeriodNs(t, k)
        var degraded = false
        if case .degraded(_, let slotNs) = i.mode {
            degraded = true
            // Fault 6: within our slot only, or the next node may not see it in time.
            if i.wallNs >= target + slotNs {
                nextBeat = k + 1
                return .missed(count: missed + 1)
            }
            emitDeadlineWallNs = min(emitDeadlineWallNs, target + slotNs)
        }
        assert(emitDeadlineWallNs > target, "a beat is emitted before its deadline")
        return .emit(index: k, atWallNs: target, degraded: degraded)
    }

    /// Immediately before the bytes go to the kernel (after the spin): may
    /// the beat just decided still be published? The lease must still hold
    /// and the beat must still be less than half a period late (a loop
    /// starved during the spin would otherwise send it late).
    public func confirm(mode: PublishMode, monoNs: Int64, wallNs: Int64) -> Bool {
        guard wallNs < emitDeadlineWallNs else { return false }
        switch mode {
        case .single, .degraded: return true
        case .leader(let lease): return monoNs < lease
        case .waiting, .follower: return false
        }
    }

    /// Beat `k` was handed to the kernel (or not, `published == false`).
    public mutating func published(_ k: Int64, degraded: Bool, published: Bool) {
        nextBeat = k + 1
        guard published else { return }
        lastPublishedIndex = max(lastPublishedIndex, k)
        if degraded { lastDegradedIndex = k }
    }

    /// Moves past beat `k` without publishing (lease lost at `confirm`).
    public mutating func abandon(_ k: Int64) { nextBeat = max(nextBeat, k + 1) }

    /// A frame on the subject (ourselves included).
    public mutating func observe(index: Int64, wallNs: Int64, fromLeaderElsewhere: Bool, term: UInt64 = 0) {
        if index > lastSeenIndex { lastSeenIndex = index }
        seenTerm = max(seenTerm, term)
        if fromLeaderElsewhere { lastLeaderFrameWallNs = wallNs }
    }

    /// A cluster publisher's frame for `index` that this node's echo policy
    /// refused (another term: `term_stale`/`term_ahead`; another committed
    /// timeline, one of the two behind on a tempo change: `index_ahead`/
    /// `index_behind`). It must not move this node's index or fence (the
    /// policy exists for that), but the index is on the subject: a degraded
    /// node skips it in its turn (README: a degraded node publishes beat k
    /// only if no frame for k was seen), so two degraded nodes on different
    /// timelines or terms do not both publish one index (the simulator's
    /// divergent degraded duplicates, docs/decisions.md). No gap follows
    /// from it: a node skips an index only after another published it.
    public mutating func noteUnplaced(index: Int64) {
        unplaced = (unplaced.1, unplaced.2, unplaced.3, index)
        if index == unplacedRun.high &+ 1 {
            unplacedRun.high = index
        } else if index < unplacedRun.low || index > unplacedRun.high {
            unplacedRun = (index, index)
        }
    }

    /// Another cluster publisher's frame (degraded or a leader's), heard at
    /// local wall time `wallNs`, is not on this node's committed timeline (BeatShell.hear:
    /// refused for its index, or another tempo or deadline at its index);
    /// `periodNs` is that frame's period. For two of the longer of its
    /// period and ours after it, a degraded node follows instead of taking
    /// its turn.
    ///
    /// Why (issue 19, the 100,000-seed run of 28e07bb, seeds 13542, 18889,
    /// 38750, 79764): turns order degraded nodes by a delay after the
    /// beat's instant, which only orders them when they agree on the
    /// instant. A node cut from Raft when a tempo change committed keeps
    /// the older timeline; from the change on, the same index has another
    /// instant on each node, the gap grows by the difference of the periods
    /// every beat, and sooner or later one node's turn for an index comes
    /// within a NATS delivery of the other's (13542: a 40 ms gap at beat 22
    /// met the 40 ms between turns 0 and 2), or after the other's frame
    /// for it never reached it (18889), or after a leader on the
    /// newer timeline (whose frames it refused, so no "leader heard") came
    /// back and pushed the index it had refused out of `unplaced` (38750).
    /// Both publish it. Neither can tell from a frame which of the two is
    /// behind, so the one that hears the other yields; the publisher it
    /// yields to never hears it, so one keeps publishing.
    ///
    /// Safe: the rule only turns a degraded turn into `.follow` (it adds no
    /// frame, moves no index back, and leaves leaders and single nodes
    /// alone), so it cannot cause a duplicate. A peer on this node's own
    /// timeline is never foreign (its frames carry this timeline's tempo and
    /// deadline at their index), so turns on one timeline are unchanged. A
    /// node yields no longer than two periods after the last foreign frame:
    /// when the other publisher stops (it left degradation, crashed, or
    /// yields itself) this one takes its turns again. Costs: when both
    /// published before hearing each other, both yield and resume about two
    /// periods later (the first frames of two unordered timelines can still
    /// meet: nothing the subject showed can prevent those); the node that
    /// yields may be the one with the newer timeline or term (consumers
    /// fenced on the newer term then refuse the older frames and see a gap,
    /// as events, until a leader returns); a forged frame off the timeline
    /// silences degraded turns for two of its periods (up to 2 min at the
    /// decoder's 1 bpm floor), as a forged leader frame does for two of ours.
    public mutating func noteForeignTimeline(wallNs: Int64, periodNs: Int64) {
        lastForeignFrameWallNs = wallNs
        foreignPeriodNs = periodNs
    }

    private func isUnplaced(_ k: Int64) -> Bool {
        unplaced.0 == k || unplaced.1 == k || unplaced.2 == k || unplaced.3 == k
            || (unplacedRun.low <= k && k <= unplacedRun.high)
    }

    /// Forget what the subject showed (a restarted process).
    public mutating func reset() {
        self = BeatPlanner(config: config)
    }
}
