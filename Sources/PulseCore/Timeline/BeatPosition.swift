// Timeline/BeatPosition.swift — owns the fractional position on the timeline
// at any instant (Ableton Link's beatAtTime / phaseAtTime, in the timeline's
// own units): the beat in progress plus how far into it, exact in integers,
// and the same as a Double for consumers that want one number.

/// Where an instant falls on the timeline: `offsetNs` into beat `beat`, whose
/// length is `lengthNs` (the instant of `beat + 1` minus that of `beat`).
///
/// Exact: `beat` is ``Timeline/beat(atOrBeforeNs:)``, so `0 <= offsetNs < lengthNs`
/// and at a beat's instant the offset is 0. Across a tempo change the length
/// is that of the epoch governing the beat.
public struct BeatPosition: Sendable, Hashable {
    /// The beat in progress.
    public var beat: Int64
    /// Nanoseconds since that beat's instant.
    public var offsetNs: Int64
    /// Nanoseconds from that beat's instant to the next beat's.
    public var lengthNs: Int64

    public init(beat: Int64, offsetNs: Int64, lengthNs: Int64) {
        self.beat = beat
        self.offsetNs = offsetNs
        self.lengthNs = lengthNs
    }

    /// The position as one number of beats, `beat + offsetNs / lengthNs`
    /// (Link's `beatAtTime`). Computed as `Double(beat) + Double(offsetNs) / Double(lengthNs)`,
    /// which every IEEE-754 language reproduces bit for bit (docs/vectors).
    public var beats: Double {
        Double(beat) + Double(offsetNs) / Double(lengthNs)
    }

    /// The position within a cycle of `quantum` beats counted from beat 0, in
    /// `[0, quantum)` (Link's `phaseAtTime`; with `quantum` = the bar, the
    /// position in the bar). Computed as `Double(beat mod quantum) + Double(offsetNs) / Double(lengthNs)`.
    /// Precondition: `quantum >= 1`.
    public func phase(quantum: Int64) -> Double {
        precondition(quantum >= 1, "quantum must be >= 1")
        return Double(floorMod(beat, quantum)) + Double(offsetNs) / Double(lengthNs)
    }
}

extension Timeline {
    /// The fractional position at instant `t` (Unix ns): the beat in progress
    /// and how far into it. Before the epoch the beat is extrapolated (see
    /// ``beat(atOrBeforeNs:)``).
    public func position(atNs t: Int64) -> BeatPosition {
        let k = beat(atOrBeforeNs: t)
        let start = instantNs(ofBeat: k)
        return BeatPosition(beat: k, offsetNs: t - start, lengthNs: instantNs(ofBeat: k + 1) - start)
    }
}
