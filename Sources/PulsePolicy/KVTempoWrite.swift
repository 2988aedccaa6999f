// PulsePolicy/KVTempoWrite.swift — the holder's tempo writes in KV mode
// (issue 21) and the barrier they hold (fault 4, `TempoBarrier` semantics):
// no beat at or after the apply beat of a change this node wrote is
// published before the watch applied that change. Pure; the service's
// KVNode and the simulator's model both drive it (KVLeaseSimTests).
//
// One change at a time, until it is applied (the 100,000-seed run of
// 2026-12-07, seeds 3315, 29151, 30282, 38317, 44686, 61653, 66786): a
// write answered `written` is stored, but the holder's timeline learns it
// only from the watch. A second change prepared in between was planned on
// the timeline without the first (the same compare-and-set base), replaced
// the first change's barrier, and, refused by the KV, lifted it: the beats
// went on at the old tempo past the first change's downbeat (retroactive).
// So a new change is refused (`changePending`, 409 `change_pending`) from
// the write until the watch applied a record past its base — the change
// itself, or a record that superseded it — or the KV refused it for sure.
// A write of unknown fate holds on in the same way (the adapter moves the
// key past its base with a term start: KVNode.commitTempo).
import PulseCore

/// The holder's tempo write in flight or not yet applied.
public struct KVTempoWrite: Sendable, Equatable {
    /// The revision the last accepted write compared against, until the
    /// watch applied a record past it or the write was refused (nil: none).
    public private(set) var base: UInt64?
    /// No answer yet from the KV to the write.
    public private(set) var inFlight = false
    /// The first beat no publisher on this node may emit: the accepted
    /// change's apply beat while it is not applied (Int64.max: none).
    public private(set) var barrierBeat: Int64 = .max

    public init() {}

    /// Why a tempo change is not written.
    public enum Refusal: Error, Equatable, Sendable {
        /// Not the ready holder within its lease, or the rules changed nothing: 503.
        case noLeader
        /// The last accepted change is not applied yet: 409.
        case changePending
        /// Its record would be larger than the readers accept: 400.
        case tooLarge(bytes: Int)

        /// The admin API's machine code.
        public var code: String {
            switch self {
            case .noLeader: "no_leader"
            case .changePending: "change_pending"
            case .tooLarge: "record_too_large"
            }
        }
    }

    /// What the KV answered to the write.
    public enum Answer: Sendable, Equatable {
        /// Stored: the barrier holds until the watch applies it.
        case written
        /// Certainly not stored (a conflict, or never sent): the barrier lifts.
        case notStored
        /// Stored or not: the barrier holds until the key moves past the base.
        case unknown
    }

    /// Whether a change is in flight or stored and not applied yet.
    public var busy: Bool { inFlight || base != nil }

    /// The write of `change` on `timeline` for the holder of `term`: its
    /// record, the revision to compare-and-set on and the change as placed;
    /// the barrier holds from here on.
    public mutating func prepare(
        _ change: TempoChange, justification: String, timeline: KVLeaseTimeline, term: UInt64,
        maxBytes: Int = KVTimelineRecord.maxBytes
    ) -> Result<(value: [UInt8], lastRevision: UInt64, placed: TempoChange), Refusal> {
        guard !busy else { return .failure(.changePending) }
        let write: (value: [UInt8], lastRevision: UInt64, applied: AppliedCommand)
        switch timeline.checkedWrite(
            .tempo(atBeat: change.atBeat, bpm: change.bpm, justification: justification), term: term,
            maxBytes: maxBytes)
        {
        case .success(let prepared): write = prepared
        case .failure(.tooLarge(let bytes)): return .failure(.tooLarge(bytes: bytes))
        case .failure(.unchanged): return .failure(.noLeader)
        }
        guard case .tempo(let placed) = write.applied else { return .failure(.noLeader) }
        base = write.lastRevision
        inFlight = true
        barrierBeat = placed.atBeat
        return .success((write.value, write.lastRevision, placed))
    }

    /// The KV's answer to the write prepared last.
    public mutating func answered(_ answer: Answer) {
        guard inFlight else { return }
        inFlight = false
        if answer == .notStored { settle() }
    }

    /// The watch applied a record: the change is settled once the key's
    /// applied revision is past the write's base.
    public mutating func watched(appliedRevision: UInt64) {
        guard let b = base, appliedRevision > b else { return }
        settle()
    }

    private mutating func settle() {
        base = nil
        barrierBeat = .max
    }
}

extension KVLeadership {
    /// The ready holder's write of a tempo change (`KVTempoWrite.prepare`):
    /// refused unless this node holds the key within its lease with a record
    /// of its term applied, and while the last change is not applied.
    public func prepareTempo(
        _ change: TempoChange, justification: String, nowMonoNs: Int64, maxBytes: Int = KVTimelineRecord.maxBytes
    ) -> Result<(value: [UInt8], lastRevision: UInt64, placed: TempoChange), KVTempoWrite.Refusal> {
        guard isReadyHolder, lease.mayPublish(nowMonoNs: nowMonoNs) else { return .failure(.noLeader) }
        return tempoWrite.prepare(
            change, justification: justification, timeline: timeline, term: lease.term, maxBytes: maxBytes)
    }

    /// Whether this ready holder's last change is not settled
    /// (`KVTempoWrite.busy`): a new one is refused with 409
    /// `change_pending`, and `GET /tempo` says `can_change: false` meanwhile.
    /// A node that lost the key forwards requests instead: false there.
    public var tempoChangeUnsettled: Bool { isReadyHolder && tempoWrite.busy }

    /// Applies the record the watch saw (`KVLeaseTimeline.apply`) and
    /// settles the tempo write it moved the key past.
    public func applyWatched(_ bytes: [UInt8], revision: UInt64, nowNs: Int64? = nil) -> KVTimelineChange {
        let change = timeline.apply(bytes, revision: revision, nowNs: nowNs)
        tempoWrite.watched(appliedRevision: timeline.revision)
        return change
    }
}
