// Metrics: the Prometheus metrics of §7, through swift-prometheus.
//
// Only histograms are fed on the beat path (`beatRecorded`), and their
// `record` takes a lock and bumps counters in place: no allocation (checked
// by the timer-driven zero-allocation test, which counts everything between
// the timer's wake and the end of the beat's bookkeeping). Counters and
// gauges owned by other components are brought up to date at scrape time
// (`refresh`), so the beat path never touches them.
import Prometheus

/// Values other components own, read at scrape time.
struct MetricsSnapshot {
    var beats: BeatStats
    var natsConnected: Bool
    var natsReconnects: UInt64
    /// The requests connection's (issue 20), and both connections'
    /// slow-consumer events (client pending limits overflowed).
    var requestsNatsConnected = false
    var requestsNatsReconnects: UInt64 = 0
    var natsSlowConsumer: UInt64 = 0
    var requestsNatsSlowConsumer: UInt64 = 0
    var isLeader: Bool
    var degraded: Bool
    var tempoBpm: Int64
    var leadershipChanges: UInt64
    var timerDriftRatio: Double
    var hlcRemoteRejected: UInt64
    var clockOffsetSeconds: Double = 0
    var raftBadFrames: UInt64 = 0
    var rejectedInput: [RejectedInput.Key: UInt64] = [:]
    /// A leader is known (a single node is its own).
    var hasLeader = true
    var raftTerm: UInt64 = 0
    var raftCommitIndex: UInt64 = 0
    /// Voters in the configuration in force, and in `-peers` (0 and 0 for a single node).
    var raftVoters = 0
    var raftVotersConfigured = 0
    /// The HLC bound, `-max-offset-ms`, in seconds.
    var hlcMaxOffsetSeconds = 0.0
    /// Times the event loop woke for events (`EventLoop.wakes`).
    var loopWakes: UInt64 = 0
}

/// The node's metric registry.
final class PulseMetrics: BeatObserver {
    let registry = PrometheusCollectorRegistry()
    /// 1 µs … 1 s, roughly 1-2.5-5 per decade.
    static let bucketsSeconds: [Double] = [
        0.000_001, 0.000_002_5, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
        0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
    ]
    /// 10 µs (tmpfs, a write cache) … 10 s (a stalled disk).
    static let fsyncBucketsSeconds: [Double] = [
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
        0.25, 0.5, 1, 2.5, 5, 10,
    ]
    /// Reasons a tempo change can be refused (the `reason` label).
    static let tempoRefusalReasons = [
        "malformed_json", "invalid_field", "out_of_range", "delta_too_large", "change_pending", "no_leader",
        "outcome_unknown", "not_caught_up",
        "unauthorized", "persist_failed", "body_too_large",
    ]

    let publishDuration: ValueHistogram
    /// Per synced file: how long each fsync/fdatasync of the data dir took.
    let fsyncDuration: [DiskSync.File: ValueHistogram]
    let jitter: ValueHistogram
    let deliveryLatency: ValueHistogram
    private let timerDrift: Gauge
    private let isLeader: Gauge
    private let beatsTotal: Counter
    private let beatsMissed: Counter
    private let tempoErrors: [String: Counter]
    private let leadershipChanges: Counter
    private let degradation: Gauge
    /// `{connection="beat"}` and `{connection="requests"}` (NatsLinkRole).
    private let natsConnected: Gauge
    private let natsReconnects: Counter
    private let requestsNatsConnected: Gauge
    private let requestsNatsReconnects: Counter
    private let natsSlowConsumer: Counter
    private let requestsNatsSlowConsumer: Counter
    private let tempoBpm: Gauge
    private let hotPathBytes: Counter
    private let beatsUnpublished: Counter
    private let hlcRejected: Counter
    private let degradedBeats: Counter
    private let raftBadFrames: Counter
    private let clockOffset: Gauge
    private let hasLeader: Gauge
    private let raftTerm: Gauge
    private let raftCommitIndex: Gauge
    private let raftVoters: Gauge
    private let raftVotersConfigured: Gauge
    private let hlcMaxOffset: Gauge
    private let loopWakes: Counter
    private var exported = MetricsSnapshot(
        beats: BeatStats(), natsConnected: false, natsReconnects: 0, isLeader: false, degraded: false, tempoBpm: 0,
        leadershipChanges: 0, timerDriftRatio: 0, hlcRemoteRejected: 0)
    private var tempoErrorCounts: [String: UInt64] = [:]
    private var rejectedCounters: [RejectedInput.Key: Counter] = [:]
    /// Exponentially weighted mean of (publish − instant) / period over recent beats.
    private(set) var driftRatio: Double = 0

