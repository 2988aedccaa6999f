// Tempo: tempo changes (§5, REQ-004) from request to applied downbeat.
//
// A request is checked against the rules in the contract's order (range,
// ±10 %, pending), then committed, then scheduled on the timeline at the
// first downbeat at least one commit round after the commit. "Commit" is a
// seam: a Raft log entry committed by a majority (a single node is a
// one-voter cluster: the same path, its own synced append is the majority),
// or with -election nats-kv the KV lease's write. Applied changes are
// announced on `backbeat.<cluster>.control`.
import CLoop
import Foundation
import Logging
import PulseCore
import PulsePolicy

/// Accepts, commits, schedules and announces tempo changes (loop thread).
final class TempoController: TempoListener {
    private let config: PulseConfig
    private let beats: BeatDriver
    private let nats: NatsLink
    private let metrics: PulseMetrics
    private let logger: Logger
    /// A request being committed: another one is refused with 409 meanwhile.
    private var inFlight: TempoRequest?
    /// The committed pending change's justification (read by backups).
    private(set) var pendingJustification = ""
    /// Margin between a commit and the downbeat it may apply at.
    var commitRoundNs: Int64 = 200_000_000
    /// Whether this node can commit (the leader).
    var canCommit: () -> Bool = { true }
    /// Whether the leader has applied its term's first entry (cluster:
    /// `ClusterCore.appliedTermStart`; else always): until then it refuses
    /// with 503 `not_caught_up` rather than plan on a stale timeline.
    var caughtUp: () -> Bool = { true }
    /// Whether some node can commit (cluster: a leader is known).
    var leaderKnown: () -> Bool = { true }
    /// Where a node that cannot commit sends the request (cluster: the leader).
    var forward: ((TempoRequest, @escaping (TempoDecision) -> Void) -> Void)?
    private(set) var appliedChanges: UInt64 = 0
    /// Told when a change is applied: the leader publishes the timeline.
    weak var timelineListener: TimelineChangeListener?

    init(
        config: PulseConfig, beats: BeatDriver, nats: NatsLink, metrics: PulseMetrics, logger: Logger
    ) {
        self.config = config
        self.beats = beats
        self.nats = nats
        self.metrics = metrics
        self.logger = logger
        beats.tempoListener = self
    }

    /// Whether this node's own last commit is not settled, so a new change
    /// would be refused with 409 `change_pending` (nats-kv: the holder's
    /// write is stored or of unknown fate and not yet applied from its
    /// watch, `KVLeadership.tempoChangeUnsettled`; never in Raft mode).
    var lastCommitUnsettled: () -> Bool = { false }

    /// `GET /tempo`.
    func status() -> TempoStatus {
        Self.status(
            timeline: beats.timeline, nowNs: cloop_realtime_ns(), commitRoundNs: commitRoundNs,
            firstUnpublishedBeat: beats.nextBeat, committing: inFlight != nil, unsettled: lastCommitUnsettled(),
            canCommit: canCommit(), canForward: forward != nil && leaderKnown())
    }

    /// The `GET /tempo` body: `can_change` is false, with the reason, while
    /// a change is pending on `timeline`, being committed (`committing`), not
    /// settled on this node (`unsettled`: the 409 `change_pending` a request
    /// would get), or when nothing can commit one (neither `canCommit` nor
    /// `canForward` to a leader).
    static func status(
        timeline: Timeline, nowNs: Int64, commitRoundNs: Int64, firstUnpublishedBeat: Int64, committing: Bool,
        unsettled: Bool, canCommit: Bool, canForward: Bool
    ) -> TempoStatus {
        let current = Int(timeline.epoch.bpm)
        if let pending = timeline.pending {
            return TempoStatus(
                current_bpm: current, pending_bpm: Int(pending.bpm), can_change: false,
                next_change: RFC3339.string(unixMs: timeline.instantNs(ofBeat: pending.atBeat) / 1_000_000),
                reason: "a change to \(pending.bpm) bpm is pending at beat \(pending.atBeat)")
        }
        let reason =
            committing
            ? "a change is being committed"
            : unsettled
                ? "the last change is not settled yet (stored, or of unknown fate, and not yet applied from the KV watch)"
                : canCommit || canForward ? "" : "no leader to commit a change"
        let next = TempoRules.applyBeat(
            timeline: timeline, committedNs: nowNs, commitRoundNs: commitRoundNs,
            firstUnpublishedBeat: firstUnpublishedBeat)
        return TempoStatus(
            current_bpm: current, pending_bpm: current, can_change: reason.isEmpty,
            next_change: RFC3339.string(unixMs: timeline.instantNs(ofBeat: next) / 1_000_000), reason: reason)
    }

