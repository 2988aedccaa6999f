// Beat: the service's ports of the beat shell (PulsePolicy/BeatShell, the
// program the simulator runs too): the CLOCK_REALTIME timerfd that wakes it,
// the spin on the wall clock, the NATS write, and the measurements.
//
// One data flow, one direction: the timerfd fires shortly before the instant
// of the next beat → the shell plans → the driver spins on the wall clock
// until the instant → the shell encodes the frame into a buffer allocated at
// start-up → the driver publishes and flushes it → measurements recorded.
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

/// Hears, after the beat (off the beat path), that a tempo change took effect.
protocol TempoListener: AnyObject {
    func tempoApplied(epoch: TempoEpoch, previousBpm: Int64)
}

/// Drives beats on the loop thread from a CLOCK_REALTIME timerfd: the
/// service's `BeatPorts`. The beat decisions, the encoding and the reaction
/// to the cluster are the shell's (`shell`); this class keeps the timer, its
/// adaptive lead, the spin, the write and what the beat path measured.
final class BeatDriver: LoopHandler, TxTimestampSink, BeatPorts {
    private unowned let loop: EventLoop
    private let nats: NatsLink
    private let logger: Logger
    private let subject: UnsafeMutablePointer<CChar>
    private let allocatedCounter: UnsafePointer<UInt64>?
    private var timerToken: UInt32 = 0
    /// The beat side's driver loop (planner, encoder, HLC, echo handling).
    private(set) var shell: BeatShell!
    /// A timeline of the driver's own (beat-path tests) until `start` hands it to the shell.
    private var localTimeline: Timeline?
    /// What `timeline` shows before the committed epoch (a cluster node).
    private let placeholder: Timeline
    private(set) var stats = BeatStats()
    weak var observer: BeatObserver?
    /// The last 4096 beats' measurements.
    let recent = BeatRing(capacity: 4096)
    weak var tempoListener: TempoListener?
    /// Beats this node did not publish because it is not the leader.
    private(set) var beatsFollowed: UInt64 = 0
    /// Wall time this node last began to publish (start, or took over as
    /// leader), or 0: with `stats.lastPublishedNs`, what /health measures
    /// the silence of a node that should publish from.
    private(set) var publishingSinceNs: Int64 = 0

    /// How long before an instant the timer fires; adapts to recent wake
    /// latency between `minLeadNs` and `maxLeadNs`.
    private var leadNs: Int64
    private let minLeadNs: Int64
    private let maxLeadNs: Int64
    /// Ring of the last `wakeWindow` wake latencies (allocated once).
    private let wakeLateness: UnsafeMutablePointer<Int64>
    private var wakeLatenessCursor = 0
    private var armedAtNs: Int64 = 0
    /// This wake's timer read and the spin's exit (the record's stages).
    private var wakeNs: Int64 = 0
    private var decisionNs: Int64 = 0
    /// The last beat's record waits for its TX timestamp.
    private var awaitingTx = false
    /// A tempo change took effect at this wake's beat (announced after it).
    private var tookEffect: (epoch: TempoEpoch, previousBpm: Int64)?
    /// This wake wrote a frame not degraded (the node is the one publisher).
    private var publishedLeading = false
    /// Whether the node's own echoes may wait for the loop's next turn
    /// (nothing waits on one: no hand-over, no transfer, no live stream).
    /// Asked once per beat wake; the link defers reads only for a node that
    /// publishes in timer-only mode (`NatsLink.deferReads`).
    var echoesMayWait: () -> Bool = { false }

    /// `timeline`: a timeline of the driver's own, for beat-path tests
    /// without a core (ZeroAllocationTests); the node passes nil and reads
    /// the core's (a single node is a one-voter core).
    init(
        loop: EventLoop, nats: NatsLink, logger: Logger, timeline: Timeline?, placeholder: Timeline,
        clusterId: String, phases: [String], nodeId: String, subject: String, maxOffsetMs: Int64, spinMaxUs: Int
    ) throws {
        self.loop = loop
        self.nats = nats
        self.logger = logger
        self.localTimeline = timeline
        self.placeholder = timeline ?? placeholder
        self.subject = strdup(subject)
        self.allocatedCounter = cloop_thread_allocated_counter()
        self.maxLeadNs = Int64(spinMaxUs) * 1000
        // At least 1 ms early: a vCPU idle for a whole period wakes slower
        // than a busy one (measured with GET /debug/beats); the spin costs ~1 % CPU at 600 bpm.
        self.minLeadNs = min(1_000_000, maxLeadNs)
        self.leadNs = maxLeadNs
        self.wakeLateness = .allocate(capacity: Self.wakeWindow)
        self.wakeLateness.initialize(repeating: 0, count: Self.wakeWindow)
        self.timerToken = try loop.makeTimer(clock: CLOCK_REALTIME, priority: true, handler: self)
        shell = BeatShell(
            ports: self, planner: PlannerConfig(maxLeadNs: maxLeadNs, handoffGuardNs: Self.handoffGuardNs),
            handOverGuardNs: Self.handOverGuardNs, clusterId: clusterId, phases: phases, nodeId: nodeId,
            maxOffsetMs: maxOffsetMs)
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
        wakeLateness.deallocate()
        free(subject)
    }

