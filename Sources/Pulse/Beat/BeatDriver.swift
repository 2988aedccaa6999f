// Beat: turns timer wake-ups into published BeatFrames.
//
// One data flow, one direction: the timerfd fires shortly before the instant
// of the next beat → the driver spins on the wall clock until the instant →
// the timeline says which beat and phase → the frame is encoded into a buffer
// allocated at start-up → published and flushed → measurements recorded.
// Nothing on that path allocates, logs, or touches the disk; the jemalloc
// thread counter is read around it and any byte it moves is counted in
// `hotPathAllocatedBytes` (expected to stay 0).
//
// Lateness: if the loop wakes after a beat's instant, the beat is still
// published if its instant passed less than half a period ago; beats whose
// instants passed longer ago are counted as missed, never sent late.
import CLoop
import Glibc
import Logging
import PulseCore
import PulsePolicy

/// Counters and last values of the beat path, for metrics and logs.
struct BeatStats {
    var beatsPublished: UInt64 = 0
    var beatsMissed: UInt64 = 0
    var beatsUnpublished: UInt64 = 0
    var lateBeats: UInt64 = 0
    var clockSteps: UInt64 = 0
    /// Beat timer arms that failed (each retried 1 ms later; should stay 0).
    var armFailures: UInt64 = 0
    var hotPathAllocatedBytes: UInt64 = 0
    /// The last beat whose path allocated (for the warning log), or -1.
    var lastAllocatingBeat: Int64 = -1
    /// Frames published marked `"degraded":true`.
    var degradedBeats: UInt64 = 0
    var lastJitterNs: Int64 = 0
    var maxJitterNs: Int64 = 0
    var lastBeatIndex: Int64 = -1
    /// Wall time (Unix ns) the last frame was handed to NATS, or 0 (for /health).
    var lastPublishedNs: Int64 = 0
}

/// Where a beat's publish time comes from (requirements §9).
enum PublishTimeSource: UInt8 {
    /// The kernel's software TX timestamp of the frame's last byte.
    case txTimestamp
    /// The return of the write(2) that carried the frame (no stamp).
    case write
    /// The stamp is awaited (the record is final once it arrives or the next beat comes).
    case pending

    var name: String {
        switch self {
        case .txTimestamp: return "tx_timestamp"
        case .write: return "write"
        case .pending: return "pending"
        }
    }
}

/// What the driver measured for one beat, handed to the observer. The
/// stages: timer wake (`wakeNs`) → decision (`publishStartNs`, the spin's
/// exit) → write returned (`publishDoneNs`) → TX timestamp (`txNs`).
struct BeatRecord {
    var index: Int64
    var scheduledNs: Int64
    var wakeNs: Int64
    var publishStartNs: Int64
    var publishDoneNs: Int64
    var published: Bool
    var periodNs: Int64
    /// The kernel's TX timestamp of the frame's last byte, or 0.
    var txNs: Int64 = 0
    var source: PublishTimeSource = .write
    /// When the frame left the process: the TX timestamp, else the write's return.
    var publishedNs: Int64 { txNs != 0 ? txNs : publishDoneNs }
    /// publish time − scheduled instant (§9: never the decision).
    var jitterNs: Int64 { publishedNs - scheduledNs }
    var publishDurationNs: Int64 { publishDoneNs - publishStartNs }
}

/// The last `capacity` beat records in storage allocated once; appending is
/// allocation-free. Read by `GET /debug/beats` and the benchmark.
final class BeatRing {
    let capacity: Int
    private let storage: UnsafeMutablePointer<BeatRecord>
    private var count = 0
    private var next = 0

    init(capacity: Int) {
        self.capacity = capacity
        storage = .allocate(capacity: capacity)
    }

    deinit { storage.deallocate() }

    func append(_ record: BeatRecord) {
        (storage + next).initialize(to: record)  // BeatRecord is trivial: no deinit needed
        next = (next + 1) % capacity
        count = min(count + 1, capacity)
    }

