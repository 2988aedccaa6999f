// BackbeatClient/BeatTimeline.swift — owns the consumer's copy of the
// committed timeline (`backbeat.timeline.v1`, docs/protocol.md): decoding and
// validating a timeline message, and every local answer a consumer asks
// between frames (beat, phase, window id, downbeat, next beat/downbeat at any
// instant). The math is PulseCore's `Timeline`, the same code the pulse runs,
// so an answer here is the frame the pulse will publish.

import Foundation
import PulseCore

/// One beat as the timeline defines it (requirements §1).
public struct BeatInfo: Sendable, Hashable, CustomStringConvertible {
    /// `beat_index`.
    public var index: Int64
    /// The beat's instant, Unix ns on the timeline's clock (exact).
    public var instantNs: Int64
    /// `deadline_at`: the instant of the next beat, Unix ns.
    public var deadlineNs: Int64
    public var downbeat: Bool
    public var phase: String
    /// 32 lowercase hex digits (the bar's window).
    public var windowId: String
    /// The tempo in force at this beat.
    public var bpm: Int64

    public var description: String {
        "beat \(index) · \(phase) · window \(windowId.prefix(4))… · \(bpm) bpm\(downbeat ? " · downbeat" : "")"
    }
}

/// Why a timeline message was refused (`reason` is a snake_case code).
public enum TimelineDecodeError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Not JSON of the documented shape (a field missing or of the wrong type).
    case malformed(String)
    /// `type` is not `backbeat.timeline.v1`.
    case wrongType
    /// Another cluster's timeline.
    case wrongCluster(String)
    /// A value outside what the timeline math supports (epoch, bar, phases, pending).
    case outOfRange(String)
    /// An error reply (`{"error", "code"}`) from the node.
    case errorReply(code: String, message: String)

    public var reason: String {
        switch self {
        case .malformed: return "malformed"
        case .wrongType: return "wrong_type"
        case .wrongCluster: return "wrong_cluster"
        case .outOfRange: return "out_of_range"
        case .errorReply(let code, _): return code
        }
    }

    public var description: String {
        switch self {
        case .malformed(let why): return "malformed timeline: \(why)"
        case .wrongType: return "not a backbeat.timeline.v1 message"
        case .wrongCluster(let id): return "timeline of cluster '\(id)'"
        case .outOfRange(let why): return "timeline out of range: \(why)"
        case .errorReply(let code, let message): return "\(code): \(message)"
        }
    }
}

/// The committed timeline of a cluster, held by a consumer: answers every
/// question about beats locally, with no round trip. A value type.
public struct BeatTimeline: Sendable, Hashable {
    public let clusterId: String
    /// The replicated math (epoch, pending change, bar): PulseCore's.
    public let timeline: Timeline
    /// Phase names; `phase` of beat `k` is `phases[(k % bar) * phases.count / bar]`.
    public let phases: [String]
    /// The Raft term of the node that answered (a fencing token).
    public let term: UInt64
    /// The leader's node id, if the answering node knew one.
    public let leader: String?
    /// The node that answered or published this timeline.
    public let nodeId: String
    /// Whether that node was in degradation mode.
    public let degraded: Bool
    /// That node's estimate of the timeline clock when it answered (Unix ns).
    public let servedAtNs: Int64

