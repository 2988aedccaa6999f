// PulsePolicy/KVShell.swift — the driver of one `-election nats-kv` node
// over its ports (issue 21), as ClusterShell is for Raft mode: the lease and
// timeline policies (KVLease*.swift) driven from the lease timer, the
// watches' entries and the KV operations' answers, feeding the beat side
// (`BeatShell`, the same as Raft mode's).
//
//   tick() (every 20 ms)  → lease.next → ports.lease → leaseAnswered
//                         → step down / move the tempo key / term start / take over
//   acquired              → write the term start (the epoch when the bucket has none)
//   the watch applies a record of our term → take over the beats
//   lost / lease run down → publishMode is follower at once (no event needed)
//   a tempo request on the holder → a CAS write of the next record; the
//     barrier holds its apply beat until the key moved past the write's base,
//     and another change is refused (409 `change_pending`) until then
//     (KVTempoWrite.swift)
//   SIGTERM on the holder → after its last frame came back: `release()`
//     deletes the key with the revision check; `.released` stops the node
//
// The `pulse` binary plugs in the live ports (Pulse/KV/KVNode: the loop's
// clocks, KVBuckets' queues, the rejected-input counters and the log); the
// nats-kv simulator plugs in simulated ones (a model JetStream KV, drifting
// clocks, lost answers). Both run this class: nothing of the driver is
// written twice. Not thread-safe: the loop thread only.
import PulseCore

/// The answer to a timeline write.
public enum KVWriteReply: Equatable, Sendable {
    case written(revision: UInt64)
    case conflict
    /// The write's fate is unknown (no answer in time).
    case unknown
    /// Certainly not stored (not connected, refused by the server).
    case notSent
}

/// One entry a watch saw: a put (`value`) or a delete/purge (`value` nil).
public struct KVWatched: Sendable {
    public var revision: UInt64
    public var value: [UInt8]?
    public var key: String
    /// A purge marker (else a delete marker, when `value` is nil).
    public var purged: Bool
    /// A delete marker's body (the hand-over's release marker), at most `maxMarkerBytes`.
    public var markerBody: [UInt8]

    public static let maxMarkerBytes = 1024

    public init(revision: UInt64, value: [UInt8]?, key: String = "", purged: Bool = false, markerBody: [UInt8] = []) {
        self.revision = revision
        self.value = value
        self.key = key
        self.purged = purged
        self.markerBody = markerBody
    }
}

/// What the KV shell needs from the world around it (loop thread only).
public protocol KVPorts: AnyObject {
    /// Monotonic and wall (Unix) time now, in nanoseconds.
    func nowMonoNs() -> Int64
    func nowWallNs() -> Int64
    /// Sends a lease operation off the loop; `done` runs back on the loop
    /// with the answer, never dropped.
    func lease(_ op: KVLeaseOp, owner: String, marked: Bool, done: @escaping (KVLeaseReply) -> Void)
    /// Writes the timeline key with a compare-and-set on `lastRevision`
    /// (0: create) off the loop; `done` runs back on the loop, never dropped.
    func writeTimeline(_ value: [UInt8], lastRevision: UInt64, done: @escaping (KVWriteReply) -> Void)
    /// Input refused or a fault met, counted under `reason` (§10).
    func reject(_ reason: String)
    /// One of the shell's events, in order (logs, callbacks).
    func handle(_ event: KVShellEvent)
}