    /// Rewrites the newest record in place (a late TX timestamp); allocation-free.
    func updateLast(_ body: (inout BeatRecord) -> Void) {
        guard count > 0 else { return }
        body(&storage[(next - 1 + capacity) % capacity])
    }

    /// Oldest first.
    func records() -> [BeatRecord] {
        let start = (next - count + capacity) % capacity
        return (0..<count).map { storage[(start + $0) % capacity] }
    }
}

/// Receives each beat's record on the loop thread; must not allocate.
protocol BeatObserver: AnyObject {
    func beatRecorded(_ record: BeatRecord)
}

/// Decides how this node publishes (the cluster's lease and degradation).
/// Called on the beat path: implementations must not allocate.
protocol PublishGate: AnyObject {
    /// The planner's publish mode (PulsePolicy): `.leader(leaseUntilMonoNs:)`
    /// carries the lease deadline so the planner checks it again after the
    /// spin and notices it lapse (fault 2); `.single` is never returned by a
    /// cluster node.
    func publishMode(monotonicNs: Int64) -> PulsePolicy.PublishMode
    /// The local wall time at which the committed timeline (the leader's
    /// clock) reads `timelineNs`; identity without an offset estimate.
    func localNs(forTimelineNs timelineNs: Int64) -> Int64
    /// The inverse of `localNs(forTimelineNs:)`.
    func timelineNs(forLocalNs localNs: Int64) -> Int64
    /// The reference clock estimate behind both mappings (nil: identity).
    var referenceClock: ClockSync? { get }
    /// The first beat a tempo entry proposed here but not yet applied may
    /// change (Int64.max: none); no beat at or after it is emitted (fault 4).
    var tempoBarrierBeat: Int64 { get }
}

/// Hears, after the beat (off the beat path), that a tempo change took effect.
protocol TempoListener: AnyObject {
    func tempoApplied(epoch: TempoEpoch, previousBpm: Int64)
}

/// Drives beats on the loop thread from a CLOCK_REALTIME timerfd.
final class BeatDriver: LoopHandler, TxTimestampSink {
    private unowned let loop: EventLoop
    private let nats: NatsLink
    private let logger: Logger
    private(set) var timeline: Timeline
    private var hlc: HLC
    private let encoder: BeatFrameEncoder
    private let windowIds: WindowIdCache
    private let clusterId: String
    private let frame: UnsafeMutableRawBufferPointer
    private let subject: UnsafeMutablePointer<CChar>
    private let allocatedCounter: UnsafePointer<UInt64>?
    private var timerToken: UInt32 = 0
    /// The Raft term stamped on frames (a single bootstrapped node is term 1).
    var term: UInt64 = 1
    /// The beat decisions (PulsePolicy): next beat, what the subject showed,
    /// the hand-over floor and whether the lease was held at the last wake.
    /// Kept across wakes (a value type mutated in place: no allocation).
    private var planner: BeatPlanner
    /// The next beat to decide.
    var nextBeat: Int64 { planner.nextBeat }
    private(set) var stats = BeatStats()
    weak var observer: BeatObserver?
    /// The last 4096 beats' measurements.
    let recent = BeatRing(capacity: 4096)
    weak var tempoListener: TempoListener?
    /// When set, beats are published only while it allows (cluster mode).
    weak var gate: PublishGate?
    /// The highest beat index seen on the beat subject (from any node), or -1.
    var lastSeenIndex: Int64 { planner.lastSeenIndex }
    /// Remote HLC stamps not adopted (too far ahead).
    private(set) var hlcRejected: UInt64 = 0
    /// Beats this node did not publish because it is not the leader.
    private(set) var beatsFollowed: UInt64 = 0
    private(set) var started = false
    /// Wall time an accepted frame from another node (degraded or not) was last seen, or 0.
    private(set) var lastFrameFromOthersNs: Int64 = 0
    /// Wall time this node last began to publish (start, or took over as
    /// leader), or 0: with `stats.lastPublishedNs`, what /health measures
    /// the silence of a node that should publish from.
    private(set) var publishingSinceNs: Int64 = 0
    /// The HLC suffix this node stamps (to tell its own frames apart).
    var ownSuffix: String { encoder.hlcSuffix }
    /// Set on the beat path when an epoch switch happened; reported after it.
    private var appliedFromBpm: Int64 = 0

