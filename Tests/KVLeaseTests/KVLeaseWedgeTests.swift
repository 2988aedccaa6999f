// The second review of the nats-kv fixes (2026-12-07 11:25), items 1 and 2,
// on the pure policies: a record the readers would refuse is never written
// (size), a watch gap re-syncs instead of wedging the node when it moves no
// past beat, and every node but the holder tells consumers — in frames and
// replies, degraded or not — the term of the last record it applied.
import PulseCore
import PulsePolicy
import XCTest

final class KVLeaseWedgeTests: XCTestCase {
    private let startNs: Int64 = 1_800_000_000_000_000_000
    private let periodNs: Int64 = 500_000_000  // 120 bpm
    private var epoch: ClusterCommand {
        .epoch(startBeat: 0, startNs: startNs, bpm: 120, bar: 4, phases: ["beat"])
    }
    private func flags() throws -> TimelineShape { try TimelineShape(bar: 4, phases: ["beat"]) }

    // MARK: item 1a: size

    func testALongEscapedJustificationIsReadBackByEveryNode() throws {
        var holder = KVLeaseTimeline(flags: try flags())
        var reader = KVLeaseTimeline(flags: try flags())
        let first = try XCTUnwrap(holder.write(epoch, term: 3))
        _ = holder.apply(first.value, revision: 1)
        _ = reader.apply(first.value, revision: 1)
        // 1024 bytes pass the admin API's limit; JSON escapes each to 6 bytes.
        let control = String(repeating: "\u{1}", count: 1024)
        let tempo = try XCTUnwrap(holder.write(.tempo(atBeat: 8, bpm: 90, justification: control), term: 3))
        XCTAssertGreaterThan(tempo.value.count, 6 * 1024, "the record is larger than the old 4096-byte limit")
        XCTAssertEqual(reader.apply(tempo.value, revision: 2), .tempo(TempoChange(atBeat: 8, bpm: 90)))
        XCTAssertEqual(reader.revision, 2, "the readers' compare-and-set base moves with the writer's")
    }

    func testTheLargestShapeFitsAndATooLargeRecordIsNeverPrepared() throws {
        let phase = String(repeating: "\u{2}", count: TimelineShape.maxPhaseBytes)
        let largest = try TimelineShape(
            bar: TimelineShape.supportedBar.upperBound,
            phases: Array(repeating: phase, count: TimelineShape.supportedBar.upperBound))
        let worst = KVTimelineRecord.worstCaseBytes(shape: largest)
        XCTAssertGreaterThan(worst, 300_000)
        XCTAssertLessThanOrEqual(worst, KVTimelineRecord.maxBytes, "every shape the flags allow fits")
        var holder = KVLeaseTimeline(flags: try flags())
        let first = try XCTUnwrap(holder.write(epoch, term: 3))
        _ = holder.apply(first.value, revision: 1)
        let huge = String(repeating: "\u{1}", count: KVTimelineRecord.maxBytes / 6 + 1)
        guard
            case .failure(.tooLarge(let bytes)) = holder.checkedWrite(
                .tempo(atBeat: 8, bpm: 90, justification: huge), term: 3)
        else { return XCTFail("a record above the readers' limit must not be prepared") }
        XCTAssertGreaterThan(bytes, KVTimelineRecord.maxBytes)
        XCTAssertNil(holder.write(.tempo(atBeat: 8, bpm: 90, justification: huge), term: 3))
        // A server payload limit below the readers' is the writer's limit.
        guard
            case .failure(.tooLarge) = holder.checkedWrite(
                .tempo(atBeat: 8, bpm: 90, justification: String(repeating: "x", count: 900)), term: 3, maxBytes: 800)
        else { return XCTFail("the server's limit applies") }
        guard
            case .success = holder.checkedWrite(
                .tempo(atBeat: 8, bpm: 90, justification: String(repeating: "x", count: 900)), term: 3)
        else { return XCTFail("within the limit") }
    }

    // MARK: item 1b: watch gaps

    /// The holder's records: the epoch (rev 10), change A (rev 11: 90 bpm at
    /// beat 12), B (rev 12: 100 bpm at 20, A folded in), C (rev 13: 110 bpm
    /// at 28, B folded in); and a node that applied revisions 10 and 11 only.
    private func skipped() throws -> (node: KVLeaseTimeline, b: [UInt8], c: [UInt8]) {
        var holder = KVLeaseTimeline(flags: try flags())
        var node = KVLeaseTimeline(flags: try flags())
        let e = try XCTUnwrap(holder.write(epoch, term: 9))
        _ = holder.apply(e.value, revision: 10)
        _ = node.apply(e.value, revision: 10, nowNs: startNs)
        let a = try XCTUnwrap(holder.write(.tempo(atBeat: 12, bpm: 90, justification: "a"), term: 9))
        XCTAssertEqual(holder.apply(a.value, revision: 11), .tempo(TempoChange(atBeat: 12, bpm: 90)))
        XCTAssertEqual(node.apply(a.value, revision: 11, nowNs: startNs), .tempo(TempoChange(atBeat: 12, bpm: 90)))
        let b = try XCTUnwrap(holder.write(.tempo(atBeat: 20, bpm: 100, justification: "b"), term: 9))
        XCTAssertEqual(holder.apply(b.value, revision: 12), .tempo(TempoChange(atBeat: 20, bpm: 100)))
        let c = try XCTUnwrap(holder.write(.tempo(atBeat: 28, bpm: 110, justification: "c"), term: 9))
        XCTAssertEqual(holder.apply(c.value, revision: 13), .tempo(TempoChange(atBeat: 28, bpm: 110)))
        XCTAssertEqual(holder.machine.state?.epoch.startBeat, 20, "B folded in")
        return (node, b.value, c.value)
    }

