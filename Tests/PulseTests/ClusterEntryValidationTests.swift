// Committed Raft entries are validated before they reach the timeline math
// (ClusterNode.apply): a hostile leader's epoch or tempo change that would
// overflow the instants is refused, never trapped on.
import PulseCore
import XCTest

@testable import Pulse

final class ClusterEntryValidationTests: XCTestCase {
    private let epoch = TempoEpoch(startBeat: 0, startNs: 1_735_689_600_000_000_000, bpm: 120)

    func testAValidChangeAtALaterDownbeatIsAccepted() {
        XCTAssertTrue(ClusterNode.canSchedule(TempoChange(atBeat: 64, bpm: 126), after: epoch, bar: 8))
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
            XCTAssertFalse(ClusterNode.canSchedule(change, after: epoch, bar: 8), "\(change)")
        }
    }

    func testFoldingAPendingChangeIsCheckedToo() {
        let good = ClusterState(
            epoch: epoch.stored, pending: TempoChange(atBeat: 64, bpm: 126).stored, justification: "")
        XCTAssertEqual(ClusterNode.fold(good, bar: 8)?.startBeat, 64)
        XCTAssertEqual(ClusterNode.fold(good, bar: 8)?.startNs, epoch.instantNs(ofBeat: 64))
        let bad = ClusterState(
            epoch: epoch.stored, pending: TempoChange(atBeat: Int64.max - 7, bpm: 126).stored, justification: "")
        XCTAssertNil(ClusterNode.fold(bad, bar: 8))
    }
}
