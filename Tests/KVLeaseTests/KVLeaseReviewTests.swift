// The review of 2026-12-07 (issue 21), findings 3 to 5, on the pure
// policies: only the holder's own hand-over earns the short guard; a node
// never takes a fencing token below one it has seen (a bucket deleted and
// recreated restarts its revisions); timeline records must continue the
// applied state as a Raft log would.
import PulseCore
import PulsePolicy
import XCTest

final class KVLeaseReviewTests: XCTestCase {
    private let ms: Int64 = 1_000_000
    private let epoch = ClusterCommand.epoch(
        startBeat: 0, startNs: 1_800_000_000_000_000_000, bpm: 120, bar: 4, phases: ["beat"])
    private func flags() throws -> TimelineShape { try TimelineShape(bar: 4, phases: ["beat"]) }

    /// Node k2, watching k1's claim.
    private func follower() throws -> KVLeadership {
        KVLeadership(
            lease: KVLease(timing: KVLeaseTiming(), owner: "k2 5-6", nowMonoNs: 0),
            timeline: KVLeaseTimeline(flags: try flags()))
    }

    /// `n` takes the key at `rev` (create sent at `nowMonoNs`) and applies a record of its term.
    private func take(_ n: KVLeadership, rev: UInt64, nowMonoNs now: Int64) throws {
        XCTAssertEqual(n.lease.next(nowMonoNs: now), .create)
        XCTAssertEqual(n.lease.complete(.written(revision: rev), nowMonoNs: now + ms), [.acquired(term: rev)])
        let record = try XCTUnwrap(n.timeline.write(epoch, term: rev))
        guard case .started = n.timeline.apply(record.value, revision: 1) else { return XCTFail("epoch") }
    }

    // MARK: finding 3

    func testTheHoldersOwnHandOverEarnsTheShortGuard() throws {
        let n = try follower()
        let claim = Array("k1 7-8".utf8)
        XCTAssertFalse(
            n.leaseEntryWatched(revision: 5, value: claim, deleted: false, purged: false, nowMonoNs: 100 * ms).gone)
        let seen = n.leaseEntryWatched(
            revision: 6, value: KVLease.releaseMarker(claim: claim), deleted: true, purged: false, nowMonoNs: 110 * ms)
        XCTAssertTrue(seen.gone)
        XCTAssertTrue(n.freedByHandOver)
        XCTAssertEqual(n.publishNotBeforeMonoNs, .min, "no wait after a hand-over")
        try take(n, rev: 7, nowMonoNs: 120 * ms)
        XCTAssertEqual(
            n.publishMode(nowMonoNs: 130 * ms, periodNs: 100 * ms), .leader(leaseUntilMonoNs: n.lease.leaseUntilMonoNs))
        // Our own claim watched afterwards keeps the hand-over's short guard.
        n.leaseEntryWatched(
            revision: 7, value: Array("k2 5-6".utf8), deleted: false, purged: false, nowMonoNs: 125 * ms)
        XCTAssertTrue(n.freedByHandOver)
        // Finding 4: the take-over consumes it; a later term of ours, after an
        // expiry no watch reported, takes the full guard.
        XCTAssertTrue(n.consumeHandOver(), "the take-over of term 7 follows the hand-over")
        XCTAssertFalse(n.freedByHandOver)
        XCTAssertFalse(n.consumeHandOver(), "one hand-over earns one short guard")
        // The hand-over delete delivered late, after the take-over (the lease
        // watch is apart from the timeline's): the flag is set again, and the
        // end of this holding clears it (review kvfix F4).
        n.leaseEntryWatched(
            revision: 8, value: KVLease.releaseMarker(claim: Array("k2 5-6".utf8)), deleted: true, purged: false,
            nowMonoNs: 126 * ms)
        XCTAssertTrue(n.freedByHandOver, "set again by the late delete")
        n.holdingEnded()
        XCTAssertFalse(n.freedByHandOver, "a later term of ours takes the full guard")
    }