    /// `POST /tempo` and the control subject: validates, commits, schedules
    /// (`TempoAdmission.decide`, as the simulator's nodes do).
    func request(_ request: TempoRequest, reply: @escaping (TempoDecision) -> Void) {
        let timeline = beats.timeline
        let change: TempoChange
        switch TempoAdmission.decide(
            requestedBpm: Int64(request.tempoBpm), timeline: timeline, minBpm: Int64(config.minBpm),
            maxBpm: Int64(config.maxBpm), inFlight: inFlight != nil, isLeader: canCommit(),
            appliedTermStart: caughtUp(),
            nowWallNs: cloop_realtime_ns(), commitRoundNs: commitRoundNs, firstUnpublishedBeat: beats.nextBeat)
        {
        case .refused(let refusal):
            return refuse(status: refusal.httpStatus, code: refusal.code, message: refusal.message, reply: reply)
        case .inFlight:
            return refuse(
                status: 409, code: "change_pending", message: "another change is being committed", reply: reply)
        case .notLeader:
            guard let forward else {
                return refuse(
                    status: 503, code: "no_leader", message: "no leader can commit a tempo change", reply: reply)
            }
            return forward(request, reply)
        case .notCaughtUp:
            return refuse(
                status: 503, code: "not_caught_up",
                message: "this leader has not applied its log yet (a committed change may be missing): retry shortly",
                reply: reply)
        case .propose(let proposed):
            change = proposed
        }
        let atBeat = change.atBeat
        let previousBpm = timeline.epoch.bpm
        inFlight = request
        commit(change, request.justification) { [self] failure in
            inFlight = nil
            if let failure {
                let (status, message) = Self.commitFailure(failure, atBeat: atBeat)
                refuse(status: status, code: failure, message: message, reply: reply)
                return
            }
            logger.info(
                "tempo change committed",
                metadata: [
                    "bpm": "\(change.bpm)", "from_bpm": "\(previousBpm)", "at_beat": "\(atBeat)",
                    "justification": "\(request.justification)",
                ])
            reply(
                .scheduled(
                    ScheduledTempoChange(
                        tempo_bpm: request.tempoBpm, previous_bpm: Int(previousBpm), apply_at_beat: atBeat,
                        apply_at: RFC3339.string(unixMs: beats.timeline.instantNs(ofBeat: atBeat) / 1_000_000),
                        justification: request.justification)))
        }
    }

    /// The reply to a commit that failed with `code` (the change was to
    /// apply at `atBeat`): 503 unless the request or a conflict is at fault.
    static func commitFailure(_ code: String, atBeat: Int64) -> (status: Int, message: String) {
        switch code {
        case "outcome_unknown":
            // Fault 4: a proposer that lost leadership cannot know the
            // outcome; it must not claim the change was refused.
            (
                503,
                "leadership was lost before the change committed: it may still take effect at beat \(atBeat) or later; check GET /tempo before retrying"
            )
        case "record_too_large":
            // A record too large for the KV timeline is the request's fault (nats-kv mode).
            (400, "the change's timeline record would be larger than the pulses accept: shorten the justification")
        case "change_pending":
            // nats-kv: the holder's last change is stored (or of unknown
            // fate) and not yet settled by its watch (KVTempoWrite). It may
            // never show as pending (an unknown write that was not stored),
            // so the advice is to read the state again, not to wait for it.
            (
                409,
                "the last tempo change is not settled yet (stored or of unknown fate): read GET /tempo and retry shortly"
            )
        default: (503, "the change could not be committed (\(code))")
        }
    }

    /// Makes a validated change durable and scheduled, then calls `done`
    /// with nil or a failure code, on the loop thread. This is the seam
    /// between the controller and the commit path: see the cluster's wiring
    /// in `PulseNode` (a single node's too) and the KV lease's.
    var commit: (TempoChange, String, @escaping (String?) -> Void) -> Void = { _, _, done in done("no_leader") }

    /// Cluster: a committed tempo entry was applied (the core holds it; the
    /// beat shell reads it there): its justification, for the announcement.
    func committedChangeApplied(justification: String) {
        pendingJustification = justification
    }

    /// Counts a refusal made before the controller saw the request (400s).
    func recordRefusal(reason: String) { metrics.tempoRefused(reason: reason) }

    private func refuse(status: Int, code: String, message: String, reply: (TempoDecision) -> Void) {
        metrics.tempoRefused(reason: code)
        reply(.refused(status: status, code: code, message: message))
    }

    /// After the beat at the change's downbeat: announce the change on the
    /// control subject (the committed log holds it already).
    func tempoApplied(epoch: TempoEpoch, previousBpm: Int64) {
        appliedChanges &+= 1
        let announcement = TempoAnnouncement(
            cluster_id: config.clusterId, beat_index: epoch.startBeat, tempo_bpm: epoch.bpm, previous_bpm: previousBpm,
            applied_at: RFC3339.string(unixMs: epoch.startNs / 1_000_000), justification: pendingJustification)
        pendingJustification = ""
        timelineListener?.committedTimelineChanged()
        logger.info("tempo change applied", metadata: ["bpm": "\(epoch.bpm)", "at_beat": "\(epoch.startBeat)"])
        if let body = try? JSONEncoder().encode(announcement) {
            nats.publishSigned(subject: config.controlSubject, payload: body)
        }
    }
}

/// Published on `backbeat.<cluster>.control` when a change takes effect.
struct TempoAnnouncement: Encodable {
    var type = "backbeat.tempo_change.v1"
    var cluster_id: String
    var beat_index: Int64
    var tempo_bpm: Int64
    var previous_bpm: Int64
    var applied_at: String
    var justification: String
}