    /// A timeline from its parts (tests, or a consumer that already knows it).
    /// Throws `outOfRange` when the parts are outside the supported math.
    public init(
        clusterId: String, epoch: TempoEpoch, pending: TempoChange?, bar: Int, phases: [String], term: UInt64,
        leader: String?, nodeId: String = "", degraded: Bool = false, servedAtNs: Int64 = 0
    ) throws(TimelineDecodeError) {
        guard (1...1024).contains(bar) else { throw .outOfRange("bar \(bar) not in 1...1024") }
        guard !phases.isEmpty, phases.count <= bar, phases.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 64 }) else {
            throw .outOfRange("phases must be 1...bar non-empty names of at most 64 bytes")
        }
        let validEpoch: TempoEpoch
        do {
            validEpoch = try TempoEpoch.validated(startBeat: epoch.startBeat, startNs: epoch.startNs, bpm: epoch.bpm)
        } catch {
            throw .outOfRange("epoch: \(error)")
        }
        var timeline = Timeline(epoch: validEpoch, bar: bar, phaseCount: phases.count)
        if let pending {
            // The same check the cluster applies to a committed change: the
            // next epoch must itself be a supported one.
            guard let startNs = validEpoch.checkedInstantNs(ofBeat: pending.atBeat),
                (try? TempoEpoch.validated(startBeat: pending.atBeat, startNs: startNs, bpm: pending.bpm)) != nil
            else { throw .outOfRange("pending change at beat \(pending.atBeat), \(pending.bpm) bpm") }
            do {
                try timeline.schedule(change: pending)
            } catch {
                throw .outOfRange("pending change: \(error)")
            }
        }
        self.clusterId = clusterId
        self.timeline = timeline
        self.phases = phases
        self.term = term
        self.leader = leader
        self.nodeId = nodeId
        self.degraded = degraded
        self.servedAtNs = servedAtNs
    }

    /// Largest timeline message considered.
    public static let maxMessageBytes = 64 * 1024

    /// Decodes a `backbeat.timeline.v1` message (a `GET /timeline` body, a
    /// reply or a publication on the timeline subject) of cluster `clusterId`.
    /// Every value is validated before the math sees it: a hostile message is
    /// refused with a reason, never trapped on.
    public static func decode(_ data: Data, clusterId: String) throws(TimelineDecodeError) -> BeatTimeline {
        guard data.count <= maxMessageBytes else { throw .malformed("larger than \(maxMessageBytes) bytes") }
        let wire: Wire
        do {
            wire = try JSONDecoder().decode(Wire.self, from: data)
        } catch {
            if let failure = try? JSONDecoder().decode(ErrorWire.self, from: data) {
                throw .errorReply(code: failure.code, message: failure.error)
            }
            throw .malformed("\(error)")
        }
        guard wire.type == "backbeat.timeline.v1" else { throw .wrongType }
        guard wire.cluster_id == clusterId else { throw .wrongCluster(wire.cluster_id) }
        guard wire.epoch.bpm >= 1 else { throw .outOfRange("bpm \(wire.epoch.bpm)") }
        let epoch = TempoEpoch(startBeat: wire.epoch.start_beat, startNs: wire.epoch.start_ns, bpm: wire.epoch.bpm)
        let timeline = try BeatTimeline(
            clusterId: wire.cluster_id, epoch: epoch,
            pending: wire.pending.map { TempoChange(atBeat: $0.at_beat, bpm: $0.bpm) }, bar: wire.bar,
            phases: wire.phases, term: wire.term, leader: wire.leader, nodeId: wire.node_id,
            degraded: wire.degraded, servedAtNs: wire.now_ns)
        if let pending = wire.pending, timeline.timeline.pendingEpoch?.startNs != pending.at_ns {
            throw .outOfRange("pending at_ns \(pending.at_ns) is not the instant of beat \(pending.at_beat)")
        }
        return timeline
    }

    private struct Wire: Decodable {
        struct Epoch: Decodable {
            var start_beat: Int64
            var start_ns: Int64
            var bpm: Int64
        }
        struct Pending: Decodable {
            var at_beat: Int64
            var at_ns: Int64
            var bpm: Int64
        }
        var type: String
        var cluster_id: String
        var epoch: Epoch
        var bar: Int
        var phases: [String]
        var pending: Pending?
        var term: UInt64
        var leader: String?
        var node_id: String
        var degraded: Bool
        var now_ns: Int64
    }

    private struct ErrorWire: Decodable {
        var error: String
        var code: String
    }

    // MARK: Ordering of versions

    /// Where this timeline stands in the cluster's history: every committed
    /// change moves `(epoch start beat, has pending)` forward (a pending change
    /// is scheduled after the epoch's start, and applying it makes its beat
    /// the new start). A lagging node's older answer has a smaller key.
    public var version: Version {
        Version(epochStartBeat: timeline.epoch.startBeat, hasPending: timeline.pendingEpoch != nil)
    }

    /// See ``version``.
    public struct Version: Sendable, Hashable, Comparable {
        public var epochStartBeat: Int64
        public var hasPending: Bool
        public static func < (a: Version, b: Version) -> Bool {
            (a.epochStartBeat, a.hasPending ? 1 : 0) < (b.epochStartBeat, b.hasPending ? 1 : 0)
        }
    }

    /// The committed change still ahead, if any.
    public var pending: TempoChange? { timeline.pending }

    // MARK: Local answers (no round trip)

    /// The beat in progress at `ns` (the last whose instant is ≤ `ns`).
    public func beat(at ns: Int64) -> Int64 { timeline.beat(atOrBeforeNs: ns) }

    /// The exact fractional position at `ns`: the beat in progress, the ns into it and its length.
    public func position(at ns: Int64) -> BeatPosition { timeline.position(atNs: ns) }

    /// The position at `ns` as one number of beats (Ableton Link's `beatAtTime`).
    public func beatAtTime(_ ns: Int64) -> Double { position(at: ns).beats }

    /// The position at `ns` within a cycle of `quantum` beats, in `[0, quantum)` (Link's `phaseAtTime`).
    public func phaseAtTime(_ ns: Int64, quantum: Int64) -> Double { position(at: ns).phase(quantum: quantum) }

    /// Instant of beat `k`, Unix ns (exact, as the pulse computes it).
    public func instantNs(ofBeat k: Int64) -> Int64 { timeline.instantNs(ofBeat: k) }

    public func phase(ofBeat k: Int64) -> String { phases[timeline.phaseIndex(k)] }

    /// The phase in progress at `ns`.
    public func phase(at ns: Int64) -> String { phase(ofBeat: beat(at: ns)) }

    /// Window id of beat `k`'s bar: first 32 hex digits of sha256("cluster:barStart").
    public func windowId(ofBeat k: Int64) -> String {
        WindowId.string(clusterId: clusterId, barStart: timeline.barStart(k))
    }

    /// The window in progress at `ns`.
    public func windowId(at ns: Int64) -> String { windowId(ofBeat: beat(at: ns)) }

    public func isDownbeat(_ k: Int64) -> Bool { timeline.isDownbeat(k) }

    /// Whether the beat in progress at `ns` is a downbeat.
    public func isDownbeat(at ns: Int64) -> Bool { isDownbeat(beat(at: ns)) }

    /// Tempo in force at beat `k`.
    public func bpm(ofBeat k: Int64) -> Int64 {
        if let next = timeline.pendingEpoch, k >= next.startBeat { return next.bpm }
        return timeline.epoch.bpm
    }

    /// Everything about beat `k`.
    public func info(ofBeat k: Int64) -> BeatInfo {
        BeatInfo(
            index: k, instantNs: instantNs(ofBeat: k), deadlineNs: timeline.deadlineNs(ofBeat: k),
            downbeat: isDownbeat(k), phase: phase(ofBeat: k), windowId: windowId(ofBeat: k), bpm: bpm(ofBeat: k))
    }

    /// The beat in progress at `ns`.
    public func info(at ns: Int64) -> BeatInfo { info(ofBeat: beat(at: ns)) }

    /// The first beat whose instant is after `ns`.
    public func nextBeat(after ns: Int64) -> BeatInfo { info(ofBeat: timeline.nextBeat(afterNs: ns)) }

    /// The first downbeat whose instant is after `ns`.
    public func nextDownbeat(after ns: Int64) -> BeatInfo {
        info(ofBeat: timeline.nextDownbeat(atOrAfter: timeline.nextBeat(afterNs: ns)))
    }

    /// The first beat after `ns` that starts phase `name` (nil for an unknown phase).
    public func nextPhaseStart(_ name: String, after ns: Int64) -> BeatInfo? {
        guard phases.contains(name) else { return nil }
        var k = timeline.nextBeat(afterNs: ns)
        // A phase starts within one bar; bar ≤ 1024 bounds the walk.
        for _ in 0...timeline.bar {
            if phase(ofBeat: k) == name && (timeline.isDownbeat(k) || phase(ofBeat: k - 1) != name) {
                return info(ofBeat: k)
            }
            k += 1
        }
        return nil
    }
}
