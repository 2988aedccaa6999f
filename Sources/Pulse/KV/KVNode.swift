// KV/KVNode.swift — a pulse node in `-election nats-kv` mode (issue 21): the
// lease and the timeline of PulsePolicy/KVLease*.swift driven on the loop
// over the JetStream KV buckets (KVBuckets), feeding the same beat side as
// Raft mode (`BeatShell.leadership`).
//
// On the loop thread: a 20 ms timer asks the lease for its next operation;
// the operation runs on the KV queue and its answer comes back through
// `EventLoop.postCompletion` (never dropped); the watches of the lease and
// timeline keys come back the same way. Nothing here runs on the beat path:
// the beat path only reads `KVLeadership.publishMode`.
//
//   acquired  → write the term start (the epoch when the bucket has none)
//   the watch applies a record of our term → take over the beats
//   lost / lease run down → publishMode is follower at once (no event needed)
//   a tempo request on the holder → a CAS write of the next record; the
//     barrier holds its apply beat until the key moved past the write's base,
//     and another change is refused (409 `change_pending`) until then
//     (PulsePolicy/KVTempoWrite.swift)
//   SIGTERM on the holder → after its last frame came back: `release()`
//     deletes the key with the revision check; the node stops on `.released`
import CLoop
import CNats
import Foundation
import Glibc
import Logging
import PulseCore
import PulsePolicy

final class KVNode: LoopHandler {
    let buckets: KVBuckets
    let leadership: KVLeadership
    /// Forwarded tempo requests and answers (KVForwarding.swift).
    let forwardLink: KVForwardLink
    /// Clock samples with the other pulses over NATS (degraded turns).
    let clockPing: KVClockPing
    private var ticks = 0
    private unowned let loop: EventLoop
    private let beats: BeatDriver
    private let rejected: RejectedInput
    private let logger: Logger
    private let shape: TimelineShape
    private let bootstrapBpm: Int64
    private var timerToken: UInt32 = 0
    /// The largest timeline record this node writes (see `init`).
    let recordLimitBytes: Int
    /// The shape refusal that stopped the node (§12), thrown after the loop.
    private(set) var refusal: PulseError?
    /// Called once the hand-over's delete is done.
    var onReleased: (() -> Void)?
    /// Called when this node starts publishing as lease holder.
    var onTakeOver: (() -> Void)?
    /// Called after the watch applied a change to the committed timeline.
    var onTimelineChange: ((KVTimelineChange) -> Void)?
    /// A write of the timeline key is in flight (term start, epoch or tempo).
    private var writing = false
    /// The timeline revision the last failed term start compared against:
    /// retried once the watch shows a newer record (or at once if none is).
    private var termStartBase: UInt64?
    private var termStartRetryMonoNs: Int64 = 0
    private var tookOverTerm: UInt64 = 0
    /// The fenced-lease line was logged (once; each one is counted).
    private var fenceLogged = false
    /// Timeline refusal reasons already logged (each refusal is counted).
    private var refusalsLogged: Set<String> = []
    /// Counters for /metrics and logs.
    private(set) var acquisitions: UInt64 = 0
    private(set) var losses: UInt64 = 0

    init(
        config: PulseConfig, nodeId: String, shape: TimelineShape, loop: EventLoop, beats: BeatDriver,
        rejected: RejectedInput, logger: Logger, applySecurity: (OpaquePointer?) throws -> Void
    ) throws {
        let timing = KVLeaseTiming()
        buckets = try KVBuckets(
            servers: try NatsLink.serverList(config.natsURL), clusterId: config.clusterId,
            replicas: config.kvReplicas, ttlNs: timing.ttlNs, allowOldServer: config.kvAllowOldServer,
            name: "pulse \(nodeId) kv", applySecurity: applySecurity)
        // The claim: the node id and a start-up nonce (a restart is a new incarnation).
        let owner = "\(nodeId) \(getpid())-\(cloop_realtime_ns())"
        leadership = KVLeadership(
            lease: KVLease(timing: timing, owner: owner, nowMonoNs: cloop_monotonic_ns()),
            timeline: KVLeaseTimeline(flags: shape))
        // The largest record written: the readers' limit, or the server's
        // payload limit if lower. A shape whose epoch record does not fit
        // would stop the beat at its first write: refused here (one line).
        let maxPayload = Int(natsConnection_GetMaxPayload(buckets.nc))
        recordLimitBytes = maxPayload > 0 ? min(KVTimelineRecord.maxBytes, maxPayload) : KVTimelineRecord.maxBytes
        let epochBytes = KVTimelineRecord.worstCaseBytes(shape: shape, justificationBytes: 0)
        guard epochBytes <= recordLimitBytes else {
            buckets.close()
            throw PulseError.startup(
                "-election nats-kv: the timeline record of -bar \(shape.bar) with these -phases needs up to \(epochBytes) bytes; the limit is \(recordLimitBytes) (the server's max_payload or \(KVTimelineRecord.maxBytes)): use shorter phase names"
            )
        }
        self.loop = loop
        self.beats = beats
        self.rejected = rejected
        self.logger = logger
        self.shape = shape
        self.bootstrapBpm = Int64(config.bpm)
        forwardLink = KVForwardLink(buckets: buckets, nodeId: nodeId, rejected: rejected)
        clockPing = KVClockPing(connection: buckets.nc, clusterId: config.clusterId, nodeId: nodeId)
        beats.shell.leadership = leadership
    }

