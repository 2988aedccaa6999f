// Clock/HLC.swift — owns the hybrid logical clock: the stamp value, its
// ordering and text form (parse/format), and the send/receive update rules of
// Kulkarni et al. 2014, with a max-offset guard against far-ahead peers.

/// A hybrid logical clock timestamp: physical part in Unix milliseconds plus a
/// logical counter. Ordered by `(wallMs, counter)`; ties between nodes are
/// broken by the node suffix, which lives beside the stamp (see
/// ``HLCStamp/isOrdered(_:suffix:before:suffix:)``).
public struct HLCStamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Physical component, Unix milliseconds (≥ 0 in practice).
    public var wallMs: Int64
    /// Logical component.
    public var counter: UInt32

    public init(wallMs: Int64, counter: UInt32) {
        self.wallMs = wallMs
        self.counter = counter
    }

    /// The zero stamp, older than every real one.
    public static let zero = HLCStamp(wallMs: 0, counter: 0)

    public static func < (lhs: HLCStamp, rhs: HLCStamp) -> Bool {
        lhs.wallMs != rhs.wallMs ? lhs.wallMs < rhs.wallMs : lhs.counter < rhs.counter
    }

    /// Total order across nodes: `(wallMs, counter)`, then the node suffix
    /// compared bytewise (UTF-8).
    public static func isOrdered(
        _ a: HLCStamp, suffix sa: some StringProtocol,
        before b: HLCStamp, suffix sb: some StringProtocol
    ) -> Bool {
        if a != b { return a < b }
        return sa.utf8.lexicographicallyPrecedes(sb.utf8)
    }

    /// Text form without the node suffix: `<ms hex>:<counter hex, ≥ 4 digits>`.
    public var description: String {
        text(suffix: nil)
    }

    /// Text form `<unix_ms lowercase hex>:<counter lowercase hex, ≥ 4 digits>:<suffix>`
    /// (or without `:<suffix>` when `suffix` is nil). Allocates; the beat path
    /// uses ``BeatFrameEncoder`` instead.
    public func text(suffix: String?) -> String {
        precondition(wallMs >= 0, "HLC wallMs must be non-negative")
        var ms = String(UInt64(wallMs), radix: 16)
        let c = String(counter, radix: 16)
        ms += ":"
        if c.utf8.count < 4 { ms += String(repeating: "0", count: 4 - c.utf8.count) }
        ms += c
        if let suffix {
            ms += ":"
            ms += suffix
        }
        return ms
    }

    /// Parses `<unix_ms hex>:<counter hex>:<suffix>`. Hex digits must be lowercase;
    /// the ms part has 1–16 digits and fits in Int64; the counter part has at
    /// least 4 digits and fits in UInt32 (non-canonical zero padding beyond 4
    /// digits is rejected, so parse∘format is the identity). The suffix is
    /// everything after the second colon and may be empty or contain colons.
    public static func parse(_ s: Substring) -> (stamp: HLCStamp, suffix: Substring)? {
        let u = s.utf8
        guard let c1 = u.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        let afterC1 = u.index(after: c1)
        guard let c2 = u[afterC1...].firstIndex(of: UInt8(ascii: ":")) else { return nil }
        guard let ms = parseHex(u[u.startIndex..<c1], maxDigits: 16),
            ms <= UInt64(Int64.max)
        else { return nil }
        let counterBytes = u[afterC1..<c2]
        let n = counterBytes.count
        guard n >= 4, n <= 8 else { return nil }
        if n > 4, counterBytes.first == UInt8(ascii: "0") { return nil }
        guard let counter = parseHex(counterBytes, maxDigits: 8) else { return nil }
        let suffix = s[s.utf8.index(after: c2)...]
        return (HLCStamp(wallMs: Int64(ms), counter: UInt32(counter)), suffix)
    }

    /// String overload of ``parse(_:)-(Substring)``.
    public static func parse(_ s: String) -> (stamp: HLCStamp, suffix: Substring)? {
        parse(s[...])
    }

    private static func parseHex(_ bytes: Substring.UTF8View.SubSequence, maxDigits: Int) -> UInt64? {
        guard !bytes.isEmpty, bytes.count <= maxDigits else { return nil }
        var v: UInt64 = 0
        for b in bytes {
            let d: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - UInt8(ascii: "a") + 10
            default: return nil
            }
            v = v << 4 | UInt64(d)
        }
        return v
    }
}

/// Outcome of merging a peer's stamp into the local clock.
public enum HLCReceiveResult: Sendable, Hashable {
    /// The remote stamp was merged; the payload is the local stamp of the receive event.
    case merged(HLCStamp)
    /// The remote stamp was more than `maxOffsetMs` ahead of local wall time and
    /// was not adopted (count it in a metric). The receive event was stamped as
    /// a local event, `local`; `aheadMs` is how far ahead the remote wall part was.
    case rejectedTooFarAhead(local: HLCStamp, aheadMs: Int64)
}

/// Hybrid logical clock state (Kulkarni, Demirbas et al., "Logical Physical
/// Clocks", 2014). Pure: the wall time is a parameter of every event.
///
/// Counter overflow: if the counter would pass `UInt32.max`, the physical part
/// is advanced by 1 ms and the counter restarts at 0. The clock then runs at
/// most that 1 ms ahead of the physical clock until wall time catches up;
/// stamps stay strictly monotonic.
public struct HLC: Sendable, Hashable {
    /// The last stamp issued or merged.
    public private(set) var last: HLCStamp
    /// A remote stamp whose wall part is more than this ahead of local wall time is rejected.
    public let maxOffsetMs: Int64

    public init(maxOffsetMs: Int64 = 500, last: HLCStamp = .zero) {
        precondition(maxOffsetMs >= 0, "maxOffsetMs must be non-negative")
        self.maxOffsetMs = maxOffsetMs
        self.last = last
    }

    /// Stamp for a local or send event at wall time `wallMs`. Strictly greater
    /// than every stamp issued or merged before, even if `wallMs` went back.
    @_noAllocation
    public mutating func now(wallMs: Int64) -> HLCStamp {
        if wallMs > last.wallMs {
            last = HLCStamp(wallMs: wallMs, counter: 0)
        } else {
            last = Self.bump(last.wallMs, last.counter)
        }
        return last
    }

    /// Merges a stamp received from a peer at local wall time `wallMs`.
    @_noAllocation
    public mutating func receive(_ remote: HLCStamp, wallMs: Int64) -> HLCReceiveResult {
        let (ahead, overflow) = remote.wallMs.subtractingReportingOverflow(wallMs)
        if overflow || ahead > maxOffsetMs {
            let local = now(wallMs: wallMs)
            return .rejectedTooFarAhead(local: local, aheadMs: overflow ? Int64.max : ahead)
        }
        let l = max(max(last.wallMs, remote.wallMs), wallMs)
        if l == last.wallMs && l == remote.wallMs {
            last = Self.bump(l, max(last.counter, remote.counter))
        } else if l == last.wallMs {
            last = Self.bump(l, last.counter)
        } else if l == remote.wallMs {
            last = Self.bump(l, remote.counter)
        } else {
            last = HLCStamp(wallMs: l, counter: 0)
        }
        return .merged(last)
    }

    /// `(ms, counter + 1)`, or `(ms + 1, 0)` when the counter is exhausted.
    @inline(__always)
    private static func bump(_ ms: Int64, _ counter: UInt32) -> HLCStamp {
        counter == UInt32.max
            ? HLCStamp(wallMs: ms + 1, counter: 0)
            : HLCStamp(wallMs: ms, counter: counter + 1)
    }
}
