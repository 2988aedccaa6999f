// Admin: the seam between the HTTP API and the node. The server asks the
// backend for state and hands it commands; the service implements it, tests
// fake it. Every call happens on the loop thread. The status bodies encode a
// missing value as JSON null instead of leaving the key out (as synthesized
// encoders would), so clients always see exactly the documented keys.

/// `GET /tempo` body.
struct TempoStatus: Encodable, Equatable {
    enum CodingKeys: String, CodingKey { case current_bpm, pending_bpm, can_change, next_change, reason }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(current_bpm, forKey: .current_bpm)
        try c.encode(pending_bpm, forKey: .pending_bpm)
        try c.encode(can_change, forKey: .can_change)
        try c.encode(next_change, forKey: .next_change)
        try c.encode(reason, forKey: .reason)
    }
    var current_bpm: Int
    /// The bpm a pending change will apply, or the current bpm when none is pending (as the seed shows).
    var pending_bpm: Int
    var can_change: Bool
    /// RFC 3339 instant of the earliest downbeat a change could apply at (or the pending change's), or null.
    var next_change: String?
    /// Why `can_change` is false; empty otherwise.
    var reason: String
}

/// `POST /tempo` request body (validated by the server before the backend sees it).
struct TempoRequest: Equatable {
    var tempoBpm: Int
    var justification: String
}

/// A change accepted and scheduled (202 body).
struct ScheduledTempoChange: Encodable, Equatable {
    var tempo_bpm: Int
    var previous_bpm: Int
    var apply_at_beat: Int64
    var apply_at: String
    var justification: String
}

/// The backend's answer to a tempo change request.
enum TempoDecision: Equatable {
    case scheduled(ScheduledTempoChange)
    /// 409, 422 or 503 with a machine code (e.g. `change_pending`, `out_of_range`, `delta_too_large`, `no_leader`, `outcome_unknown`).
    case refused(status: Int, code: String, message: String)
    /// 307 to the leader's admin URL.
    case redirect(location: String)
}

/// `GET /drift` body.
struct DriftStatus: Encodable, Equatable {
    enum CodingKeys: String, CodingKey {
        case timer_drift_percent, hlc_drift_seconds, last_sync_time, degradation_mode, within_limits
    }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(timer_drift_percent, forKey: .timer_drift_percent)
        try c.encode(hlc_drift_seconds, forKey: .hlc_drift_seconds)
        try c.encode(last_sync_time, forKey: .last_sync_time)
        try c.encode(degradation_mode, forKey: .degradation_mode)
        try c.encode(within_limits, forKey: .within_limits)
    }
    var timer_drift_percent: Double
    var hlc_drift_seconds: Double
    var last_sync_time: String?
    var degradation_mode: Bool
    var within_limits: Bool
}

/// `GET /leader` body.
struct LeaderStatus: Encodable, Equatable {
    enum CodingKeys: String, CodingKey { case node_id, is_leader, leader, cluster_size, stats }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(node_id, forKey: .node_id)
        try c.encode(is_leader, forKey: .is_leader)
        try c.encode(leader, forKey: .leader)
        try c.encode(cluster_size, forKey: .cluster_size)
        try c.encode(stats, forKey: .stats)
    }
    struct Stats: Encodable, Equatable {
        var term: UInt64
        var commit_index: UInt64
        var last_contact_ms: Int64
        var leadership_changes: UInt64
        var state: String
    }
    var node_id: String
    var is_leader: Bool
    var leader: String?
    var cluster_size: Int
    var stats: Stats
}

/// `GET /timeline` body and the timeline subject's message (`backbeat.timeline.v1`,
/// docs/protocol.md): the committed timeline as this node applies it, so a
/// consumer can answer beat, phase, window id and downbeat at any instant
/// without a round trip. `pending` and `leader` are JSON null when absent.
struct TimelineBody: Encodable, Equatable {
    /// The epoch in force: beat `start_beat` at `start_ns` (Unix ns), then `bpm`.
    struct Epoch: Encodable, Equatable {
        var start_beat: Int64
        var start_ns: Int64
        /// `start_ns` as RFC 3339 UTC with milliseconds (for people).
        var start_at: String
        var bpm: Int64
    }
    /// A committed tempo change: from downbeat `at_beat` (at `at_ns`) on, `bpm`.
    struct Pending: Encodable, Equatable {
        var at_beat: Int64
        var at_ns: Int64
        var at: String
        var bpm: Int64
    }
    enum CodingKeys: String, CodingKey {
        case type, cluster_id, epoch, bar, phases, pending, term, leader, node_id, degraded, now_ns
    }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        try c.encode(cluster_id, forKey: .cluster_id)
        try c.encode(epoch, forKey: .epoch)
        try c.encode(bar, forKey: .bar)
        try c.encode(phases, forKey: .phases)
        try c.encode(pending, forKey: .pending)
        try c.encode(term, forKey: .term)
        try c.encode(leader, forKey: .leader)
        try c.encode(node_id, forKey: .node_id)
        try c.encode(degraded, forKey: .degraded)
        try c.encode(now_ns, forKey: .now_ns)
    }
    static let messageType = "backbeat.timeline.v1"
    var type = TimelineBody.messageType
    var cluster_id: String
    var epoch: Epoch
    var bar: Int
    var phases: [String]
    var pending: Pending?
    /// The Raft term this node is in (a single node: 1); never decreases.
    var term: UInt64
    /// The leader's node id, or null when this node knows none.
    var leader: String?
    /// The node that answered.
    var node_id: String
    /// Whether the answering node is in degradation mode (no leader).
    var degraded: Bool
    /// The answering node's estimate of the timeline clock (the leader's
    /// wall clock, Unix ns) when it answered: a consumer's clock offset.
    var now_ns: Int64
}

/// One component's health in `GET /health`.
struct ComponentHealth: Encodable, Equatable {
    var status: String  // "ok" or "failing"
    var detail: String
}

/// The node state and commands the admin API needs.
protocol AdminBackend: AnyObject {
    func tempoStatus() -> TempoStatus
    /// Validated request in; the decision may come later (after a Raft commit)
    /// but always on the loop thread, exactly once.
    func requestTempoChange(_ request: TempoRequest, reply: @escaping (TempoDecision) -> Void)
    /// Counts a refusal the server made itself (400 malformed) under `reason`.
    func recordTempoRefusal(reason: String)
    func driftStatus() -> DriftStatus
    func leaderStatus() -> LeaderStatus
    /// Components by name (e.g. "loop", "nats", "cluster", "timeline").
    func health() -> [String: ComponentHealth]
    /// 200 only when connected to NATS and part of a cluster with a known leader or degraded.
    func readiness() -> (ready: Bool, reason: String)
    /// The last beats this node published or tried to (at most a few thousand), oldest first.
    func recentBeats() -> [BeatRecord]
    /// Prometheus text exposition (format 0.0.4) of every metric.
    func metricsText() -> String
    /// The committed timeline (`GET /timeline`), or nil before there is one.
    func timelineBody() -> TimelineBody?
    /// `GET /backup`: the committed timeline as a backup file (Backup/BackupFile.swift), or why not.
    func backup() -> BackupAnswer
}

extension AdminBackend {
    /// Backends without a timeline (test fakes) answer 503 `no_timeline`.
    func timelineBody() -> TimelineBody? { nil }
    /// Backends without a timeline (test fakes) answer 503 `no_timeline`.
    func backup() -> BackupAnswer {
        .refused(status: 503, code: "no_timeline", message: "this node has no committed timeline to back up")
    }
}