    func testAWatchGapThatMovesNoPastBeatReSyncs() throws {
        var (node, _, c) = try skipped()
        var fresh = KVLeaseTimeline(flags: try flags())
        _ = fresh.apply(c, revision: 13)
        let expected = try XCTUnwrap(fresh.machine.timeline)
        // Record B (rev 12) was replaced before the watch delivered it; at beat 5 C arrives.
        let now = startNs + 5 * periodNs
        XCTAssertEqual(node.apply(c, revision: 13, nowNs: now), .resynced(term: 9))
        XCTAssertEqual(node.revision, 13, "the compare-and-set base moved: the next write can succeed")
        XCTAssertEqual(node.machine.timeline, expected)
        for k: Int64 in 0...40 {
            XCTAssertEqual(node.machine.timeline?.instantNs(ofBeat: k), expected.instantNs(ofBeat: k), "beat \(k)")
        }
    }

    func testAWatchGapOverPassedBeatsAdoptsAStateWithAChangeFoldedIn() throws {
        var (node, _, c) = try skipped()
        var fresh = KVLeaseTimeline(flags: try flags())
        _ = fresh.apply(c, revision: 13)
        let expected = try XCTUnwrap(fresh.machine.timeline)
        // Beat 24 is due: B (100 bpm from beat 20) moves beats 21-24 this
        // node passed at 90 bpm. B was folded in (C's epoch starts at beat
        // 20, after ours): the holder's chain, adopted as a snapshot would
        // be. Refusing it wedged the node (its CAS base stayed at 11).
        let applied = try XCTUnwrap(node.machine.timeline)
        let now = applied.instantNs(ofBeat: 24)
        XCTAssertEqual(node.apply(c, revision: 13, nowNs: now), .resyncedOverPassedBeats(term: 9))
        XCTAssertEqual(node.revision, 13, "the compare-and-set base moved")
        XCTAssertEqual(node.machine.timeline, expected)
    }

    func testAWatchGapOverPassedBeatsWithoutALaterEpochIsRefused() throws {
        var (node, _, _) = try skipped()
        let before = node.machine
        let applied = try XCTUnwrap(node.machine.timeline)
        let now = applied.instantNs(ofBeat: 24)
        // A re-bootstrapped epoch (beat 0, another instant) at a higher
        // revision and term: no change was folded since ours, so it is no
        // holder's successor of our state.
        let rebooted = try XCTUnwrap(
            KVLeaseTimeline(flags: try flags()).write(
                .epoch(startBeat: 0, startNs: startNs + 250_000_000, bpm: 120, bar: 4, phases: ["beat"]), term: 20))
        XCTAssertEqual(node.apply(rebooted.value, revision: 15, nowNs: now), .refused("not a continuation"))
        XCTAssertEqual(node.machine, before)
        XCTAssertEqual(node.revision, 11)
    }

    /// Review of 2026-12-07 evening, finding 1: a refused put (junk) does
    /// not open the gap door for the next put, and a forged state whose
    /// epoch starts a beat later an hour away, or far ahead in index, is no
    /// holder's chain.
    func testARefusedPutOpensNoGapAndForgedEpochsAreRefused() throws {
        var (node, _, _) = try skipped()
        let applied = try XCTUnwrap(node.machine.timeline)
        let now = applied.instantNs(ofBeat: 24)
        func record(_ startBeat: Int64, _ at: Int64, _ bpm: Int64) -> [UInt8] {
            var state = node.machine.state!
            state.epoch = .init(startBeat: startBeat, startNs: at, bpm: bpm)
            state.pending = nil
            return KVTimelineRecord(term: 9, state: state).encoded()
        }
        XCTAssertEqual(node.apply(Array("junk".utf8), revision: 12, nowNs: now), .refused("bad record"))
        // The next revision after a refused one: no gap, so no re-sync.
        let later = record(16, applied.instantNs(ofBeat: 16), 100)
        XCTAssertEqual(node.apply(later, revision: 13, nowNs: now), .refused("not a continuation"))
        // Over a real gap: an epoch an hour away, or one that runs far ahead.
        XCTAssertEqual(
            node.apply(record(16, startNs + 3_600_000_000_000, 120), revision: 20, nowNs: now),
            .refused("not a continuation"))
        XCTAssertEqual(
            node.apply(record(16, applied.instantNs(ofBeat: 16) - 10_000_000_000, 6000), revision: 22, nowNs: now),
            .refused("not a continuation"))
        XCTAssertEqual(node.revision, 11, "nothing applied")
        // What a chain can leave is still adopted over the gap.
        XCTAssertEqual(node.apply(later, revision: 24, nowNs: now), .resyncedOverPassedBeats(term: 9))
    }

