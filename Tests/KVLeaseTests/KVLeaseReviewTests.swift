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
}
