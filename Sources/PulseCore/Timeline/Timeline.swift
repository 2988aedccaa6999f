// Timeline/Timeline.swift — owns the replicated beat timeline: the current
// epoch, bar/phase layout, one optional pending tempo change, and every
// beat <-> instant mapping derived from them (exact integer math, no clock reads).

/// Why a tempo change could not be scheduled on a ``Timeline``.
public enum TimelineError: Error, Sendable, Hashable {
    /// The change's beat is not a downbeat (`atBeat % bar != 0`).
    case notADownbeat(atBeat: Int64)
    /// The change's beat is not after the current epoch's start beat.
    case notAfterEpochStart(atBeat: Int64, epochStartBeat: Int64)
    /// Another change is already pending.
    case changeAlreadyPending(TempoChange)
    /// The new tempo is not positive.
    case invalidBpm(Int64)

    /// A snake_case code for the refusal (docs/vectors/tempo.json).
    public var reason: String {
        switch self {
        case .notADownbeat: return "not_a_downbeat"
        case .notAfterEpochStart: return "not_after_epoch_start"
        case .changeAlreadyPending: return "change_already_pending"
        case .invalidBpm: return "invalid_bpm"
        }
    }
}

/// The deterministic beat timeline every node derives from the same committed
/// epoch (requirements §1). A value type: copying it is cheap and safe.
///
/// Beats are `Int64` indices ≥ 0. `instantNs(ofBeat:)` is computed from the
/// epoch every time (never by adding periods). A pending ``TempoChange`` at
/// downbeat `D` defines the next epoch `(D, instant_old(D), new_bpm)`; every
/// query for a beat ≥ `D` (or an instant ≥ `instant_old(D)`) already uses it,
/// so the mapping is the same before and after ``applyDue(beat:)`` folds it in.
///
/// The timeline only knows the current and the pending epoch: beats before
/// `epoch.startBeat` are extrapolated backwards at the current tempo.
public struct Timeline: Sendable, Hashable {
    /// The epoch in force.
    public private(set) var epoch: TempoEpoch
    /// The next epoch, if a tempo change is pending; its `startBeat` is the change's downbeat.
    public private(set) var pendingEpoch: TempoEpoch?
    /// Beats per bar (≥ 1).
    public let bar: Int
    /// Number of phases a bar is divided into (≥ 1).
    public let phaseCount: Int

    /// Creates a timeline. Preconditions: `bar >= 1`, `phaseCount >= 1`.
    public init(epoch: TempoEpoch, bar: Int, phaseCount: Int) {
        precondition(bar >= 1, "bar must be >= 1")
        precondition(phaseCount >= 1, "phaseCount must be >= 1")
        self.epoch = epoch
        self.pendingEpoch = nil
        self.bar = bar
        self.phaseCount = phaseCount
    }

    /// The pending tempo change, if any.
    public var pending: TempoChange? {
        pendingEpoch.map { TempoChange(atBeat: $0.startBeat, bpm: $0.bpm) }
    }

    // MARK: Bootstrap

    /// First epoch of a freshly bootstrapped cluster: beat 0 at the next whole
    /// second strictly after `nowNs` (so if `nowNs` is itself a whole second, one
    /// second later).
    public static func bootstrapEpoch(nowNs: Int64, bpm: Int64) -> TempoEpoch {
        let second: Int64 = 1_000_000_000
        let startNs = (floorDiv(nowNs, second) + 1) * second
        return TempoEpoch(startBeat: 0, startNs: startNs, bpm: bpm)
    }

    // MARK: Beat <-> instant

    /// The epoch that governs beat `k`.
    @inline(__always)
    func epoch(forBeat k: Int64) -> TempoEpoch {
        if let p = pendingEpoch, k >= p.startBeat { return p }
        return epoch
    }

    /// Unix nanoseconds at which beat `k` is due (exact; see ``TempoEpoch/instantNs(ofBeat:)``).
    @_noAllocation
    public func instantNs(ofBeat k: Int64) -> Int64 {
        epoch(forBeat: k).instantNs(ofBeat: k)
    }

