// The Raft transport's per-connection frame budget (adversarial review of
// #9, finding 3): a flood of well-formed frames from one connection stalled
// the leader; now each connection delivers at most `maxFramesPerSecond`
// frames (bursts of `frameBurst`) and the rest are skipped and counted.
import XCTest

@testable import Pulse

final class RaftTransportLimitTests: XCTestCase {
    func testBudgetAllowsTheBurstThenTheRate() {
        var budget = FrameBudget(perSecond: 2_000, burst: 1_000, nowNs: 5_000_000_000)
        var taken = 0
        for _ in 0..<5_000 where budget.take(nowNs: 5_000_000_000) { taken += 1 }
        XCTAssertEqual(taken, 1_000, "the burst, then nothing at the same instant")
        // 2000 a second: one token per 0.5 ms, whole tokens only.
        XCTAssertFalse(budget.take(nowNs: 5_000_400_000))
        XCTAssertTrue(budget.take(nowNs: 5_000_500_000))
        XCTAssertFalse(budget.take(nowNs: 5_000_500_000))
        taken = 0
        for _ in 0..<5_000 where budget.take(nowNs: 5_010_500_000) { taken += 1 }
        XCTAssertEqual(taken, 20, "10 ms later: 20 frames")
        // A long pause refills to the burst, not beyond.
        taken = 0
        for _ in 0..<5_000 where budget.take(nowNs: 100_000_000_000) { taken += 1 }
        XCTAssertEqual(taken, 1_000)
    }

    func testSustainedFloodIsHeldToTheRate() {
        var budget = FrameBudget(perSecond: 2_000, burst: 1_000, nowNs: 0)
        var taken = 0
        // 8000 frames a second for 10 s (one every 125 µs).
        for k in 1...80_000 where budget.take(nowNs: Int64(k) * 125_000) { taken += 1 }
        XCTAssertEqual(taken, 1_000 + 2_000 * 10, "the burst plus 2000 a second")
    }

    func testBudgetNeverTrapsOnExtremeClocks() {
        var budget = FrameBudget(perSecond: .max, burst: .max, nowNs: .min)
        XCTAssertTrue(budget.take(nowNs: .max))
        XCTAssertTrue(budget.take(nowNs: .min))  // time going back adds nothing, traps nothing
        var tiny = FrameBudget(perSecond: 0, burst: 0, nowNs: 0)  // clamped to 1 and 1
        XCTAssertTrue(tiny.take(nowNs: 0))
        XCTAssertFalse(tiny.take(nowNs: 0))
        XCTAssertTrue(tiny.take(nowNs: .max))
    }

    func testDefaultsLeaveRoomForARealPeer() {
        let limits = RaftTransportLimits.forElectionTimeout(300_000_000)
        // A leader sends a heartbeat per 50 ms tick plus appends: a few dozen a second.
        XCTAssertGreaterThanOrEqual(limits.maxFramesPerSecond, 1_000)
        XCTAssertGreaterThanOrEqual(limits.frameBurst, 500)
    }
}
