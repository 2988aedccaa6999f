// The holder's tempo writes in nats-kv mode (Sources/PulsePolicy/
// KVTempoWrite.swift): one change at a time until the watch applied it, and
// the barrier held meanwhile. The 100,000-seed run of 2026-12-07 (seed 3315
// and six others): a second change accepted between the first one's store
// and its watch replaced and, refused, lifted the first one's barrier.
import PulseCore
import PulsePolicy
import XCTest

final class KVLeaseTempoWriteTests: XCTestCase {
    private let startNs: Int64 = 1_800_000_000_000_000_000
    private func flags() throws -> TimelineShape { try TimelineShape(bar: 4, phases: ["beat"]) }

    /// A ready holder of term 7: its lease created at revision 7, the epoch
    /// (120 bpm) applied from the timeline key at revision 8.
    private func readyHolder() throws -> KVLeadership {
        var lease = KVLease(timing: KVLeaseTiming(), owner: "k1 1-2", nowMonoNs: 0)
        XCTAssertEqual(lease.next(nowMonoNs: 0), .create)
        XCTAssertEqual(lease.complete(.written(revision: 7), nowMonoNs: 1_000_000), [.acquired(term: 7)])
        let n = KVLeadership(lease: lease, timeline: KVLeaseTimeline(flags: try flags()))
        let epoch = try XCTUnwrap(
            n.timeline.write(.epoch(startBeat: 0, startNs: startNs, bpm: 120, bar: 4, phases: ["beat"]), term: 7))
        XCTAssertEqual(
            n.applyWatched(epoch.value, revision: 8), .started(TempoEpoch(startBeat: 0, startNs: startNs, bpm: 120)))
        XCTAssertTrue(n.isReadyHolder)
        return n
    }

    private let now: Int64 = 2_000_000

    func testASecondChangeBeforeTheFirstIsWatchedIsRefusedAndKeepsItsBarrier() throws {
        let n = try readyHolder()
        XCTAssertEqual(n.tempoBarrierBeat, .max)
        // The first change (placed on the downbeat 12) is written on revision 8.
        let first = try n.prepareTempo(TempoChange(atBeat: 9, bpm: 110), justification: "a", nowMonoNs: now).get()
        XCTAssertEqual(first.lastRevision, 8)
        XCTAssertEqual(first.placed, TempoChange(atBeat: 12, bpm: 110))
        XCTAssertEqual(n.tempoBarrierBeat, 12)
        // In flight: refused.
        XCTAssertEqual(
            n.prepareTempo(TempoChange(atBeat: 13, bpm: 115), justification: "b", nowMonoNs: now).failure,
            .changePending)
        // Stored (the KV answered), but the watch has not delivered it yet:
        // the holder's timeline still lacks it, so a second change would be
        // planned on revision 8 without it. Refused with 409 change_pending.
        n.tempoWrite.answered(.written)
        XCTAssertEqual(n.timeline.revision, 8)
        let refusal = try XCTUnwrap(
            n.prepareTempo(TempoChange(atBeat: 16, bpm: 115), justification: "b", nowMonoNs: now).failure)
        XCTAssertEqual(refusal, .changePending)
        XCTAssertEqual(refusal.code, "change_pending")
        XCTAssertEqual(n.tempoBarrierBeat, 12, "the first change's barrier is not replaced")
        XCTAssertTrue(n.tempoWrite.busy)
        // An answer of no write in flight (a stale one) does not lift it either.
        n.tempoWrite.answered(.notStored)
        XCTAssertEqual(n.tempoBarrierBeat, 12)

        // The watch applies the first change (revision 9): the barrier lifts,
        // and the next change is planned on the applied timeline.
        XCTAssertEqual(n.applyWatched(first.value, revision: 9), .tempo(TempoChange(atBeat: 12, bpm: 110)))
        XCTAssertEqual(n.tempoBarrierBeat, .max)
        XCTAssertFalse(n.tempoWrite.busy)
        let second = try n.prepareTempo(TempoChange(atBeat: 16, bpm: 115), justification: "b", nowMonoNs: now).get()
        XCTAssertEqual(second.lastRevision, 9, "on the record that holds the first change")
        XCTAssertEqual(n.tempoBarrierBeat, second.placed.atBeat)
        let record = try XCTUnwrap(KVTimelineRecord.decoded(second.value, bar: 4))
        XCTAssertEqual(record.state.epoch.bpm, 110, "the first change is folded in, not lost")
    }

