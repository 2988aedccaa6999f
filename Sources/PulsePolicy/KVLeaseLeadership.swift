// PulsePolicy/KVLeaseLeadership.swift — the election strategy as the beat
// side sees it (issue 21: "the election strategy is a port of the core").
// `BeatShell` reads who may publish, the term to stamp and the committed
// timeline through `BeatLeadership`; the Raft core (`ClusterCore`) and the
// KV lease (`KVLeadership`) both conform, so the beat path — plan, spin,
// confirm, encode, write — is one program for both strategies.
//
// KV mode's publish rule: the lease holder publishes while its lease runs
// (`KVLease.mayPublish`, the argument in KVLease.swift) and once the watch
// applied a timeline record of its own term (`KVLeaseTimeline.holderReady`:
// it then knows every change an earlier holder wrote). Everyone else
// follows. The term a node judges frames by is its lease's while it holds
// the key, else the highest lease revision it watched: frames of a newer
// holding arrive with a term no lower than its creation revision.
import PulseCore

/// What the beat side reads from the election strategy (loop thread only).
public protocol BeatLeadership: AnyObject {
    /// The committed timeline; nil before the first epoch.
    var committedTimeline: Timeline? { get }
    /// The term stamped on frames and frames are judged against.
    var term: UInt64 { get }
    /// The publish mode at `nowMonoNs` for a beat of `periodNs` (beat path).
    func publishMode(nowMonoNs: Int64, periodNs: Int64) -> PublishMode
    /// The first beat an uncommitted tempo write forbids (Int64.max: none).
    var tempoBarrierBeat: Int64 { get }
    /// Whether degraded turns are being taken.
    var degraded: Bool { get }
    /// The clock degraded turns are measured on (nil: our own).
    var degradedReference: ClockSync? { get }
    /// The last leader's clock estimate (the timeline's reference), if any.
    var referenceSync: ClockSync? { get }
}

extension ClusterCore: BeatLeadership {
    public var committedTimeline: Timeline? { machine.timeline }
}

/// One node's KV-mode leadership: its lease and its view of the timeline.
public final class KVLeadership: BeatLeadership {
    public var lease: KVLease
    public var timeline: KVLeaseTimeline
    /// The highest lease-key revision the watch reported.
    public private(set) var watchedRevision: UInt64 = 0
    /// The apply beat of the tempo write in flight (Int64.max: none).
    public var tempoBarrierBeat: Int64 = .max

    public init(lease: KVLease, timeline: KVLeaseTimeline) {
        self.lease = lease
        self.timeline = timeline
    }

    /// The lease watch saw a revision of the key (a put or a delete).
    public func watched(revision: UInt64) { watchedRevision = max(watchedRevision, revision) }

    public var isHolder: Bool { lease.role == .holder }
    /// Holding the key with a record of its term applied: may publish and write.
    public var isReadyHolder: Bool { isHolder && timeline.holderReady(term: lease.term) }

    public var committedTimeline: Timeline? { timeline.machine.timeline }
    public var term: UInt64 { isHolder ? lease.term : max(watchedRevision, lease.term) }

    @inline(__always)
    public func publishMode(nowMonoNs: Int64, periodNs: Int64) -> PublishMode {
        if lease.mayPublish(nowMonoNs: nowMonoNs) && timeline.holderReady(term: lease.term) {
            return .leader(leaseUntilMonoNs: lease.leaseUntilMonoNs)
        }
        return lease.role == .holder ? .waiting : .follower
    }

    public var degraded: Bool { false }
    public var degradedReference: ClockSync? { nil }
    public var referenceSync: ClockSync? { nil }
}
