// Wire/Subjects.swift — owns the NATS subject names of a cluster, for the
// node, the Swift client and Bench (the Python and Go clients spell the same
// names; docs/protocol.md "Subjects").
//
// What pulses publish and what consumers may publish never overlap
// (requirements §11, docs/decisions.md "Request subjects"): pulses publish
// frames on `beat`, timeline publications on `timeline` and tempo
// announcements on `control`; consumers send requests on
// `request.timeline` and `request.control`, the only subjects the shipped
// NATS permissions (deploy/nats/backbeat.conf) let them publish on. Nodes
// also answer requests on `timeline` and `control` (requirements §5, §12),
// for servers without those permissions.

/// The subjects of cluster `clusterId` (`backbeat.<cluster>.…`).
public struct BackbeatSubjects: Sendable, Equatable {
    public let clusterId: String

    public init(clusterId: String) { self.clusterId = clusterId }

    /// Frames (`backbeat.beatframe.v1`), published by the leader.
    public var beat: String { "backbeat.\(clusterId).beat" }
    /// Timeline publications (`backbeat.timeline.v1`), published by the leader;
    /// requests are answered here too (requirements §12).
    public var timeline: String { "backbeat.\(clusterId).timeline" }
    /// Tempo announcements (`backbeat.tempo_change.v1`), published by the
    /// leader; tempo requests are answered here too (requirements §5).
    public var control: String { "backbeat.\(clusterId).control" }
    /// Where consumers ask for the timeline (request/reply; any node answers).
    public var timelineRequest: String { "backbeat.\(clusterId).request.timeline" }
    /// Where tools ask for a tempo change (request/reply; the leader answers).
    public var controlRequest: String { "backbeat.\(clusterId).request.control" }
}
