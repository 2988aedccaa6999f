// PulsePolicy/KVLeasePeers.swift — the pulses a nats-kv node has seen and
// its estimates of their clocks (issue 21, degradation), pure.
//
// In nats-kv mode there is no voter set and no Raft traffic to carry clock
// samples: every pulse pings the others over NATS request/reply (the
// adapter, Pulse/KV/KVClockPing.swift) and each answer is one NTP-style
// sample (t1 our send, t2/t3 the peer's receive/answer, t4 our receive) fed
// to the same `ClockSync` as Raft mode's. The pulses seen are the ones that
// pinged us or answered our ping within `memberWindowNs`, and the ones a
// pulse seen reported having seen within it (the gossip, below).
//
// Degraded turns are ranked among the pulses seen (sorted ids, this node
// included) and measured on the lowest one's clock, as Raft mode ranks among
// the voters and measures on the lowest voter's. Raft's voter set is
// committed state every voter agrees on; this list is not, and two lists
// that differ below a node can give two nodes the same rank, so the same
// turn (the 100,000-seed run, seed 48489: a pulse stalled through the first
// pings never saw a pulse that then stopped; the others kept it for the
// window, so it ranked itself one lower and took its neighbour's turn).
// "A pulse that dies leaves an empty turn" held only for the pulses that
// had seen it. Why two pulses that both take degraded turns rank on the
// same list:
//
// 1. The gossip: with every ping a pulse publishes the pulses it has seen
//    and how long ago (`report`, `encodeReport`, on the peers subject), and
//    a receiver keeps, per pulse, the latest of its own sighting and
//    `now − age` reported (`merge`; an age past the window is ignored, so
//    gossip never brings a pulse back). So two pulses that hear each other
//    hold the same pulses, each within one ping interval (100 ms) and the
//    NATS latency of the other; they also agree, within that latency and
//    the clock-rate difference over one interval, on when a pulse leaves.
// 2. Settling (`KVLeadership.degradedTurnsAllowed`): a degraded pulse takes
//    no turn for `settleNs` (300 ms: three ping intervals) after its list
//    changed. A change on one pulse (a join heard, a gossip entry, an
//    expiry) is on the other within one ping interval and its latency, so
//    whenever either takes a turn the other's list has made the same
//    change: the lists are equal, and equal lists give distinct ranks.
// 3. Listening: after its beat subject (re)attached or its loop stalled, a
//    pulse takes no turn for at least `settleNs` (and two beat periods):
//    it did not hear the gossip meanwhile, and (2) needs a list that was
//    kept current; within that time the others' gossip reaches it.
// What is left outside: two pulses that do not hear each other on NATS
// (their frames do not reach each other either: `unheard_duplicates`), and
// more than `maxPeers` pulses.
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
    /// A degraded pulse takes no turn for this long after its list changed,
    /// or after it (re)attached or stalled (see the file header).
    public static let settleNs: Int64 = 300_000_000
    /// Longest peers report accepted from the wire (64 pulses of 128 bytes).
    public static let maxReportBytes = 16_384

    public let selfId: String
    /// Per pulse: when it was last seen (monotonic ns).
    public private(set) var lastSeenMonoNs: [String: Int64] = [:]
    /// Per pulse: its clock relative to ours.
    public private(set) var syncs: [String: ClockSync] = [:]

    public init(selfId: String) { self.selfId = selfId }

    /// Why a peer id from the wire is refused, or nil: the `-node-id` rule
    /// (`IdToken.violation`: no spaces, '.', '*', '>', '/', '\', control
    /// characters or invalid UTF-8; at most 128 bytes), which every pulse's
    /// own id passed at start-up.
    public static func idProblem(_ id: String) -> String? {
        if id.isEmpty { return "empty_peer_id" }
        if id.utf8.count > maxIdBytes { return "long_peer_id" }
        if IdToken.violation(id) != nil { return "bad_peer_id" }
        return nil
    }

    // MARK: the gossip

    /// The pulses seen within the window (not this one) and how long ago.
    public func report(nowMonoNs now: Int64) -> [(id: String, ageNs: Int64)] {
        lastSeenMonoNs.compactMap { id, at in
            let age = now &- at
            return age < Self.memberWindowNs ? (id, max(0, age)) : nil
        }.sorted { $0.id < $1.id }
    }

    /// The wire form of a report: `<sender> <age ms>:<id> …` (node ids are
    /// tokens, -node-id: no spaces).
    public static func encodeReport(from sender: String, _ report: [(id: String, ageNs: Int64)]) -> String {
        var text = sender
        for entry in report.prefix(maxPeers) { text += " \(entry.ageNs / 1_000_000):\(entry.id)" }
        return text
    }

    /// A report from the wire: the sender and its entries, or the refusal
    /// reason (`bad_peer_report`; the caller counts it).
    public static func decodeReport(_ text: String) -> Result<
        (from: String, entries: [(id: String, ageNs: Int64)]), PeerReportError
    > {
        guard text.utf8.count <= maxReportBytes else { return .failure(.init(reason: "bad_peer_report")) }
        let words = text.split(separator: " ", omittingEmptySubsequences: false)
        guard let first = words.first, idProblem(String(first)) == nil, words.count - 1 <= maxPeers else {
            return .failure(.init(reason: "bad_peer_report"))
        }
        var entries: [(id: String, ageNs: Int64)] = []
        for word in words.dropFirst() {
            guard let colon = word.firstIndex(of: ":"), let ms = Int64(word[..<colon]), ms >= 0,
                ms < memberWindowNs / 1_000_000
            else { return .failure(.init(reason: "bad_peer_report")) }
            let id = String(word[word.index(after: colon)...])
            guard idProblem(id) == nil else { return .failure(.init(reason: "bad_peer_report")) }
            entries.append((id, ms * 1_000_000))
        }
        return .success((String(first), entries))
    }

    /// Why a report was refused.
    public struct PeerReportError: Error, Equatable, Sendable { public let reason: String }

    /// Pulse `from` reported the pulses it saw (`report` of its own): each
    /// is seen here at the latest of our own sighting and `now − age` (an
    /// age past the window is no sighting: gossip never brings a pulse back).
    /// Returns the first refusal (a bad id, too many pulses), nil when all recorded.
    @discardableResult
    public mutating func merge(from: String, _ entries: [(id: String, ageNs: Int64)], nowMonoNs now: Int64) -> String? {
        var refused = seen(from, nowMonoNs: now)
        for entry in entries where entry.id != selfId && entry.ageNs >= 0 && entry.ageNs < Self.memberWindowNs {
            let at = now &- entry.ageNs
            if let known = lastSeenMonoNs[entry.id], known >= at { continue }
            if let problem = seen(entry.id, nowMonoNs: at) { refused = refused ?? problem }
        }
        return refused
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
