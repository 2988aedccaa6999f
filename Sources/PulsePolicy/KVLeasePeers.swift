// PulsePolicy/KVLeasePeers.swift — the pulses a nats-kv node has seen and
// its estimates of their clocks (issue 21, degradation), pure.
//
// In nats-kv mode there is no voter set and no Raft traffic to carry clock
// samples: every pulse pings the others over NATS request/reply (the
// adapter, Pulse/KV/KVClockPing.swift) and each answer is one NTP-style
// sample (t1 our send, t2/t3 the peer's receive/answer, t4 our receive) fed
// to the same `ClockSync` as Raft mode's. The pulses seen are the ones that
// pinged us or answered our ping within `memberWindowNs`.
//
// Degraded turns are ranked among the pulses seen (sorted ids, this node
// included) and measured on the lowest one's clock, as Raft mode ranks among
// the voters and measures on the lowest voter's. The window is long (60 s)
// and a pulse stays in it for the whole window after it was last seen, so
// the pulses that ran together before an outage hold the same list through
// it: a pulse that dies leaves an empty turn, not a shifted rank (two pulses
// sharing a rank would publish the same index). Views differ only for a
// pulse that started less than one ping interval ago, and such a pulse has
// no timeline to keep if JetStream is already gone.
import PulseCore

/// The pulses seen and their clocks (loop thread; value type, no I/O).
public struct KVLeasePeers: Sendable {
    /// A pulse not seen for this long leaves the list.
    public static let memberWindowNs: Int64 = 60_000_000_000
    /// Bound on the pulses tracked (the ping subject is the pulses' own, but
    /// a misconfigured fleet must not grow the state without bound).
    public static let maxPeers = 64
    /// Longest node id accepted from a ping (the flag's bound).
    public static let maxIdBytes = 128

    public let selfId: String
    /// Per pulse: when it was last seen (monotonic ns).
    public private(set) var lastSeenMonoNs: [String: Int64] = [:]
    /// Per pulse: its clock relative to ours.
    public private(set) var syncs: [String: ClockSync] = [:]

    public init(selfId: String) { self.selfId = selfId }

    /// Why a peer id from the wire is refused, or nil.
    public static func idProblem(_ id: String) -> String? {
        if id.isEmpty { return "empty_peer_id" }
        if id.utf8.count > maxIdBytes { return "long_peer_id" }
        return nil
    }

    /// Pulse `id` pinged us or answered at `nowMonoNs`. Returns the refusal
    /// reason (a bad id, or too many pulses), nil when recorded.
    @discardableResult
    public mutating func seen(_ id: String, nowMonoNs now: Int64) -> String? {
        if let problem = Self.idProblem(id) { return problem }
        guard id != selfId else { return nil }
        if lastSeenMonoNs[id] == nil && lastSeenMonoNs.count >= Self.maxPeers {
            prune(nowMonoNs: now)
            if lastSeenMonoNs.count >= Self.maxPeers { return "too_many_peers" }
        }
        lastSeenMonoNs[id] = now
        return nil
    }

    /// One round trip with pulse `id`; the refusal when ClockSync's bounds
    /// refuse the sample (or the id), for the caller to count.
    public mutating func add(_ sample: SyncSample, from id: String, nowMonoNs now: Int64) -> String? {
        if let refused = seen(id, nowMonoNs: now) { return refused }
        guard id != selfId else { return nil }
        return syncs[id, default: ClockSync()].add(sample)?.rawValue
    }

    /// The pulses seen within the window and this one, sorted.
    public func members(nowMonoNs now: Int64) -> [String] {
        var ids = [selfId]
        for (id, at) in lastSeenMonoNs where now &- at < Self.memberWindowNs { ids.append(id) }
        return ids.sorted()
    }

    private mutating func prune(nowMonoNs now: Int64) {
        for (id, at) in lastSeenMonoNs where now &- at >= Self.memberWindowNs {
            lastSeenMonoNs[id] = nil
            syncs[id] = nil
        }
    }
}