/// What happened in a KV shell, for the log and the service around it.
public enum KVShellEvent: Equatable {
    case acquired(term: UInt64)
    case lost(term: UInt64)
    /// The hand-over's delete was answered: the node may stop.
    case released
    /// A release with nothing to delete (not holding, nothing in flight): the node may stop.
    case nothingToRelease
    /// The lease was taken below a revision seen (`first`: log it once).
    case fenced(term: UInt64, floor: UInt64, first: Bool)
    case degradation(DegradationPolicy.Change)
    /// A holder gave the key up (`reason` is the counted one).
    case steppedDown(reason: String, term: UInt64, timelineRevision: UInt64, waitedMs: Int64)
    /// The lease key was deleted or purged, not by its holder's hand-over.
    case leaseKeyRemoved(revision: UInt64, purged: Bool)
    /// The timeline key was deleted or purged (never by a pulse).
    case timelineDeleted(revision: UInt64, purged: Bool)
    /// A watched record was refused (`first`: the first of its reason).
    case recordRefused(reason: String, why: String, revision: UInt64, appliedRevision: UInt64, first: Bool)
    /// The committed shape differs from the flags: the node stops (§12).
    case shapeMismatch(String)
    /// The watch skipped records: re-synced to the newest (`overPassedBeats`:
    /// which moves beats this node may have passed).
    case resynced(revision: UInt64, term: UInt64, overPassedBeats: Bool)
    /// A watched record changed the committed timeline.
    case timelineChanged(KVTimelineChange)
    /// Publishing as lease holder from now on.
    case tookOver(term: UInt64, afterHandOver: Bool)
    /// A tempo change whose record would be larger than the readers accept.
    case tempoTooLarge(bytes: Int, maxBytes: Int)
}

/// One KV-mode node's driver around its `KVLeadership` and `BeatShell`.
public final class KVShell {
    public let leadership: KVLeadership
    public let beat: BeatShell
    private unowned let ports: KVPorts
    private let shape: TimelineShape
    private let bootstrapBpm: Int64
    /// The largest timeline record this node writes.
    public let recordLimitBytes: Int
    /// A write of the timeline key is in flight (term start, epoch or tempo).
    public private(set) var writing = false
    /// The timeline revision the last failed term start compared against:
    /// retried once the watch shows a newer record (or after 100 ms).
    private var termStartBase: UInt64?
    private var termStartRetryMonoNs: Int64 = 0
    private var tookOverTerm: UInt64 = 0
    /// The fenced-lease line was logged (once; each one is counted).
    private var fenceLogged = false
    /// Timeline refusal reasons already logged (each refusal is counted).
    private var refusalsLogged: Set<String> = []
    /// Counters for /metrics and logs.
    public private(set) var acquisitions: UInt64 = 0
    public private(set) var losses: UInt64 = 0
    /// The node id in the lease key's claim as last watched (nil: no key).
    public private(set) var holderNodeId: String?
    /// When the watch last saw a lease key revision (monotonic ns).
    public private(set) var lastWatchedMonoNs: Int64 = 0
    /// When the current holding was acquired (monotonic ns; 0: none).
    private var acquiredMonoNs: Int64 = 0
    /// When a record with a term above this holder's own was applied while
    /// it held the key (monotonic ns; nil: none). See `maybeStepDown`.
    private var termAheadSinceMonoNs: Int64?
    /// A holder whose term start is not applied within this many TTLs gives the key up.
    public static let readyWithinTTLs: Int64 = 4
    /// Since when a tempo write of unknown fate waits for the key to move
    /// past its base (nil: none), and when the next move may be sent.
    private var unknownSinceMonoNs: Int64?
    private var moveNotBeforeMonoNs: Int64 = 0

    public init(
        ports: KVPorts, leadership: KVLeadership, beat: BeatShell, shape: TimelineShape, bootstrapBpm: Int64,
        recordLimitBytes: Int
    ) {
        self.ports = ports
        self.leadership = leadership
        self.beat = beat
        self.shape = shape
        self.bootstrapBpm = bootstrapBpm
        self.recordLimitBytes = recordLimitBytes
        beat.leadership = leadership
    }

