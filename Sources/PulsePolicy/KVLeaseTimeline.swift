// PulsePolicy/KVLeaseTimeline.swift — the committed timeline in KV mode
// (issue 21), pure. One key (`timeline`, in a bucket without TTL) holds the
// whole state machine as a record: the writer's fencing token (`term`, its
// lease revision) and the `ClusterState` a snapshot holds. Only a lease
// holder writes it, with compare-and-set on the revision it last applied;
// every node watches the key and applies each record in revision order, the
// KV's linearizable order, so all nodes pass through the same states.
//
// Fencing across the two keys (the lease's revision does not guard another
// key): a new holder first writes the record it knows, re-stamped with its
// own term (`termStart`), and publishes only once the watch applied a record
// of its term (`holderReady`, as a Raft leader waits for its term's first
// entry). That write moves the key's revision, so any write prepared by an
// earlier holder — a stale one woken from a stall included — fails on the
// revision; a stale write stored before it is seen by the new holder, whose
// CAS then conflicts: it re-reads (the watch) and writes again.
//
// Tempo (§5) as in Raft mode: the holder places a change with the same
// rules (`ReplicatedTimeline.apply`), holds the barrier at its apply beat
// while the write is in flight (`TempoBarrier` semantics: no beat at or after
// it is published with the old tempo), and answers `outcome_unknown` when
// the write's fate is unknown. Records are untrusted input: a record that
// does not decode or holds a state the math refuses is refused and counted,
// and changes nothing.
//
// Continuity (review of 2026-12-07, findings 4 and 5): a record is applied
// only if it continues the applied state as the Raft log's entries would —
// the same epoch, shape and pending change (a term start's re-stamp), or
// one tempo change applied by the Raft rule (`ReplicatedTimeline.apply`: the
// previous change folded in, the new one placed on a later downbeat) — at a
// higher revision and with a term no lower than the applied record's. So a
// re-bootstrapped epoch (a bucket deleted and recreated restarts revisions
// and terms), an epoch moved, or a pending change rewritten retroactively
// is refused (`revision behind`, `term behind`, `not a continuation`;
// counted), and a node that has seen a timeline never goes back on it.
//
// Watch gaps (review of 2026-12-07 11:25, item 1b): the bucket keeps one
// record (History = 1) and the watch restarts after the last delivered
// sequence, so records replaced in between are never seen. A record more
// than one revision above the applied one that is not a continuation is
// applied anyway (`.resynced`) when it moves no beat this node may have
// passed (`movesNoPastBeat`: the new timeline gives every beat up to the
// next one due the same instant). Refusing every such record wedged the
// node: its compare-and-set base never moved. A record that does move such a
// beat is adopted too when a holder's chain of records can have left it
// (`chainPlausible`: a change folded in, indices neither going back nor
// running ahead: `.resyncedOverPassedBeats`, counted), as a Raft follower
// installs its leader's snapshot: the nats-kv simulator's watch gaps showed
// the node wedged for good otherwise (2026-12-07). A gap is a revision
// skipped past the highest one delivered, refused records included. A
// forged, re-bootstrapped or moved epoch is still refused.
//
// Size (item 1a): a record is at most `KVTimelineRecord.maxBytes`, on both
// sides: the writer never writes a record the readers would refuse
// (`checkedWrite` / `termStart` answer `.tooLarge`); the limit holds the
// largest shape the flags allow with the largest justification, escaped
// (`worstCaseBytes`), checked at start-up against the server's payload limit.
import Foundation
import PulseCore

/// The `timeline` key's value.
public struct KVTimelineRecord: Codable, Equatable, Sendable {
    /// The writer's fencing token (its lease revision).
    public var term: UInt64
    public var state: ClusterState

    public init(term: UInt64, state: ClusterState) {
        self.term = term
        self.state = state
    }

    /// The largest record written to or accepted from the KV: the worst case
    /// of the flags (1024 beats × 64-byte phase names, a 1024-byte
    /// justification, every byte a control character JSON escapes to 6
    /// bytes) is ~400 KB (`worstCaseBytes`); NATS' default payload limit is 1 MB.
    public static let maxBytes = 512 * 1024

