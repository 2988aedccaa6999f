// Timeline/TempoEpoch.swift — owns the tempo epoch value, the pending tempo
// change value, and the exact 128-bit integer helpers the timeline math uses.

/// A tempo epoch `(start_beat, start_ns, bpm)`: beat `startBeat` happens at
/// `startNs` (Unix wall-clock nanoseconds) and later beats follow at `bpm`.
public struct TempoEpoch: Sendable, Hashable {
    /// Index of the first beat of this epoch.
    public var startBeat: Int64
    /// Unix wall-clock time of `startBeat`, in nanoseconds.
    public var startNs: Int64
    /// Tempo in beats per minute; always > 0.
    public var bpm: Int64

    public init(startBeat: Int64, startNs: Int64, bpm: Int64) {
        precondition(bpm > 0, "bpm must be positive")
        self.startBeat = startBeat
        self.startNs = startNs
        self.bpm = bpm
    }
}

/// A scheduled tempo change: from downbeat `atBeat` on, the timeline runs at `bpm`.
public struct TempoChange: Sendable, Hashable {
    /// The downbeat at which the change takes effect.
    public var atBeat: Int64
    /// New tempo in beats per minute.
    public var bpm: Int64

    public init(atBeat: Int64, bpm: Int64) {
        self.atBeat = atBeat
        self.bpm = bpm
    }
}

/// Nanoseconds per minute: the numerator of every beat period.
let nsPerMinute: Int64 = 60_000_000_000

/// Floor of `(high:low) / divisor` for a signed 128-bit dividend and a positive
/// divisor. Traps if the quotient does not fit in `Int64`.
@_noAllocation
func floorDivide128(high: Int64, low: UInt64, by divisor: Int64) -> Int64 {
    let (q, r) = divisor.dividingFullWidth((high: high, low: low))
    return r < 0 ? q - 1 : q
}

/// Floor of `a * b / divisor` computed with a 128-bit intermediate product;
/// `divisor` must be positive.
@_noAllocation
func mulDivFloor(_ a: Int64, _ b: Int64, _ divisor: Int64) -> Int64 {
    let p = a.multipliedFullWidth(by: b)
    return floorDivide128(high: p.high, low: p.low, by: divisor)
}

/// Floor division for a positive divisor (rounds towards negative infinity).
@_noAllocation
func floorDiv(_ a: Int64, _ b: Int64) -> Int64 {
    let q = a / b
    return (a % b < 0) ? q - 1 : q
}

/// Non-negative remainder for a positive divisor.
@_noAllocation
func floorMod(_ a: Int64, _ b: Int64) -> Int64 {
    let r = a % b
    return r < 0 ? r + b : r
}

extension TempoEpoch {
    /// Instant of beat `k` under this epoch:
    /// `startNs + floor((k - startBeat) * 60e9 / bpm)`, exact, 128-bit intermediate.
    /// Traps only if the result is not representable as Int64 nanoseconds
    /// (i.e. beyond year 2262) — unreachable for real timelines.
    @_noAllocation
    public func instantNs(ofBeat k: Int64) -> Int64 {
        let delta = k - startBeat
        return startNs + mulDivFloor(delta, nsPerMinute, bpm)
    }

    /// Largest `k` with `instantNs(ofBeat: k) <= t` under this epoch (may be below
    /// `startBeat` when `t` is before `startNs`: the epoch is extrapolated backwards).
    ///
    /// With `u = t - startNs`, `floor(d*P/bpm) <= u  <=>  d <= floor(((u+1)*bpm - 1) / P)`.
    @_noAllocation
    public func beat(atOrBeforeNs t: Int64) -> Int64 {
        let u = t - startNs
        // (u + 1) * bpm - 1 in 128 bits, written as u*bpm + (bpm - 1) to avoid u+1 overflow.
        let p = u.multipliedFullWidth(by: bpm)
        let (low, carry) = p.low.addingReportingOverflow(UInt64(bpm - 1))
        let high = carry ? p.high + 1 : p.high
        return startBeat + floorDivide128(high: high, low: low, by: nsPerMinute)
    }

