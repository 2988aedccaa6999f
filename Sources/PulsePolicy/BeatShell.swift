// BeatShell.swift — the beat side's driver loop, one program for the
// service and the simulator (issue 19), as ClusterShell is for Raft:
//
//   timer wake → plan → spin → confirm → encode → write → arm the next wake
//   frame heard on the subject → EchoPolicy → planner (and the HLC)
//   cluster event (leadership, epoch, tempo) → start / take over / re-arm
//
// The committed timeline has one owner: the cluster core's replicated
// timeline (a single node's too: a one-voter core), or with -election
// nats-kv the KV lease's; beat-path tests without a core hand the shell a
// timeline of its own (`startLocal`). The shell only reads it.
// The ports are the clocks, the beat timer, the spin, the NATS write and
// the service's counters. The service's BeatDriver plugs in the loop's
// timerfd, `cloop_spin_until_realtime` and NatsLink; the simulator plugs in
// its event queue and its simulated NATS server, and delivers the encoded
// bytes it was handed to every node, where they pass the decoder and the
// echo policy exactly as in the service.
//
// Beat path (`wake` to `publish`): allocation-free. Nothing here reads a
// clock or touches I/O except through the ports.
import PulseCore

/// What became of a beat, for the service's counters (allocation-free).
public enum BeatNote: Sendable, Equatable {
    /// Beats whose instants passed unpublished by this node.
    case missed(Int64)
    /// Woke after the instant (still within half a period: published).
    case late
    /// Not this node's to publish (a follower, or already on the subject).
    case followed
    /// Decided, then not written (the lease lapsed, no connection, a dropped link).
    case unpublished
    /// Began to publish from the wall time given (a start, or a take-over).
    case publishing(sinceWallNs: Int64)
}

/// The beat shell's ports (see the file header).
public protocol BeatPorts: AnyObject {
    /// The loop's wall clock (CLOCK_REALTIME) and monotonic clock, in ns.
    func nowWallNs() -> Int64
    func nowMonoNs() -> Int64
    /// When the NATS connection attached (monotonic ns), nil while not connected.
    var natsAttachedMonoNs: Int64? { get }
    /// Arms the beat timer: a lead before the instant `wallNs` (the port
    /// chooses the lead), or exactly at `wallNs` when `exact` (a retry).
    func armBeat(atWallNs wallNs: Int64, exact: Bool)
    /// Waits until the wall clock reads `wallNs` and returns the time it
    /// read then; nil when the port resumes beat `beat` later through
    /// `BeatShell.resume(beat:degraded:targetWallNs:)` (the simulator).
    func spin(untilWallNs wallNs: Int64, beat: Int64, degraded: Bool) -> Int64?
    /// Writes one encoded frame of beat `beat` to the beat subject; true when
    /// the bytes were handed to the kernel.
    func publish(_ frame: UnsafeRawBufferPointer, beat: Int64, targetWallNs: Int64, degraded: Bool) -> Bool
    /// Drops the NATS connection (frames this leader published never came back).
    func dropConnection()
    /// Before the planner judges a lease that lapsed since the last wake:
    /// hears now the frames of the beat subject that already arrived but
    /// wait for the loop's turn (`NatsLink.deferReads`), so that the
    /// decision does not take a late read for a dead link.
    func catchUp()
    /// A beat's fate, for counters.
    func note(_ note: BeatNote)
    /// A committed tempo change took effect at a beat this node published
    /// (called after the beat, off the critical instant).
    func tempoTookEffect(epoch: TempoEpoch, previousBpm: Int64)
}

extension BeatPorts {
    /// Ports that hear every frame as it arrives have nothing to catch up.
    public func catchUp() {}
}