    /// Largest beat `k` with `instantNs(ofBeat: k) <= t`.
    ///
    /// If `t` is before the current epoch's start this is `epoch.startBeat - 1`
    /// or less (negative for a timeline starting at beat 0, extrapolated at the
    /// current tempo): callers must treat such a result as "no beat yet".
    @_noAllocation
    public func beat(atOrBeforeNs t: Int64) -> Int64 {
        if let p = pendingEpoch, t >= p.startNs { return p.beat(atOrBeforeNs: t) }
        return epoch.beat(atOrBeforeNs: t)
    }

    /// Smallest beat `k` with `instantNs(ofBeat: k) > t` — the next beat to fire after `t`.
    @_noAllocation
    public func nextBeat(afterNs t: Int64) -> Int64 {
        beat(atOrBeforeNs: t) + 1
    }

    /// `deadline_at` of beat `k`: the instant of beat `k + 1`, in Unix nanoseconds.
    @_noAllocation
    public func deadlineNs(ofBeat k: Int64) -> Int64 {
        instantNs(ofBeat: k + 1)
    }

    /// `deadline_at` of beat `k` in Unix milliseconds (floor), as the wire format carries it.
    @_noAllocation
    public func deadlineUnixMs(ofBeat k: Int64) -> Int64 {
        floorDiv(deadlineNs(ofBeat: k), 1_000_000)
    }

    /// Nominal period of the current epoch in nanoseconds (informational).
    public var periodNs: Int64 { epoch.periodNs }

    // MARK: Bar and phase

    /// `k % bar` as a non-negative value.
    @_noAllocation
    public func beatInBar(_ k: Int64) -> Int64 {
        floorMod(k, Int64(bar))
    }

    /// Whether beat `k` starts a bar (`k % bar == 0`).
    @_noAllocation
    public func isDownbeat(_ k: Int64) -> Bool {
        beatInBar(k) == 0
    }

    /// Index into the phase list for beat `k`: `(k % bar) * phaseCount / bar`.
    @_noAllocation
    public func phaseIndex(_ k: Int64) -> Int {
        Int(beatInBar(k) * Int64(phaseCount) / Int64(bar))
    }

    /// First beat of the bar containing `k` (`k - k % bar`).
    @_noAllocation
    public func barStart(_ k: Int64) -> Int64 {
        k - beatInBar(k)
    }

    /// Smallest downbeat `>= k`.
    @_noAllocation
    public func nextDownbeat(atOrAfter k: Int64) -> Int64 {
        let r = beatInBar(k)
        return r == 0 ? k : k - r + Int64(bar)
    }

    // MARK: Tempo changes

    /// Schedules a tempo change at downbeat `change.atBeat`.
    ///
    /// Throws (rather than trapping, since changes arrive from the network and
    /// the replicated log) if the beat is not a downbeat, not after the current
    /// epoch's start, the bpm is not positive, or a change is already pending.
    /// It cannot know which beats were already published: never scheduling a
    /// change retroactively is the caller's job (§5). On success, instants of
    /// beats `<= atBeat` are unchanged and later beats follow the new bpm.
    public mutating func schedule(change: TempoChange) throws(TimelineError) {
        if let p = pending { throw .changeAlreadyPending(p) }
        guard change.bpm > 0 else { throw .invalidBpm(change.bpm) }
        guard isDownbeat(change.atBeat) else { throw .notADownbeat(atBeat: change.atBeat) }
        guard change.atBeat > epoch.startBeat else {
            throw .notAfterEpochStart(atBeat: change.atBeat, epochStartBeat: epoch.startBeat)
        }
        pendingEpoch = TempoEpoch(
            startBeat: change.atBeat,
            startNs: epoch.instantNs(ofBeat: change.atBeat),
            bpm: change.bpm)
    }

    /// Drops the pending change (e.g. when the log entry that carried it is superseded).
    public mutating func cancelPending() {
        pendingEpoch = nil
    }

    /// Makes the pending epoch current once beat `k` has reached its start.
    /// Returns whether an epoch switch happened. Queries give the same answers
    /// before and after; this only keeps the state small.
    @_noAllocation
    public mutating func applyDue(beat k: Int64) -> Bool {
        if let p = pendingEpoch, k >= p.startBeat {
            epoch = p
            pendingEpoch = nil
            return true
        }
        return false
    }
}