    /// The largest record a timeline of `shape` can need: its epoch with a
    /// pending change and a justification of `justificationBytes` bytes that
    /// each encode to JSON's longest escape (`\u00XX`).
    public static func worstCaseBytes(shape: TimelineShape, justificationBytes: Int = 1024) -> Int {
        let big = Int64.max / 4
        let state = ClusterState(
            epoch: TempoEpoch.Stored(startBeat: big, startNs: big, bpm: 1000),
            pending: TempoChange.Stored(atBeat: big, bpm: 1000),
            justification: String(repeating: "\u{1}", count: justificationBytes), bar: shape.bar,
            phases: shape.phases)
        return KVTimelineRecord(term: .max, state: state).encoded().count
    }

    public func encoded() -> [UInt8] {
        guard let data = try? canonicalEncoder().encode(self) else { preconditionFailure("KVTimelineRecord encoding") }
        return [UInt8](data)
    }

    /// The record in `bytes`, validated as a snapshot is (`validatedSnapshot`); nil when refused.
    public static func decoded(_ bytes: [UInt8], bar: Int) -> KVTimelineRecord? {
        guard bytes.count <= maxBytes,
            let record = try? JSONDecoder().decode(KVTimelineRecord.self, from: Data(bytes)),
            ReplicatedTimeline.validatedSnapshot(canonicalEncoderBytes(record.state), bar: bar) != nil
        else { return nil }
        return record
    }

    private static func canonicalEncoderBytes(_ state: ClusterState) -> [UInt8] {
        (try? canonicalEncoder().encode(state)).map { [UInt8]($0) } ?? []
    }
}

/// What applying a watched record did, for the beat side (the same meaning
/// as the Raft mode's `.applied` / `.restored` events).
public enum KVTimelineChange: Equatable, Sendable {
    /// The first state (the epoch): start the beats.
    case started(TempoEpoch)
    /// A new pending tempo change (as placed).
    case tempo(TempoChange)
    /// The record only re-stamped the state (a new holder's term start).
    case restamped(term: UInt64)
    /// Records were skipped (a watch gap) and this one, not a continuation
    /// of the applied state, moves no past beat: the node re-synced to it.
    case resynced(term: UInt64)
    /// Records were skipped and this one moves beats the node may have
    /// passed, but a tempo change was folded in the gap: the node adopted
    /// it, as a Raft follower installs its leader's snapshot (no wedge).
    case resyncedOverPassedBeats(term: UInt64)
    /// Not applied: does not decode, out of range, or an older revision.
    case refused(String)
    /// The committed shape is not this node's flags: stop before publishing.
    case shapeMismatch(String)
}

/// A node's view of the KV timeline: what it applied and what a holder writes.
public struct KVLeaseTimeline: Sendable {
    public private(set) var machine: ReplicatedTimeline
    /// The key's revision of the last applied record (0: none yet).
    public private(set) var revision: UInt64 = 0
    /// The term of the last applied record.
    public private(set) var recordTerm: UInt64 = 0
    /// The highest revision the watch delivered, refused records included:
    /// a watch gap is a revision skipped past it, not past the applied one
    /// (else a refused put made the next put look like a gap: review of
    /// 2026-12-07 evening, finding 1).
    public private(set) var deliveredRevision: UInt64 = 0
    /// The wall clock when the last record was applied (nil: unknown).
    public private(set) var appliedAtWallNs: Int64?

    public init(flags: TimelineShape) {
        machine = ReplicatedTimeline(flags: flags)
    }

    /// Whether the holder of `term` may publish: a record of its term applied.
    public func holderReady(term: UInt64) -> Bool { term > 0 && recordTerm == term && machine.timeline != nil }