    var isHolder: Bool { leadership.isHolder }
    /// Holding the key, or deleting it in the hand-over: a stopping node
    /// stays until the delete is answered (`onReleased` stops it), within
    /// the stop's cap; stopping earlier dropped the queued delete unsent
    /// (review of 2026-12-07, finding 6).
    var holdsOrReleases: Bool { leadership.lease.role == .holder || leadership.lease.role == .releasing }
    /// Holding the key with a lease still running (what the admin API and
    /// metrics call the leader: a holder whose lease ran down is none).
    var holdsLease: Bool { leadership.lease.mayPublish(nowMonoNs: cloop_monotonic_ns()) }
    var term: UInt64 { leadership.term }

    /// Starts the watches and the lease timer (loop thread, before `run`).
    func start() throws {
        let loop = self.loop
        guard
            buckets.watch(
                lease: false,
                seen: { [weak self] entry in loop.postCompletion { self?.timelineWatched(entry) } }),
            buckets.watch(
                lease: true, seen: { [weak self] entry in loop.postCompletion { self?.leaseWatched(entry) } }),
            buckets.watch(
                lease: true, key: forwardLink.inboxKeys, updatesOnly: true,
                seen: { [weak self] entry in loop.postCompletion { self?.forwardLink.received(entry) } })
        else {
            throw PulseError.startup("-election nats-kv: cannot watch the KV buckets \(buckets.timelineBucket)")
        }
        guard
            clockPing.start(
                // Each delivery was admitted by the ping's budget: `delivered()` returns it.
                seen: { [weak self] id in
                    loop.postCompletion {
                        self?.clockPing.delivered()
                        self?.peerSeen(id)
                    }
                },
                sample: { [weak self] id, sample in
                    loop.postCompletion {
                        self?.clockPing.delivered()
                        self?.peerSample(id, sample)
                    }
                },
                report: { [weak self] text in
                    loop.postCompletion {
                        self?.clockPing.delivered()
                        self?.peerReport(text)
                    }
                },
                malformed: { [weak self] in
                    loop.postCompletion {
                        self?.clockPing.delivered()
                        self?.rejected.record(.kv, "bad_clock_ping")
                    }
                })
        else {
            throw PulseError.startup("-election nats-kv: cannot subscribe to \(clockPing.subject)")
        }
        timerToken = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: self)
        try loop.armTimer(timerToken, afterNs: 1_000_000, intervalNs: 20_000_000)
    }

    func stop() {
        clockPing.stop()
        buckets.close()
    }

    func loopEvent(token: UInt32, events: UInt32) {
        guard token == timerToken else { return }
        loop.readTimer(timerToken)
        ticks &+= 1
        let dropped = clockPing.takeDropped()
        if dropped > 0 { rejected.record(.kv, "peer_message_dropped", count: dropped) }
        if ticks % Self.pingEveryTicks == 0 {
            let now = cloop_monotonic_ns()
            clockPing.ping(
                report: KVLeasePeers.encodeReport(from: leadership.nodeId, leadership.peers.report(nowMonoNs: now)))
        }
        drive()
    }

    /// Clock pings every 100 ms (the lease timer's fifth tick): the Raft
    /// heartbeat carries a sample every 50 ms; ClockSync's window of 15
    /// samples then spans 1.5 s.
    static let pingEveryTicks = 5

    // MARK: the pulses seen and degradation

    private func peerSeen(_ id: String) {
        if let refused = leadership.peers.seen(id, nowMonoNs: cloop_monotonic_ns()) { rejected.record(.kv, refused) }
    }

    private func peerSample(_ id: String, _ sample: SyncSample) {
        if let refused = leadership.peers.add(sample, from: id, nowMonoNs: cloop_monotonic_ns()) {
            rejected.record(.kv, refused)
        }
    }

    /// A pulse's report of the pulses it saw (the gossip, KVLeasePeers.swift).
    private func peerReport(_ text: String) {
        switch KVLeasePeers.decodeReport(text) {
        case .failure(let error): rejected.record(.kv, error.reason)
        case .success(let report):
            guard report.from != leadership.nodeId else { return }  // our own, echoed
            if let refused = leadership.peers.merge(from: report.from, report.entries, nowMonoNs: cloop_monotonic_ns())
            {
                rejected.record(.kv, refused)
            }
        }
    }

    private func logDegradation(_ change: DegradationPolicy.Change) {
        switch change {
        case .none: break
        case .left: logger.info("leaving degradation", metadata: ["lease_holder": "\(holderNodeId ?? "none")"])
        case .entered:
            let reference = leadership.degradedReference
            logger.warning(
                "entering degradation: no lease holder and no answer from JetStream; keeping the committed timeline locally",
                metadata: [
                    "rank": "\(leadership.rank)", "reference": "\(leadership.referenceId)",
                    "offset_ms": "\(Double(reference?.offsetNs ?? 0) / 1e6)",
                    "pulses_seen":
                        "\(leadership.peers.members(nowMonoNs: cloop_monotonic_ns()).joined(separator: ","))",
                ])
        }
    }

    // MARK: the lease

    private func drive() {
        let now = cloop_monotonic_ns()
        leadership.loopTick(nowMonoNs: now)  // a stall: listen before degraded turns
        logDegradation(leadership.updateDegradation(nowMonoNs: now))
        if let op = leadership.lease.next(nowMonoNs: now) {
            let loop = self.loop
            buckets.lease(op, owner: leadership.lease.owner, marked: leadership.lease.releaseMarked) {
                [weak self] reply in
                loop.postCompletion { self?.leaseAnswered(reply) }
            }
        }
        maybeStepDown(now)
        maybeMoveTempoKey(now)
        maybeWriteTermStart(now)
        maybeTakeOver()  // after a foreign delete's wait ran out
    }

    /// When the current holding was acquired (monotonic ns; 0: none).
    private var acquiredMonoNs: Int64 = 0
    /// A holder whose term start is not applied within this many TTLs gives the key up.
    static let readyWithinTTLs: Int64 = 4

    /// A holder that cannot get its term start written (its compare-and-set
    /// base is wrong, the timeline key was deleted, records are refused)
    /// would renew the lease for ever without publishing: after
    /// `readyWithinTTLs` TTLs it deletes the key (no release marker: the
    /// next holder takes the full guard) and tries again later, so another
    /// node can take over.
    private func maybeStepDown(_ now: Int64) {
        guard leadership.isHolder, !leadership.isReadyHolder, acquiredMonoNs > 0,
            now - acquiredMonoNs > Self.readyWithinTTLs * leadership.lease.timing.ttlNs
        else { return }
        let waitedMs = (now - acquiredMonoNs) / 1_000_000
        acquiredMonoNs = 0
        rejected.record(.kv, "holder_not_ready")
        logger.error(
            "lease holder could not get its term start applied: giving the lease up so another pulse can take over",
            metadata: [
                "term": "\(leadership.lease.term)", "timeline_revision": "\(leadership.timeline.revision)",
                "waited_ms": "\(waitedMs)",
            ])
        leadership.lease.stepDown()
    }

    /// Since when a tempo write of unknown fate waits for the key to move
    /// past its base (nil: none), and when the next move may be sent.
    private var unknownSinceMonoNs: Int64?
    private var moveNotBeforeMonoNs: Int64 = 0

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
            rejected.record(.kv, "tempo_write_unsettled")
            logger.error(
                "a tempo write of unknown fate could not be settled: giving the lease up so another pulse can publish",
                metadata: [
                    "term": "\(leadership.lease.term)", "timeline_revision": "\(leadership.timeline.revision)",
                    "waited_ms": "\((now &- since) / 1_000_000)",
                ])
            leadership.lease.stepDown()
            return
        }
        guard !writing, now >= moveNotBeforeMonoNs,
            let start = leadership.timeline.termStart(term: leadership.lease.term)
        else { return }
        moveNotBeforeMonoNs = now &+ 100_000_000
        writing = true
        let loop = self.loop
        buckets.writeTimeline(start.value, lastRevision: start.lastRevision) { [weak self] _ in
            loop.postCompletion { self?.writing = false }  // the watch says whether it moved
        }
    }

    private func leaseAnswered(_ reply: KVLeaseReply) {
        for event in leadership.lease.complete(reply, nowMonoNs: cloop_monotonic_ns()) {
            switch event {
            case .acquired(let term):
                acquisitions &+= 1
                acquiredMonoNs = cloop_monotonic_ns()
                termStartBase = nil
                logger.info("lease acquired", metadata: ["term": "\(term)", "bucket": "\(buckets.leaseBucket)"])
            case .lost(let term):
                losses &+= 1
                leadership.holdingEnded()
                logger.warning("lease lost", metadata: ["term": "\(term)"])
            case .released:
                logger.info("lease released")
                onReleased?()
            case .fenced(let term, let floor):
                rejected.record(.kv, "lease_revision_behind")
                if !fenceLogged {
                    fenceLogged = true
                    logger.error(
                        "lease taken at a revision below one this node has seen: the KV bucket was deleted and recreated; not publishing with a lower term (restart the pulses to accept the new bucket)",
                        metadata: ["term": "\(term)", "seen": "\(floor)", "bucket": "\(buckets.leaseBucket)"])
                }
            }
        }
        drive()
    }

    /// The node id in the lease key's claim as last watched (nil: no key).
    private(set) var holderNodeId: String?
    /// When the watch last saw a lease key revision (monotonic ns).
    private(set) var lastWatchedMonoNs: Int64 = 0

    private func leaseWatched(_ entry: KVWatched) {
        lastWatchedMonoNs = cloop_monotonic_ns()
        let seen = leadership.leaseEntryWatched(
            revision: entry.revision, value: entry.value ?? entry.markerBody,
            deleted: entry.value == nil && !entry.purged,
            purged: entry.purged, nowMonoNs: lastWatchedMonoNs)
        logDegradation(seen.degradation)
        holderNodeId = entry.value.flatMap {
            String(decoding: $0, as: UTF8.self).split(separator: " ").first.map(String.init)
        }
        if seen.gone {
            if !leadership.freedByHandOver, leadership.lastClaimWatchedMonoNs != nil {
                logger.warning(
                    "lease key deleted or purged, not by its holder's hand-over: the next holder waits out its lease",
                    metadata: ["revision": "\(entry.revision)", "purged": "\(entry.purged)"])
            }
            leadership.lease.keyGone()  // candidates try at once
            drive()
        }
    }

    /// Graceful hand-over: stops publishing now and deletes the key.
    /// False when this node does not hold it (nothing to hand over).
    /// `echoed`: its last frame came back (the delete carries the release
    /// marker, the successor's short guard); false: the full guard.
    func release(echoed: Bool = true) -> Bool {
        let wasHolder = leadership.isHolder
        for event in leadership.lease.release(marked: echoed) where event == .released { onReleased?() }
        drive()
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
            let epoch = Timeline.bootstrapEpoch(nowNs: cloop_realtime_ns(), bpm: bootstrapBpm)
            let command = ClusterCommand.epoch(
                startBeat: epoch.startBeat, startNs: epoch.startNs, bpm: epoch.bpm, bar: shape.bar,
                phases: shape.phases)
            write = leadership.timeline.write(command, term: lease.term).map { ($0.value, $0.lastRevision) }
        }
        guard let write else { return }
        writing = true
        termStartBase = write.lastRevision
        termStartRetryMonoNs = now + 100_000_000
        let loop = self.loop
        buckets.writeTimeline(write.value, lastRevision: write.lastRevision) { [weak self] reply in
            loop.postCompletion {
                guard let self else { return }
                self.writing = false  // retried when the watch shows no record of our term
            }
        }
    }

    private func timelineWatched(_ entry: KVWatched) {
        guard let value = entry.value else {
            // A pulse never deletes the timeline key: an operator did. The
            // applied timeline stays (a record can only continue it); the
            // next term start's compare-and-set fails until the key is back.
            rejected.record(.kv, "timeline_deleted")
            logger.error(
                "timeline key deleted or purged outside the pulses: keeping the applied timeline; a new holder cannot write its term start until it is restored",
                metadata: ["revision": "\(entry.revision)", "purged": "\(entry.purged)"])
            return
        }
        let gap = leadership.timeline.revision > 0 && entry.revision > leadership.timeline.revision + 1
        // Settles our tempo write once the key moved past its base.
        let change = leadership.applyWatched(value, revision: entry.revision, nowNs: cloop_realtime_ns())
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
            rejected.record(.kv, reason)
            if refusalsLogged.insert(reason).inserted {
                logger.error(
                    "timeline record refused: it does not continue the applied timeline",
                    metadata: [
                        "reason": "\(why)", "revision": "\(entry.revision)",
                        "applied_revision": "\(leadership.timeline.revision)",
                    ])
            }
            return
        case .shapeMismatch(let why):
            logger.error("committed shape differs from the flags", metadata: ["reason": "\(why)"])
            refusal = PulseError.startup(why)
            loop.requestStop()
            return
        case .started:
            beats.shell.start()
        case .tempo(let change):
            beats.shell.tempoApplied(change)
        case .restamped:
            break
        case .resynced(let term):
            // Counted with the watch gaps below; the beats' next instant may have moved.
            logger.warning(
                "timeline records skipped by the watch: re-synced to the newest, which moves no past beat",
                metadata: ["revision": "\(entry.revision)", "term": "\(term)"])
            if beats.shell.started { beats.shell.armNext() }
        }
        if gap { rejected.record(.kv, "timeline_watch_gap") }
        maybeTakeOver()
        onTimelineChange?(change)
    }

    /// The holder publishes from the first record of its term on.
    /// Only after a foreign delete's wait (`publishNotBeforeMonoNs`): the
    /// guard counts from there. The short guard only after the holder's own
    /// hand-over (KVLeaseLeadership.swift).
    private func maybeTakeOver() {
        let term = leadership.lease.term
        guard leadership.isReadyHolder, tookOverTerm != term, beats.shell.started,
            cloop_monotonic_ns() >= leadership.publishNotBeforeMonoNs
        else { return }
        tookOverTerm = term
        let handOver = leadership.consumeHandOver()
        beats.shell.takeOver(graceful: handOver)
        onTakeOver?()
        logger.info("publishing as lease holder", metadata: ["term": "\(term)", "after_hand_over": "\(handOver)"])
    }

    /// The holder's tempo commit: a CAS write of the next record; `done`
    /// gets nil, `no_leader` (certainly not written), `change_pending` (the
    /// last change is not applied yet: KVTempoWrite.swift),
    /// `record_too_large` or `outcome_unknown`.
    func commitTempo(_ change: TempoChange, justification: String, done: @escaping (String?) -> Void) {
        // A term start in flight: not ready to write a change.
        if writing && !leadership.tempoWrite.busy { return done("no_leader") }
        let write: (value: [UInt8], lastRevision: UInt64, placed: TempoChange)
        switch leadership.prepareTempo(
            change, justification: justification, nowMonoNs: cloop_monotonic_ns(), maxBytes: recordLimitBytes)
        {
        case .success(let prepared): write = prepared
        case .failure(let refusal):
            if case .tooLarge(let bytes) = refusal {
                // Never written: every reader would refuse it and the beat would stop.
                rejected.record(.kv, "timeline_record_too_large")
                logger.warning(
                    "tempo change refused: its timeline record is larger than the readers accept",
                    metadata: ["bytes": "\(bytes)", "max_bytes": "\(recordLimitBytes)"])
            }
            return done(refusal.code)
        }
        writing = true
        let loop = self.loop
        buckets.writeTimeline(write.value, lastRevision: write.lastRevision) { [weak self] reply in
            loop.postCompletion {
                guard let self else { return }
                self.writing = false
                switch reply {
                case .written:
                    // The barrier lifts, and the next change is accepted,
                    // when the watch applies it.
                    self.leadership.tempoWrite.answered(.written)
                    done(nil)
                case .conflict, .notSent:
                    self.leadership.tempoWrite.answered(.notStored)
                    done("no_leader")
                case .unknown:
                    // Move the key past the write's base (a conflict if it
                    // was stored): the barrier lifts once the watch shows it.
                    self.leadership.tempoWrite.answered(.unknown)
                    self.termStartBase = nil
                    self.unknownSinceMonoNs = cloop_monotonic_ns()
                    self.moveNotBeforeMonoNs = 0
                    self.maybeMoveTempoKey(cloop_monotonic_ns())
                    done("outcome_unknown")
                }
            }
        }
    }
}
