// Admin: the live view's event streams, `GET /events` (Server-Sent Events),
// served by the loop to the page at `GET /` (LivePage.swift).
//
// Two kinds of event, both JSON in `data:`:
// - `beat`: a frame seen on the beat subject and accepted by the echo policy
//   (so a follower shows the leader's beat as it sees it on the subject), with
//   its delivery latency here and, when this node published it, its jitter.
// - `state`: leader, term, peers, degradation, NATS, tempo and pending change;
//   sent when a stream opens and whenever the state's signature changes.
//
// Guarantees (limits in AdminLimits, each with its reason):
// - Nothing here runs on the beat path. A frame seen on the subject is only
//   queued (`beatSeen`, bounded, newest kept); events are encoded and written
//   in the loop's before-sleep hook, after the turn's events (the beat first),
//   and never within `eventQuietBeforeBeatNs` of the next beat's instant.
// - At most `maxEventStreams` streams; one more is answered 503.
// - Each stream queues at most `eventStreamBufferBytes`; an event that does
//   not fit, or a stream that accepted no byte for `eventStreamStallTimeoutNs`,
//   drops the stream (counted as `rejected{surface="http",reason=
//   "event_stream_slow"}`). A slow browser costs bounded memory and never
//   blocks: every write is non-blocking. The page reconnects by itself
//   (`retry:`) and gets the current state first.
// - With no stream open, the before-sleep hook returns at once.
import CLoop
import Foundation

/// The node state the live view shows (loop thread). A typed port: the
/// service implements it, tests fake it.
protocol LiveSource: AnyObject {
    /// An allocation-free fingerprint of `liveState()`: a change sends a `state` event.
    func liveSignature() -> LiveSignature
    /// The full state (allocates; only when the signature changed or a stream opens).
    func liveState() -> LiveState
    /// Nanoseconds until this node's next beat instant, or nil when none is planned.
    func nanosecondsToNextBeat() -> Int64?
}

/// The parts of `LiveState` that change, as plain numbers (compared every turn
/// while a stream is open).
struct LiveSignature: Equatable {
    var term: UInt64 = 0
    var leader: UInt64 = 0
    /// 0 single, 1 leader, 2 follower, 3 candidate.
    var role: UInt8 = 0
    var degraded = false
    var natsConnected = false
    var started = false
    var epochStartBeat: Int64 = 0
    var bpm: Int64 = 0
    var pendingAtBeat: Int64 = -1
    var pendingBpm: Int64 = 0
    /// Bit i: peer i is in contact (as this node sees it).
    var peerContact: UInt64 = 0
}

/// The `state` event: what the page shows besides the beat. `leader` and
/// `pending` are JSON null when absent.
struct LiveState: Encodable, Equatable {
    struct Peer: Encodable, Equatable {
        var name: String
        var address: String
        /// "leader", "follower", "candidate", "single" (this node's role), or
        /// for another peer: "leader", "in_contact" (heard within 2 s), "silent" (not heard
        /// by this node, the leader), "no_contact" (not heard by this follower, which
        /// hears only the leader).
        var state: String
        var is_self: Bool
    }
    /// A committed change: from downbeat `at_beat` (at `at_ns`, timeline clock) on, `bpm`.
    struct Pending: Encodable, Equatable {
        var at_beat: Int64
        var at_ns: Int64
        var bpm: Int64
    }
    var node_id: String
    var cluster_id: String
    var role: String
    var term: UInt64
    var leader: String?
    var degraded: Bool
    var nats_connected: Bool
    var nats_server: String
    /// False until the committed timeline is known (a joining node).
    var started: Bool
    var bar: Int
    var phases: [String]
    var tempo_bpm: Int64
    var min_bpm: Int
    var max_bpm: Int
    var pending: Pending?
    var peers: [Peer]
    /// The timeline clock (the leader's wall clock, Unix ns) when sent: the page's offset.
    var now_ns: Int64
    /// `POST /tempo` needs the admin token (the page asks for it).
    var auth_required = false

