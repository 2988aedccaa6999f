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
    enum CodingKeys: String, CodingKey { case node_id, is_leader, leader, cluster_size, stats, election }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(node_id, forKey: .node_id)
        try c.encode(is_leader, forKey: .is_leader)
        try c.encode(leader, forKey: .leader)
        try c.encode(cluster_size, forKey: .cluster_size)
        try c.encode(stats, forKey: .stats)
        try c.encodeIfPresent(election, forKey: .election)
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
    /// `nats-kv` in that mode; absent otherwise (Raft, or a single node: the
    /// contract's shape, requirements §6).
    var election: String? = nil
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
    /// `GET /members`: the voter set in force, or nil for a single node.
    func members() -> MembersBody?
    /// `POST /members`, `DELETE /members/{name}`: one single-server change,
    /// answered once it committed (or why not), on the loop thread, once.
    func changeMembers(_ request: MembershipRequest, reply: @escaping (MembershipAnswer) -> Void)
    /// `POST /leader/transfer`: hand leadership to the voter `name` (nil:
    /// the most up-to-date follower).
    func transferLeadership(to name: String?) -> MembershipAnswer
    /// `-admin-hosts`: names besides localhost, the host name and IP
    /// literals that a request's `Host` may give (AdminBrowserGuard).
    func adminHostNames() -> [String]
}

extension AdminBackend {
    /// Test fakes: no configured names.
    func adminHostNames() -> [String] { [] }
    /// Backends without a timeline (test fakes) answer 503 `no_timeline`.
    func timelineBody() -> TimelineBody? { nil }
    /// Backends without a timeline (test fakes) answer 503 `no_timeline`.
    func backup() -> BackupAnswer {
        .refused(status: 503, code: "no_timeline", message: "this node has no committed timeline to back up")
    }
}

/// One voter in `GET /members` (and the answers of `POST`/`DELETE /members`).
struct MemberEntry: Encodable, Equatable {
    enum CodingKeys: String, CodingKey { case id, name, raft, leader }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(name, forKey: .name)
        try c.encode(raft, forKey: .raft)
        try c.encode(leader, forKey: .leader)
    }
    /// The Raft id, 16 hex digits (a hash of the name).
    var id: String
    /// The member's name (its node id, or `host:port` when it has none), or
    /// null when this node knows no name for the id.
    var name: String?
    /// Its Raft address `host:port`, or null when unknown.
    var raft: String?
    var leader: Bool
}

/// `GET /members` body: the voter set in force on the answering node.
struct MembersBody: Encodable, Equatable {
    enum CodingKeys: String, CodingKey { case members, leader, change_pending, node_id, voter, election }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(members, forKey: .members)
        try c.encode(leader, forKey: .leader)
        try c.encode(change_pending, forKey: .change_pending)
        try c.encode(node_id, forKey: .node_id)
        try c.encode(voter, forKey: .voter)
        try c.encodeIfPresent(election, forKey: .election)
    }
    var members: [MemberEntry]
    /// The leader's name, or null when this node knows none.
    var leader: String?
    /// A configuration change is appended but not committed.
    var change_pending: Bool
    /// The answering node, and whether it is a voter (a joining node is not).
    var node_id: String
    var voter: Bool
    /// Absent: `members` is the Raft voter set in force; `nats-kv`: there is
    /// no voter set, `members` is the pulses seen (`voter` is false).
    var election: String? = nil
}

/// A membership command (validated by the router: `MembershipBody`).
enum MembershipRequest: Equatable {
    /// Add a voter named `name` (its Raft id derives from it) at `raft` (`host:port`).
    case add(name: String, raft: String)
    /// Remove the voter named `name`.
    case remove(name: String)
}

/// The answer to a membership command or a leadership transfer.
enum MembershipAnswer: Equatable {
    /// 200 (committed) or 202 (transfer started) with the voter set.
    case done(status: Int, MembersBody)
    /// 400, 404, 409 or 503 with a machine code (`not_leader` names the
    /// leader, when known, in `leader`).
    case refused(status: Int, code: String, message: String, leader: String?)
}

extension AdminBackend {
    /// Backends without a cluster (test fakes, a single node) have no voter set.
    func members() -> MembersBody? { nil }
    func changeMembers(_ request: MembershipRequest, reply: @escaping (MembershipAnswer) -> Void) {
        reply(.refused(status: 409, code: "not_clustered", message: "a single node has no voter set", leader: nil))
    }
    func transferLeadership(to name: String?) -> MembershipAnswer {
        .refused(
            status: 409, code: "not_clustered", message: "a single node has no leadership to transfer", leader: nil)
    }
}