    /// How long before an instant the timer fires; adapts to recent wake
    /// latency between `minLeadNs` and `maxLeadNs`.
    private var leadNs: Int64
    private let minLeadNs: Int64
    private let maxLeadNs: Int64
    /// Ring of the last `wakeWindow` wake latencies (allocated once).
    private let wakeLateness: UnsafeMutablePointer<Int64>
    private var wakeLatenessCursor = 0
    private var armedAtNs: Int64 = 0

    init(
        loop: EventLoop, nats: NatsLink, logger: Logger, timeline: Timeline, clusterId: String, phases: [String],
        nodeId: String, subject: String, maxOffsetMs: Int64, spinMaxUs: Int
    ) throws {
        self.loop = loop
        self.nats = nats
        self.logger = logger
        self.timeline = timeline
        self.clusterId = clusterId
        self.hlc = HLC(maxOffsetMs: maxOffsetMs)
        self.encoder = BeatFrameEncoder(clusterId: clusterId, phases: phases, nodeId: nodeId)
        self.windowIds = WindowIdCache(clusterId: clusterId)
        self.frame = .allocate(byteCount: encoder.maxFrameBytes, alignment: 8)
        self.subject = strdup(subject)
        self.allocatedCounter = cloop_thread_allocated_counter()
        self.maxLeadNs = Int64(spinMaxUs) * 1000
        // At least 1 ms early: a vCPU idle for a whole period wakes slower
        // than a busy one (measured with GET /debug/beats); the spin costs ~1 % CPU at 600 bpm.
        self.minLeadNs = min(1_000_000, maxLeadNs)
        self.leadNs = maxLeadNs
        self.wakeLateness = .allocate(capacity: Self.wakeWindow)
        self.wakeLateness.initialize(repeating: 0, count: Self.wakeWindow)
        self.planner = BeatPlanner(
            config: PlannerConfig(
                maxLeadNs: maxLeadNs, handoffGuardNs: Self.handoffGuardNs))
        self.timerToken = try loop.makeTimer(clock: CLOCK_REALTIME, priority: true, handler: self)
        nats.txSink = self
    }

    /// The hand-over guard (fault 3 of issue #10): a new or restarted leader
    /// publishes only beats whose instant is at least this long after it was
    /// elected (on its clock), and after every index the subject showed or it
    /// published itself. Any earlier leader's lease had expired when this one
    /// was elected (Raft's lease proof), so that leader emitted only beats
    /// with instants up to the election plus the clock offset between the
    /// two; its bytes still queued in a kernel arrive within NATS's latency
    /// or are dropped by the socket's TCP_USER_TIMEOUT. A degraded node stops
    /// when it hears the leader (Raft, immediately) or sees its frames, and
    /// publishes only within its turn after an instant. The guard covers all
    /// of them without trusting this node's own echo, which a restarted or
    /// reconnected node does not have.
    static let handoffGuardNs: Int64 =
        NatsLink.userTimeoutMs * 1_000_000 + BeatDriver.clockOffsetAllowanceNs + BeatDriver.natsLatencyAllowanceNs
    /// The guard after a graceful hand-over (SIGTERM of the leader): the
    /// previous leader voided its lease before it asked this node to
    /// campaign, and asked only once its last frame had come back on the
    /// subject (PulseNode), so nothing of it is queued behind a dead link:
    /// the clock offset and NATS's latency remain.
    static let handOverGuardNs: Int64 = BeatDriver.clockOffsetAllowanceNs + BeatDriver.natsLatencyAllowanceNs
    /// Offset between two nodes' wall clocks the guard covers (NTP-synced hosts).
    static let clockOffsetAllowanceNs: Int64 = 20_000_000
    /// A frame's way through the NATS server to a subscriber.
    static let natsLatencyAllowanceNs: Int64 = 25_000_000

