// PulsePolicy/TempoBarrier.swift — owns the beat barrier of fault 4 (issue
// #10): no publisher emits a beat at or after the apply beat of a tempo
// entry it holds in its log but has not applied yet, whoever proposed it.
//
// Why every entry, not only our own proposals: a follower holding another
// leader's uncommitted change may become degraded (and publish) or be
// elected, and the entry may commit later with its apply beat unchanged
// (`ReplicatedTimeline.placed` moves it only relative to the epoch). If that
// node had published beats at or after the apply beat with the old tempo,
// the change would be retroactive (§5). Pure; the service's ClusterNode and
// the simulator's ClusterCore both run it.
import Raft

/// The apply beats of the tempo entries in this node's log not yet applied.
public struct TempoBarrier: Sendable, Equatable {
    private var pending: [UInt64: Int64] = [:]
    /// The first beat no publisher on this node may emit (Int64.max: none).
    /// Stored: the beat path only reads it.
    public private(set) var beat: Int64 = .max

    public init() {}

    /// Entries entering the log: a Ready's `entries` (a batch replaces the
    /// log from its first index on), or the unapplied tail at start-up.
    public mutating func appended(_ entries: [Entry]) {
        guard let first = entries.first?.index else { return }
        pending = pending.filter { $0.key < first }
        for e in entries where e.kind == .normal && !e.data.isEmpty {
            if case .tempo(let at, _, _)? = ClusterCommand.decoded(e.data) { pending[e.index] = at }
        }
        update()
    }

    /// This node appended its own proposal at `index` (before its Ready).
    public mutating func proposed(index: UInt64, atBeat: Int64) {
        pending[index] = atBeat
        update()
    }

    /// The entry at `index` was applied (whatever it turned out to be).
    public mutating func applied(index: UInt64) {
        guard pending.removeValue(forKey: index) != nil else { return }
        update()
    }

    /// A snapshot through `index` replaced the log up to it.
    public mutating func snapshotted(through index: UInt64) {
        pending = pending.filter { $0.key > index }
        update()
    }

    private mutating func update() { beat = pending.values.min() ?? .max }
}