    enum CodingKeys: String, CodingKey {
        case node_id, cluster_id, role, term, leader, degraded, nats_connected, nats_server, started, bar, phases
        case tempo_bpm, min_bpm, max_bpm, pending, peers, now_ns, auth_required
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(node_id, forKey: .node_id)
        try c.encode(cluster_id, forKey: .cluster_id)
        try c.encode(role, forKey: .role)
        try c.encode(term, forKey: .term)
        try c.encode(leader, forKey: .leader)
        try c.encode(degraded, forKey: .degraded)
        try c.encode(nats_connected, forKey: .nats_connected)
        try c.encode(nats_server, forKey: .nats_server)
        try c.encode(started, forKey: .started)
        try c.encode(bar, forKey: .bar)
        try c.encode(phases, forKey: .phases)
        try c.encode(tempo_bpm, forKey: .tempo_bpm)
        try c.encode(min_bpm, forKey: .min_bpm)
        try c.encode(max_bpm, forKey: .max_bpm)
        try c.encode(pending, forKey: .pending)
        try c.encode(peers, forKey: .peers)
        try c.encode(now_ns, forKey: .now_ns)
        try c.encode(auth_required, forKey: .auth_required)
    }
}

/// The `beat` event: one accepted frame as this node received it.
struct LiveBeat: Encodable, Equatable {
    var beat_index: Int64
    var downbeat: Bool
    var phase: String
    var tempo_bpm: Int64
    var term: UInt64
    /// The publisher's HLC suffix (last 4 characters of its node id).
    var from: String
    var degraded: Bool
    /// The beat's instant on the timeline (Unix ns).
    var instant_ns: Int64
    /// Local wall time the frame was received (Unix ns).
    var received_ns: Int64
    /// `received_ns - instant_ns`: what `backbeat_beat_delivery_latency_seconds` records.
    var latency_ns: Int64
    /// Publish start minus scheduled instant, when this node published the
    /// beat (the `/debug/beats` record's `publish_ns - scheduled_ns`), else null.
    var jitter_ns: Int64?

    enum CodingKeys: String, CodingKey {
        case beat_index, downbeat, phase, tempo_bpm, term, from, degraded, instant_ns, received_ns, latency_ns
        case jitter_ns
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(beat_index, forKey: .beat_index)
        try c.encode(downbeat, forKey: .downbeat)
        try c.encode(phase, forKey: .phase)
        try c.encode(tempo_bpm, forKey: .tempo_bpm)
        try c.encode(term, forKey: .term)
        try c.encode(from, forKey: .from)
        try c.encode(degraded, forKey: .degraded)
        try c.encode(instant_ns, forKey: .instant_ns)
        try c.encode(received_ns, forKey: .received_ns)
        try c.encode(latency_ns, forKey: .latency_ns)
        try c.encode(jitter_ns, forKey: .jitter_ns)
    }
}

/// Counters of the event streams (loop thread), for tests and logs.
struct AdminEventStats {
    var opened: UInt64 = 0
    /// Answered 503 over `maxEventStreams`.
    var refused: UInt64 = 0
    /// Dropped because an event did not fit or the stream stalled.
    var droppedSlow: UInt64 = 0
    var beatEvents: UInt64 = 0
    var stateEvents: UInt64 = 0
    /// Frames seen while `maxPendingBeatEvents` were already queued (the oldest went).
    var beatsCoalesced: UInt64 = 0
    /// Turns whose fan-out waited because a beat was due within the quiet window.
    var deferredForBeat: UInt64 = 0
}

/// The hub of the event streams: which connections stream, what is queued
/// for them, and the before-sleep fan-out (see the file header).
final class AdminEvents: BeforeSleepHandler {
    let source: LiveSource
    let limits: AdminLimits
    let authRequired: Bool
    private let rejected: RejectedInput?
    private var streams: [AdminConnection] = []
    private var pendingBeats: [LiveBeat] = []
    private var lastSignature: LiveSignature?
    private var lastWriteMonoNs: Int64 = 0
    private(set) var stats = AdminEventStats()
    private let encoder = JSONEncoder()

    init(source: LiveSource, limits: AdminLimits, authRequired: Bool, rejected: RejectedInput?) {
        self.source = source
        self.limits = limits
        self.authRequired = authRequired
        self.rejected = rejected
        streams.reserveCapacity(limits.maxEventStreams)
        pendingBeats.reserveCapacity(limits.maxPendingBeatEvents)
    }

    var streamCount: Int { streams.count }

