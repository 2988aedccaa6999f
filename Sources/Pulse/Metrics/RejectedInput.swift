// Metrics/RejectedInput.swift — owns the count of refused input from outside
// the process (requirements §10): every surface refuses what it cannot
// validate and counts it here, exported as
// `backbeat_rejected_input_total{surface,reason}`.

/// The boundary an input arrived through (the `surface` label).
enum InputSurface: String, CaseIterable, Sendable {
    /// Frames on `backbeat.<cluster>.beat` (echoes of this cluster's beats).
    case beatSubject = "beat_subject"
    /// Requests on `backbeat.<cluster>.request.control` and `.control`.
    case controlSubject = "control_subject"
    /// Requests on `backbeat.<cluster>.request.timeline` and `.timeline`.
    case timelineSubject = "timeline_subject"
    /// Raft transport frames: decode, header, and the core's own refusals.
    case raft
    /// Admin HTTP requests and connections.
    case http
    /// Files in the data dir (counted before the node refuses to start, or for a torn tail).
    case dataDir = "data_dir"
    /// Records read from the JetStream KV buckets (`-election nats-kv`).
    case kv
}

/// Loop-thread counter of refused inputs by surface and reason. Reasons are
/// short snake_case machine codes chosen at the refusing site (a closed set
/// per surface, so the label set stays bounded); `record` allocates only the
/// first time a (surface, reason) pair is seen, never on the beat path.
final class RejectedInput {
    struct Key: Hashable {
        let surface: InputSurface
        let reason: String
    }
    private(set) var counts: [Key: UInt64] = [:]

    /// Counts `count` refused inputs (one by default).
    func record(_ surface: InputSurface, _ reason: String, count: UInt64 = 1) {
        counts[Key(surface: surface, reason: reason), default: 0] &+= count
    }

    /// Refusals seen on `surface` (with `reason`, or all reasons).
    func count(_ surface: InputSurface, reason: String? = nil) -> UInt64 {
        counts.reduce(0) { sum, entry in
            entry.key.surface == surface && (reason == nil || entry.key.reason == reason) ? sum &+ entry.value : sum
        }
    }
}
