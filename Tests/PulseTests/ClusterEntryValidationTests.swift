// Committed Raft entries are validated before they reach the timeline math
// (ClusterNode.apply): a hostile leader's epoch or tempo change that would
// overflow the instants is refused, never trapped on.
import PulseCore
import PulsePolicy
import XCTest

@testable import Pulse

final class ClusterEntryValidationTests: XCTestCase {
    private let epoch = TempoEpoch(startBeat: 0, startNs: 1_735_689_600_000_000_000, bpm: 120)

    func testAValidChangeAtALaterDownbeatIsAccepted() {
        XCTAssertTrue(ReplicatedTimeline.canSchedule(TempoChange(atBeat: 64, bpm: 126), after: epoch, bar: 8))
    }

    func testChangesThatWouldBreakTheTimelineAreRefused() {
        let hostile: [TempoChange] = [
            TempoChange(atBeat: 63, bpm: 126),  // not a downbeat
            TempoChange(atBeat: 0, bpm: 126),  // not after the epoch's start
            TempoChange(atBeat: 64, bpm: 0),  // bpm 0 divides by zero in instantNs
            TempoChange(atBeat: 64, bpm: -5),
            TempoChange(atBeat: 64, bpm: Int64.max),
            TempoChange(atBeat: Int64.max - 7, bpm: 120),  // instant overflows
            TempoChange(atBeat: 1 << 50, bpm: 120),  // beyond the supported beats
        ]
        for change in hostile {
            XCTAssertFalse(ReplicatedTimeline.canSchedule(change, after: epoch, bar: 8), "\(change)")
        }
    }

    func testFoldingAPendingChangeIsCheckedToo() {
        let good = ClusterState(
            epoch: epoch.stored, pending: TempoChange(atBeat: 64, bpm: 126).stored, justification: "")
        XCTAssertEqual(ReplicatedTimeline.fold(good)?.startBeat, 64)
        XCTAssertEqual(ReplicatedTimeline.fold(good)?.startNs, epoch.instantNs(ofBeat: 64))
        let bad = ClusterState(
            epoch: epoch.stored, pending: TempoChange(atBeat: Int64.max - 7, bpm: 126).stored, justification: "")
        XCTAssertNil(ReplicatedTimeline.fold(bad))
    }

    /// Fault 4 (issue 10): a committed change is placed at apply time from the
    /// entry and the committed state alone, so every node places it alike.
    func testCommittedChangesArePlacedOnTheNextEligibleDownbeat() {
        func placed(_ atBeat: Int64, after start: Int64 = 0) -> Int64 {
            ReplicatedTimeline.placed(
                TempoChange(atBeat: atBeat, bpm: 126),
                after: TempoEpoch(startBeat: start, startNs: epoch.startNs, bpm: 120), bar: 8
            ).atBeat
        }
        XCTAssertEqual(placed(64), 64)  // already a downbeat after the start: unchanged
        XCTAssertEqual(placed(63), 64)  // off a downbeat: the next one
        XCTAssertEqual(placed(0), 8)  // at the epoch's start: the first downbeat after it
        XCTAssertEqual(placed(-5), 8)
        XCTAssertEqual(placed(64, after: 64), 72)  // at the previous change's downbeat: the next bar
        XCTAssertEqual(placed(Int64.max - 3), Int64.max - 3)  // no overflow; canSchedule refuses it
        XCTAssertFalse(
            ReplicatedTimeline.canSchedule(TempoChange(atBeat: Int64.max - 3, bpm: 126), after: epoch, bar: 8))
    }
}