/// The beat side of one node over its ports.
public final class BeatShell {
    /// The cluster's core (a single node's is a one-voter core); nil only
    /// with nats-kv (`leadership`) or in beat-path tests (`startLocal`).
    public var core: ClusterCore?
    /// Another election strategy when there is no core (`KVLeadership`, issue 21).
    public var leadership: BeatLeadership?
    /// Who owns the committed timeline and the publish mode (nil: a local timeline).
    @inline(__always) private var lead: BeatLeadership? {
        if let core { return core }
        return leadership
    }
    private unowned let ports: BeatPorts
    private var planner: BeatPlanner
    private var local: Timeline?
    private var hlc: HLC
    private let encoder: BeatFrameEncoder
    private let windowIds: WindowIdCache
    /// Two frame buffers, written in turn: the last two frames this node
    /// wrote stay whole, so the echo of the one before the last (read after
    /// the last was written, when the link reads at the loop's turns:
    /// `NatsLink.deferReads`) is still recognised by its bytes.
    private let frames: (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer)
    /// The buffer the next frame is encoded into (0 or 1).
    private var nextSlot = 0
    /// The guard after a graceful hand-over (replaces the planner's).
    private let handOverGuardNs: Int64
    /// The downbeat of the last change announced (`tempoTookEffect`) or
    /// passed by without this node publishing it. A change is announced by
    /// the node that emits its first beat at or after the downbeat (late
    /// after a stall; again by a new leader whose first beat is past it).
    private var announcedChangeBeat: Int64 = .min
    private var announce: (epoch: TempoEpoch, previousBpm: Int64)?
    public private(set) var started = false
    /// Remote HLC stamps not adopted (too far ahead).
    public private(set) var hlcRejected: UInt64 = 0
    /// Wall time an accepted frame from another node was last heard, or 0.
    public private(set) var lastFrameFromOthersNs: Int64 = 0
    /// Committed tempo changes applied at a beat this node had already
    /// published as the leader (must stay 0: the proposer's barrier and the
    /// term-start gate). Degraded frames are not counted: they follow the
    /// last timeline a cut-off node knew, and consumers prefer a leader's.
    public private(set) var retroactiveTempoChanges: UInt64 = 0
    /// The last beat this node published not degraded, or -1.
    private var lastLeaderPublished: Int64 = -1
    /// The subject attach time last told to the strategy (`publishMode`).
    private var noticedAttachMonoNs: Int64 = .min

    public init(
        ports: BeatPorts, planner: PlannerConfig, handOverGuardNs: Int64, clusterId: String, phases: [String],
        nodeId: String, maxOffsetMs: Int64
    ) {
        self.ports = ports
        self.planner = BeatPlanner(config: planner)
        self.handOverGuardNs = handOverGuardNs
        self.hlc = HLC(maxOffsetMs: maxOffsetMs)
        self.encoder = BeatFrameEncoder(clusterId: clusterId, phases: phases, nodeId: nodeId)
        self.windowIds = WindowIdCache(clusterId: clusterId)
        self.frames = (
            .allocate(byteCount: encoder.maxFrameBytes, alignment: 8),
            .allocate(byteCount: encoder.maxFrameBytes, alignment: 8)
        )
    }

    deinit {
        frames.0.deallocate()
        frames.1.deallocate()
    }

    // MARK: state

    /// The committed timeline (read from its owner), with a change whose
    /// downbeat was decided already folded in; nil before the epoch.
    public var timeline: Timeline? {
        guard var t = lead?.committedTimeline ?? local else { return nil }
        _ = t.applyDue(beat: planner.nextBeat &- 1)
        return t
    }
    public var nextBeat: Int64 { planner.nextBeat }
    public var lastSeenIndex: Int64 { planner.lastSeenIndex }
    public var lastPublishedIndex: Int64 { planner.lastPublishedIndex }
    /// When a frame on another committed timeline was last heard (`hear`).
    public var lastForeignFrameWallNs: Int64 { planner.lastForeignFrameWallNs }
    /// The period the planner yields by after that frame (twice it).
    public var foreignPeriodNs: Int64 { planner.foreignPeriodNs }
    /// The HLC suffix this node stamps (to tell its own frames apart).
    public var ownSuffix: String { encoder.hlcSuffix }
    /// The term stamped on frames: the core's Raft term (1 for a local timeline).
    public var term: UInt64 { lead?.term ?? 1 }

    /// The planner's publish mode now, for a beat of the timeline's period at the next beat.
    public func publishMode(_ t: Timeline, monoNs: Int64) -> PublishMode {
        guard let lead else { return .single }
        if let attached = ports.natsAttachedMonoNs, attached != noticedAttachMonoNs {
            // The subject (re)attached: the strategy waits before degraded turns.
            noticedAttachMonoNs = attached
            lead.subjectReconnected(atMonoNs: attached)
        }
        let k = planner.nextBeat
        return lead.publishMode(nowMonoNs: monoNs, periodNs: t.instantNs(ofBeat: k &+ 1) - t.instantNs(ofBeat: k))
    }

    // MARK: starting and following the committed timeline

    /// A timeline of the shell's own, started now (beat-path tests without a core).
    public func startLocal(_ timeline: Timeline) {
        local = timeline
        start()
    }