    init() {
        Self.warmUp()
        let r = registry
        publishDuration = r.makeValueHistogram(
            name: "backbeat_beat_publish_duration_seconds", buckets: Self.bucketsSeconds,
            help: "Time from the start of a beat's publish to the flushed write, in seconds.")
        jitter = r.makeValueHistogram(
            name: "backbeat_pulse_jitter_seconds", buckets: Self.bucketsSeconds,
            help: "|publish time - scheduled instant| per beat, in seconds (PER-002).")
        deliveryLatency = r.makeValueHistogram(
            name: "backbeat_beat_delivery_latency_seconds", buckets: Self.bucketsSeconds,
            help: "Receive time of a frame on the beat subject minus its scheduled instant, in seconds (PER-001).")
        var fsync: [DiskSync.File: ValueHistogram] = [:]
        for file in DiskSync.File.allCases {
            fsync[file] = r.makeValueHistogram(
                name: "backbeat_fsync_duration_seconds", labels: [("file", file.rawValue)],
                buckets: Self.fsyncBucketsSeconds,
                help:
                    "Duration of each fsync/fdatasync of the data dir, by file (directories: raft/ and .), in seconds.")
        }
        fsyncDuration = fsync
        timerDrift = r.makeGauge(
            name: "backbeat_timer_drift_ratio",
            help:
                "How far this node's local beats stray from the committed timeline, as a fraction of the period (PER-003)."
        )
        isLeader = r.makeGauge(name: "backbeat_is_leader", help: "1 while this node is the publishing leader.")
        beatsTotal = r.makeCounter(name: "backbeat_beats_total", help: "Beat frames published by this node.")
        beatsMissed = r.makeCounter(
            name: "backbeat_beats_missed_total", help: "Beats not published because their instant passed too long ago.")
        var errors: [String: Counter] = [:]
        for reason in Self.tempoRefusalReasons {
            errors[reason] = r.makeCounter(
                name: "backbeat_tempo_change_errors_total", labels: [("reason", reason)],
                help: "Refused tempo change requests, by reason.")
        }
        tempoErrors = errors
        leadershipChanges = r.makeCounter(
            name: "backbeat_leadership_changes_total", help: "Leadership changes this node has observed.")
        degradation = r.makeGauge(
            name: "backbeat_degradation_mode", help: "1 while the node keeps the timeline without a leader.")
        let connectedHelp = "1 while connected to NATS, by connection (beat: frames; requests: consumer requests)."
        let reconnectsHelp = "Reconnections to NATS, by connection (beat, requests)."
        let slowHelp =
            "Slow-consumer errors of the NATS client (a subscription's pending limits overflowed), by connection."
        // One series per NatsLinkRole.
        func counters(_ name: String, _ help: String) -> (Counter, Counter) {
            (
                r.makeCounter(name: name, labels: [("connection", "beat")], help: help),
                r.makeCounter(name: name, labels: [("connection", "requests")], help: help)
            )
        }
        natsConnected = r.makeGauge(
            name: "backbeat_nats_connected", labels: [("connection", "beat")], help: connectedHelp)
        requestsNatsConnected = r.makeGauge(
            name: "backbeat_nats_connected", labels: [("connection", "requests")], help: connectedHelp)
        (natsReconnects, requestsNatsReconnects) = counters("backbeat_nats_reconnects_total", reconnectsHelp)
        (natsSlowConsumer, requestsNatsSlowConsumer) = counters("backbeat_nats_slow_consumer_total", slowHelp)
        tempoBpm = r.makeGauge(name: "backbeat_tempo_bpm", help: "Current tempo in beats per minute.")
        hotPathBytes = r.makeCounter(
            name: "backbeat_hot_path_allocated_bytes_total",
            help: "Bytes allocated on the beat path, read from jemalloc's thread counter (expected 0).")
        beatsUnpublished = r.makeCounter(
            name: "backbeat_beats_unpublished_total", help: "Beats due while NATS was unavailable (not buffered).")
        raftBadFrames = r.makeCounter(
            name: "backbeat_raft_bad_frames_total",
            help: "Raft transport frames refused (bad header, size or message); each closes its connection.")
        degradedBeats = r.makeCounter(
            name: "backbeat_degraded_beats_total", help: "Frames this node published marked degraded (no leader).")
        clockOffset = r.makeGauge(
            name: "backbeat_clock_offset_seconds",
            help: "Estimated leader clock minus this node's clock, from Raft traffic (NTP-style, median filtered).")
        hasLeader = r.makeGauge(
            name: "backbeat_has_leader", help: "1 while this node knows a Raft leader (a single node is its own).")
        raftTerm = r.makeGauge(name: "backbeat_raft_term", help: "This node's current Raft term (0: single node).")
        raftCommitIndex = r.makeGauge(
            name: "backbeat_raft_commit_index", help: "Highest Raft log index this node knows to be committed.")
        raftVoters = r.makeGauge(
            name: "backbeat_raft_voters", help: "Voters in the Raft configuration in force on this node.")
        raftVotersConfigured = r.makeGauge(
            name: "backbeat_raft_voters_configured", help: "Voters listed in -peers (1 for a single node: itself).")
        loopWakes = r.makeCounter(
            name: "backbeat_loop_wakes_total",
            help: "Times the event loop thread woke for events (beats, sockets, timers): its CPU cost grows with them.")
        hlcMaxOffset = r.makeGauge(
            name: "backbeat_hlc_max_offset_seconds",
            help: "The HLC bound (-max-offset-ms): remote stamps further ahead are not adopted.")
        r.makeGauge(
            name: "backbeat_build_info",
            labels: [("version", BuildInfo.version), ("commit", BuildInfo.commit), ("swift", BuildInfo.swift)],
            help: "Always 1; the labels say which build runs."
        ).set(Double(1))
        hlcRejected = r.makeCounter(
            name: "backbeat_hlc_remote_rejected_total",
            help: "Remote HLC stamps not adopted because they were further ahead than the max offset.")
    }

