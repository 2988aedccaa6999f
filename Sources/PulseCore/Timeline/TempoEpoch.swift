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