    /// A tempo change on the shell's own timeline (beat-path tests).
    public func scheduleLocal(_ change: TempoChange) throws {
        guard var t = local else { return }
        if let pending = t.pending, pending.atBeat < change.atBeat { _ = t.applyDue(beat: pending.atBeat) }
        try t.schedule(change: change)
        local = t
        if started { armNext() }
    }

    /// Starts (or re-plans after a clock step) with the first beat whose
    /// instant is still ahead, never a beat this node published.
    public func start() {
        guard let t = timeline else { return }
        let now = ports.nowWallNs()
        started = true
        ports.note(.publishing(sinceWallNs: now))
        planner.start(timeline: t, wallNs: now)
        passed(beat: planner.nextBeat &- 1)  // a change in effect before this start is no news
        prepareAhead()
        armNext()
    }

    /// Just became the leader (or learned the timeline as the leader):
    /// continue after the hand-over guard and after every index on the
    /// subject or published here; the beats in between are counted missed.
    public func takeOver(graceful: Bool) {
        guard started, let t = timeline else { return }
        let now = ports.nowWallNs()
        ports.note(.publishing(sinceWallNs: now))
        let before = planner.nextBeat
        planner.takeOver(timeline: t, wallNs: now, guardNs: graceful ? handOverGuardNs : nil)
        let afterSeen = max(before, planner.lastSeenIndex &+ 1)
        if planner.lastSeenIndex >= 0 && planner.nextBeat > afterSeen {
            ports.note(.missed(planner.nextBeat &- afterSeen))
        }
        prepareAhead()
        armNext()
    }

    /// The beat side's reaction to the cluster core's events (the service
    /// and the simulator both route every event here).
    public func clusterEvent(_ event: ClusterEvent) {
        guard let core else { return }
        switch event {
        case .leadership(let role, _, _):
            if role == .leader { takeOver(graceful: core.electedByHandOver) }
        case .restored:
            start()
            if core.isLeader { takeOver(graceful: core.electedByHandOver) }
        case .applied(.epoch, _):
            start()
            // A leader that learns the timeline only now starts past the guard too.
            if core.isLeader { takeOver(graceful: core.electedByHandOver) }
        case .applied(.tempo(let change), _):
            tempoApplied(change)
        default:
            break
        }
    }

    /// A committed tempo change was applied to the timeline's owner.
    public func tempoApplied(_ change: TempoChange) {
        if change.atBeat <= lastLeaderPublished { retroactiveTempoChanges &+= 1 }
        if started { armNext() }  // the next instant may have moved
    }

    // MARK: the beat path

    /// The beat timer fired: plan the next beat and act on the decision.
    public func wake() {
        guard let t = timeline else { return }
        let wallNs = ports.nowWallNs()
        let monoNs = ports.nowMonoNs()
        var mode = publishMode(t, monoNs: monoNs)
        if planner.leaseLapsed(mode, monoNs: monoNs) {
            // The lease lapsed since the last wake: what shows our frames
            // came back may be waiting for the loop's turn.
            ports.catchUp()
            mode = publishMode(t, monoNs: monoNs)
        }
        let inputs = BeatInputs(
            wallNs: wallNs, monoNs: monoNs, mode: mode, natsAttachedMonoNs: ports.natsAttachedMonoNs,
            tempoBarrierBeat: lead?.tempoBarrierBeat ?? .max, reference: lead?.degradedReference,
            term: lead == nil ? 0 : term)
        let nextBefore = planner.nextBeat
        switch planner.plan(inputs, timeline: t) {
        case .early:
            armNext()  // woke far too early (re-armed under us): re-plan
        case .retry(let atNs):
            ports.armBeat(atWallNs: atNs, exact: true)
        case .follow, .skip:
            passed(beat: nextBefore)  // another node publishes it (and announces a change there)
            ports.note(.followed)
            armNext()
        case .missed(let count):
            ports.note(.missed(count))
            armNext()
        case .dropConnection:
            // Frames we published never came back: nothing queued behind the
            // dead link may arrive late.
            ports.dropConnection()
            ports.note(.unpublished)
            armNext()
        case .emit(let k, let target, let degraded):
            if k > nextBefore { ports.note(.missed(k - nextBefore)) }
            if wallNs > target { ports.note(.late) }
            resume(beat: k, degraded: degraded, targetWallNs: target)
        }
    }

