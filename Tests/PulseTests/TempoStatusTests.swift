// The `GET /tempo` body (TempoController.status): `can_change` is false,
// with its reason, whenever a `POST /tempo` would be refused for the state
// of this node — a change pending, one being committed, nats-kv's holder
// whose last change is not settled (409 `change_pending`,
// PulsePolicy/KVTempoWrite.swift), no leader — and the body keeps the
// documented keys (requirements §6).
import Foundation
import PulseCore
import XCTest

@testable import Pulse

final class TempoStatusTests: XCTestCase {
    private let nowNs: Int64 = 1_800_000_000_000_000_000
    private var timeline: PulseCore.Timeline {
        PulseCore.Timeline(
            epoch: Timeline.bootstrapEpoch(nowNs: nowNs - 2_000_000_000, bpm: 120), bar: 4, phaseCount: 1)
    }

    private func status(
        _ timeline: PulseCore.Timeline? = nil, committing: Bool = false, unsettled: Bool = false,
        canCommit: Bool = true, canForward: Bool = false
    ) -> TempoStatus {
        TempoController.status(
            timeline: timeline ?? self.timeline, nowNs: nowNs, commitRoundNs: 200_000_000,
            firstUnpublishedBeat: 5, committing: committing, unsettled: unsettled, canCommit: canCommit,
            canForward: canForward)
    }

    func testAnUnsettledKVChangeSaysCannotChangeWithItsReason() throws {
        let free = status()
        XCTAssertTrue(free.can_change)
        XCTAssertEqual(free.reason, "")

        let unsettled = status(unsettled: true)
        XCTAssertFalse(unsettled.can_change, "a POST would get 409 change_pending")
        XCTAssertTrue(unsettled.reason.contains("not settled yet"), unsettled.reason)
        XCTAssertEqual(unsettled.current_bpm, 120)
        XCTAssertEqual(unsettled.pending_bpm, 120, "nothing pending on the timeline yet")
        XCTAssertEqual(unsettled.next_change, free.next_change)

        // The same keys as every other reply (§6).
        let json = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: JSONEncoder().encode(unsettled)) as? [String: Any])
        XCTAssertEqual(Set(json.keys), ["current_bpm", "pending_bpm", "can_change", "next_change", "reason"])
        XCTAssertEqual(json["can_change"] as? Bool, false)
    }

    func testTheOtherReasonsKeepTheirOrder() throws {
        XCTAssertEqual(status(committing: true, unsettled: true).reason, "a change is being committed")
        XCTAssertEqual(status(canCommit: false).reason, "no leader to commit a change")
        XCTAssertTrue(status(canCommit: false, canForward: true).can_change, "a follower forwards")

        var pending = timeline
        try pending.schedule(change: TempoChange(atBeat: 8, bpm: 126))
        let answer = status(pending, unsettled: true)
        XCTAssertFalse(answer.can_change)
        XCTAssertEqual(answer.pending_bpm, 126)
        XCTAssertEqual(answer.reason, "a change to 126 bpm is pending at beat 8")
    }
}