    func testAForeignDeleteOrPurgeWaitsOutTheDeletedHoldersLease() throws {
        let ttl = KVLeaseTiming().ttlNs
        let claim = Array("k1 7-8".utf8)
        let cases: [(name: String, body: [UInt8], purged: Bool)] = [
            ("nats kv del (no body)", [], false),
            ("purge", KVLease.releaseMarker(claim: claim), true),
            ("another claim's marker", KVLease.releaseMarker(claim: Array("k3 1-1".utf8)), false),
        ]
        for c in cases {
            let n = try follower()
            n.leaseEntryWatched(revision: 5, value: claim, deleted: false, purged: false, nowMonoNs: 200 * ms)
            let seen = n.leaseEntryWatched(
                revision: 6, value: c.body, deleted: !c.purged, purged: c.purged, nowMonoNs: 210 * ms)
            XCTAssertTrue(seen.gone, c.name)
            XCTAssertFalse(n.freedByHandOver, c.name)
            XCTAssertEqual(
                n.publishNotBeforeMonoNs, 200 * ms + ttl, "a TTL after its claim was last watched: \(c.name)")
            // This node takes the key at once, but publishes only after the wait.
            try take(n, rev: 7, nowMonoNs: 220 * ms)
            XCTAssertTrue(n.lease.mayPublish(nowMonoNs: 230 * ms))
            XCTAssertEqual(n.publishMode(nowMonoNs: 230 * ms, periodNs: 100 * ms), .waiting, c.name)
            // Renewed meanwhile; past the wait it leads.
            XCTAssertEqual(n.lease.next(nowMonoNs: 600 * ms), .update(lastRevision: 7))
            XCTAssertEqual(n.lease.complete(.written(revision: 9), nowMonoNs: 601 * ms), [])
            XCTAssertEqual(n.publishMode(nowMonoNs: 200 * ms + ttl - 1, periodNs: 100 * ms), .waiting, c.name)
            XCTAssertEqual(
                n.publishMode(nowMonoNs: 200 * ms + ttl, periodNs: 100 * ms),
                .leader(leaseUntilMonoNs: n.lease.leaseUntilMonoNs), c.name)
        }
    }

    // MARK: finding 4

    func testALeaseRevisionBelowOneSeenIsFencedNotHeld() throws {
        let n = try follower()
        // The holder's claim was watched at revision 900; the bucket is then
        // deleted and recreated: its revisions start again from 1.
        n.leaseEntryWatched(revision: 900, value: Array("k1 7-8".utf8), deleted: false, purged: false, nowMonoNs: 0)
        XCTAssertEqual(n.lease.next(nowMonoNs: 10 * ms), .create)
        XCTAssertEqual(n.lease.complete(.written(revision: 1), nowMonoNs: 11 * ms), [.fenced(term: 1, floor: 900)])
        XCTAssertFalse(n.isHolder)
        XCTAssertFalse(n.lease.mayPublish(nowMonoNs: 12 * ms))
        XCTAssertEqual(n.lease.term, 0, "no term below the floor is taken")
        XCTAssertNil(n.lease.next(nowMonoNs: 20 * ms), "no retry before the refused key expired")
        XCTAssertEqual(n.lease.next(nowMonoNs: 11 * ms + KVLeaseTiming().ttlNs), .create)
        // A create above everything seen is a holding as before.
        XCTAssertEqual(n.lease.complete(.written(revision: 901), nowMonoNs: 500 * ms), [.acquired(term: 901)])
    }

    func testAReadFindingOurClaimBelowTheFloorIsFencedToo() {
        var lease = KVLease(timing: KVLeaseTiming(), owner: "k2 5-6", nowMonoNs: 0)
        lease.noteRevision(50)
        XCTAssertEqual(lease.next(nowMonoNs: 0), .create)
        XCTAssertEqual(lease.complete(.unknown, nowMonoNs: ms), [])
        XCTAssertEqual(lease.next(nowMonoNs: 2 * ms), .read)
        XCTAssertEqual(
            lease.complete(.found(revision: 3, owner: "k2 5-6"), nowMonoNs: 3 * ms), [.fenced(term: 3, floor: 50)])
        XCTAssertEqual(lease.role, .candidate)
    }

    // MARK: findings 4 and 5: timeline records

