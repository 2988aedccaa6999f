// Clock/ClockSync.swift — owns the estimate of a reference clock (the
// leader's) from NTP-style exchanges: offset, round trip and rate.
//
// Each sample is the four timestamps of a round trip: t1 we sent, t2 the
// reference received, t3 the reference sent, t4 we received (t1, t4 on our
// clock; t2, t3 on the reference's). offset = ((t2 − t1) + (t3 − t4)) / 2 is
// reference minus local; rtt = (t4 − t1) − (t3 − t2). Samples are filtered
// robustly: the offset used is the median of the recent samples with the
// smallest round trips (queueing only ever adds delay). The rate (how much
// faster the reference runs than we do, in parts per million) is a
// least-squares slope of filtered offsets over a window, so a node cut off
// from its leader can keep extrapolating the leader's time.
//
// Cost (samples come from peers' frames, so their rate is not ours to
// choose): each sample costs O(window + rateBuckets) work and the state is
// bounded (`window` samples, at most `maxRatePoints` rate points) however
// many samples arrive: the rate fit keeps one point per bucket of
// `rateWindowNs / rateBuckets` of local time, the centroid of that bucket's
// filtered offsets (kept as running sums, O(1) per sample).

/// One NTP-style exchange.
public struct SyncSample: Sendable, Equatable {
    public var t1: Int64
    public var t2: Int64
    public var t3: Int64
    public var t4: Int64
    public init(t1: Int64, t2: Int64, t3: Int64, t4: Int64) {
        self.t1 = t1
        self.t2 = t2
        self.t3 = t3
        self.t4 = t4
    }
    /// Reference minus local, in ns. Only for a sample that `ClockSync.check`
    /// accepts (its timestamps are bounded, so this cannot overflow).
    public var offsetNs: Int64 { ((t2 - t1) + (t3 - t4)) / 2 }
    /// Round trip without the reference's processing time, in ns (same condition).
    public var rttNs: Int64 { (t4 - t1) - (t3 - t2) }
}

/// Why `ClockSync` refused a sample: its timestamps come from a peer's frame,
/// so they are untrusted. The raw values are the reasons counted by the
/// service (`backbeat_rejected_input_total{surface="raft",reason}`).
public enum SampleRejection: String, Sendable, Equatable, CaseIterable {
    /// A timestamp outside `0...ClockSync.maxTimestampNs`.
    case timestampOutOfRange = "clock_timestamp_out_of_range"
    /// t4 < t1, t3 < t2 or a negative round trip (a clock stepped mid-exchange).
    case negativeRoundTrip = "clock_negative_round_trip"
    /// A round trip longer than `ClockSync.maxRoundTripNs`.
    case roundTripTooLong = "clock_round_trip_too_long"
    /// An offset larger than `ClockSync.maxOffsetNs` either way.
    case offsetTooLarge = "clock_offset_too_large"
}

/// Estimates a reference clock from samples; value type, no I/O.
public struct ClockSync: Sendable {
    /// How many recent samples the median looks at.
    public let window: Int
    /// The span the rate is fitted over, in ns of local time.
    public let rateWindowNs: Int64
    private var recent: [SyncSample] = []
    /// (local time, filtered offset) points for the rate fit: one per bucket
    /// (the centroid of its samples), oldest first; the last is the open bucket.
    private var points: [(localNs: Int64, offsetNs: Int64)] = []
    /// The open (latest) bucket's running sums, relative to its first sample.
    private var openBucket: (index: Int64, x0: Int64, y0: Int64, n: Double, sumDx: Double, sumDy: Double)?
    public private(set) var offsetNs: Int64 = 0
    public private(set) var rttNs: Int64 = 0
    /// Reference rate relative to ours, in ppm (positive: the reference runs faster).
    public private(set) var ratePpm: Double = 0
    /// Local time of the last accepted sample, or nil before the first.
    public private(set) var lastSyncLocalNs: Int64?
    /// Local time the offset estimate refers to.
    private var anchorLocalNs: Int64 = 0

    public init(window: Int = 15, rateWindowNs: Int64 = 600_000_000_000) {
        self.window = window
        self.rateWindowNs = rateWindowNs
    }

    public var hasEstimate: Bool { lastSyncLocalNs != nil }