    /// Start-up: runs the recording path once on a scratch histogram so that
    /// one-time runtime work (generic metadata, lazily created state) happens
    /// now and not on the first beat.
    static func warmUp() {
        let scratch = PrometheusCollectorRegistry().makeValueHistogram(name: "warmup", buckets: bucketsSeconds)
        for value in [0.000_001, 0.5, 2.0] { scratch.record(value) }
    }

    /// Start-up, on the loop thread: the beat path's own call once, on a
    /// scratch instance (a debug build instantiates runtime metadata on the
    /// first call; the hot-path allocation counter saw 16 KiB on beat 0
    /// otherwise). The real instance records nothing.
    static func warmUpBeatPath() {
        PulseMetrics().beatRecorded(
            BeatRecord(
                index: 0, scheduledNs: 0, wakeNs: 0, publishStartNs: 0, publishDoneNs: 1, published: true, periodNs: 1))
    }

    /// Beat path: records the beat's timings. Allocation-free after `warmUp()`
    /// and `warmUpBeatPath()`.
    func beatRecorded(_ record: BeatRecord) {
        guard record.published else { return }
        if record.periodNs > 0 {
            driftRatio = 0.9 * driftRatio + 0.1 * Double(record.jitterNs) / Double(record.periodNs)
        }
        jitter.record(Double(abs(record.jitterNs)) / 1e9)
        publishDuration.record(Double(record.publishDurationNs) / 1e9)
    }

    /// The data dir's syncs, timed into `fsyncDuration` (called on the
    /// storage queues; the histograms take their own lock).
    var diskSync: DiskSync {
        let histograms = fsyncDuration
        return DiskSync { file, durationNs in histograms[file]?.record(Double(durationNs) / 1e9) }
    }

