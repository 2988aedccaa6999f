// The clock a degraded node takes its turns on (DegradationPolicy.turnReference):
// the lowest voter's offset with the better-fitted rate (PER-003 with
// another voter leading; docs/benchmark.md).
import PulseCore
import PulsePolicy
import XCTest

final class DegradedReferenceTests: XCTestCase {
    /// Our clock runs `ppm` fast against true time; `referenceOffsetNs` is the
    /// reference's offset from true time. One exchange per `everyNs` of true
    /// time over `[fromNs, toNs)`, 1 ms round trip.
    private func estimate(ppm: Int64, referenceOffsetNs: Int64, fromNs: Int64, toNs: Int64, everyNs: Int64)
        -> ClockSync
    {
        var sync = ClockSync()
        var t = fromNs
        while t < toNs {
            let local = { (trueNs: Int64) in trueNs + trueNs / 1_000_000 * ppm }
            let sample = SyncSample(
                t1: local(t), t2: t + 500_000 + referenceOffsetNs, t3: t + 500_000 + referenceOffsetNs,
                t4: local(t + 1_000_000))
            XCTAssertNil(sync.add(sample))
            t += everyNs
        }
        return sync
    }

    func testAVoterHeardOnlyInAnElectionBorrowsTheLastLeadersRate() throws {
        let s: Int64 = 1_000_000_000
        // n3 runs 500 ppm fast. It heard the lowest voter (3 ms ahead) in one
        // election at the start, and followed the leader (true time) for 45 s.
        let voter = estimate(
            ppm: 500, referenceOffsetNs: 3_000_000, fromNs: 1 * s, toNs: 1 * s + 30_000_000, everyNs: 10_000_000)
        let leader = estimate(ppm: 500, referenceOffsetNs: 0, fromNs: 1 * s, toNs: 46 * s, everyNs: 50_000_000)
        XCTAssertEqual(voter.rateSpanNs, 0, "one burst: no rate of its own")
        XCTAssertEqual(voter.ratePpm, 0)
        XCTAssertGreaterThan(leader.rateSpanNs, 30 * s)
        XCTAssertEqual(leader.ratePpm, -500, accuracy: 5)
        let reference = try XCTUnwrap(DegradationPolicy.turnReference(voter: voter, lastLeader: leader))
        // 100 s of true time later, the voter's clock reads true time + 3 ms:
        // within 0.1 ms with the borrowed rate (was ~50 ms off: the whole skew).
        let trueNs = 146 * s
        let localNs = trueNs + trueNs / 1_000_000 * 500
        let error = reference.referenceNs(atLocal: localNs) - (trueNs + 3_000_000)
        XCTAssertLessThan(abs(error), 100_000, "error \(error) ns")
        let unborrowed = voter.referenceNs(atLocal: localNs) - (trueNs + 3_000_000)
        XCTAssertGreaterThan(abs(unborrowed), 40_000_000, "the voter's own fit drifts at the skew: \(unborrowed) ns")
    }

    func testTwoBurstsAreNoRateOfTheirOwn() throws {
        let s: Int64 = 1_000_000_000
        // Two elections 20 s apart: two points of the fit, which needs three.
        var voter = estimate(
            ppm: 500, referenceOffsetNs: 0, fromNs: 1 * s, toNs: 1 * s + 30_000_000, everyNs: 10_000_000)
        for k in 0..<3 {
            let t = 21 * s + Int64(k) * 10_000_000
            let local = { (trueNs: Int64) in trueNs + trueNs / 1_000_000 * 500 }
            XCTAssertNil(
                voter.add(SyncSample(t1: local(t), t2: t + 500_000, t3: t + 500_000, t4: local(t + 1_000_000))))
        }
        XCTAssertEqual(voter.ratePointCount, 2)
        XCTAssertEqual(voter.ratePpm, 0, "no fit from two points")
        XCTAssertEqual(voter.rateSpanNs, 0)
        let leader = estimate(ppm: 500, referenceOffsetNs: 0, fromNs: 30 * s, toNs: 50 * s, everyNs: 50_000_000)
        let reference = try XCTUnwrap(DegradationPolicy.turnReference(voter: voter, lastLeader: leader))
        XCTAssertEqual(reference.ratePpm, leader.ratePpm, "the leader's fitted rate, not the voter's 0")
        XCTAssertEqual(reference.ratePpm, -500, accuracy: 5)
    }

    func testAVoterFittedLongerKeepsItsOwnRateAndAnUnusableVoterFallsBackToTheLeader() throws {
        let s: Int64 = 1_000_000_000
        let voter = estimate(ppm: 200, referenceOffsetNs: 1_000_000, fromNs: 1 * s, toNs: 61 * s, everyNs: 50_000_000)
        let leader = estimate(ppm: 200, referenceOffsetNs: 0, fromNs: 50 * s, toNs: 61 * s, everyNs: 50_000_000)
        let kept = try XCTUnwrap(DegradationPolicy.turnReference(voter: voter, lastLeader: leader))
        XCTAssertEqual(kept.ratePpm, voter.ratePpm)
        XCTAssertEqual(kept.offsetNs, voter.offsetNs)
        // No voter estimate, or none usable: the leader's; neither: our own clock.
        XCTAssertEqual(DegradationPolicy.turnReference(voter: nil, lastLeader: leader)?.offsetNs, leader.offsetNs)
        XCTAssertEqual(
            DegradationPolicy.turnReference(voter: ClockSync(), lastLeader: leader)?.offsetNs, leader.offsetNs)
        XCTAssertNil(DegradationPolicy.turnReference(voter: nil, lastLeader: nil))
    }
}
