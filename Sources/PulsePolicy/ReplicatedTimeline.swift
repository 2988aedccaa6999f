// PulsePolicy/ReplicatedTimeline.swift — owns the replicated state machine:
// the `ClusterCommand`s of the Raft log, their deterministic application to
// the timeline, and the snapshot that folds them. The service
// (`Pulse/Cluster/ClusterNode`) and the whole-cluster simulator
// (`ClusterCore`) both run this one, so what the simulator checks is what
// the service applies. The JSON forms here are the on-disk formats (Raft log
// entries and snapshots, docs/protocol.md).
//
// Deterministic: every node applies the same committed entries in the same
// order and reaches the same timeline; nothing here reads a clock or depends
// on which node applies.
//
// Committed entries are validated, not trusted: they come from whoever was
// leader, and a peer on a plain-TCP loopback cluster is not authenticated
// (§11). An entry that does not decode, or would put the timeline outside
// what its math supports, is refused (`.refused`, the service counts it as
// `raft`/`bad_committed_entry`) and changes nothing. Every node runs the same
// check on the same entry, so all of them refuse it alike and the state
// machines stay identical; a trap would instead crash every node on every
// restart.
//
// Tempo (fault 4 of issue #10): the apply beat travels in the entry; it is
// chosen by a leader that has applied its own term's first entry, at or
// after its first unpublished beat, and no publisher emits a beat at or after
// the apply beat of an entry it holds uncommitted (`TempoBarrier`). At apply
// time the change is placed (`placed`): never at or before the start of the
// epoch it follows, always on a downbeat. Hence, when the entry is applied —
// on any node, at any time — no beat at or after its apply beat was
// published with the old tempo: a change is never retroactive (§5), and the
// simulator checks it against every frame.
//
// Shape (§12): the first epoch carries the timeline's bar and phases; a node
// whose flags differ gets `.shapeMismatch` and must stop before it publishes.
import Foundation
import PulseCore

/// An entry in the replicated log (its JSON form is the log's on-disk format).
public enum ClusterCommand: Codable, Equatable, Sendable {
    /// The timeline's first epoch and its shape (proposed once by a
    /// bootstrapping leader). `phases` is nil in entries of a version that
    /// did not replicate them (`TimelineShape.resolve`).
    case epoch(startBeat: Int64, startNs: Int64, bpm: Int64, bar: Int, phases: [String]?)
    /// A tempo change at a downbeat.
    case tempo(atBeat: Int64, bpm: Int64, justification: String)

    public func encoded() -> [UInt8] {
        // Encoding an enum of integers and strings cannot fail.
        guard let data = try? canonicalEncoder().encode(self) else { preconditionFailure("ClusterCommand encoding") }
        return [UInt8](data)
    }

    /// Decodes an entry's bytes; nil when they are not a command.
    public static func decoded(_ bytes: [UInt8]) -> ClusterCommand? {
        try? JSONDecoder().decode(ClusterCommand.self, from: Data(bytes))
    }
}

/// The state machine as a snapshot: the epoch with every applied change
/// folded in, and the latest change (which may still lie ahead).
public struct ClusterState: Codable, Equatable, Sendable {
    public var epoch: TempoEpoch.Stored
    public var pending: TempoChange.Stored?
    public var justification: String
    /// The committed shape; both nil in snapshots of a version that did not
    /// replicate it (the node's flags fill in: `TimelineShape.resolve`).
    public var bar: Int?
    public var phases: [String]?

    public init(
        epoch: TempoEpoch.Stored, pending: TempoChange.Stored?, justification: String, bar: Int? = nil,
        phases: [String]? = nil
    ) {
        self.epoch = epoch
        self.pending = pending
        self.justification = justification
        self.bar = bar
        self.phases = phases
    }

    /// The committed shape, with `flags` for a snapshot that has none; nil
    /// when the stored one is invalid.
    public func shape(flags: TimelineShape) -> TimelineShape? {
        try? TimelineShape.resolve(bar: bar, phases: phases, flags: flags)
    }
}

extension TempoEpoch {
    /// Codable form for snapshots.
    public struct Stored: Codable, Equatable, Sendable {
        public var startBeat: Int64
        public var startNs: Int64
        public var bpm: Int64
        public init(startBeat: Int64, startNs: Int64, bpm: Int64) {
            self.startBeat = startBeat
            self.startNs = startNs
            self.bpm = bpm
        }
    }
    public var stored: Stored { Stored(startBeat: startBeat, startNs: startNs, bpm: bpm) }
    public init(_ s: Stored) { self.init(startBeat: s.startBeat, startNs: s.startNs, bpm: s.bpm) }
}