    /// Any thread: a frame seen on the beat subject `latencyNs` after its instant.
    func deliveryObserved(latencyNs: Int64) {
        deliveryLatency.record(Double(max(0, latencyNs)) / 1e9)
    }

    /// Counts a refused tempo change (loop thread).
    func tempoRefused(reason: String) {
        let key = tempoErrors[reason] == nil ? "invalid_field" : reason
        tempoErrors[key]?.increment()
        tempoErrorCounts[key, default: 0] += 1
    }

    func tempoRefusals(reason: String) -> UInt64 { tempoErrorCounts[reason] ?? 0 }

    /// Brings counters and gauges up to `now` (scrape time, loop thread).
    func refresh(_ now: MetricsSnapshot) {
        func bump(_ counter: Counter, _ new: UInt64, _ old: UInt64) {
            if new > old { counter.increment(by: Int64(new - old)) }
        }
        bump(beatsTotal, now.beats.beatsPublished, exported.beats.beatsPublished)
        bump(beatsMissed, now.beats.beatsMissed, exported.beats.beatsMissed)
        bump(beatsUnpublished, now.beats.beatsUnpublished, exported.beats.beatsUnpublished)
        bump(hotPathBytes, now.beats.hotPathAllocatedBytes, exported.beats.hotPathAllocatedBytes)
        bump(natsReconnects, now.natsReconnects, exported.natsReconnects)
        bump(requestsNatsReconnects, now.requestsNatsReconnects, exported.requestsNatsReconnects)
        bump(natsSlowConsumer, now.natsSlowConsumer, exported.natsSlowConsumer)
        bump(requestsNatsSlowConsumer, now.requestsNatsSlowConsumer, exported.requestsNatsSlowConsumer)
        bump(leadershipChanges, now.leadershipChanges, exported.leadershipChanges)
        bump(hlcRejected, now.hlcRemoteRejected, exported.hlcRemoteRejected)
        bump(degradedBeats, now.beats.degradedBeats, exported.beats.degradedBeats)
        bump(raftBadFrames, now.raftBadFrames, exported.raftBadFrames)
        bump(loopWakes, now.loopWakes, exported.loopWakes)
        for (key, value) in now.rejectedInput {
            let counter = rejectedCounter(key)
            bump(counter, value, exported.rejectedInput[key] ?? 0)
        }
        clockOffset.set(to: now.clockOffsetSeconds)
        natsConnected.set(to: now.natsConnected ? 1 : 0)
        requestsNatsConnected.set(to: now.requestsNatsConnected ? 1 : 0)
        isLeader.set(to: now.isLeader ? 1 : 0)
        degradation.set(to: now.degraded ? 1 : 0)
        tempoBpm.set(to: Double(now.tempoBpm))
        timerDrift.set(to: now.timerDriftRatio)
        hasLeader.set(to: now.hasLeader ? 1 : 0)
        raftTerm.set(to: Double(now.raftTerm))
        raftCommitIndex.set(to: Double(now.raftCommitIndex))
        raftVoters.set(to: Double(now.raftVoters))
        raftVotersConfigured.set(to: Double(now.raftVotersConfigured))
        hlcMaxOffset.set(to: now.hlcMaxOffsetSeconds)
        exported = now
    }

    /// `backbeat_rejected_input_total{surface,reason}`, created the first time a pair is seen.
    private func rejectedCounter(_ key: RejectedInput.Key) -> Counter {
        if let counter = rejectedCounters[key] { return counter }
        let counter = registry.makeCounter(
            name: "backbeat_rejected_input_total", labels: [("surface", key.surface.rawValue), ("reason", key.reason)],
            help: "Inputs from outside the process refused at the boundary, by surface and reason (requirements §10).")
        rejectedCounters[key] = counter
        return counter
    }

    /// The exposition text (Prometheus text format 0.0.4), with the
    /// process's own `process_*` series.
    func text() -> String { registry.emitToString() + ProcessMetrics.text() }
}