    /// A node that applied the epoch (rev 10, term 9) and a tempo change (rev 11).
    private func applied() throws -> (KVLeaseTimeline, epoch: [UInt8], tempo: [UInt8]) {
        var node = KVLeaseTimeline(flags: try flags())
        let first = try XCTUnwrap(node.write(epoch, term: 9))
        _ = node.apply(first.value, revision: 10)
        let tempo = try XCTUnwrap(node.write(.tempo(atBeat: 12, bpm: 90, justification: "slower"), term: 9))
        XCTAssertEqual(node.apply(tempo.value, revision: 11), .tempo(TempoChange(atBeat: 12, bpm: 90)))
        return (node, first.value, tempo.value)
    }

    func testARecreatedBucketsRecordsAreRefused() throws {
        var (node, _, _) = try applied()
        let before = node.machine
        // A re-bootstrap in a recreated bucket: a fresh epoch at beat 0, revision 1, term 1.
        let rebooted = try XCTUnwrap(
            KVLeaseTimeline(flags: try flags()).write(
                .epoch(startBeat: 0, startNs: 1_900_000_000_000_000_000, bpm: 120, bar: 4, phases: ["beat"]), term: 1))
        XCTAssertEqual(node.apply(rebooted.value, revision: 1), .refused("revision behind"))
        XCTAssertEqual(node.apply(rebooted.value, revision: 11), .refused("old revision"))
        // At a higher revision but a lower term than the applied record's.
        let lowTerm = try XCTUnwrap(node.termStart(term: 4))
        XCTAssertEqual(node.apply(lowTerm.value, revision: 12), .refused("term behind"))
        // At a higher revision and term, the re-bootstrapped epoch does not continue ours.
        let rebootedHigh = try XCTUnwrap(
            KVLeaseTimeline(flags: try flags()).write(
                .epoch(startBeat: 0, startNs: 1_900_000_000_000_000_000, bpm: 120, bar: 4, phases: ["beat"]), term: 20))
        XCTAssertEqual(node.apply(rebootedHigh.value, revision: 13), .refused("not a continuation"))
        XCTAssertEqual(node.machine, before, "nothing changed")
        XCTAssertEqual(node.revision, 11)
        XCTAssertEqual(node.recordTerm, 9)
    }

    func testRecordsMustContinueTheAppliedStateAsARaftLogWould() throws {
        var (node, _, _) = try applied()
        let state = try XCTUnwrap(node.machine.state)
        func record(_ s: ClusterState, term: UInt64 = 9) -> [UInt8] { KVTimelineRecord(term: term, state: s).encoded() }
        // Retroactive: the pending change moved earlier, or its tempo changed, without a fold.
        var earlier = state
        earlier.pending = .init(atBeat: 8, bpm: 90)
        XCTAssertEqual(node.apply(record(earlier), revision: 12), .refused("not a continuation"))
        var otherBpm = state
        otherBpm.pending = .init(atBeat: 12, bpm: 100)
        XCTAssertEqual(node.apply(record(otherBpm), revision: 13), .refused("not a continuation"))
        // The epoch rewritten (start moved: every index would shift).
        var shifted = state
        shifted.epoch = .init(startBeat: 0, startNs: state.epoch.startNs + 250_000_000, bpm: 120)
        XCTAssertEqual(node.apply(record(shifted), revision: 14), .refused("not a continuation"))
        // Dropping the pending change.
        var dropped = state
        dropped.pending = nil
        XCTAssertEqual(node.apply(record(dropped), revision: 15), .refused("not a continuation"))
        // What a holder writes continues: a re-stamp of a new term, then a next change.
        let restamp = try XCTUnwrap(node.termStart(term: 30))
        XCTAssertEqual(node.apply(restamp.value, revision: 16), .restamped(term: 30))
        let next = try XCTUnwrap(node.write(.tempo(atBeat: 20, bpm: 100, justification: "faster"), term: 30))
        XCTAssertEqual(node.apply(next.value, revision: 17), .tempo(TempoChange(atBeat: 20, bpm: 100)))
        XCTAssertEqual(
            node.machine.state?.epoch,
            .init(
                startBeat: 12,
                startNs: try XCTUnwrap(
                    TempoEpoch(state.epoch).checkedInstantNs(ofBeat: 12)), bpm: 90), "the previous change folded in")
    }
}