    deinit {
        frame.deallocate()
        wakeLateness.deallocate()
        free(subject)
    }

    /// Starts with the first beat whose instant is still ahead (or passed less
    /// than half a period ago, per the lateness rule), never at or before a
    /// beat this node already published (a re-plan after a clock step).
    func start(nowNs: Int64) {
        // Timer-only (shared-host) mode wakes exactly at the instant: the
        // loop thread's timer slack at its minimum (the default is 50 µs).
        if maxLeadNs == 0 { _ = cloop_set_timer_slack_ns(1) }
        started = true
        publishingSinceNs = nowNs
        planner.start(timeline: timeline, wallNs: nowNs)
        prepareAhead()
        arm()
    }

    func stop() {
        loop.disarmTimer(timerToken)
    }

    private func arm() {
        let mode = gate?.publishMode(monotonicNs: cloop_monotonic_ns()) ?? .single
        arm(at: planner.targetNs(timeline, nextBeat, mode, gate?.referenceClock) - leadNs)
    }

    /// Arms the beat timer at `ns` (wall). A timer that cannot be armed
    /// would stop the beat in silence: the failure is counted and logged,
    /// and the beat re-planned from a relative timer a millisecond later
    /// (`armFailures`; the loop keeps running, the next wake tries again).
    private func arm(at ns: Int64) {
        armedAtNs = ns
        do {
            try loop.armTimer(timerToken, atNs: ns, cancelOnSet: true)
        } catch {
            stats.armFailures &+= 1
            // Logged at the 1st, 2nd, 4th, 8th… failure: a persistent one must not flood the log.
            if stats.armFailures & (stats.armFailures - 1) == 0 {
                logger.error(
                    "cannot arm the beat timer; retrying in 1 ms",
                    metadata: ["error": "\(error)", "failures": "\(stats.armFailures)"])
            }
            do {
                try loop.armTimer(timerToken, afterNs: 1_000_000)
            } catch {
                // Neither an absolute nor a relative timer can be set on our
                // own timerfd: the loop itself is broken (an invariant).
                preconditionFailure("the beat timer cannot be armed at all: \(error)")
            }
        }
    }

    /// Window ids for this bar and the next are computed ahead, off the beat path.
    private func prepareAhead() {
        let bar = timeline.barStart(nextBeat)
        windowIds.prepare(barStart: bar)
        windowIds.prepare(barStart: bar + Int64(timeline.bar))
    }

    func loopEvent(token: UInt32, events: UInt32) {
        switch loop.readTimer(timerToken) {
        case .clockStepped:
            // The wall clock was stepped: re-plan from the new time.
            stats.clockSteps &+= 1
            logger.warning("wall clock stepped; re-planning the next beat", metadata: ["beat": "\(nextBeat)"])
            start(nowNs: cloop_realtime_ns())
            return
        case .failed(let errno):
            preconditionFailure("beat timer read failed (errno \(errno)): the loop lost its own timer")
        case .expired(0):
            return
        case .expired:
            break
        }
        let retryAt = fire()
        prepareAhead()
        if let retryAt { arm(at: retryAt) } else { arm() }
        if appliedFromBpm != 0 {
            let previous = appliedFromBpm
            appliedFromBpm = 0
            tempoListener?.tempoApplied(epoch: timeline.epoch, previousBpm: previous)
        }
    }

    /// Committed tempo changes applied at a beat this node had already
    /// published (must stay 0; see `schedule`).
    private(set) var retroactiveTempoChanges: UInt64 = 0
    /// The last beat this node handed to NATS, or -1.
    private(set) var lastPublishedBeat: Int64 = -1

