// Echo/EchoPolicy.swift — owns the decision whether a BeatFrame heard on the
// beat subject (an "echo": this node's own frames, a leader's, a degraded
// peer's, or anyone's who can publish there) may influence this node
// (requirements §10). Pure: no I/O, no clock reads; the caller passes the
// timeline, the time it reads, and this node's Raft term.
//
// An echo moves state (the highest index seen on the subject, the HLC, "a
// leader's frames are seen elsewhere") only when all of these hold, checked
// in this order (the first failure is the counted reason):
//   1. `cluster_id` is this cluster's                       → wrong_cluster
//   2. its HLC suffix is a known publisher's                → unknown_publisher
//   3. its term is ≥ the last term accepted                 → term_stale
//      and ≤ this node's term + `maxTermLead`               → term_ahead
//   4. its index is within one beat of the timeline's own current beat
//      `c = timeline.beat(atOrBeforeNs: now)`: c − 1 ≤ index ≤ c + 1
//                                                           → index_behind / index_ahead
// Why ±1: a frame is published at its instant (a degraded turn a few ms
// after it, a late beat up to half a period after), so on arrival the
// receiver's current beat is the frame's index, or the next one when the
// delivery crosses an instant; +1 allows a publisher whose clock runs ahead
// of ours by less than a period (max offset is enforced elsewhere). A frame
// further away is not an echo of this timeline: acting on it would skip
// beats (a far-ahead index) or trap in timeline math (Int64.max).
// Every arithmetic step on a remote value is checked.

/// Which HLC suffixes may publish on this cluster's beat subject.
public enum EchoPublishers: Sendable, Hashable {
    /// Exactly these suffixes: configured peers with ids (and this node), or
    /// this node alone in single-node mode.
    case known(Set<String>)
    /// Any suffix: a configured peer has no id (`host:port` only), so its
    /// suffix cannot be known in advance. Weaker; the other checks still hold.
    case any
}

/// Why an echo was ignored; the raw value is the metric reason
/// (`backbeat_rejected_input_total{surface="beat_subject",reason}`).
public enum EchoRejection: String, Sendable, Hashable, CaseIterable {
    case wrongCluster = "wrong_cluster"
    case unknownPublisher = "unknown_publisher"
    case termStale = "term_stale"
    case termAhead = "term_ahead"
    case indexBehind = "index_behind"
    case indexAhead = "index_ahead"
}

/// The outcome of judging one echo.
public enum EchoVerdict: Sendable, Hashable {
    /// The frame may move this node's state.
    case accept
    /// Ignore the frame and count the reason.
    case reject(EchoRejection)
}

/// Decides which echoes may influence the node (see the file header).
/// A value: the only state is the highest term accepted so far.
public struct EchoPolicy: Sendable, Hashable {
    /// This node's cluster id.
    public let clusterId: String
    /// Who may publish.
    public let publishers: EchoPublishers
    /// How far a frame's term may run ahead of this node's own term: 0 for a
    /// single node (its frames are its own), a few in a cluster (a follower
    /// may hear a new leader's frames before its Raft messages).
    public let maxTermLead: UInt64
    /// The fence for stale frames: the highest term of an accepted frame, but
    /// never above this node's own term when it was accepted. A frame up to
    /// `maxTermLead` ahead is accepted (a follower may hear a new leader before
    /// its Raft messages) without raising the fence past what Raft confirmed,
    /// so one forged far-ahead frame cannot make the real leader's frames stale.
    public private(set) var lastTermSeen: UInt64 = 0

    /// A cluster's followers may hear frames of up to this many terms ahead of their own.
    public static let clusterTermLead: UInt64 = 8

    public init(clusterId: String, publishers: EchoPublishers, maxTermLead: UInt64) {
        self.clusterId = clusterId
        self.publishers = publishers
        self.maxTermLead = maxTermLead
    }

    /// The same policy with another publisher set (the cluster's voters
    /// changed): the term fence carries over as a floor, so a membership
    /// change never lets a stale term's frames back in.
    public func withPublishers(_ publishers: EchoPublishers) -> EchoPolicy {
        var next = EchoPolicy(clusterId: clusterId, publishers: publishers, maxTermLead: maxTermLead)
        next.lastTermSeen = lastTermSeen
        return next
    }

    /// A single node: only its own frames (its HLC suffix, its term).
    public static func singleNode(clusterId: String, ownSuffix: String) -> EchoPolicy {
        EchoPolicy(clusterId: clusterId, publishers: .known([ownSuffix]), maxTermLead: 0)
    }

    /// Judges `frame`, heard when `timeline` reads `timelineNs`, at this
    /// node's Raft term `ownTerm`. On acceptance, remembers the frame's term.
    public mutating func judge(
        _ frame: DecodedBeatFrame, timeline: Timeline, atTimelineNs timelineNs: Int64, ownTerm: UInt64
    ) -> EchoVerdict {
        guard frame.clusterId == clusterId else { return .reject(.wrongCluster) }
        return judgeOwn(
            suffix: frame.hlcSuffix, index: frame.beatIndex, term: frame.term, timeline: timeline,
            atTimelineNs: timelineNs, ownTerm: ownTerm)
    }

    /// Judges this node's own frame, recognised without a parse (its bytes
    /// equal the frame it last wrote, so its cluster id is this cluster's by
    /// construction): checks 2 to 4 on its HLC `suffix`, `index` and `term`,
    /// with the same outcome and the same fence update as `judge` on the
    /// decoded frame. `judge` ends here too.
    public mutating func judgeOwn(
        suffix: String, index: Int64, term: UInt64, timeline: Timeline, atTimelineNs timelineNs: Int64,
        ownTerm: UInt64
    ) -> EchoVerdict {
        if case .known(let suffixes) = publishers, !suffixes.contains(suffix) {
            return .reject(.unknownPublisher)
        }
        guard term >= lastTermSeen else { return .reject(.termStale) }
        let (ceiling, overflow) = ownTerm.addingReportingOverflow(maxTermLead)
        guard overflow || term <= ceiling else { return .reject(.termAhead) }
        let current = timeline.beat(atOrBeforeNs: timelineNs)
        let (low, lowOverflow) = current.subtractingReportingOverflow(1)
        let (high, highOverflow) = current.addingReportingOverflow(1)
        guard lowOverflow || index >= low else { return .reject(.indexBehind) }
        guard highOverflow || index <= high else { return .reject(.indexAhead) }
        lastTermSeen = max(lastTermSeen, min(term, ownTerm))
        return .accept
    }
}
