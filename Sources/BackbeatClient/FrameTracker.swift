// BackbeatClient/FrameTracker.swift — owns what a consumer makes of the frames
// on `backbeat.<cluster>.beat`: each is decoded by PulseCore's one
// `BeatFrameDecoder` (refused with its reason otherwise), checked against the
// cluster id, fenced on `term`, de-duplicated, compared with the local
// timeline, and turned into events (beats, gaps, degraded frames, leader and
// tempo changes). Pure: no clock, no I/O; the client feeds it and tests drive it.
//
// One message cannot move a consumer (issue 20, item 2). Anyone allowed to
// publish on the subject (or on an unauthenticated NATS) can send a frame, so
// a frame is believed no further than the pulse's own `EchoPolicy` believes
// an echo: its term at most `maxTermLead` above the confirmed timeline's,
// its index within a beat of now, and — here — every field equal to what the
// confirmed timeline says of that beat (else it is `.mismatch`, not a beat).
// The fence against stale terms rises only with a *confirmed* term (a
// timeline this client requested: `noteTimeline`), never with a frame's own
// claim, so a copied frame with `term + 8` or 2^63−1 cannot make the real
// leader's frames stale. A newer term on a frame asks for confirmation
// (`needsConfirmation`); stale refusals that repeat ask too, and a confirmed
// timeline then resets the fence to the cluster's term (`noteTimeline`), so a
// consumer always recovers.

import Foundation
import PulseCore

/// A frame the consumer accepted.
public struct Beat: Sendable, Hashable {
    /// What the frame says (index, phase, window id, downbeat, deadline, tempo, term, hlc).
    public var frame: DecodedBeatFrame
    /// The beat's instant on the timeline's clock: from the local timeline
    /// when one is known (exact), else from the frame's deadline (ms precision).
    public var instantNs: Int64
    /// When it arrived, on the timeline's clock (local clock plus the estimated offset).
    public var receivedNs: Int64
    /// The publisher's node-id suffix (last 4 characters).
    public var publisher: String { frame.hlcSuffix }
    public var index: Int64 { frame.beatIndex }
    public var phase: String { frame.phase }
    public var windowId: String { frame.windowId }
    /// Observed delivery offset of this frame: arrival minus instant.
    public var deliveryOffsetNs: Int64 { receivedNs &- instantNs }
}

/// What a consumer hears, in order.
public enum BackbeatEvent: Sendable {
    /// An accepted frame (every one, degraded ones included).
    case beat(Beat)
    /// Beats that never arrived, seen when a later one did (e.g. a failover).
    case gap(missed: ClosedRange<Int64>)
    /// An accepted frame marked `"degraded":true` (no leader; a node keeps the timeline).
    case degraded(Beat)
    /// Frames now come from a higher term (a new leader, or a degraded node's term).
    case leaderChanged(term: UInt64, previousTerm: UInt64, publisher: String)
    /// The tempo on the frames changed (a committed change took effect at `atBeat`).
    case tempoChanged(bpm: Int64, previousBpm: Int64, atBeat: Int64)
    /// A committed tempo change is ahead (learnt from the timeline, before it applies).
    case tempoScheduled(TempoChange)
    /// A newer timeline was adopted (a reply to this client's request; a
    /// publication only makes the client ask).
    case timelineUpdated(BeatTimeline)
    /// A frame was refused: the decoder's reason (`bad_phase`, `malformed_json`, ...),
    /// `wrong_cluster`, or `stale_term` (a term below one already seen).
    case refused(reason: String)
    /// A frame disagrees with the local timeline on `field`: it is not
    /// delivered as a beat, and the client fetches the timeline again.
    case mismatch(beat: Int64, field: String)
    /// The NATS connection was lost (`false`) or is back (`true`).
    case connection(up: Bool)
}