    /// The beat path, a thin driver over the pure planner (PulsePolicy):
    /// read the clocks → ask the planner → spin → confirm (the lease and the
    /// lateness rule again, immediately before the bytes are written) →
    /// encode and publish → record. Returns a time to retry at when the beat
    /// is not decided yet (a new leader waiting for its lease), else nil.
    private func fire() -> Int64? {
        let allocatedBefore = allocatedCounter?.pointee ?? 0
        let wakeNs = cloop_realtime_ns()
        if awaitingTx { finishAwaitedRecord(txNs: 0) }
        recordWake(lateness: wakeNs - armedAtNs)
        let monoNs = cloop_monotonic_ns()
        let mode = gate?.publishMode(monotonicNs: monoNs) ?? .single
        let attachedNs = nats.connectedSinceMonoNs
        let inputs = BeatInputs(
            wallNs: wakeNs, monoNs: monoNs, mode: mode,
            natsAttachedMonoNs: attachedNs == .max ? nil : attachedNs,
            tempoBarrierBeat: gate?.tempoBarrierBeat ?? .max, reference: gate?.referenceClock,
            term: gate == nil ? 0 : term)
        let nextBefore = planner.nextBeat
        let decision = planner.plan(inputs, timeline: timeline)
        switch decision {
        case .early:
            return nil  // woke far too early (re-armed under us); arm() re-plans
        case .retry(let atNs):
            return atNs
        case .follow:
            if case .follower = mode { _ = timeline.applyDue(beat: nextBefore) }
            beatsFollowed &+= 1
            return nil
        case .skip:
            beatsFollowed &+= 1  // already on the subject (another publisher)
            return nil
        case .missed(let count):
            stats.beatsMissed &+= UInt64(count)
            return nil
        case .dropConnection:
            // Frames we published never came back: nothing queued behind the
            // dead link may arrive late.
            nats.abortConnection()
            stats.beatsUnpublished &+= 1
            return nil
        case .emit(let k, let target, let degraded):
            if k > nextBefore { stats.beatsMissed &+= UInt64(k - nextBefore) }
            if wakeNs > target { stats.lateBeats &+= 1 }
            let startNs = target > wakeNs ? cloop_spin_until_realtime(target, maxLeadNs + 1_000_000) : wakeNs
            let now = gate?.publishMode(monotonicNs: cloop_monotonic_ns()) ?? .single
            guard planner.confirm(mode: now, monoNs: cloop_monotonic_ns(), wallNs: startNs) else {
                // The lease lapsed, or the loop was starved, during the spin.
                stats.beatsUnpublished &+= 1
                planner.abandon(k)
                return nil
            }
            var record = emitBeat(index: k, nowNs: startNs, degraded: degraded)
            planner.published(k, degraded: degraded, published: record.published)
            record.wakeNs = wakeNs
            record.scheduledNs = target
            recent.append(record)
            if record.source == .pending {
                awaitingTx = true  // observed when the stamp arrives, or at the next wake
            } else {
                observer?.beatRecorded(record)
            }
            let allocatedAfter = allocatedCounter?.pointee ?? 0
            if allocatedAfter != allocatedBefore {
                stats.hotPathAllocatedBytes &+= allocatedAfter &- allocatedBefore
                stats.lastAllocatingBeat = k
            }
            return nil
        }
    }

