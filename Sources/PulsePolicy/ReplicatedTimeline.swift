// PulsePolicy/ReplicatedTimeline.swift — owns the replicated state machine:
// the `ClusterCommand`s of the Raft log, their deterministic application to
// the timeline, and the snapshot that folds them.
//
// Deterministic: every node applies the same committed entries in the same
// order and reaches the same timeline; nothing here reads a clock or depends
// on which node applies. An undecodable committed entry is a broken
// invariant (the log holds only what a leader of this cluster encoded), so it
// stops the node loudly rather than being skipped.
//
// Tempo (fault 4 of issue #10): the apply beat travels in the entry; it is
// chosen by a leader that has applied its own term's first entry, at or
// after its first unpublished beat, and no publisher emits a beat at or after
// the apply beat of an entry it holds uncommitted (`TempoBarrier`). Hence,
// when the entry is applied — on any node, at any time — no beat at or after
// its apply beat was published with the old tempo: a change is never
// retroactive (§5), and the simulator checks it against every frame.
import Foundation
import PulseCore

/// An entry in the replicated log (the JSON form is the on-disk format of
/// `Sources/Pulse/Cluster/ClusterNode.swift`).
public enum ClusterCommand: Codable, Equatable, Sendable {
    /// The timeline's first epoch (proposed once by a bootstrapping leader).
    case epoch(startBeat: Int64, startNs: Int64, bpm: Int64, bar: Int)
    /// A tempo change at a downbeat.
    case tempo(atBeat: Int64, bpm: Int64, justification: String)

    public func encoded() -> [UInt8] {
        // Encoding an enum of integers and a string cannot fail.
        guard let data = try? JSONEncoder().encode(self) else { preconditionFailure("ClusterCommand encoding") }
        return [UInt8](data)
    }

    /// Decodes a committed entry; a failure is a broken invariant.
    public static func committed(_ bytes: [UInt8]) -> ClusterCommand {
        guard let command = try? JSONDecoder().decode(ClusterCommand.self, from: Data(bytes)) else {
            preconditionFailure("raft: a committed entry is not a ClusterCommand (\(bytes.count) bytes)")
        }
        return command
    }
}

/// The state machine as a snapshot: the epoch with every applied change
/// folded in, and the latest change (which may still lie ahead).
public struct ClusterState: Codable, Equatable, Sendable {
    public var startBeat: Int64
    public var startNs: Int64
    public var bpm: Int64
    public var pendingAtBeat: Int64?
    public var pendingBpm: Int64?
    public var justification: String
}

/// What applying one command did.
public enum AppliedCommand: Equatable, Sendable {
    case epoch(TempoEpoch)
    case tempo(TempoChange)
    /// A deterministic no-op (a second epoch, a change not after the epoch,
    /// not on a downbeat, or not after the pending one).
    case ignored(String)
}

/// The timeline as the committed log defines it.
public struct ReplicatedTimeline: Sendable, Equatable {
    public let bar: Int
    public let phaseCount: Int
    public private(set) var timeline: Timeline?
    public private(set) var justification = ""

    public init(bar: Int, phaseCount: Int = 1) {
        self.bar = bar
        self.phaseCount = phaseCount
    }

    public mutating func apply(_ command: ClusterCommand) -> AppliedCommand {
        switch command {
        case .epoch(let startBeat, let startNs, let bpm, _):
            guard timeline == nil else { return .ignored("second_epoch") }  // the first one wins
            guard bpm > 0 else { return .ignored("bpm") }
            let epoch = TempoEpoch(startBeat: startBeat, startNs: startNs, bpm: bpm)
            timeline = Timeline(epoch: epoch, bar: bar, phaseCount: phaseCount)
            return .epoch(epoch)
        case .tempo(let atBeat, let bpm, let text):
            guard var t = timeline else { return .ignored("no_epoch") }
            if let pending = t.pending {
                // Only one change is ever pending: an earlier one is in effect by
                // the later one's downbeat; a later-or-equal one is superseded... never.
                guard pending.atBeat < atBeat else { return .ignored("not_after_pending") }
                _ = t.applyDue(beat: pending.atBeat)
            }
            let change = TempoChange(atBeat: atBeat, bpm: bpm)
            do { try t.schedule(change: change) } catch { return .ignored("\(error)") }
            timeline = t
            justification = text
            return .tempo(change)
        }
    }

    /// The snapshot form, or nil before the epoch.
    public var state: ClusterState? {
        guard let t = timeline else { return nil }
        return ClusterState(
            startBeat: t.epoch.startBeat, startNs: t.epoch.startNs, bpm: t.epoch.bpm,
            pendingAtBeat: t.pending?.atBeat, pendingBpm: t.pending?.bpm, justification: justification)
    }

    /// Restores from a snapshot (a broken snapshot is a broken invariant).
    public mutating func restore(_ s: ClusterState) {
        precondition(s.bpm > 0, "snapshot with bpm \(s.bpm)")
        var t = Timeline(
            epoch: TempoEpoch(startBeat: s.startBeat, startNs: s.startNs, bpm: s.bpm), bar: bar,
            phaseCount: phaseCount)
        if let at = s.pendingAtBeat, let bpm = s.pendingBpm {
            do { try t.schedule(change: TempoChange(atBeat: at, bpm: bpm)) } catch {
                preconditionFailure("snapshot with an unschedulable change: \(error)")
            }
        }
        timeline = t
        justification = s.justification
    }

    public func encodedState() -> [UInt8] {
        guard let s = state, let data = try? JSONEncoder().encode(s) else { return [] }
        return [UInt8](data)
    }

    public mutating func restore(encoded bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        guard let s = try? JSONDecoder().decode(ClusterState.self, from: Data(bytes)) else {
            preconditionFailure("raft: snapshot is not a ClusterState")
        }
        restore(s)
    }
}

/// The apply beat of a new tempo change (the leader, at proposal): the first
/// downbeat at least `commitRoundNs` after `nowNs`, after every beat this
/// publisher may already have emitted (`firstUnpublishedBeat`) and after the
/// pending change. Same rule as `TempoRules.applyBeat`.
public func tempoApplyBeat(
    timeline: Timeline, nowNs: Int64, commitRoundNs: Int64, firstUnpublishedBeat: Int64
) -> Int64 {
    var first = firstUnpublishedBeat
    if let pending = timeline.pending { first = max(first, pending.atBeat + 1) }
    return TempoRules.applyBeat(
        timeline: timeline, committedNs: nowNs, commitRoundNs: commitRoundNs, firstUnpublishedBeat: first)
}

enum JSONDecoderBox {
    static func decode(_ bytes: [UInt8]) throws -> ClusterCommand {
        try JSONDecoder().decode(ClusterCommand.self, from: Data(bytes))
    }
}