/// Judges frames for one consumer. A value type; not thread-safe by itself.
public struct FrameTracker: Sendable {
    public let clusterId: String
    /// The highest index accepted, or -1.
    public private(set) var lastIndex: Int64 = -1
    /// The highest term confirmed by a timeline reply (``noteTimeline(_:)``):
    /// frames below it are refused. A frame's own term never raises it.
    public private(set) var fenceTerm: UInt64 = 0
    /// Frames refused as `stale_term` since the last accepted one.
    public private(set) var staleInARow = 0
    /// The term of the last accepted frame (0 before the first).
    public private(set) var lastFrameTerm: UInt64 = 0
    public private(set) var lastBpm: Int64 = 0
    public private(set) var duplicates: UInt64 = 0
    public private(set) var refused: UInt64 = 0
    public private(set) var accepted: UInt64 = 0

    public init(clusterId: String) { self.clusterId = clusterId }

    /// Terms a frame may be ahead of the known timeline (elections are rare;
    /// the pulse's own echo policy allows as many).
    public static let maxTermLead: UInt64 = EchoPolicy.clusterTermLead
    /// Beats a frame may arrive after its instant and still count.
    public static let maxBeatsLate: Int64 = 4

    /// Refusals that mean the local timeline may be out of date (the client fetches it again).
    public static let refetchReasons: Set<String> = ["term_ahead", "index_ahead", "index_behind"]
    /// `stale_term` refusals in a row after which the fence is re-checked.
    public static let staleRefusalsBeforeRecheck = 2

    /// Whether the client should confirm the timeline by a request: the last
    /// accepted frame claimed a term above the fence, or stale refusals repeat.
    public var needsConfirmation: Bool {
        lastFrameTerm > fenceTerm || staleInARow >= Self.staleRefusalsBeforeRecheck
    }

    /// A timeline *confirmed* by a reply to this client's own request (never
    /// a publication, which anyone may send): its term raises the fence (a
    /// deposed leader's late frames are refused), or — after repeated stale
    /// refusals — sets it, so a fence above the cluster's real term heals.
    public mutating func noteTimeline(_ timeline: BeatTimeline) {
        if staleInARow >= Self.staleRefusalsBeforeRecheck {
            fenceTerm = timeline.term
            staleInARow = 0
        } else {
            fenceTerm = max(fenceTerm, timeline.term)
        }
    }

    /// A confirmed timeline (a reply to this client's own request, never a
    /// publication) against the one held: adopted unless older (``BeatTimeline/version``: a lagging
    /// node's answer never rolls a committed change back); its term raises
    /// the fence either way. Returns the timeline to hold and the events
    /// (`tempoScheduled` for a change not known before, `timelineUpdated`).
    public mutating func adopt(_ timeline: BeatTimeline, over held: BeatTimeline?) -> (
        held: BeatTimeline, events: [BackbeatEvent]
    ) {
        noteTimeline(timeline)
        guard let held else {
            return (timeline, (timeline.pending.map { [.tempoScheduled($0)] } ?? []) + [.timelineUpdated(timeline)])
        }
        guard timeline.version >= held.version, timeline != held else { return (held, []) }
        var events: [BackbeatEvent] = []
        if let pending = timeline.pending, held.pending != pending { events.append(.tempoScheduled(pending)) }
        events.append(.timelineUpdated(timeline))
        return (timeline, events)
    }