    /// Buckets per rate window: the rate fit has at most `maxRatePoints` points.
    public static let rateBuckets: Int64 = 64
    /// Bound on the rate fit's points: the buckets of one window, plus the
    /// open one and one straddling the window's start.
    public static let maxRatePoints = Int(rateBuckets) + 2
    /// Points in the rate fit now (for tests and metrics); at most `maxRatePoints`.
    public var ratePointCount: Int { points.count }
    /// The local time the rate fit spans (0: fewer than the 3 points
    /// `slopePpm` fits a rate from, so no rate of its own).
    public var rateSpanNs: Int64 {
        guard points.count >= 3, let first = points.first, let last = points.last else { return 0 }
        return last.localNs - first.localNs
    }
    /// This estimate (its offset and anchor) with `other`'s rate: for a
    /// reference sampled only briefly (e.g. one election's messages) whose
    /// own fit says nothing about the rate, when `other` — a clock the
    /// same NTP-disciplined hosts keep — was fitted over a longer span.
    public func withRate(of other: ClockSync) -> ClockSync {
        var copy = self
        copy.ratePpm = other.ratePpm
        return copy
    }
    /// Width of one rate bucket, in ns of local time.
    private var bucketNs: Int64 { max(1, rateWindowNs / Self.rateBuckets) }

    /// Latest accepted timestamp: 2096-10-02 in ns since 1970. Bounding every
    /// timestamp to `0...4e18` keeps every difference and sum of two of them
    /// inside `Int64`, so `offsetNs` and `rttNs` cannot overflow.
    public static let maxTimestampNs: Int64 = 4_000_000_000_000_000_000
    /// Longest accepted round trip (network time, without the reference's hold):
    /// a longer one says nothing useful about the offset.
    public static let maxRoundTripNs: Int64 = 5_000_000_000
    /// Largest accepted offset either way: one day. Clocks further apart are
    /// not a cluster to synchronise but a misconfiguration (or a hostile frame).
    public static let maxOffsetNs: Int64 = 86_400_000_000_000
    /// Bound on the fitted rate, in ppm: quartz is within ±100 ppm, NTP slews at
    /// most 500 ppm; a larger fit (a short window, a poisoned sample) is clamped
    /// so the extrapolation stays physical and finite.
    public static let maxRatePpm: Double = 1000

    /// Why `sample` would be refused, or nil when it is within physical bounds.
    public static func check(_ sample: SyncSample) -> SampleRejection? {
        for t in [sample.t1, sample.t2, sample.t3, sample.t4] where t < 0 || t > maxTimestampNs {
            return .timestampOutOfRange
        }
        guard sample.t4 >= sample.t1, sample.t3 >= sample.t2, sample.rttNs >= 0 else { return .negativeRoundTrip }
        guard sample.rttNs <= maxRoundTripNs else { return .roundTripTooLong }
        guard abs(sample.offsetNs) <= maxOffsetNs else { return .offsetTooLarge }
        return nil
    }

    /// Adds a sample, or refuses it (and changes nothing) when it is outside
    /// the physical bounds of `check`; returns the refusal for the caller to count.
    @discardableResult
    public mutating func add(_ sample: SyncSample) -> SampleRejection? {
        if let rejection = Self.check(sample) { return rejection }
        recent.append(sample)
        if recent.count > window { recent.removeFirst(recent.count - window) }
        // Median offset of the half of the window with the smallest round
        // trips, among those whose round trip is close to the smallest (at
        // most twice it plus 1 ms): a sample's offset error is up to half its
        // round trip, so samples that straddled a stall of the reference (its
        // reply seconds late, found by the whole-cluster simulator at 100,000
        // seeds) must not outvote the quick ones however many they are.
        let byRtt = recent.sorted { $0.rttNs < $1.rttNs }
        let quickest = byRtt[0].rttNs
        let limit = quickest > (Int64.max - 1_000_000) / 2 ? Int64.max : 2 * quickest + 1_000_000
        let best = byRtt.prefix(max(1, (recent.count + 1) / 2)).filter { $0.rttNs <= limit }
        let offsets = best.map(\.offsetNs).sorted()
        offsetNs = offsets[offsets.count / 2]
        rttNs = best.first?.rttNs ?? sample.rttNs
        // A local clock stepped back: the rate fit starts over from here.
        if let last = lastSyncLocalNs, sample.t4 < last {
            points.removeAll()
            openBucket = nil
        }
        anchorLocalNs = sample.t4
        lastSyncLocalNs = sample.t4
        addRatePoint(localNs: sample.t4, offsetNs: offsetNs)
        let fitted = Self.slopePpm(points)
        ratePpm = fitted.isFinite ? min(max(fitted, -Self.maxRatePpm), Self.maxRatePpm) : 0
        return nil
    }