    /// Encodes and publishes beat `k` as of wall time `nowNs`. Allocation-free
    /// after warm-up; the zero-allocation test drives it directly.
    @discardableResult
    func emitBeat(index k: Int64, nowNs: Int64, degraded: Bool = false) -> BeatRecord {
        let bpmBefore = timeline.epoch.bpm
        if timeline.applyDue(beat: k) { appliedFromBpm = bpmBefore }
        let stamp = hlc.now(wallMs: nowNs / 1_000_000)
        let scheduled = timeline.instantNs(ofBeat: k)
        var published = false
        if let windowId = windowIds.lookup(barStart: timeline.barStart(k)) {
            let length = encoder.encode(
                into: frame, beatIndex: k, downbeat: timeline.isDownbeat(k), phaseIndex: timeline.phaseIndex(k),
                hlc: stamp, deadlineUnixMs: timeline.deadlineUnixMs(ofBeat: k), tempoBpm: timeline.epoch.bpm,
                windowId: windowId, term: term, degraded: degraded)
            if length > 0 {
                published = nats.publish(subject: subject, bytes: frame.baseAddress!, length: length)
            }
        }
        let doneNs = cloop_realtime_ns()
        // After the write, off the critical instant: the frame's TX stamp
        // (usually queued before write(2) returns; else awaited).
        let txNs = published ? nats.takeTxTimestamp() : 0
        let source: PublishTimeSource =
            txNs != 0 ? .txTimestamp : (published && nats.awaitingTxTimestamp ? .pending : .write)
        if published {
            stats.beatsPublished &+= 1
            stats.lastPublishedNs = doneNs
            lastPublishedBeat = k
            if degraded { stats.degradedBeats &+= 1 }
        } else {
            stats.beatsUnpublished &+= 1
        }
        let record = BeatRecord(
            index: k, scheduledNs: scheduled, wakeNs: nowNs, publishStartNs: nowNs, publishDoneNs: doneNs,
            published: published, periodNs: timeline.instantNs(ofBeat: k + 1) - scheduled, txNs: txNs,
            source: source)
        stats.lastJitterNs = record.jitterNs
        stats.maxJitterNs = max(stats.maxJitterNs, abs(record.jitterNs))
        stats.lastBeatIndex = k
        return record
    }

    /// The last beat's record waits for its TX timestamp.
    private var awaitingTx = false

    /// The awaited stamp arrived (the link's event path, loop thread).
    func txTimestampArrived(ns: Int64) {
        guard awaitingTx else { return }
        finishAwaitedRecord(txNs: ns)
    }

    /// Completes the awaited record: with its stamp, or (0) with the write's
    /// return when the next beat came first. Allocation-free.
    private func finishAwaitedRecord(txNs: Int64) {
        awaitingTx = false
        nats.cancelTxTimestamp()
        var finished: BeatRecord?
        recent.updateLast { record in
            guard record.source == .pending else { return }
            record.txNs = txNs
            record.source = txNs != 0 ? .txTimestamp : .write
            finished = record
        }
        guard let finished else { return }
        if finished.index == stats.lastBeatIndex {
            stats.lastJitterNs = finished.jitterNs
            stats.maxJitterNs = max(stats.maxJitterNs, abs(finished.jitterNs))
        }
        observer?.beatRecorded(finished)
    }

    /// Wakes remembered for the lead: long enough that one slow wake keeps
    /// the lead up for a while (256 beats), short enough to adapt.
    static let wakeWindow = 256

    /// Adapts the timer lead to recent wake latency: twice the worst of the
    /// last `wakeWindow` wakes plus 100 µs, within [minLeadNs, maxLeadNs].
    private func recordWake(lateness: Int64) {
        wakeLateness[wakeLatenessCursor] = max(0, lateness)
        wakeLatenessCursor = (wakeLatenessCursor + 1) % Self.wakeWindow
        var worst: Int64 = 0
        for i in 0..<Self.wakeWindow where wakeLateness[i] > worst { worst = wakeLateness[i] }
        leadNs = min(maxLeadNs, max(minLeadNs, 2 * worst + 100_000))
    }

