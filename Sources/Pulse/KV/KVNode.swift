// KV/KVNode.swift — a pulse node in `-election nats-kv` mode (issue 21): the
// live ports of the KV shell (PulsePolicy/KVShell.swift, which holds the
// lease and timeline logic and the nats-kv simulator runs too) over the
// JetStream KV buckets (KVBuckets), the loop and the log, feeding the same
// beat side as Raft mode (`BeatShell.leadership`).
//
// On the loop thread: a 20 ms timer ticks the shell, which asks the lease for
// its next operation; the operation runs on the KV queue and its answer comes
// back through `EventLoop.postCompletion` (never dropped); the watches of the
// lease and timeline keys come back the same way. Nothing here runs on the
// beat path: the beat path only reads `KVLeadership.publishMode`.
import CLoop
import CNats
import Foundation
import Glibc
import Logging
import PulseCore
import PulsePolicy

final class KVNode: LoopHandler, KVPorts {
    let buckets: KVBuckets
    /// The lease and timeline driver (PulsePolicy/KVShell.swift).
    private(set) var shell: KVShell!
    /// Forwarded tempo requests and answers (KVForwarding.swift).
    let forwardLink: KVForwardLink
    /// Clock samples with the other pulses over NATS (degraded turns).
    let clockPing: KVClockPing
    private var ticks = 0
    private unowned let loop: EventLoop
    private let rejected: RejectedInput
    private let logger: Logger
    private var timerToken: UInt32 = 0
    /// The shape refusal that stopped the node (§12), thrown after the loop.
    private(set) var refusal: PulseError?
    /// Called once the hand-over's delete is done.
    var onReleased: (() -> Void)?
    /// Called when this node starts publishing as lease holder.
    var onTakeOver: (() -> Void)?
    /// Called after the watch applied a change to the committed timeline.
    var onTimelineChange: ((KVTimelineChange) -> Void)?

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
        let leadership = KVLeadership(
            lease: KVLease(timing: timing, owner: owner, nowMonoNs: cloop_monotonic_ns()),
            timeline: KVLeaseTimeline(flags: shape))
        // The largest record written: the readers' limit, or the server's
        // payload limit if lower. A shape whose epoch record does not fit
        // would stop the beat at its first write: refused here (one line).
        let maxPayload = Int(natsConnection_GetMaxPayload(buckets.nc))
        let recordLimitBytes =
            maxPayload > 0 ? min(KVTimelineRecord.maxBytes, maxPayload) : KVTimelineRecord.maxBytes
        let epochBytes = KVTimelineRecord.worstCaseBytes(shape: shape, justificationBytes: 0)
        guard epochBytes <= recordLimitBytes else {
            buckets.close()
            throw PulseError.startup(
                "-election nats-kv: the timeline record of -bar \(shape.bar) with these -phases needs up to \(epochBytes) bytes; the limit is \(recordLimitBytes) (the server's max_payload or \(KVTimelineRecord.maxBytes)): use shorter phase names"
            )
        }
        self.loop = loop
        self.rejected = rejected
        self.logger = logger
        forwardLink = KVForwardLink(buckets: buckets, nodeId: nodeId, rejected: rejected)
        clockPing = KVClockPing(connection: buckets.nc, clusterId: config.clusterId, nodeId: nodeId)
        shell = KVShell(
            ports: self, leadership: leadership, beat: beats.shell, shape: shape, bootstrapBpm: Int64(config.bpm),
            recordLimitBytes: recordLimitBytes)
    }

    var leadership: KVLeadership { shell.leadership }
    var recordLimitBytes: Int { shell.recordLimitBytes }
    var isHolder: Bool { shell.isHolder }
    var holdsOrReleases: Bool { shell.holdsOrReleases }
    var holdsLease: Bool { shell.holdsLease }
    var term: UInt64 { shell.term }
    var holderNodeId: String? { shell.holderNodeId }
    var lastWatchedMonoNs: Int64 { shell.lastWatchedMonoNs }
    var acquisitions: UInt64 { shell.acquisitions }
    var losses: UInt64 { shell.losses }

    /// Starts the watches and the lease timer (loop thread, before `run`).
    func start() throws {
        let loop = self.loop
        guard
            buckets.watch(
                lease: false,
                seen: { [weak self] entry in loop.postCompletion { self?.shell.timelineWatched(entry) } }),
            buckets.watch(
                lease: true, seen: { [weak self] entry in loop.postCompletion { self?.shell.leaseWatched(entry) } }),
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
                        self?.shell.peerSeen(id)
                    }
                },
                sample: { [weak self] id, sample in
                    loop.postCompletion {
                        self?.clockPing.delivered()
                        self?.shell.peerSample(id, sample)
                    }
                },
                report: { [weak self] text in
                    loop.postCompletion {
                        self?.clockPing.delivered()
                        self?.shell.peerReport(text)
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
        if ticks % Self.pingEveryTicks == 0 { clockPing.ping(report: shell.pingReport()) }
        shell.tick()
    }

    /// Clock pings every 100 ms (the lease timer's fifth tick): the Raft
    /// heartbeat carries a sample every 50 ms; ClockSync's window of 15
    /// samples then spans 1.5 s.
    static let pingEveryTicks = 5

    /// Graceful hand-over (KVShell.release).
    func release(echoed: Bool = true) -> Bool { shell.release(echoed: echoed) }

    /// The holder's tempo commit (KVShell.commitTempo).
    func commitTempo(_ change: TempoChange, justification: String, done: @escaping (String?) -> Void) {
        shell.commitTempo(change, justification: justification, done: done)
    }

    // MARK: KVPorts

    func nowMonoNs() -> Int64 { cloop_monotonic_ns() }
    func nowWallNs() -> Int64 { cloop_realtime_ns() }

    func lease(_ op: KVLeaseOp, owner: String, marked: Bool, done: @escaping (KVLeaseReply) -> Void) {
        let loop = self.loop
        nonisolated(unsafe) let done = done  // runs on the loop thread only
        buckets.lease(op, owner: owner, marked: marked) { reply in loop.postCompletion { done(reply) } }
    }

    func writeTimeline(_ value: [UInt8], lastRevision: UInt64, done: @escaping (KVWriteReply) -> Void) {
        let loop = self.loop
        nonisolated(unsafe) let done = done  // runs on the loop thread only
        buckets.writeTimeline(value, lastRevision: lastRevision) { reply in loop.postCompletion { done(reply) } }
    }

    func reject(_ reason: String) { rejected.record(.kv, reason) }

    func handle(_ event: KVShellEvent) {
        switch event {
        case .acquired(let term):
            logger.info("lease acquired", metadata: ["term": "\(term)", "bucket": "\(buckets.leaseBucket)"])
        case .lost(let term): logger.warning("lease lost", metadata: ["term": "\(term)"])
        case .released:
            logger.info("lease released")
            onReleased?()
        case .nothingToRelease: onReleased?()
        case .fenced(let term, let floor, let first):
            guard first else { return }
            logger.error(
                "lease taken at a revision below one this node has seen: the KV bucket was deleted and recreated; not publishing with a lower term (restart the pulses to accept the new bucket)",
                metadata: ["term": "\(term)", "seen": "\(floor)", "bucket": "\(buckets.leaseBucket)"])
        case .degradation(let change): logDegradation(change)
        case .steppedDown(let reason, let term, let revision, let waitedMs):
            let what =
                switch reason {
                case "holder_not_ready": "lease holder could not get its term start applied"
                case "timeline_term_ahead":
                    "the applied timeline record carries a term above this holding's, and no newer holder exists (forged?)"
                default: "a tempo write of unknown fate could not be settled"
                }
            logger.error(
                "\(what): giving the lease up so another pulse can take over",
                metadata: ["term": "\(term)", "timeline_revision": "\(revision)", "waited_ms": "\(waitedMs)"])
        case .leaseKeyRemoved(let revision, let purged):
            logger.warning(
                "lease key deleted or purged, not by its holder's hand-over: the next holder waits out its lease",
                metadata: ["revision": "\(revision)", "purged": "\(purged)"])
        case .timelineDeleted(let revision, let purged):
            logger.error(
                "timeline key deleted or purged outside the pulses: keeping the applied timeline; a new holder cannot write its term start until it is restored",
                metadata: ["revision": "\(revision)", "purged": "\(purged)"])
        case .recordRefused(_, let why, let revision, let applied, let first):
            guard first else { return }
            logger.error(
                "timeline record refused: it does not continue the applied timeline",
                metadata: ["reason": "\(why)", "revision": "\(revision)", "applied_revision": "\(applied)"])
        case .shapeMismatch(let why):
            logger.error("committed shape differs from the flags", metadata: ["reason": "\(why)"])
            refusal = PulseError.startup(why)
            loop.requestStop()
        case .resynced(let revision, let term, let overPassedBeats):
            logger.warning(
                overPassedBeats
                    ? "timeline records skipped by the watch: re-synced to the newest, which moves beats this node may have passed (tempo changes committed while it was away)"
                    : "timeline records skipped by the watch: re-synced to the newest, which moves no past beat",
                metadata: ["revision": "\(revision)", "term": "\(term)"])
        case .timelineChanged(let change): onTimelineChange?(change)
        case .tookOver(let term, let handOver):
            onTakeOver?()
            logger.info("publishing as lease holder", metadata: ["term": "\(term)", "after_hand_over": "\(handOver)"])
        case .tempoTooLarge(let bytes, let maxBytes):
            logger.warning(
                "tempo change refused: its timeline record is larger than the readers accept",
                metadata: ["bytes": "\(bytes)", "max_bytes": "\(maxBytes)"])
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
}