    public var isHolder: Bool { leadership.isHolder }
    /// Holding the key, or deleting it in the hand-over: a stopping node
    /// stays until the delete is answered (`.released` stops it), within
    /// the stop's cap; stopping earlier dropped the queued delete unsent
    /// (review of 2026-12-07, finding 6).
    public var holdsOrReleases: Bool { leadership.lease.role == .holder || leadership.lease.role == .releasing }
    /// Holding the key with a lease still running (what the admin API and
    /// metrics call the leader: a holder whose lease ran down is none).
    public var holdsLease: Bool { leadership.lease.mayPublish(nowMonoNs: ports.nowMonoNs()) }
    public var term: UInt64 { leadership.term }

    // MARK: the pulses seen and degradation

    /// A pulse's ping arrived.
    public func peerSeen(_ id: String) {
        if let refused = leadership.peers.seen(id, nowMonoNs: ports.nowMonoNs()) { ports.reject(refused) }
    }

    /// A clock sample with a pulse (our ping answered).
    public func peerSample(_ id: String, _ sample: SyncSample) {
        if let refused = leadership.peers.add(sample, from: id, nowMonoNs: ports.nowMonoNs()) {
            ports.reject(refused)
        }
    }

    /// A pulse's report of the pulses it saw (the gossip, KVLeasePeers.swift).
    public func peerReport(_ text: String) {
        switch KVLeasePeers.decodeReport(text) {
        case .failure(let error): ports.reject(error.reason)
        case .success(let report):
            guard report.from != leadership.nodeId else { return }  // our own, echoed
            if let refused = leadership.peers.merge(from: report.from, report.entries, nowMonoNs: ports.nowMonoNs()) {
                ports.reject(refused)
            }
        }
    }

    /// Our report of the pulses we saw, for the next clock ping.
    public func pingReport() -> String {
        KVLeasePeers.encodeReport(from: leadership.nodeId, leadership.peers.report(nowMonoNs: ports.nowMonoNs()))
    }

    // MARK: the lease

    /// The lease timer (every 20 ms), and after every answer.
    public func tick() {
        let now = ports.nowMonoNs()
        leadership.loopTick(nowMonoNs: now)  // a stall: listen before degraded turns
        degradation(leadership.updateDegradation(nowMonoNs: now))
        if let op = leadership.lease.next(nowMonoNs: now) {
            ports.lease(op, owner: leadership.lease.owner, marked: leadership.lease.releaseMarked) {
                [weak self] reply in
                self?.leaseAnswered(reply)
            }
        }
        maybeStepDown(now)
        maybeMoveTempoKey(now)
        maybeWriteTermStart(now)
        maybeTakeOver()  // after a foreign delete's wait ran out
    }

    private func degradation(_ change: DegradationPolicy.Change) {
        if change != .none { ports.handle(.degradation(change)) }
    }

    /// A holder that cannot get its term start written (its compare-and-set
    /// base is wrong, the timeline key was deleted, records are refused)
    /// would renew the lease for ever without publishing: after
    /// `readyWithinTTLs` TTLs it deletes the key (no release marker: the
    /// next holder takes the full guard) and tries again later, so another
    /// node can take over.
    /// Only for a holding that never got ready: once its term start applied,
    /// the wait is over for that holding (a newer holder's record seen later
    /// means the lease was lost, which its renewal finds: no step-down, no
    /// `holder_not_ready` for it — the nats-kv simulator, seed 2).
    ///
    /// And a holder whose applied record carries a term above its own, once
    /// a renewal *sent after that record was applied* succeeded: that
    /// compare-and-set proves the key is still its own, and a newer holder's
    /// record is written only after its take moved the key, so no holder
    /// wrote that term: the record is forged (anyone with write access to
    /// the timeline bucket). Every genuine record after it would be refused
    /// as `term behind` and this holder never gets ready again, while its
    /// renewals succeed. Once its own revision reached that term, it
    /// deletes the key (`timeline_term_ahead`): the next take's revision is
    /// above the term, and its term start applies. Before that, giving up
    /// would only hand the key to a take below the term again (a churn of
    /// holdings); a term the key will not reach for long (e.g. `UInt64.max`)
    /// still wedges the holders: open (docs/decisions.md). The argument
    /// needs the lease stream's sequence never to go back: after a bucket is
    /// recreated the pulses are fenced until restarted ("A recreated bucket").
    private func maybeStepDown(_ now: Int64) {
        let timeline = leadership.timeline
        if leadership.isHolder, timeline.recordTerm > leadership.lease.term {
            let since = termAheadSinceMonoNs ?? now
            termAheadSinceMonoNs = since
            if let sent = leadership.lease.validFromSentMonoNs, sent > since,
                leadership.lease.revision >= timeline.recordTerm
            {
                termAheadSinceMonoNs = nil
                acquiredMonoNs = 0
                stepDown("timeline_term_ahead", waitedMs: (now - since) / 1_000_000)
                return
            }
        } else {
            termAheadSinceMonoNs = nil
        }
        if leadership.isReadyHolder { acquiredMonoNs = 0 }
        guard leadership.isHolder, !leadership.isReadyHolder, acquiredMonoNs > 0,
            now - acquiredMonoNs > Self.readyWithinTTLs * leadership.lease.timing.ttlNs
        else { return }
        let waitedMs = (now - acquiredMonoNs) / 1_000_000
        acquiredMonoNs = 0
        stepDown("holder_not_ready", waitedMs: waitedMs)
    }

