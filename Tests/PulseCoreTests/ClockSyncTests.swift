// Offset and rate tracking (PER-003): a node whose clock runs 500 ppm fast
// tracks its leader, loses it, and keeps the committed timeline for an hour
// of simulated time within 0.01 %.
import XCTest

@testable import PulseCore

final class ClockSyncTests: XCTestCase {
    /// Local clock = true × (1 + ppm) + offset0; the leader's clock is true time.
    struct Skewed {
        var ppm: Double
        var offset0Ns: Int64
        func local(_ trueNs: Int64) -> Int64 { Int64(Double(trueNs) * (1 + ppm / 1e6)) + offset0Ns }
        func trueTime(_ localNs: Int64) -> Int64 { Int64(Double(localNs - offset0Ns) / (1 + ppm / 1e6)) }
    }

    /// Runs `syncSeconds` of exchanges every 50 ms with random asymmetric delays.
    func converge(_ clock: Skewed, syncSeconds: Int, seed: UInt64) -> (ClockSync, Int64) {
        var rng = SeededRNG(seed: seed)
        var sync = ClockSync()
        var trueNs: Int64 = 1_000_000_000_000
        for _ in 0..<(syncSeconds * 20) {
            let outNs = Int64.random(in: 50_000...2_000_000, using: &rng)
            let backNs = Int64.random(in: 50_000...2_000_000, using: &rng)
            let holdNs = Int64.random(in: 0...5_000_000, using: &rng)
            let t1 = clock.local(trueNs)
            let t2 = trueNs + outNs
            let t3 = t2 + holdNs
            let t4 = clock.local(t3 + backNs)
            sync.add(SyncSample(t1: t1, t2: t2, t3: t3, t4: t4))
            trueNs += 50_000_000
        }
        return (sync, trueNs)
    }

    func testOffsetAndRateConverge() {
        let clock = Skewed(ppm: 500, offset0Ns: 3_000_000_000)
        let (sync, trueNs) = converge(clock, syncSeconds: 120, seed: 7)
        // Reference minus local at the end is about −offset0 − 500 ppm of elapsed time.
        let expectedOffset = trueNs - clock.local(trueNs)
        XCTAssertLessThan(abs(sync.offsetNs - expectedOffset), 2_000_000, "offset within the network's asymmetry")
        XCTAssertEqual(sync.ratePpm, -500 / (1 + 500e-6), accuracy: 20, "the leader runs ~500 ppm slower than we do")
        XCTAssertGreaterThan(sync.rttNs, 0)
    }

    func testAnHourWithoutALeaderStaysWithinOneHundredthOfAPercent() {
        let clock = Skewed(ppm: 500, offset0Ns: -7_000_000_000)
        let (sync, lostAtTrueNs) = converge(clock, syncSeconds: 300, seed: 11)
        let epoch = TempoEpoch(startBeat: 0, startNs: 1_000_000_000_000, bpm: 120)
        let timeline = Timeline(epoch: epoch, bar: 8, phaseCount: 3)
        let hourNs: Int64 = 3_600_000_000_000
        var worstDrift = 0.0
        var worstUncorrected = 0.0
        // Beats through the next hour, sampled every minute.
        for minute in 1...60 {
            let k = timeline.beat(atOrBeforeNs: lostAtTrueNs + Int64(minute) * 60_000_000_000)
            let instant = timeline.instantNs(ofBeat: k)
            let elapsed = Double(instant - lostAtTrueNs)
            // Corrected: schedule at the local time the leader's clock reads the instant.
            let fired = clock.trueTime(sync.localNs(atReference: instant))
            worstDrift = max(worstDrift, abs(Double(fired - instant)) / elapsed)
            // Offset only, no rate: what the rate estimate buys.
            let naive = clock.trueTime(instant - sync.offsetNs)
            worstUncorrected = max(worstUncorrected, abs(Double(naive - instant)) / elapsed)
        }
        XCTAssertLessThanOrEqual(worstDrift, 1e-4, "drift \(worstDrift * 100) % over an hour")
        XCTAssertGreaterThan(worstUncorrected, 1e-4, "without the rate the drift is \(worstUncorrected * 100) %")
        _ = hourNs
    }

    func testReferenceAndLocalAreInverse() {
        let (sync, trueNs) = converge(Skewed(ppm: -200, offset0Ns: 12_345), syncSeconds: 60, seed: 3)
        for delta in stride(from: Int64(0), through: 3_600_000_000_000, by: 600_000_000_000) {
            let local = trueNs + delta
            XCTAssertLessThanOrEqual(abs(sync.localNs(atReference: sync.referenceNs(atLocal: local)) - local), 2)
        }
    }