    // MARK: what the service reads

    /// The committed timeline (the core's, or the driver's own in tests); before
    /// the epoch, the flags' placeholder.
    var timeline: Timeline { shell.timeline ?? localTimeline ?? placeholder }
    var nextBeat: Int64 { shell.nextBeat }
    var started: Bool { shell.started }
    var term: UInt64 { shell.term }
    var ownSuffix: String { shell.ownSuffix }
    var lastSeenIndex: Int64 { shell.lastSeenIndex }
    var lastFrameFromOthersNs: Int64 { shell.lastFrameFromOthersNs }
    var hlcRejected: UInt64 { shell.hlcRejected }
    var retroactiveTempoChanges: UInt64 { shell.retroactiveTempoChanges }

    /// Starts beating: on the driver's own timeline (tests); a node
    /// once the core's events start the shell (the committed epoch).
    func start() {
        // Timer-only (shared-host) mode wakes exactly at the instant: the
        // loop thread's timer slack at its minimum (the default is 50 µs).
        if maxLeadNs == 0 { _ = cloop_set_timer_slack_ns(1) }
        if let t = localTimeline {
            localTimeline = nil
            shell.startLocal(t)
        }
    }

    func stop() {
        loop.disarmTimer(timerToken)
    }

    /// A tempo change on the driver's own timeline (tests) at downbeat `change.atBeat`,
    /// refused at a beat already published. (A cluster's changes are the
    /// core's committed entries: the shell reads them there.)
    func schedule(change: TempoChange) throws {
        if var t = localTimeline {
            // Scheduled before the start.
            try t.schedule(change: change)
            localTimeline = t
            return
        }
        guard change.atBeat >= nextBeat else {
            throw PulseError.config("beat \(change.atBeat) was already published (next is \(nextBeat))")
        }
        try shell.scheduleLocal(change)
    }

    // MARK: the timer

    func loopEvent(token: UInt32, events: UInt32) {
        switch loop.readTimer(timerToken) {
        case .clockStepped:
            // The wall clock was stepped: re-plan from the new time.
            stats.clockSteps &+= 1
            logger.warning("wall clock stepped; re-planning the next beat", metadata: ["beat": "\(nextBeat)"])
            shell.start()
            return
        case .failed(let errno):
            preconditionFailure("beat timer read failed (errno \(errno)): the loop lost its own timer")
        case .expired(0):
            return
        case .expired:
            break
        }
        let allocatedBefore = allocatedCounter?.pointee ?? 0
        wakeNs = loop.wake.wallNs  // stamped once by the loop when epoll returned
        if awaitingTx { finishAwaitedRecord(txNs: 0) }
        recordWake(lateness: wakeNs - armedAtNs)
        publishedLeading = false
        catchUpAllocatedBytes = 0
        shell.wake()
        // Timer-only mode is for shared hosts: a publishing node reads its
        // echo at the loop's next turn rather than waking for it (issue 24).
        nats.deferReads(maxLeadNs == 0 && publishedLeading && periodAllowsDeferredReads && echoesMayWait())
        // A catch-up's reads (a lapsed lease) are the NATS client's, not the beat's.
        let allocatedAfter = (allocatedCounter?.pointee ?? 0) &- catchUpAllocatedBytes
        if allocatedAfter != allocatedBefore {
            stats.hotPathAllocatedBytes &+= allocatedAfter &- allocatedBefore
            stats.lastAllocatingBeat = stats.lastBeatIndex
        }
        shell.prepareAhead()
        if let (epoch, previousBpm) = tookEffect {
            tookEffect = nil
            tempoListener?.tempoApplied(epoch: epoch, previousBpm: previousBpm)
        }
    }

    // MARK: BeatPorts

    func nowWallNs() -> Int64 { cloop_realtime_ns() }
    func nowMonoNs() -> Int64 { cloop_monotonic_ns() }

    var natsAttachedMonoNs: Int64? {
        let attached = nats.connectedSinceMonoNs
        return attached == .max ? nil : attached
    }