    /// Applies the record the watch saw at `revision` (a delete or purge is
    /// not a record: the adapter never hands one here). `nowNs` (wall clock)
    /// allows a re-sync over a watch gap; nil refuses every non-continuation.
    public mutating func apply(_ bytes: [UInt8], revision rev: UInt64, nowNs: Int64? = nil) -> KVTimelineChange {
        if rev == revision { return .refused("old revision") }
        guard rev > revision else { return .refused("revision behind") }
        let gap = rev > max(revision, deliveredRevision) + 1
        deliveredRevision = max(deliveredRevision, rev)
        guard let record = KVTimelineRecord.decoded(bytes, bar: machine.bar) else { return .refused("bad record") }
        guard record.term >= recordTerm else { return .refused("term behind") }
        let before = machine.state
        var resync = false
        var overPassedBeats = false
        if let before, !Self.continues(before, with: record.state, machine: machine) {
            guard gap, let nowNs, let applied = machine.timeline else { return .refused("not a continuation") }
            if !Self.movesNoPastBeat(from: applied, before: before, to: record.state, nowNs: nowNs) {
                // Refusing it wedged the node for good (its compare-and-set
                // base never moved again; the nats-kv simulator's watch
                // gaps, 2026-12-07), so a state a holder's chain of records
                // can leave is adopted (`chainPlausible`); a forged,
                // re-bootstrapped or moved one is still refused.
                guard let since = appliedAtWallNs,
                    Self.chainPlausible(from: applied, before: before, to: record.state, sinceNs: since, nowNs: nowNs)
                else { return .refused("not a continuation") }
                overPassedBeats = true
            }
            resync = true
        }
        var next = machine
        switch next.adopt(record.state) {
        case .shapeMismatch(let why): return .shapeMismatch(why)
        case .refused(let why): return .refused(why)
        default: break
        }
        guard let after = next.state, let timeline = next.timeline else { return .refused("no timeline") }
        machine = next
        revision = rev
        recordTerm = record.term
        if let nowNs { appliedAtWallNs = nowNs }
        guard let before else { return .started(timeline.epoch) }
        if overPassedBeats { return .resyncedOverPassedBeats(term: record.term) }
        if resync { return .resynced(term: record.term) }
        if let p = after.pending, p != before.pending { return .tempo(TempoChange(p)) }
        return .restamped(term: record.term)
    }

    /// Whether `state` follows the applied `before` as the Raft log's next
    /// entry could leave it (see the file header).
    static func continues(_ before: ClusterState, with state: ClusterState, machine: ReplicatedTimeline) -> Bool {
        guard state.bar == before.bar, state.phases == before.phases else { return false }
        if state.epoch == before.epoch && state.pending == before.pending { return true }
        guard let p = state.pending else { return false }
        var next = machine
        guard case .tempo = next.apply(.tempo(atBeat: p.atBeat, bpm: p.bpm, justification: state.justification)),
            let after = next.state
        else { return false }
        return after.epoch == state.epoch && after.pending == state.pending
    }

    /// Whether `state`, seen over a watch gap at `nowNs`, can be what a
    /// holder's records left since ours was applied at `sinceNs`: the same
    /// shape; a tempo change folded in (its epoch starts at a later beat than
    /// ours, and not before our pending change: a change we knew cannot
    /// vanish); and the beats it counts from the one due on ours when we
    /// last applied to the one due now: none fewer than zero (indices never
    /// go back) and within a factor of 8 of ours. A forged epoch an hour away,
    /// or a re-bootstrapped bucket's timeline (its index far below ours),
    /// fails (review of 2026-12-07 evening, findings 1 and 2).
    static func chainPlausible(
        from applied: Timeline, before: ClusterState, to state: ClusterState, sinceNs: Int64, nowNs: Int64
    ) -> Bool {
        guard state.bar == before.bar, state.phases == before.phases else { return false }
        let from = state.epoch.startBeat
        guard from > before.epoch.startBeat, from >= (before.pending?.atBeat ?? before.epoch.startBeat) else {
            return false
        }
        var new = Timeline(epoch: TempoEpoch(state.epoch), bar: applied.bar, phaseCount: applied.phaseCount)
        if let p = state.pending {
            do { try new.schedule(change: TempoChange(p)) } catch { return false }
        }
        let then = applied.beat(atOrBeforeNs: sinceNs)
        let elapsed = applied.beat(atOrBeforeNs: nowNs) &- then
        let newElapsed = new.beat(atOrBeforeNs: nowNs) &- then
        // Within a factor of 8 either way (and 16 beats of slack): a chain
        // of ±10 % changes needs 20 of them to halve the tempo three times.
        // A gap that outran that wedges the node as before (counted
        // `timeline_not_continuing`; a restart accepts the bucket).
        guard newElapsed >= 0, elapsed >= 0, elapsed < Int64.max / 16 else { return false }
        return newElapsed &* 8 >= elapsed &- 128 && newElapsed <= elapsed &* 8 &+ 16
    }