    private func stepDown(_ reason: String, waitedMs: Int64) {
        ports.reject(reason)
        ports.handle(
            .steppedDown(
                reason: reason, term: leadership.lease.term, timelineRevision: leadership.timeline.revision,
                waitedMs: waitedMs))
        leadership.lease.stepDown()
    }

    /// After a tempo write of unknown fate the key must move past its base
    /// for the barrier to lift: a term start (a conflict if the write was
    /// stored, which the watch then shows), sent at once and again every
    /// 100 ms while this node holds the lease and the write is not settled.
    /// A holder that cannot move it within `readyWithinTTLs` TTLs gives the
    /// key up, as one whose term start never applies, so another pulse
    /// publishes. Before, one lost follow-up write left the barrier up for
    /// good: no beat from the change's downbeat on and 409 `change_pending`
    /// to every request while the lease was renewed (review of 2026-12-07,
    /// kvfix F1). A node that loses the key settles it by its next term start.
    private func maybeMoveTempoKey(_ now: Int64) {
        guard let since = unknownSinceMonoNs else { return }
        guard leadership.tempoWrite.base != nil, leadership.isHolder else {
            unknownSinceMonoNs = nil  // settled, or no longer ours to move
            return
        }
        guard leadership.lease.mayPublish(nowMonoNs: now) else { return }
        if now &- since > Self.readyWithinTTLs * leadership.lease.timing.ttlNs {
            unknownSinceMonoNs = nil
            stepDown("tempo_write_unsettled", waitedMs: (now &- since) / 1_000_000)
            return
        }
        guard !writing, now >= moveNotBeforeMonoNs,
            let start = leadership.timeline.termStart(term: leadership.lease.term)
        else { return }
        moveNotBeforeMonoNs = now &+ 100_000_000
        writing = true
        ports.writeTimeline(start.value, lastRevision: start.lastRevision) { [weak self] _ in
            self?.writing = false  // the watch says whether it moved
        }
    }

    private func leaseAnswered(_ reply: KVLeaseReply) {
        for event in leadership.lease.complete(reply, nowMonoNs: ports.nowMonoNs()) {
            switch event {
            case .acquired(let term):
                acquisitions &+= 1
                acquiredMonoNs = ports.nowMonoNs()
                termStartBase = nil
                ports.handle(.acquired(term: term))
            case .lost(let term):
                losses &+= 1
                leadership.holdingEnded()
                ports.handle(.lost(term: term))
            case .released:
                ports.handle(.released)
            case .fenced(let term, let floor):
                ports.reject("lease_revision_behind")
                ports.handle(.fenced(term: term, floor: floor, first: !fenceLogged))
                fenceLogged = true
            }
        }
        tick()
    }