    /// After the spin (the simulator's deferred one re-enters here): confirm
    /// the lease and the lateness rule again, then encode and write.
    public func resume(beat k: Int64, degraded: Bool, targetWallNs target: Int64) {
        guard let exitNs = ports.spin(untilWallNs: target, beat: k, degraded: degraded) else { return }
        guard let t = timeline else { return }
        let monoNs = ports.nowMonoNs()
        guard planner.confirm(mode: publishMode(t, monoNs: monoNs), monoNs: monoNs, wallNs: exitNs),
            planner.nextBeat <= k
        else {
            // The lease lapsed, or the loop was starved, during the spin.
            ports.note(.unpublished)
            planner.abandon(k)
            armNext()
            return
        }
        let published = emit(k, t, nowNs: exitNs, targetWallNs: target, degraded: degraded)
        planner.published(k, degraded: degraded, published: published)
        if !published { ports.note(.unpublished) }
        if published && !degraded { lastLeaderPublished = k }
        armNext()
        if let a = announce {
            announce = nil
            ports.tempoTookEffect(epoch: a.epoch, previousBpm: a.previousBpm)
        }
    }

    /// Encodes beat `k` at wall time `nowNs` into the preallocated frame and
    /// writes it (allocation-free). Also the zero-allocation test's entry.
    @discardableResult
    public func emit(_ k: Int64, _ t: Timeline, nowNs: Int64, targetWallNs: Int64, degraded: Bool) -> Bool {
        if let owned = lead?.committedTimeline ?? local, let p = owned.pendingEpoch, k >= p.startBeat,
            p.startBeat > announcedChangeBeat
        {
            // The first beat this node emits at or after the change's downbeat
            // (the downbeat itself, or later after a stall or a take-over).
            announcedChangeBeat = p.startBeat
            announce = (p, owned.epoch.bpm)
        }
        var now = t
        _ = now.applyDue(beat: k)
        let slot = nextSlot
        let frame = slot == 0 ? frames.0 : frames.1
        written[slot].length = 0  // this buffer is about to change
        // Not prepared only when the loop stalled for more than a bar and the
        // planner jumped past the bars `prepareAhead` hashed: this one beat is
        // counted unpublished (the caller's `.unpublished`) rather than hashed
        // here, which allocates on the beat path; the wake's `prepareAhead`
        // readies the next (adversarial review F9, 2026-12-07).
        guard let windowId = windowIds.lookup(barStart: now.barStart(k)) else { return false }
        let stamp = hlc.now(wallMs: nowNs / 1_000_000)
        let length = encoder.encode(
            into: frame, beatIndex: k, downbeat: now.isDownbeat(k), phaseIndex: now.phaseIndex(k),
            hlc: stamp, deadlineUnixMs: now.deadlineUnixMs(ofBeat: k),
            tempoBpm: now.epoch.bpm, windowId: windowId, term: term, degraded: degraded)
        guard length > 0 else { return false }
        let published = ports.publish(
            UnsafeRawBufferPointer(rebasing: frame[0..<length]), beat: k, targetWallNs: targetWallNs,
            degraded: degraded)
        if published {
            written[slot] = OwnFrame(length: length, index: k, term: term, hlc: stamp)
            nextSlot = slot ^ 1
        }
        return published
    }

    /// Beat `k` went by without this node emitting it as a change's first
    /// beat: the owner's pending change at or before `k` is not announced here.
    private func passed(beat k: Int64) {
        guard let p = (lead?.committedTimeline ?? local)?.pendingEpoch, k >= p.startBeat else { return }
        announcedChangeBeat = max(announcedChangeBeat, p.startBeat)
    }

    /// What this node knows of a frame it wrote (still in its buffer; length
    /// 0: none), so that its echo needs no parse (issue 24).
    private struct OwnFrame {
        var length: Int
        var index: Int64
        var term: UInt64
        var hlc: HLCStamp
    }
    /// The frames in `frames.0` and `frames.1`.
    private var written = OwnFrames()
    private struct OwnFrames {
        var first = OwnFrame(length: 0, index: -1, term: 0, hlc: .zero)
        var second = OwnFrame(length: 0, index: -1, term: 0, hlc: .zero)
        subscript(slot: Int) -> OwnFrame {
            get { slot == 0 ? first : second }
            set { if slot == 0 { first = newValue } else { second = newValue } }
        }
    }

    /// Arms the timer for the next beat's target in the current mode.
    public func armNext() {
        guard let t = timeline else { return }
        let mode = publishMode(t, monoNs: ports.nowMonoNs())
        ports.armBeat(atWallNs: planner.targetNs(t, planner.nextBeat, mode, lead?.degradedReference), exact: false)
    }