    /// Nominal beat period (floor of 60e9 / bpm); individual intervals differ by
    /// at most 1 ns when 60e9 is not divisible by `bpm`.
    public var periodNs: Int64 { nsPerMinute / bpm }
}

/// Why an epoch read from outside (a data-dir file, a snapshot) cannot be used.
public enum TempoEpochError: Error, Sendable, Hashable {
    /// The tempo is outside ``TempoEpoch/supportedBpm``.
    case bpmOutOfRange(Int64)
    /// The start beat is outside ``TempoEpoch/supportedBeats``.
    case startBeatOutOfRange(Int64)
    /// The start instant is outside ``TempoEpoch/supportedNs``.
    case startNsOutOfRange(Int64)
}

extension TempoEpoch {
    /// Tempi a validated epoch may have (the same bounds as `-min-bpm`/`-max-bpm`).
    public static let supportedBpm: ClosedRange<Int64> = 1...6000
    /// Start instants a validated epoch may have: 1970-01-01 to 2200-01-01 (Unix ns).
    public static let supportedNs: ClosedRange<Int64> = 0...7_258_118_400_000_000_000
    /// Start beats a validated epoch may have (2^48: 89,000 years of beats at 6000 bpm).
    public static let supportedBeats: ClosedRange<Int64> = 0...(1 << 48)

    /// An epoch from untrusted numbers, refused (never trapped on) when the
    /// timeline math could overflow. Guarantee: for every instant `t` in
    /// ``supportedNs``, `beat(atOrBeforeNs: t)` and `instantNs(ofBeat:)` of that
    /// beat and of its two successors (deadline, next beat) stay in `Int64`.
    ///
    /// Proof, with `P = 6e10`, `H = 7.26e18` (the top of ``supportedNs``):
    /// - `u = t − startNs` has `|u| ≤ H < 2^63`; `u·bpm ≤ H·6000 ≈ 4.4e22` fits
    ///   the 128-bit intermediate; the quotient `|q| ≤ H·6000/P + 1 ≈ 7.3e11`, and
    ///   `startBeat + q ≤ 2^48 + 7.3e11` fits.
    /// - for `k` within 3 beats of that beat, `δ = k − startBeat` has
    ///   `|δ| ≤ 7.3e11 + 3`; `δ·P` fits 128 bits, and `floor(δ·P/bpm)` is
    ///   `t − startNs` within 3 periods (≤ 1.8e11 ns), so `|·| ≤ H + 1.8e11 < 2^63`;
    ///   adding `startNs` gives an instant within 1.8e11 ns of `t`.
    public static func validated(startBeat: Int64, startNs: Int64, bpm: Int64) throws(TempoEpochError) -> TempoEpoch {
        guard supportedBpm.contains(bpm) else { throw .bpmOutOfRange(bpm) }
        guard supportedBeats.contains(startBeat) else { throw .startBeatOutOfRange(startBeat) }
        guard supportedNs.contains(startNs) else { throw .startNsOutOfRange(startNs) }
        return TempoEpoch(startBeat: startBeat, startNs: startNs, bpm: bpm)
    }

    /// `instantNs(ofBeat: k)` with every step checked: nil instead of a trap
    /// when `k` is so far from `startBeat` that the instant leaves `Int64`.
    /// For validating untrusted beat indices (e.g. a stored pending change).
    public func checkedInstantNs(ofBeat k: Int64) -> Int64? {
        let (delta, deltaOverflow) = k.subtractingReportingOverflow(startBeat)
        guard !deltaOverflow else { return nil }
        // |δ·P/bpm| ≤ (Int64.max / P) · P < Int64.max when |δ| ≤ (Int64.max / P) · bpm
        // (a conservative bound: a sliver of representable instants is refused too).
        let limit = (Int64.max / nsPerMinute).multipliedReportingOverflow(by: bpm)
        if !limit.overflow, delta.magnitude > UInt64(limit.partialValue) { return nil }
        let (instant, overflow) = startNs.addingReportingOverflow(mulDivFloor(delta, nsPerMinute, bpm))
        return overflow ? nil : instant
    }
}