    // Adversarial review of #9, finding 3: a peer's frames each carry a
    // sample, and 8000 a second of them stalled the leader: every sample was
    // kept as a rate point for the 600 s window and the fit rescanned all of
    // them per sample. Now one point per bucket of the window: the points
    // (and so the work per sample) stay bounded whatever the sample rate.
    func testAFloodOfSamplesKeepsTheRateFitBounded() {
        var sync = ClockSync()
        let bucketNs = sync.rateWindowNs / ClockSync.rateBuckets
        let start: Int64 = 1_000_000_000_000
        var t = start
        var refused = 0
        var mostPoints = 0
        for _ in 0..<1_000_000 {
            t += 125_000  // 8000 samples a second, for 125 s
            if sync.add(SyncSample(t1: t - 1_000_000, t2: t - 890_000, t3: t - 880_000, t4: t)) != nil { refused += 1 }
            mostPoints = max(mostPoints, sync.ratePointCount)
        }
        XCTAssertEqual(refused, 0)
        XCTAssertEqual(
            sync.ratePointCount, Int(t / bucketNs - (start + 125_000) / bucketNs) + 1, "one point per bucket")
        XCTAssertLessThanOrEqual(mostPoints, ClockSync.maxRatePoints)
        XCTAssertEqual(sync.ratePpm, 0, accuracy: 1e-6, "a constant offset has no rate")
        // Then two hours at one sample a second: the window slides, the points stay bounded.
        for _ in 0..<7200 {
            t += 1_000_000_000
            sync.add(SyncSample(t1: t - 1_000_000, t2: t - 890_000, t3: t - 880_000, t4: t))
            mostPoints = max(mostPoints, sync.ratePointCount)
        }
        XCTAssertLessThanOrEqual(mostPoints, ClockSync.maxRatePoints)
        XCTAssertGreaterThanOrEqual(sync.ratePointCount, Int(ClockSync.rateBuckets))
    }

    func testNegativeRoundTripIsIgnored() {
        var sync = ClockSync()
        XCTAssertEqual(sync.add(SyncSample(t1: 100, t2: 50, t3: 60, t4: 90)), .negativeRoundTrip)
        XCTAssertFalse(sync.hasEstimate)
    }

    // Timestamps come from a peer's Raft frame: the old code trapped on
    // `(t4 − t1)` overflow and in `Int64(Double)` of a poisoned rate.
    func testSamplesOutsidePhysicalBoundsAreRefusedWithoutTrapping() {
        let now: Int64 = 1_760_000_000_000_000_000
        var sync = ClockSync()
        let cases: [(SyncSample, SampleRejection)] = [
            (SyncSample(t1: .min, t2: .max, t3: .max, t4: .max), .timestampOutOfRange),
            (SyncSample(t1: now, t2: .max, t3: .max, t4: now + 1), .timestampOutOfRange),
            (SyncSample(t1: now, t2: -1, t3: 0, t4: now + 1), .timestampOutOfRange),
            (SyncSample(t1: now, t2: now, t3: now - 5, t4: now + 10), .negativeRoundTrip),
            (SyncSample(t1: now, t2: now, t3: now, t4: now - 1), .negativeRoundTrip),
            (SyncSample(t1: now, t2: now, t3: now, t4: now + 6_000_000_000), .roundTripTooLong),
            (
                SyncSample(
                    t1: now, t2: now + 2 * 86_400_000_000_000, t3: now + 2 * 86_400_000_000_000, t4: now + 1_000),
                .offsetTooLarge
            ),
            (SyncSample(t1: now, t2: 0, t3: 0, t4: now + 1_000), .offsetTooLarge),
        ]
        for (sample, reason) in cases {
            XCTAssertEqual(ClockSync.check(sample), reason, "\(sample)")
            XCTAssertEqual(sync.add(sample), reason, "\(sample)")
        }
        XCTAssertFalse(sync.hasEstimate, "nothing refused was used")
        // Within bounds (offset just under a day): accepted.
        let day = ClockSync.maxOffsetNs
        XCTAssertNil(sync.add(SyncSample(t1: now, t2: now + day - 1, t3: now + day - 1, t4: now + 2)))
        XCTAssertTrue(sync.hasEstimate)
    }

    /// Wild but in-bounds samples (offsets jumping by a day between samples
    /// microseconds apart) fit an absurd rate: it is clamped, and the
    /// conversions saturate instead of trapping, at any instant.
    func testPoisonedRateIsClampedAndConversionsNeverTrap() {
        var rng = SeededRNG(seed: 5)
        var sync = ClockSync()
        var t: Int64 = 1_000
        for _ in 0..<200 {
            t += Int64.random(in: 1...1_000, using: &rng)
            let offset = Int64.random(in: -ClockSync.maxOffsetNs...ClockSync.maxOffsetNs, using: &rng)
            let sample = SyncSample(t1: t, t2: t + offset, t3: t + offset, t4: t)
            guard sync.add(sample) == nil else { continue }
            XCTAssertTrue(sync.ratePpm.isFinite)
            XCTAssertLessThanOrEqual(abs(sync.ratePpm), ClockSync.maxRatePpm)
        }
        XCTAssertTrue(sync.hasEstimate)
        for instant in [Int64.min, Int64.min + 1, -1, 0, 1, t, Int64.max - 1, Int64.max] {
            _ = sync.referenceNs(atLocal: instant)
            _ = sync.localNs(atReference: instant)
        }
        XCTAssertLessThanOrEqual(abs(sync.referenceNs(atLocal: t) - t), ClockSync.maxOffsetNs, "a bounded offset")
    }

    func testSaturatingConversion() {
        XCTAssertEqual(ClockSync.saturating(.nan), 0)
        XCTAssertEqual(ClockSync.saturating(.infinity), .max)
        XCTAssertEqual(ClockSync.saturating(-.infinity), .min)
        XCTAssertEqual(ClockSync.saturating(1e300), .max)
        XCTAssertEqual(ClockSync.saturating(9_223_372_036_854_775_807.0), .max)
        XCTAssertEqual(ClockSync.saturating(-9_223_372_036_854_775_808.0), .min)
        XCTAssertEqual(ClockSync.saturating(-2.5), -3)
        XCTAssertEqual(ClockSync.saturating(12_345.4), 12_345)
    }
}