    /// What the watch of the lease key delivered.
    public func leaseWatched(_ entry: KVWatched) {
        lastWatchedMonoNs = ports.nowMonoNs()
        let seen = leadership.leaseEntryWatched(
            revision: entry.revision, value: entry.value ?? entry.markerBody,
            deleted: entry.value == nil && !entry.purged,
            purged: entry.purged, nowMonoNs: lastWatchedMonoNs)
        degradation(seen.degradation)
        holderNodeId = entry.value.flatMap {
            String(decoding: $0, as: UTF8.self).split(separator: " ").first.map(String.init)
        }
        if seen.gone {
            if !leadership.freedByHandOver, leadership.lastClaimWatchedMonoNs != nil {
                ports.handle(.leaseKeyRemoved(revision: entry.revision, purged: entry.purged))
            }
            leadership.lease.keyGone()  // candidates try at once
            tick()
        }
    }

    /// Graceful hand-over: stops publishing now and deletes the key.
    /// False when this node does not hold it (nothing to hand over).
    /// `echoed`: its last frame came back (the delete carries the release
    /// marker, the successor's short guard); false: the full guard.
    public func release(echoed: Bool = true) -> Bool {
        let wasHolder = leadership.isHolder
        for event in leadership.lease.release(marked: echoed) where event == .released {
            ports.handle(.nothingToRelease)  // no delete was sent: not "lease released" (the log's proof)
        }
        tick()
        return wasHolder
    }

    // MARK: the timeline

    private func maybeWriteTermStart(_ now: Int64) {
        let lease = leadership.lease
        // Only within the lease: a write prepared by a holder whose lease ran
        // down can still be stored, but fails on the revision once the next
        // holder's term start moved the key (KVLeaseTimeline.swift).
        guard lease.mayPublish(nowMonoNs: now), !writing, !leadership.timeline.holderReady(term: lease.term) else {
            return
        }
        if let base = termStartBase, base == leadership.timeline.revision, now < termStartRetryMonoNs { return }
        let write: (value: [UInt8], lastRevision: UInt64)?
        if let start = leadership.timeline.termStart(term: lease.term) {
            write = start
        } else {
            // No timeline in the bucket (as far as the watch showed): the
            // first holder creates the epoch; a create fails if one exists.
            let epoch = Timeline.bootstrapEpoch(nowNs: ports.nowWallNs(), bpm: bootstrapBpm)
            let command = ClusterCommand.epoch(
                startBeat: epoch.startBeat, startNs: epoch.startNs, bpm: epoch.bpm, bar: shape.bar,
                phases: shape.phases)
            write = leadership.timeline.write(command, term: lease.term).map { ($0.value, $0.lastRevision) }
        }
        guard let write else { return }
        writing = true
        termStartBase = write.lastRevision
        termStartRetryMonoNs = now + 100_000_000
        ports.writeTimeline(write.value, lastRevision: write.lastRevision) { [weak self] _ in
            self?.writing = false  // retried when the watch shows no record of our term
        }
    }

