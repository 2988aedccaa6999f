// The one tempo admission (PulsePolicy.TempoAdmission) that the service's
// TempoController and the simulator's nodes both call: the contract's rules
// on the timeline in force, 409 for a change in flight, no proposal from a
// leader that has not applied its term's first entry, and the apply beat.
import PulseCore
import PulsePolicy
import XCTest

final class TempoAdmissionTests: XCTestCase {
    let epoch = TempoEpoch(startBeat: 0, startNs: 1_000_000_000_000, bpm: 120)  // 500 ms period

    func decide(
        _ bpm: Int64, _ timeline: Timeline, inFlight: Bool = false, isLeader: Bool = true, caughtUp: Bool = true,
        next: Int64 = 4
    ) -> TempoAdmission {
        TempoAdmission.decide(
            requestedBpm: bpm, timeline: timeline, minBpm: 30, maxBpm: 600, inFlight: inFlight, isLeader: isLeader,
            appliedTermStart: caughtUp, nowWallNs: timeline.instantNs(ofBeat: 3), commitRoundNs: 100_000_000,
            firstUnpublishedBeat: next)
    }

    func testOrderOfDecisions() {
        let t = Timeline(epoch: epoch, bar: 8, phaseCount: 3)
        XCTAssertEqual(decide(126, t), .propose(TempoChange(atBeat: 8, bpm: 126)))
        XCTAssertEqual(decide(200, t), .refused(.deltaTooLarge(requested: 200, current: 120)))
        // The rules first (a follower refuses a bad request without forwarding it), then the
        // change in flight, then leadership, then the term-start gate.
        XCTAssertEqual(
            decide(200, t, inFlight: true, isLeader: false), .refused(.deltaTooLarge(requested: 200, current: 120)))
        XCTAssertEqual(decide(126, t, inFlight: true), .inFlight)
        XCTAssertEqual(decide(126, t, isLeader: false, caughtUp: false), .notLeader)
        // Adversarial review of #19: a new leader that has not applied its term's first entry
        // may not know a change committed in an earlier term; it does not propose.
        XCTAssertEqual(decide(126, t, caughtUp: false), .notCaughtUp)
    }

    func testPendingChangeAndItsTakingEffect() throws {
        var t = Timeline(epoch: epoch, bar: 8, phaseCount: 3)
        try t.schedule(change: TempoChange(atBeat: 8, bpm: 126))
        // Pending while beat 8 is not published: refused (409 change_pending).
        XCTAssertEqual(decide(130, t, next: 4), .refused(.changePending(bpm: 126, atBeat: 8)))
        // Once beat 8 is published the change is in force: the ±10 % rule is
        // judged against 126, and the new change falls after it.
        XCTAssertEqual(decide(138, t, next: 9), .propose(TempoChange(atBeat: 16, bpm: 138)))
        XCTAssertEqual(decide(139, t, next: 9), .refused(.deltaTooLarge(requested: 139, current: 126)))
    }
}