extension TempoChange {
    /// Codable form for snapshots.
    public struct Stored: Codable, Equatable, Sendable {
        public var atBeat: Int64
        public var bpm: Int64
        public init(atBeat: Int64, bpm: Int64) {
            self.atBeat = atBeat
            self.bpm = bpm
        }
    }
    public var stored: Stored { Stored(atBeat: atBeat, bpm: bpm) }
    public init(_ s: Stored) { self.init(atBeat: s.atBeat, bpm: s.bpm) }
}

/// What applying one committed entry did.
public enum AppliedCommand: Equatable, Sendable {
    /// The first epoch, with the committed shape.
    case epoch(TempoEpoch)
    /// A tempo change, as placed (`ReplicatedTimeline.placed`).
    case tempo(TempoChange)
    /// A deterministic no-op: a second epoch, or a change before any epoch.
    case ignored(String)
    /// An invalid entry, changing nothing (counted by the service).
    case refused(String)
    /// The committed shape is not this node's flags: the node must stop
    /// before it publishes (the reason is the one-line refusal).
    case shapeMismatch(String)
}

/// The timeline as the committed log defines it.
public struct ReplicatedTimeline: Sendable, Equatable {
    /// This node's `-bar`/`-phases`.
    public let flags: TimelineShape
    /// The applied state (nil before the epoch).
    public private(set) var state: ClusterState?
    /// The committed shape (nil before the epoch).
    public private(set) var shape: TimelineShape?
    /// The timeline the state defines (nil before the epoch).
    public private(set) var timeline: Timeline?

    public var justification: String { state?.justification ?? "" }
    /// The bar in force: the committed one, else the flags'.
    public var bar: Int { (shape ?? flags).bar }

    public init(flags: TimelineShape) {
        self.flags = flags
    }

    /// A machine whose flags are `bar` beats and one phase (the simulator's).
    public init(bar: Int) {
        guard let flags = try? TimelineShape(bar: bar, phases: ["beat"]) else {
            preconditionFailure("ReplicatedTimeline(bar: \(bar)): not a valid bar")
        }
        self.init(flags: flags)
    }

    /// Applies a committed entry's bytes.
    public mutating func apply(_ bytes: [UInt8]) -> AppliedCommand {
        guard let command = ClusterCommand.decoded(bytes) else { return .refused("does not decode") }
        return apply(command)
    }

    public mutating func apply(_ command: ClusterCommand) -> AppliedCommand {
        switch command {
        case .epoch(let startBeat, let startNs, let bpm, let entryBar, let entryPhases):
            guard state == nil else { return .ignored("second_epoch") }  // the first one wins
            guard let epoch = try? TempoEpoch.validated(startBeat: startBeat, startNs: startNs, bpm: bpm) else {
                return .refused("epoch out of range")
            }
            guard let committed = try? TimelineShape.resolve(bar: entryBar, phases: entryPhases, flags: flags) else {
                return .refused("shape out of range")
            }
            if let why = committed.mismatch(flags: flags, committedIn: "the cluster's committed log") {
                return .shapeMismatch(why)
            }
            install(
                ClusterState(
                    epoch: epoch.stored, pending: nil, justification: "", bar: committed.bar,
                    phases: committed.phases), shape: committed)
            return .epoch(epoch)
        case .tempo(let atBeat, let bpm, let justification):
            guard var current = state, let shape else { return .ignored("no_epoch") }
            guard let folded = Self.fold(current) else { return .refused("previous change out of range") }
            // Fault 4: never at or before the start of the epoch it follows (a log-only rule, alike on every node).
            let change = Self.placed(TempoChange(atBeat: atBeat, bpm: bpm), after: folded, bar: shape.bar)
            guard Self.canSchedule(change, after: folded, bar: shape.bar) else {
                return .refused("tempo change out of range")
            }
            current.epoch = folded.stored
            current.pending = change.stored
            current.justification = justification
            install(current, shape: shape)
            return .tempo(change)
        }
    }

    /// Adopts a validated snapshot state (`validatedSnapshot`). Its shape
    /// (the flags' for a snapshot without one, written into the next
    /// snapshot) must be this node's: else `.shapeMismatch`, nothing adopted.
    public mutating func adopt(_ snapshot: ClusterState) -> AppliedCommand {
        guard let committed = snapshot.shape(flags: flags) else { return .refused("snapshot shape out of range") }
        if let why = committed.mismatch(flags: flags, committedIn: "the cluster's snapshot") {
            return .shapeMismatch(why)
        }
        var s = snapshot
        s.bar = committed.bar
        s.phases = committed.phases
        guard Self.timeline(s, shape: committed) != nil else { return .refused("snapshot out of range") }
        install(s, shape: committed)
        return .epoch(TempoEpoch(s.epoch))
    }