    /// Schedules a committed tempo change at downbeat `change.atBeat`.
    /// Unless `replicated` (a committed log entry every node applies alike),
    /// a change at a beat already published is refused.
    func schedule(change: TempoChange, replicated: Bool = false) throws {
        if replicated, let pending = timeline.pending, pending.atBeat < change.atBeat {
            // A log replayed after a restart: the earlier change is in effect by now.
            _ = timeline.applyDue(beat: pending.atBeat)
        }
        guard replicated || change.atBeat >= nextBeat else {
            throw PulseError.config("beat \(change.atBeat) was already published (next is \(nextBeat))")
        }
        if replicated && change.atBeat <= lastPublishedBeat {
            // Cannot happen (fault 4: the proposer's barrier, a leader's
            // term-start gate): the committed log still wins, alike on every
            // node, but the breach is counted and logged.
            retroactiveTempoChanges &+= 1
            logger.error(
                "committed tempo change at a beat already published here",
                metadata: ["at_beat": "\(change.atBeat)", "last_published": "\(lastPublishedBeat)"])
        }
        try timeline.schedule(change: change)
        if started { arm() }  // the next instant may have moved if the change is at the next beat
    }

    /// Cluster mode: the committed epoch arrived; start beating on it.
    func adopt(epoch: TempoEpoch, nowNs: Int64) {
        timeline = Timeline(epoch: epoch, bar: timeline.bar, phaseCount: timeline.phaseCount)
        start(nowNs: nowNs)
    }

    /// A frame from the beat subject (any publisher, ourselves included)
    /// that the echo policy accepted (`EchoPolicy`: this cluster, a known
    /// publisher, a current term, an index within one beat of the
    /// timeline's current beat): remember the highest index and merge its
    /// HLC stamp. Callers pass only accepted frames; the guard below keeps
    /// `lastSeenIndex + 1` representable whatever they pass.
    func observe(_ frame: DecodedBeatFrame, wallNs: Int64) {
        let fromOthers = frame.hlcSuffix != ownSuffix
        if fromOthers { lastFrameFromOthersNs = wallNs }
        if frame.beatIndex < Int64.max {
            planner.observe(
                index: frame.beatIndex, wallNs: wallNs, fromLeaderElsewhere: fromOthers && !frame.degraded,
                term: frame.term)
        }
        mergeRemote(frame.hlc, wallNs: wallNs)
    }

    /// Merges a peer's timestamp into the HLC (§3: every timestamp received
    /// from a peer — beat frames and Raft traffic alike); one too far ahead
    /// is not adopted and is counted.
    func mergeRemote(_ stamp: HLCStamp, wallNs: Int64) {
        if case .rejectedTooFarAhead = hlc.receive(stamp, wallMs: wallNs / 1_000_000) {
            hlcRejected &+= 1
        }
    }

    /// Just became the leader at wall time `nowNs` (or adopted the timeline
    /// as the leader): continue after the hand-over guard (see
    /// `handoffGuardNs`) and after every index on the subject or published
    /// by this node; the beats in between are counted missed. This replaces
    /// §4's "publish a just-missed beat late" for a new leader: that beat may
    /// be on its way from the previous publisher (docs/decisions.md).
    /// `gracefulHandOver`: elected on the previous leader's request (see
    /// `handOverGuardNs`).
    func takeOver(nowNs: Int64, gracefulHandOver: Bool = false) {
        guard started else { return }
        publishingSinceNs = nowNs
        let before = planner.nextBeat
        planner.takeOver(
            timeline: timeline, wallNs: nowNs, guardNs: gracefulHandOver ? Self.handOverGuardNs : nil)
        let afterSeen = max(before, planner.lastSeenIndex &+ 1)
        if planner.lastSeenIndex >= 0 && planner.nextBeat > afterSeen {
            stats.beatsMissed &+= UInt64(clamping: planner.nextBeat &- afterSeen)
        }
        prepareAhead()
        arm()
    }

    /// Prepares window ids for beat `k`'s bar (tests that call `emitBeat`).
    func prepareWindowIds(forBeat k: Int64) {
        windowIds.prepare(barStart: timeline.barStart(k))
    }
}
