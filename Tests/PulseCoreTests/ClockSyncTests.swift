// Offset and rate tracking (PER-003): a node whose clock runs 500 ppm fast
// tracks its leader, loses it, and keeps the committed timeline for an hour
// of simulated time within 0.01 %.
import PulseCore
import XCTest

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

    func testNegativeRoundTripIsIgnored() {
        var sync = ClockSync()
        sync.add(SyncSample(t1: 100, t2: 50, t3: 60, t4: 90))
        XCTAssertFalse(sync.hasEstimate)
    }
}