    /// What the watch of the timeline key delivered.
    public func timelineWatched(_ entry: KVWatched) {
        guard let value = entry.value else {
            // A pulse never deletes the timeline key: an operator did. The
            // applied timeline stays (a record can only continue it); the
            // next term start's compare-and-set fails until the key is back.
            ports.reject("timeline_deleted")
            ports.handle(.timelineDeleted(revision: entry.revision, purged: entry.purged))
            return
        }
        let timeline = leadership.timeline
        let gap = timeline.revision > 0 && entry.revision > max(timeline.revision, timeline.deliveredRevision) + 1
        // Settles our tempo write once the key moved past its base.
        let change = leadership.applyWatched(value, revision: entry.revision, nowNs: ports.nowWallNs())
        switch change {
        case .refused(let why):
            guard why != "old revision" else { return }
            let reason =
                switch why {
                case "revision behind": "timeline_revision_behind"
                case "term behind": "timeline_term_behind"
                case "not a continuation": "timeline_not_continuing"
                default: "bad_timeline_record"
                }
            ports.reject(reason)
            ports.handle(
                .recordRefused(
                    reason: reason, why: why, revision: entry.revision, appliedRevision: leadership.timeline.revision,
                    first: refusalsLogged.insert(reason).inserted))
            return
        case .shapeMismatch(let why):
            ports.handle(.shapeMismatch(why))
            return
        case .started:
            beat.start()
        case .tempo(let change):
            beat.tempoApplied(change)
        case .restamped:
            break
        case .resynced(let term), .resyncedOverPassedBeats(let term):
            // Counted with the watch gaps below; the beats' next instant may have moved.
            let over = change == .resyncedOverPassedBeats(term: term)
            if over { ports.reject("timeline_resynced_over_passed_beats") }  // counted apart: alertable
            ports.handle(.resynced(revision: entry.revision, term: term, overPassedBeats: over))
            if beat.started { beat.armNext() }
        }
        if gap { ports.reject("timeline_watch_gap") }
        maybeTakeOver()
        ports.handle(.timelineChanged(change))
    }

    /// The holder publishes from the first record of its term on.
    /// Only after a foreign delete's wait (`publishNotBeforeMonoNs`): the
    /// guard counts from there. The short guard only after the holder's own
    /// hand-over (KVLeaseLeadership.swift).
    private func maybeTakeOver() {
        let term = leadership.lease.term
        guard leadership.isReadyHolder, tookOverTerm != term, beat.started,
            ports.nowMonoNs() >= leadership.publishNotBeforeMonoNs
        else { return }
        tookOverTerm = term
        let handOver = leadership.consumeHandOver()
        beat.takeOver(graceful: handOver)
        ports.handle(.tookOver(term: term, afterHandOver: handOver))
    }

    /// The holder's tempo commit: a CAS write of the next record; `done`
    /// gets nil, `no_leader` (certainly not written), `change_pending` (the
    /// last change is not applied yet: KVTempoWrite.swift),
    /// `record_too_large` or `outcome_unknown`.
    public func commitTempo(_ change: TempoChange, justification: String, done: @escaping (String?) -> Void) {
        // A term start in flight: not ready to write a change.
        if writing && !leadership.tempoWrite.busy { return done("no_leader") }
        let write: (value: [UInt8], lastRevision: UInt64, placed: TempoChange)
        switch leadership.prepareTempo(
            change, justification: justification, nowMonoNs: ports.nowMonoNs(), maxBytes: recordLimitBytes)
        {
        case .success(let prepared): write = prepared
        case .failure(let refusal):
            if case .tooLarge(let bytes) = refusal {
                // Never written: every reader would refuse it and the beat would stop.
                ports.reject("timeline_record_too_large")
                ports.handle(.tempoTooLarge(bytes: bytes, maxBytes: recordLimitBytes))
            }
            return done(refusal.code)
        }
        writing = true
        ports.writeTimeline(write.value, lastRevision: write.lastRevision) { [weak self] reply in
            guard let self else { return }
            self.writing = false
            switch reply {
            case .written:
                // The barrier lifts, and the next change is accepted, when
                // the watch applies it.
                self.leadership.tempoWrite.answered(.written)
                done(nil)
            case .conflict, .notSent:
                self.leadership.tempoWrite.answered(.notStored)
                done("no_leader")
            case .unknown:
                // Move the key past the write's base (a conflict if it was
                // stored): the barrier lifts once the watch shows it.
                self.leadership.tempoWrite.answered(.unknown)
                self.termStartBase = nil
                self.unknownSinceMonoNs = self.ports.nowMonoNs()
                self.moveNotBeforeMonoNs = 0
                self.maybeMoveTempoKey(self.ports.nowMonoNs())
                done("outcome_unknown")
            }
        }
    }
}