    /// The answer to an accepted `GET /events` up to the first event; the
    /// body runs until either side closes.
    static let streamHead: [UInt8] = Array(
        ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-store\r\n"
            + "X-Accel-Buffering: no\r\nConnection: close\r\n\r\nretry: 1000\n\n").utf8)

    enum OpenResult {
        /// Stream from now on; send these bytes first (head and the current state).
        case accepted([UInt8])
        /// Over the limit: answer this and close.
        case refused(AdminResponse)
    }

    /// A connection asks to become a stream (`GET /events`).
    func open(_ connection: AdminConnection) -> OpenResult {
        guard streams.count < limits.maxEventStreams else {
            stats.refused &+= 1
            rejected?.record(.http, "too_many_event_streams")
            return .refused(
                .error(
                    503, code: "too_many_event_streams",
                    message: "the live view has \(limits.maxEventStreams) open streams; retry later",
                    headers: [("Retry-After", "5")]))
        }
        stats.opened &+= 1
        streams.append(connection)
        // The new stream gets the current state now. The others need it only
        // if it changed since the last fan-out; then the signature stays as
        // it was, so the next fan-out sends it to all.
        if lastSignature == nil { lastSignature = source.liveSignature() }
        var first = Self.streamHead
        first.append(contentsOf: event("state", stateJSON()))
        stats.stateEvents &+= 1
        return .accepted(first)
    }

    /// A stream's connection closed (for any reason).
    func streamClosed(_ connection: AdminConnection) {
        if let index = streams.firstIndex(where: { $0 === connection }) { streams.remove(at: index) }
    }

    /// A stream was dropped for being slow (its connection closes next).
    func noteSlowDrop() {
        stats.droppedSlow &+= 1
        rejected?.record(.http, "event_stream_slow")
    }

    /// A frame accepted on the beat subject: queued for the next fan-out, never
    /// written here (this runs inside the NATS read handler). No-op without streams.
    func beatSeen(_ beat: LiveBeat) {
        guard !streams.isEmpty else { return }
        if pendingBeats.count >= limits.maxPendingBeatEvents {
            pendingBeats.removeFirst()
            stats.beatsCoalesced &+= 1
        }
        pendingBeats.append(beat)
    }

    // MARK: - Fan-out (before the loop sleeps)

    func beforeSleep() {
        guard !streams.isEmpty else {
            pendingBeats.removeAll(keepingCapacity: true)
            lastSignature = nil
            return
        }
        if let untilBeat = source.nanosecondsToNextBeat(), untilBeat >= 0,
            untilBeat < limits.eventQuietBeforeBeatNs
        {
            stats.deferredForBeat &+= 1
            return  // the beat's own turn comes first; its before-sleep sends
        }
        let signature = source.liveSignature()
        if signature != lastSignature {
            lastSignature = signature
            stats.stateEvents &+= 1
            broadcast(event("state", stateJSON()))
        }
        if !pendingBeats.isEmpty {
            for beat in pendingBeats {
                guard let data = try? encoder.encode(beat) else { continue }
                stats.beatEvents &+= 1
                broadcast(event("beat", Array(data)))
            }
            pendingBeats.removeAll(keepingCapacity: true)
        }
        let now = cloop_monotonic_ns()
        if now - lastWriteMonoNs > limits.eventKeepaliveNs { broadcast(Self.keepalive) }
    }

    private static let keepalive: [UInt8] = Array(": keepalive\n\n".utf8)

    /// Writes `bytes` to every stream; a stream that cannot take them is dropped.
    private func broadcast(_ bytes: [UInt8]) {
        lastWriteMonoNs = cloop_monotonic_ns()
        // A stream may close while we write (error, drop): iterate a copy.
        let current = streams
        for connection in current { connection.sendEvent(bytes) }
    }

    private func stateJSON() -> [UInt8] {
        var state = source.liveState()
        state.auth_required = authRequired
        return (try? encoder.encode(state)).map { Array($0) } ?? Array("{}".utf8)
    }

    /// `event: <name>\ndata: <json>\n\n` (JSON from JSONEncoder has no newline).
    private func event(_ name: String, _ json: [UInt8]) -> [UInt8] {
        var bytes = Array("event: \(name)\ndata: ".utf8)
        bytes.reserveCapacity(bytes.count + json.count + 2)
        bytes.append(contentsOf: json)
        bytes.append(contentsOf: [10, 10])
        return bytes
    }
}