    func armBeat(atWallNs wallNs: Int64, exact: Bool) {
        arm(at: exact ? wallNs : wallNs - leadNs)
    }

    func spin(untilWallNs target: Int64, beat: Int64, degraded: Bool) -> Int64? {
        let now = cloop_realtime_ns()
        decisionNs = target > now ? cloop_spin_until_realtime(target, maxLeadNs + 1_000_000) : now
        return decisionNs
    }

    func publish(_ frame: UnsafeRawBufferPointer, beat k: Int64, targetWallNs: Int64, degraded: Bool) -> Bool {
        let published = nats.publish(subject: subject, bytes: frame.baseAddress!, length: frame.count)
        let doneNs = cloop_realtime_ns()
        // After the write, off the critical instant: the frame's TX stamp
        // (usually queued before write(2) returns; else awaited).
        let txNs = published ? nats.takeTxTimestamp() : 0
        let source: PublishTimeSource =
            txNs != 0 ? .txTimestamp : (published && nats.awaitingTxTimestamp ? .pending : .write)
        if published {
            publishedLeading = !degraded
            stats.beatsPublished &+= 1
            stats.lastPublishedNs = doneNs
            if degraded { stats.degradedBeats &+= 1 }
        }
        let t = timeline
        let record = BeatRecord(
            index: k, scheduledNs: targetWallNs, wakeNs: wakeNs, publishStartNs: decisionNs, publishDoneNs: doneNs,
            published: published, periodNs: t.instantNs(ofBeat: k + 1) - t.instantNs(ofBeat: k), txNs: txNs,
            source: source)
        stats.lastJitterNs = record.jitterNs
        stats.maxJitterNs = max(stats.maxJitterNs, abs(record.jitterNs))
        stats.lastBeatIndex = k
        recent.append(record)
        if record.source == .pending {
            awaitingTx = true  // observed when the stamp arrives, or at the next wake
        } else {
            observer?.beatRecorded(record)
        }
        return published
    }

    func dropConnection() { nats.abortConnection() }

    func catchUp() {
        let before = allocatedCounter?.pointee ?? 0
        nats.readDeferred()
        catchUpAllocatedBytes &+= (allocatedCounter?.pointee ?? 0) &- before
    }

    /// At periods of 50 ms and more: an echo read a turn late is judged a
    /// period late, and must still fall within the echo policy's ±1 beat.
    private var periodAllowsDeferredReads: Bool {
        let t = timeline
        return t.instantNs(ofBeat: nextBeat &+ 1) &- t.instantNs(ofBeat: nextBeat) >= Self.minDeferredReadPeriodNs
    }

    /// Bytes allocated by this wake's catch-up (not the beat path's).
    private var catchUpAllocatedBytes: UInt64 = 0
    /// Shortest period at which a publishing node defers its reads.
    static let minDeferredReadPeriodNs: Int64 = 50_000_000

    func note(_ note: BeatNote) {
        switch note {
        case .missed(let count): stats.beatsMissed &+= UInt64(clamping: count)
        case .late: stats.lateBeats &+= 1
        case .followed: beatsFollowed &+= 1
        case .unpublished: stats.beatsUnpublished &+= 1
        case .publishing(let sinceWallNs): publishingSinceNs = sinceWallNs
        }
    }

    /// Held until the wake's allocation count is read: the announcement
    /// (JSON, a log line, a background save) is not the beat path.
    func tempoTookEffect(epoch: TempoEpoch, previousBpm: Int64) {
        tookEffect = (epoch, previousBpm)
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

    // MARK: the zero-allocation test's entry

    /// Encodes and publishes beat `k` as of wall time `nowNs` through the
    /// shell (allocation-free after warm-up); the zero-allocation test
    /// drives it directly.
    @discardableResult
    func emitBeat(index k: Int64, nowNs: Int64, degraded: Bool = false) -> BeatRecord {
        wakeNs = nowNs
        decisionNs = nowNs
        let published = shell.emit(k, timeline, nowNs: nowNs, targetWallNs: nowNs, degraded: degraded)
        if !published { stats.beatsUnpublished &+= 1 }
        var last = BeatRecord(
            index: k, scheduledNs: nowNs, wakeNs: nowNs, publishStartNs: nowNs, publishDoneNs: nowNs,
            published: false, periodNs: 0)
        if published { recent.updateLast { last = $0 } }
        return last
    }

    /// Prepares window ids for beat `k`'s bar (tests that call `emitBeat`).
    func prepareWindowIds(forBeat k: Int64) { shell.prepareWindowId(forBeat: k) }

    // MARK: TX timestamps

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
}
