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
    /// Reference minus local, in ns.
    public var offsetNs: Int64 { ((t2 - t1) + (t3 - t4)) / 2 }
    /// Round trip without the reference's processing time, in ns.
    public var rttNs: Int64 { (t4 - t1) - (t3 - t2) }
}

/// Estimates a reference clock from samples; value type, no I/O.
public struct ClockSync: Sendable {
    /// How many recent samples the median looks at.
    public let window: Int
    /// The span the rate is fitted over, in ns of local time.
    public let rateWindowNs: Int64
    private var recent: [SyncSample] = []
    /// (local time, filtered offset) points for the rate fit.
    private var points: [(localNs: Int64, offsetNs: Int64)] = []
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

    /// Adds a sample; samples with a negative round trip (clock stepped mid-exchange) are dropped.
    public mutating func add(_ sample: SyncSample) {
        guard sample.rttNs >= 0, sample.t4 >= sample.t1 else { return }
        recent.append(sample)
        if recent.count > window { recent.removeFirst(recent.count - window) }
        // Median offset of the half of the window with the smallest round trips.
        let best = recent.sorted { $0.rttNs < $1.rttNs }.prefix(max(1, (recent.count + 1) / 2))
        let offsets = best.map(\.offsetNs).sorted()
        offsetNs = offsets[offsets.count / 2]
        rttNs = best.first?.rttNs ?? sample.rttNs
        anchorLocalNs = sample.t4
        lastSyncLocalNs = sample.t4
        points.append((sample.t4, offsetNs))
        let horizon = sample.t4 - rateWindowNs
        if let firstKept = points.firstIndex(where: { $0.localNs >= horizon }), firstKept > 0 {
            points.removeFirst(firstKept)
        }
        ratePpm = Self.slopePpm(points)
    }

    /// The reference's time at local time `localNs`, extrapolated with the rate.
    public func referenceNs(atLocal localNs: Int64) -> Int64 {
        let elapsed = Double(localNs - anchorLocalNs)
        return localNs + offsetNs + Int64((elapsed * ratePpm / 1e6).rounded())
    }

    /// The local time at which the reference reads `referenceNs`.
    public func localNs(atReference referenceNs: Int64) -> Int64 {
        // Solve local + offset + (local − anchor)·r = reference for local.
        let r = ratePpm / 1e6
        let numerator = Double(referenceNs - offsetNs) + Double(anchorLocalNs) * r
        return Int64((numerator / (1 + r)).rounded())
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