    /// One message from the beat subject, received at `receivedNs` (timeline
    /// clock), judged against `timeline` when known. Returns the events it causes.
    public mutating func receive(_ bytes: UnsafeRawBufferPointer, receivedNs: Int64, timeline: BeatTimeline?)
        -> [BackbeatEvent]
    {
        let frame: DecodedBeatFrame
        switch BeatFrameDecoder.result(bytes) {
        case .failure(let error):
            return refuse(error.reason)
        case .success(let decoded):
            frame = decoded
        }
        guard frame.clusterId == clusterId else { return refuse("wrong_cluster") }
        // Fencing: a frame from an older term than one already seen is from a
        // deposed publisher (requirements §2: `term` never decreases across leaders).
        guard frame.term >= fenceTerm else {
            staleInARow += 1
            return refuse("stale_term")
        }
        if let timeline {
            // Bounds that keep one hostile frame from fencing the consumer out
            // (a huge term or index) and keep the math on frame values in range:
            // a term at most `maxTermLead` above the timeline's, an index within
            // [-maxBeatsLate, +1] of the beat in progress when it arrived.
            let (ceiling, overflow) = timeline.term.addingReportingOverflow(Self.maxTermLead)
            guard overflow || frame.term <= ceiling else { return refuse("term_ahead") }
            let current = timeline.beat(at: receivedNs)
            guard frame.beatIndex <= current + 1 else { return refuse("index_ahead") }
            guard frame.beatIndex >= current - Self.maxBeatsLate else { return refuse("index_behind") }
        } else {
            // No timeline yet: only the frame's own deadline, near the arrival.
            guard let scheduled = frame.scheduledNs else { return refuse("far_from_now") }
            let (distance, overflow) = scheduled.subtractingReportingOverflow(receivedNs)
            guard !overflow, distance.magnitude < 60_000_000_000 else { return refuse("far_from_now") }
        }
        // A frame that contradicts the confirmed timeline is not a beat (a
        // forged phase or downbeat, or a timeline this client has not yet
        // confirmed: it fetches it, and the next frame counts).
        if let timeline, let field = Self.disagreement(frame, timeline) {
            refused &+= 1
            return [.mismatch(beat: frame.beatIndex, field: field)]
        }
        // Duplicates (redelivery, a degraded node racing the leader): the first one counts.
        guard frame.beatIndex > lastIndex else {
            duplicates &+= 1
            return []
        }
        var events: [BackbeatEvent] = []
        let instantNs = timeline?.instantNs(ofBeat: frame.beatIndex) ?? frame.scheduledNs ?? receivedNs
        let beat = Beat(frame: frame, instantNs: instantNs, receivedNs: receivedNs)
        if lastIndex >= 0 && frame.beatIndex > lastIndex + 1 {
            events.append(.gap(missed: (lastIndex + 1)...(frame.beatIndex - 1)))
        }
        if lastFrameTerm != 0 && frame.term > lastFrameTerm {
            events.append(.leaderChanged(term: frame.term, previousTerm: lastFrameTerm, publisher: frame.hlcSuffix))
        }
        if lastBpm != 0 && frame.tempoBpm != lastBpm {
            events.append(.tempoChanged(bpm: frame.tempoBpm, previousBpm: lastBpm, atBeat: frame.beatIndex))
        }
        events.append(.beat(beat))
        if frame.degraded { events.append(.degraded(beat)) }
        lastIndex = frame.beatIndex
        lastFrameTerm = frame.term
        staleInARow = 0
        lastBpm = frame.tempoBpm
        accepted &+= 1
        return events
    }

    private mutating func refuse(_ reason: String) -> [BackbeatEvent] {
        refused &+= 1
        return [.refused(reason: reason)]
    }

    /// The first field on which `frame` differs from what `timeline` says of
    /// its beat, or nil when it agrees (phase, downbeat, window id, tempo, deadline).
    public static func disagreement(_ frame: DecodedBeatFrame, _ timeline: BeatTimeline) -> String? {
        let k = frame.beatIndex
        if frame.downbeat != timeline.isDownbeat(k) { return "downbeat" }
        if frame.phase != timeline.phase(ofBeat: k) { return "phase" }
        if frame.tempoBpm != timeline.bpm(ofBeat: k) { return "tempo_bpm" }
        let deadlineMs = timeline.timeline.deadlineUnixMs(ofBeat: k)
        if frame.deadlineUnixMs != deadlineMs { return "deadline_at" }
        if frame.windowId != timeline.windowId(ofBeat: k) { return "window_id" }
        return nil
    }
}