    /// Window ids for this bar and the next, computed ahead (they hash:
    /// never on the beat path). Call after each wake.
    public func prepareAhead() {
        guard let t = timeline else { return }
        let bar = t.barStart(planner.nextBeat)
        windowIds.prepare(barStart: bar)
        windowIds.prepare(barStart: bar &+ Int64(t.bar))
    }

    /// The window id of beat `k`'s bar, computed now (tests that call `emit`).
    public func prepareWindowId(forBeat k: Int64) {
        guard let t = timeline else { return }
        windowIds.prepare(barStart: t.barStart(k))
    }

    // MARK: what the subject shows

    /// A decoded frame heard on the beat subject at local wall time `wallNs`:
    /// judged by `policy` against the committed timeline (on the leader's
    /// clock); an accepted one moves the planner and the HLC. Nil before
    /// the committed timeline: nothing to judge against (ignored, not counted).
    public func hear(_ frame: DecodedBeatFrame, wallNs: Int64, policy: inout EchoPolicy) -> EchoVerdict? {
        guard started, let t = timeline else { return nil }
        let timelineNs = echoClockNs(wallNs)
        let verdict = policy.judge(frame, timeline: t, atTimelineNs: timelineNs, ownTerm: term)
        // A cluster publisher's frame this node cannot place (another term or
        // timeline) is still on the subject: a degraded turn skips its index.
        let clusterPublisher: Bool
        if case .reject(let why) = verdict {
            clusterPublisher = why != .wrongCluster && why != .unknownPublisher
        } else {
            clusterPublisher = true
        }
        if clusterPublisher && verdict != .accept && frame.hlcSuffix != ownSuffix {
            planner.noteUnplaced(index: frame.beatIndex)
        }
        if frame.hlcSuffix != ownSuffix, let periodNs = offTimeline(frame, verdict, timelineNs: timelineNs) {
            planner.noteForeignTimeline(wallNs: wallNs, periodNs: periodNs)
        }
        // A publishing leader elsewhere, placed or not: contact for the
        // election strategy (KV mode: no degraded turn beside a live holder,
        // KVLeaseLeadership.swift). Never a stale term's frame: a replayed
        // or forged old frame is no live holder (review of 2026-12-07 F1).
        if clusterPublisher && verdict != .reject(.termStale) && !frame.degraded && frame.hlcSuffix != ownSuffix,
            let lead
        {
            lead.leaderFrameHeard(nowMonoNs: ports.nowMonoNs())
        }
        guard verdict == .accept else { return verdict }
        let fromOthers = frame.hlcSuffix != ownSuffix
        if fromOthers { lastFrameFromOthersNs = wallNs }
        if frame.beatIndex < Int64.max {
            planner.observe(
                index: frame.beatIndex, wallNs: wallNs, fromLeaderElsewhere: fromOthers && !frame.degraded,
                term: frame.term)
        }
        mergeRemote(frame.hlc, wallNs: wallNs)
        return .accept
    }

    /// Whether a cluster publisher's frame shows a committed timeline other
    /// than this node's (`BeatPlanner.noteForeignTimeline`), and the period
    /// to yield by: at an index of this node's epoch within 8 of its next
    /// beat (no arithmetic on a far index), another tempo or deadline than
    /// this node's timeline gives it; further off, refused for its index.
    /// Only a frame published now — its deadline within three of our periods
    /// of the timeline's now — and never a stale term's: the higher term
    /// keeps publishing, and a replayed or forged old frame silences nothing.
    /// The period is the frame's, capped at twice ours (a committed
    /// timeline's tempo moves ±10 % a change), so one forged frame buys at
    /// most four of our periods, not two of a 1-bpm frame's (review of
    /// 2026-12-07, findings 1 and 3).
    private func offTimeline(_ frame: DecodedBeatFrame, _ verdict: EchoVerdict, timelineNs: Int64) -> Int64? {
        switch verdict {
        case .reject(.wrongCluster), .reject(.unknownPublisher), .reject(.termStale): return nil
        case .accept, .reject(.termAhead), .reject(.indexAhead), .reject(.indexBehind): break
        }
        guard let owned = lead?.committedTimeline ?? local else { return nil }
        let n = planner.nextBeat
        let ourPeriodNs = owned.instantNs(ofBeat: n &+ 1) &- owned.instantNs(ofBeat: n)
        let (deadlineNs, overflow) = frame.deadlineUnixMs.multipliedReportingOverflow(by: 1_000_000)
        let (fromNowNs, far) = deadlineNs.subtractingReportingOverflow(timelineNs)
        guard !overflow, !far, ourPeriodNs > 0, fromNowNs.magnitude <= UInt64(3 * ourPeriodNs) else { return nil }
        let periodNs = min(60_000_000_000 / max(1, frame.tempoBpm), 2 * ourPeriodNs)
        // Near our next beat a frame is compared with this timeline (a late
        // or early frame of it, refused for its index after a stall, is not
        // foreign: review of 2026-12-07, s19dup finding 2); an index far
        // from it, published now, is another epoch's when refused for it.
        let k = frame.beatIndex
        guard k >= owned.epoch.startBeat, k >= n &- 8, k <= n &+ 8 else {
            switch verdict {
            case .reject(.indexAhead), .reject(.indexBehind): return periodNs
            default: return nil
            }
        }
        var at = owned
        _ = at.applyDue(beat: k)
        return at.epoch.bpm != frame.tempoBpm || owned.deadlineUnixMs(ofBeat: k) != frame.deadlineUnixMs
            ? periodNs : nil
    }