    /// The snapshot form (encoded `state`), or empty before the epoch.
    public func encodedState() -> [UInt8] {
        guard let state, let data = try? canonicalEncoder().encode(state) else { return [] }
        return [UInt8](data)
    }

    private mutating func install(_ s: ClusterState, shape: TimelineShape) {
        state = s
        self.shape = shape
        timeline = Self.timeline(s, shape: shape)
    }

    private static func timeline(_ s: ClusterState, shape: TimelineShape) -> Timeline? {
        var t = Timeline(epoch: TempoEpoch(s.epoch), bar: shape.bar, phaseCount: shape.phases.count)
        if let p = s.pending {
            do { try t.schedule(change: TempoChange(p)) } catch { return nil }
        }
        return t
    }

    // MARK: the rules (pure, shared with validation at the boundaries)

    /// The epoch with `state`'s pending change folded in (only one is ever
    /// pending), or nil when that change's instant is outside the supported range.
    public static func fold(_ state: ClusterState) -> TempoEpoch? {
        let epoch = TempoEpoch(state.epoch)
        guard let previous = state.pending else { return epoch }
        guard let startNs = epoch.checkedInstantNs(ofBeat: previous.atBeat) else { return nil }
        return try? TempoEpoch.validated(startBeat: previous.atBeat, startNs: startNs, bpm: previous.bpm)
    }

    /// The apply-time placement of a committed change (fault 4 of issue #10):
    /// a change at or before the start of the epoch it follows (the previous
    /// change's downbeat), or off a downbeat, moves to the first downbeat
    /// after that start and at or after its own beat. It depends only on the
    /// entry and the committed state, so every node places it alike.
    public static func placed(_ change: TempoChange, after epoch: TempoEpoch, bar: Int) -> TempoChange {
        guard bar > 0 else { return change }
        let b = Int64(bar)
        let floor = max(change.atBeat, epoch.startBeat &+ 1)
        guard floor != change.atBeat || change.atBeat % b != 0, floor < Int64.max - b else { return change }
        let r = floor % b
        let atBeat = r == 0 ? floor : (r > 0 ? floor - r + b : floor - r)
        return TempoChange(atBeat: atBeat, bpm: change.bpm)
    }

    /// Whether `change` can follow `epoch`: at a downbeat after its start, at
    /// an instant and tempo the timeline math supports.
    public static func canSchedule(_ change: TempoChange, after epoch: TempoEpoch, bar: Int) -> Bool {
        guard change.atBeat > epoch.startBeat, bar > 0, change.atBeat % Int64(bar) == 0,
            let startNs = epoch.checkedInstantNs(ofBeat: change.atBeat)
        else { return false }
        return (try? TempoEpoch.validated(startBeat: change.atBeat, startNs: startNs, bpm: change.bpm)) != nil
    }

    /// The state in a snapshot's bytes, if it decodes and holds a timeline
    /// the math supports, with a pending change at a downbeat of its bar (the
    /// stored one, else `bar`); nil otherwise. The Raft core runs it on every
    /// snapshot a leader sends (`Config.snapshotCheck`) before adopting it,
    /// and the data dir on the stored one. A snapshot with a shape other
    /// than this node's is valid data: adopting it is `.shapeMismatch`.
    public static func validatedSnapshot(_ data: [UInt8], bar: Int) -> ClusterState? {
        guard let state = try? JSONDecoder().decode(ClusterState.self, from: Data(data)),
            let epoch = try? TempoEpoch.validated(
                startBeat: state.epoch.startBeat, startNs: state.epoch.startNs, bpm: state.epoch.bpm)
        else { return nil }
        let storedBar: Int?  // nil: a previous version's snapshot, without a shape
        do { storedBar = try TimelineShape.storedBar(bar: state.bar, phases: state.phases) } catch { return nil }
        guard state.pending.map({ canSchedule(TempoChange($0), after: epoch, bar: storedBar ?? bar) }) ?? true else {
            return nil
        }
        return state
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

/// The encoder of replicated bytes (log entries, snapshots): keys sorted, so
/// the same command or state is always the same bytes. Foundation's default
/// key order is not stable between encoder instances (found by
/// ConformanceTests: the bootstrap epoch entry's bytes differed between two
/// runs of the same inputs), and a deterministic state machine should not
/// depend on it.
func canonicalEncoder() -> JSONEncoder {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return encoder
}
