// The tempo-change rules of §5: validity, order of checks, and the downbeat
// a committed change applies at.
import PulseCore
import XCTest

final class TempoRulesTests: XCTestCase {
    func testRulesInContractOrder() {
        XCTAssertNil(TempoRules.check(requested: 13, current: 12, minBpm: 4, maxBpm: 24, pending: nil))
        XCTAssertEqual(
            TempoRules.check(requested: 30, current: 12, minBpm: 4, maxBpm: 24, pending: nil)?.code, "out_of_range")
        XCTAssertEqual(
            TempoRules.check(requested: 3, current: 4, minBpm: 4, maxBpm: 24, pending: nil)?.code, "out_of_range")
        // 10 % of 120 is 12: 132 and 108 pass, 133 and 107 do not.
        XCTAssertNil(TempoRules.check(requested: 132, current: 120, minBpm: 4, maxBpm: 600, pending: nil))
        XCTAssertNil(TempoRules.check(requested: 108, current: 120, minBpm: 4, maxBpm: 600, pending: nil))
        XCTAssertEqual(
            TempoRules.check(requested: 133, current: 120, minBpm: 4, maxBpm: 600, pending: nil)?.code,
            "delta_too_large")
        XCTAssertEqual(
            TempoRules.check(requested: 107, current: 120, minBpm: 4, maxBpm: 600, pending: nil)?.code,
            "delta_too_large")
        // 12 bpm: 10 % is 1.2, so 13 passes (1*10 <= 12) and 14 does not.
        XCTAssertEqual(
            TempoRules.check(requested: 14, current: 12, minBpm: 4, maxBpm: 24, pending: nil)?.code, "delta_too_large")
        let pending = TempoChange(atBeat: 16, bpm: 13)
        let refusal = TempoRules.check(requested: 13, current: 12, minBpm: 4, maxBpm: 24, pending: pending)
        XCTAssertEqual(refusal?.code, "change_pending")
        XCTAssertEqual(refusal?.httpStatus, 409)
        // Range is checked before the pending change.
        XCTAssertEqual(
            TempoRules.check(requested: 99, current: 12, minBpm: 4, maxBpm: 24, pending: pending)?.httpStatus, 422)
    }

    func testApplyBeatIsTheFirstEligibleDownbeat() {
        let epoch = TempoEpoch(startBeat: 0, startNs: 1_000_000_000_000, bpm: 120)  // 500 ms period
        let timeline = Timeline(epoch: epoch, bar: 8, phaseCount: 3)
        // Committed at beat 3's instant with a 100 ms commit round: the next downbeat is 8.
        let d1 = TempoRules.applyBeat(
            timeline: timeline, committedNs: timeline.instantNs(ofBeat: 3), commitRoundNs: 100_000_000,
            firstUnpublishedBeat: 4)
        XCTAssertEqual(d1, 8)
        // Committed 50 ms before downbeat 8 with a 100 ms round: too close, so 16.
        let d2 = TempoRules.applyBeat(
            timeline: timeline, committedNs: timeline.instantNs(ofBeat: 8) - 50_000_000, commitRoundNs: 100_000_000,
            firstUnpublishedBeat: 8)
        XCTAssertEqual(d2, 16)
        // Never a beat already published, even if the clock says otherwise.
        let d3 = TempoRules.applyBeat(
            timeline: timeline, committedNs: timeline.instantNs(ofBeat: 1), commitRoundNs: 0, firstUnpublishedBeat: 9)
        XCTAssertEqual(d3, 16)
        // Never the epoch's own start.
        let d4 = TempoRules.applyBeat(
            timeline: timeline, committedNs: epoch.startNs - 10_000_000_000, commitRoundNs: 0, firstUnpublishedBeat: 0)
        XCTAssertEqual(d4, 8)
    }

    func testRandomizedApplyBeatProperties() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let bpm = Int64.random(in: 4...600, using: &rng)
            let bar = Int.random(in: 1...16, using: &rng)
            let epoch = TempoEpoch(
                startBeat: Int64.random(in: 0...1000, using: &rng), startNs: 1_700_000_000_000_000_000, bpm: bpm)
            let timeline = Timeline(epoch: epoch, bar: bar, phaseCount: 1)
            let committed = epoch.startNs + Int64.random(in: -1_000_000_000...100_000_000_000, using: &rng)
            let round = Int64.random(in: 0...2_000_000_000, using: &rng)
            let unpublished = max(epoch.startBeat, timeline.beat(atOrBeforeNs: committed) + 1)
            let d = TempoRules.applyBeat(
                timeline: timeline, committedNs: committed, commitRoundNs: round, firstUnpublishedBeat: unpublished)
            XCTAssertTrue(timeline.isDownbeat(d))
            XCTAssertGreaterThan(d, epoch.startBeat)
            XCTAssertGreaterThanOrEqual(d, unpublished)
            XCTAssertGreaterThanOrEqual(timeline.instantNs(ofBeat: d), committed + round)
            // It is the first such downbeat.
            let previous = d - Int64(bar)
            if previous > epoch.startBeat && previous >= unpublished {
                XCTAssertLessThan(timeline.instantNs(ofBeat: previous), committed + round)
            }
        }
    }
}