    /// The publisher's own echo without a parse (issue 24): when `payload`
    /// is byte for byte one of the two frames this node wrote last, it is judged
    /// (`EchoPolicy.judgeOwn`: the same checks, verdict and fence as `judge`
    /// on the decoded frame) and, accepted, observed as `hear` observes it;
    /// returns the verdict and the frame's index. Nil when the bytes are not
    /// that frame (decode them and call `hear`) or before the committed
    /// timeline. One compare of the frame's bytes; allocation-free.
    public func hearOwn(_ payload: UnsafeRawBufferPointer, wallNs: Int64, policy: inout EchoPolicy) -> (
        verdict: EchoVerdict, index: Int64
    )? {
        guard started, let t = timeline else { return nil }
        let own: OwnFrame
        if Self.holds(written.first, frames.0, payload) {
            own = written.first
        } else if Self.holds(written.second, frames.1, payload) {
            own = written.second
        } else {
            return nil
        }
        let timelineNs = echoClockNs(wallNs)
        let verdict = policy.judgeOwn(
            suffix: ownSuffix, index: own.index, term: own.term, timeline: t, atTimelineNs: timelineNs, ownTerm: term)
        guard verdict == .accept else { return (verdict, own.index) }
        planner.observe(index: own.index, wallNs: wallNs, fromLeaderElsewhere: false, term: own.term)
        mergeRemote(own.hlc, wallNs: wallNs)
        return (.accept, own.index)
    }

    /// True when `buffer` holds the frame `own` and `payload` is its bytes.
    private static func holds(
        _ own: OwnFrame, _ buffer: UnsafeMutableRawBufferPointer, _ payload: UnsafeRawBufferPointer
    )
        -> Bool
    {
        own.length > 0 && payload.count == own.length
            && equalBytes(payload, UnsafeRawBufferPointer(rebasing: buffer[0..<own.length]))
    }

    /// Byte equality of two buffers of the same length, eight bytes at a time.
    private static func equalBytes(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        let n = a.count
        guard n == b.count else { return false }
        var i = 0
        while i + 8 <= n {
            if a.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                != b.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            {
                return false
            }
            i += 8
        }
        while i < n {
            if a[i] != b[i] { return false }
            i += 1
        }
        return true
    }

    /// Local wall time `wallNs` on the clock frames are judged on: a degraded
    /// node's peers publish in turns measured on the lowest voter's clock,
    /// the one its own turns use (`degradedReference`); otherwise the last
    /// leader's. (Judging degraded frames on the last leader's stale
    /// estimate refused the frame the planner would place next: 100,000-seed
    /// run, seed 4515 and six others.)
    private func echoClockNs(_ wallNs: Int64) -> Int64 {
        guard let lead else { return wallNs }
        let reference = lead.degraded ? lead.degradedReference : lead.referenceSync
        return reference?.referenceNs(atLocal: wallNs) ?? wallNs
    }

    /// Merges a peer's timestamp into the HLC (§3: beat frames and Raft
    /// traffic alike); one too far ahead is not adopted and is counted.
    public func mergeRemote(_ stamp: HLCStamp, wallNs: Int64) {
        if case .rejectedTooFarAhead = hlc.receive(stamp, wallMs: wallNs / 1_000_000) { hlcRejected &+= 1 }
    }
}