    func testARefusedWriteLiftsItsBarrierAndAnUnknownOneHoldsUntilTheKeyMoves() throws {
        let n = try readyHolder()
        // Refused by the KV (a conflict) or never sent: certainly not stored.
        _ = try n.prepareTempo(TempoChange(atBeat: 9, bpm: 110), justification: "", nowMonoNs: now).get()
        n.tempoWrite.answered(.notStored)
        XCTAssertEqual(n.tempoBarrierBeat, .max)
        XCTAssertFalse(n.tempoWrite.busy)
        // Unknown: held (409) until the watch shows a record past its base ...
        let unknown = try n.prepareTempo(TempoChange(atBeat: 9, bpm: 110), justification: "", nowMonoNs: now).get()
        n.tempoWrite.answered(.unknown)
        XCTAssertEqual(n.tempoBarrierBeat, 12)
        XCTAssertEqual(
            n.prepareTempo(TempoChange(atBeat: 9, bpm: 100), justification: "", nowMonoNs: now).failure,
            .changePending)
        // ... here the KV had not stored it: the term start moved the key.
        let restamp = try XCTUnwrap(n.timeline.termStart(term: 7))
        XCTAssertEqual(restamp.lastRevision, unknown.lastRevision)
        XCTAssertEqual(n.applyWatched(restamp.value, revision: 9), .restamped(term: 7))
        XCTAssertEqual(n.tempoBarrierBeat, .max)
        XCTAssertNoThrow(try n.prepareTempo(TempoChange(atBeat: 9, bpm: 100), justification: "", nowMonoNs: now).get())
    }

    /// `GET /tempo` on the holder (`TempoController.lastCommitUnsettled`)
    /// says `can_change: false` exactly while a request would get 409
    /// `change_pending`: from the write until the watch applied it, or
    /// until a write of unknown fate is settled; not after a refused write,
    /// and not on a node that lost the key (it forwards).
    func testTheHolderReportsAnUnsettledChangeExactlyWhileItWouldRefuseOne() throws {
        let n = try readyHolder()
        XCTAssertFalse(n.tempoChangeUnsettled)
        let first = try n.prepareTempo(TempoChange(atBeat: 9, bpm: 110), justification: "", nowMonoNs: now).get()
        XCTAssertTrue(n.tempoChangeUnsettled, "in flight")
        n.tempoWrite.answered(.written)
        XCTAssertTrue(n.tempoChangeUnsettled, "stored, not yet watched")
        XCTAssertEqual(
            n.prepareTempo(TempoChange(atBeat: 16, bpm: 115), justification: "", nowMonoNs: now).failure,
            .changePending, "what a request gets meanwhile")
        XCTAssertEqual(n.applyWatched(first.value, revision: 9), .tempo(TempoChange(atBeat: 12, bpm: 110)))
        XCTAssertFalse(n.tempoChangeUnsettled, "applied from the watch")

        _ = try n.prepareTempo(TempoChange(atBeat: 16, bpm: 115), justification: "", nowMonoNs: now).get()
        n.tempoWrite.answered(.notStored)
        XCTAssertFalse(n.tempoChangeUnsettled, "refused by the KV: nothing to wait for")

        _ = try n.prepareTempo(TempoChange(atBeat: 16, bpm: 115), justification: "", nowMonoNs: now).get()
        n.tempoWrite.answered(.unknown)
        XCTAssertTrue(n.tempoChangeUnsettled, "of unknown fate")
        n.lease.stepDown()
        XCTAssertTrue(n.tempoWrite.busy)
        XCTAssertFalse(n.tempoChangeUnsettled, "no longer the holder: it forwards to the next one")
    }

    func testOnlyTheReadyHolderWithinItsLeaseWrites() throws {
        let n = try readyHolder()
        let lapsed = n.lease.timing.validNs + 10_000_000
        XCTAssertEqual(
            n.prepareTempo(TempoChange(atBeat: 9, bpm: 110), justification: "", nowMonoNs: lapsed).failure, .noLeader)
        let follower = KVLeadership(
            lease: KVLease(timing: KVLeaseTiming(), owner: "k2 1-2", nowMonoNs: 0), timeline: n.timeline)
        XCTAssertEqual(
            follower.prepareTempo(TempoChange(atBeat: 9, bpm: 110), justification: "", nowMonoNs: now).failure,
            .noLeader)
        XCTAssertEqual(n.tempoBarrierBeat, .max, "a refused request holds no barrier")
        XCTAssertEqual(follower.tempoBarrierBeat, .max)
    }
}

extension Result {
    fileprivate var failure: Failure? {
        if case .failure(let f) = self { return f }
        return nil
    }
}