    /// Folds (local time, filtered offset) into its bucket: O(1), plus
    /// dropping points that left the window (a bounded array).
    private mutating func addRatePoint(localNs x: Int64, offsetNs y: Int64) {
        let bucket = x / bucketNs  // x >= 0 (checked)
        if var open = openBucket, open.index == bucket, !points.isEmpty {
            open.n += 1
            open.sumDx += Double(x - open.x0)  // 0 ... bucketNs: exact enough
            open.sumDy += Double(y) - Double(open.y0)  // both within ±maxOffsetNs
            openBucket = open
            points[points.count - 1] = (
                open.x0 + Self.saturating(open.sumDx / open.n), open.y0 + Self.saturating(open.sumDy / open.n)
            )
        } else {
            openBucket = (bucket, x, y, 1, 0, 0)
            points.append((x, y))
        }
        let horizon = x - rateWindowNs
        var drop = 0
        while drop < points.count - 1, points[drop].localNs < horizon { drop += 1 }
        drop = max(drop, points.count - Self.maxRatePoints)
        if drop > 0 { points.removeFirst(drop) }
    }

    /// The reference's time at local time `localNs`, extrapolated with the rate.
    /// Saturates at the ends of `Int64` instead of trapping.
    public func referenceNs(atLocal localNs: Int64) -> Int64 {
        let drift = Self.saturating(Self.difference(localNs, anchorLocalNs) * ratePpm / 1e6)
        return Self.saturatingAdd(Self.saturatingAdd(localNs, offsetNs), drift)
    }

    /// The local time at which the reference reads `referenceNs` (saturating).
    public func localNs(atReference referenceNs: Int64) -> Int64 {
        // Solve local + offset + (local − anchor)·r = reference for local:
        // local − anchor = (reference − offset − anchor) / (1 + r), computed on
        // the (small) difference so no precision is lost on 1.7e18-ns instants.
        let r = ratePpm / 1e6
        let target = Self.saturatingAdd(referenceNs, offsetNs == .min ? .max : -offsetNs)
        let sinceAnchor = Self.saturating(Self.difference(target, anchorLocalNs) / (1 + r))
        return Self.saturatingAdd(anchorLocalNs, sinceAnchor)
    }

    /// `a − b` as a Double: exact when it fits in `Int64`.
    static func difference(_ a: Int64, _ b: Int64) -> Double {
        let (d, overflow) = a.subtractingReportingOverflow(b)
        return overflow ? Double(a) - Double(b) : Double(d)
    }

    /// `Int64(x.rounded())`, saturated at the ends of `Int64`; NaN gives 0.
    static func saturating(_ x: Double) -> Int64 {
        guard x.isFinite else { return x.isNaN ? 0 : (x > 0 ? .max : .min) }
        let rounded = x.rounded()
        // 2^63 is exactly representable; Int64.max is not (it rounds up to 2^63).
        if rounded >= 9_223_372_036_854_775_808.0 { return .max }
        if rounded < -9_223_372_036_854_775_808.0 { return .min }
        return Int64(rounded)
    }

    static func saturatingAdd(_ a: Int64, _ b: Int64) -> Int64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? (b > 0 ? .max : .min) : sum
    }

    /// Least-squares slope of offset over local time, in ppm.
    static func slopePpm(_ points: [(localNs: Int64, offsetNs: Int64)]) -> Double {
        guard points.count >= 3, let first = points.first, let last = points.last, last.localNs - first.localNs > 0
        else { return 0 }
        let n = Double(points.count)
        var sx = 0.0
        var sy = 0.0
        var sxx = 0.0
        var sxy = 0.0
        for p in points {
            let x = Double(p.localNs - first.localNs)
            let y = Double(p.offsetNs - first.offsetNs)
            sx += x
            sy += y
            sxx += x * x
            sxy += x * y
        }
        let denominator = n * sxx - sx * sx
        guard denominator > 0 else { return 0 }
        return (n * sxy - sx * sy) / denominator * 1e6
    }
}