    /// Finding 2: a recreated timeline bucket's timeline (bootstrapped a day
    /// later, one change folded in: its epoch starts at beat 400) is refused.
    func testARebootstrappedBucketWithAChangeFoldedInIsRefused() throws {
        var (node, _, _) = try skipped()
        let state = try XCTUnwrap(node.machine.state)
        var reboot = state
        let dayLaterNs = startNs + 86_400_000_000_000
        reboot.epoch = .init(startBeat: 400, startNs: dayLaterNs + 200_000_000_000, bpm: 126)
        reboot.pending = nil
        let now = dayLaterNs + 300_000_000_000
        XCTAssertEqual(
            node.apply(KVTimelineRecord(term: 50, state: reboot).encoded(), revision: 19, nowNs: now),
            .refused("not a continuation"))
        XCTAssertEqual(node.revision, 11)
    }

    func testWithoutAGapANonContinuationIsStillRefused() throws {
        var (node, _, c) = try skipped()
        // The same record at the next revision: nothing was skipped, so it is no Raft-like successor.
        XCTAssertEqual(node.apply(c, revision: 12, nowNs: startNs + 5 * periodNs), .refused("not a continuation"))
        // And without a clock (the simulator's path) a gap is not re-synced.
        XCTAssertEqual(node.apply(c, revision: 13), .refused("not a continuation"))
    }

    // MARK: item 2: the fencing token

    func testAFollowersFramesAndRepliesCarryTheAppliedRecordsTerm() throws {
        let n = try KVLeaseFixture.node("k2", term: 40, revision: 41)
        // The holder (term 40) renews ~20 times a second: the lease key's revision runs ahead.
        for rev: UInt64 in 42...140 {
            n.leaseEntryWatched(
                revision: rev, value: Array("k1 3-4".utf8), deleted: false, purged: false,
                nowMonoNs: Int64(rev) * 50_000_000)
        }
        XCTAssertEqual(n.watchedRevision, 140)
        XCTAssertEqual(n.term, 40, "the term its degraded frames would carry: the holder's, not 140")
        XCTAssertEqual(n.fencingToken, 40)
        // Degraded (no holder watched, no KV answer): still the applied record's term.
        var t: Int64 = 140 * 50_000_000
        while !n.degraded && t < 200 * 50_000_000 {
            _ = n.updateDegradation(nowMonoNs: t)
            t += 20_000_000
        }
        XCTAssertTrue(n.degraded)
        XCTAssertEqual(n.term, 40)
        XCTAssertEqual(n.fencingToken, 40)
    }

    // MARK: item 1c: a holder that cannot get ready steps down; item 3: the marker

    private func heldLease(rev: UInt64) -> KVLease {
        var lease = KVLease(timing: KVLeaseTiming(), owner: "k1 1-2", nowMonoNs: 0)
        XCTAssertEqual(lease.next(nowMonoNs: 0), .create)
        XCTAssertEqual(lease.complete(.written(revision: rev), nowMonoNs: 1_000_000), [.acquired(term: rev)])
        return lease
    }

    func testAHolderThatStepsDownDeletesUnmarkedAndTriesAgainLater() {
        var lease = heldLease(rev: 7)
        XCTAssertTrue(lease.releaseMarked)
        lease.stepDown()
        XCTAssertFalse(lease.mayPublish(nowMonoNs: 2_000_000))
        XCTAssertFalse(lease.releaseMarked, "no marker: the successor takes the full guard")
        XCTAssertEqual(lease.next(nowMonoNs: 2_000_000), .delete(lastRevision: 7))
        XCTAssertEqual(lease.complete(.written(revision: 8), nowMonoNs: 3_000_000), [.lost(term: 7)])
        XCTAssertEqual(lease.role, .candidate, "not stopped: a candidate again")
        XCTAssertNil(lease.next(nowMonoNs: 3_000_000 + lease.stepDownBackoffNs - 1), "others try first")
        XCTAssertEqual(lease.next(nowMonoNs: 3_000_000 + lease.stepDownBackoffNs), .create)
        XCTAssertTrue(lease.releaseMarked)
    }

    func testTheReleaseMarkerOnlyAfterTheLastFrameCameBack() {
        var echoed = heldLease(rev: 7)
        XCTAssertEqual(echoed.release(marked: true), [])
        XCTAssertTrue(echoed.releaseMarked)
        var anyway = heldLease(rev: 7)
        XCTAssertEqual(anyway.release(marked: false), [])
        XCTAssertFalse(anyway.releaseMarked)
        XCTAssertEqual(anyway.next(nowMonoNs: 2_000_000), .delete(lastRevision: 7))
        XCTAssertEqual(anyway.complete(.written(revision: 8), nowMonoNs: 3_000_000), [.released])
        XCTAssertEqual(anyway.role, .released, "a hand-over stops for good")
    }
}