    /// Whether adopting `state` over a watch gap keeps every beat up to the
    /// next one due at `nowNs` (and the one after, a margin for a frame being
    /// prepared) where `applied` put it: same shape, the new epoch not before
    /// the applied one, and — the new timeline being defined from its epoch
    /// on — the same instant at each of the two timelines' change points in
    /// that range and at its end (both are linear between them). A new epoch
    /// that starts later must lie on the applied timeline.
    static func movesNoPastBeat(from applied: Timeline, before: ClusterState, to state: ClusterState, nowNs: Int64)
        -> Bool
    {
        guard state.bar == before.bar, state.phases == before.phases else { return false }
        var new = Timeline(epoch: TempoEpoch(state.epoch), bar: applied.bar, phaseCount: applied.phaseCount)
        if let p = state.pending {
            do { try new.schedule(change: TempoChange(p)) } catch { return false }
        }
        let from = new.epoch.startBeat
        guard from >= applied.epoch.startBeat else { return false }
        let passed = applied.nextBeat(afterNs: nowNs) &+ 1
        guard from <= passed else { return applied.instantNs(ofBeat: from) == new.epoch.startNs }
        let changes = [applied.epoch.startBeat, applied.pending?.atBeat, new.pending?.atBeat].compactMap { $0 }
        return ([from, passed] + changes.filter { $0 > from && $0 < passed }).allSatisfy {
            applied.instantNs(ofBeat: $0) == new.instantNs(ofBeat: $0)
        }
    }

    /// Why a holder's write was not prepared.
    public enum WriteRefusal: Error, Equatable, Sendable {
        /// The command changes nothing or the rules refuse it.
        case unchanged
        /// The record would be larger than the readers accept (`KVTimelineRecord.maxBytes`).
        case tooLarge(bytes: Int)
    }

    /// A write for the holder of `term`: the record `command` leads to from
    /// the applied state, and the revision to compare-and-set on (0: create).
    /// `maxBytes`: the writer's limit, `KVTimelineRecord.maxBytes` or the
    /// server's payload limit if lower.
    public func checkedWrite(
        _ command: ClusterCommand, term: UInt64, maxBytes: Int = KVTimelineRecord.maxBytes
    ) -> Result<
        (value: [UInt8], lastRevision: UInt64, applied: AppliedCommand), WriteRefusal
    > {
        var next = machine
        let applied = next.apply(command)
        switch applied {
        case .epoch, .tempo: break
        default: return .failure(.unchanged)
        }
        guard let state = next.state else { return .failure(.unchanged) }
        let value = KVTimelineRecord(term: term, state: state).encoded()
        guard value.count <= min(maxBytes, KVTimelineRecord.maxBytes) else {
            return .failure(.tooLarge(bytes: value.count))
        }
        return .success((value, revision, applied))
    }

    /// `checkedWrite`, nil when refused.
    public func write(_ command: ClusterCommand, term: UInt64) -> (
        value: [UInt8], lastRevision: UInt64, applied: AppliedCommand
    )? {
        try? checkedWrite(command, term: term).get()
    }

    /// The term-start write of a new holder: the applied state re-stamped
    /// with its term (nil before any state: the holder writes the epoch;
    /// nil too if the record would be too large, which an applied record never is).
    public func termStart(term: UInt64) -> (value: [UInt8], lastRevision: UInt64)? {
        guard let state = machine.state else { return nil }
        let value = KVTimelineRecord(term: term, state: state).encoded()
        guard value.count <= KVTimelineRecord.maxBytes else { return nil }
        return (value, revision)
    }
}
