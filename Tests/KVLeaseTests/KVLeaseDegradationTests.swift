// Degradation in nats-kv mode (Sources/PulsePolicy/KVLeaseLeadership.swift,
// KVLeasePeers.swift): entered only without a definite KV answer and without
// a watched holder, ranked among the pulses seen, measured on the lowest
// one's clock, left at once when a holder's claim is watched again.
import PulseCore
import PulsePolicy
import XCTest

final class KVLeaseDegradationTests: XCTestCase {
    private let ms: Int64 = 1_000_000
    /// A round trip with a peer whose clock reads `offsetNs` more than ours.
    private func sample(atNs t: Int64, offsetNs: Int64, rttNs: Int64 = 2_000_000) -> SyncSample {
        SyncSample(t1: t, t2: t + rttNs / 2 + offsetNs, t3: t + rttNs / 2 + offsetNs, t4: t + rttNs)
    }

    func testEntersOnlyWhenTheKVIsUnreachableAndNoHolderIsWatched() throws {
        let n = try KVLeaseFixture.node("k2")
        n.holderWatched(present: true, nowMonoNs: 100 * ms)
        // The holder's claim watched recently: never degraded.
        for t in stride(from: 100 * ms, through: 500 * ms, by: 20_000_000) {
            XCTAssertEqual(n.updateDegradation(nowMonoNs: t), .none)
        }
        // No lease operation answered since start-up (0) and the claim not
        // watched for a TTL: leaderless from the update at 560 ms; degraded 1 s later.
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 560 * ms), .none)
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 1_500 * ms), .none)
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 1_560 * ms), .entered)
        XCTAssertTrue(n.degraded)
        guard case .degraded(let delay, _) = n.publishMode(nowMonoNs: 1_600 * ms, periodNs: 500 * ms) else {
            return XCTFail("a degraded node takes its turn")
        }
        XCTAssertEqual(delay, 20 * ms, "alone: rank 0, the first turn")
        // A holder's claim watched again: left at once, follows.
        XCTAssertEqual(n.holderWatched(present: true, nowMonoNs: 2_000 * ms), .left)
        XCTAssertEqual(n.publishMode(nowMonoNs: 2_000 * ms, periodNs: 500 * ms), .follower)
    }

    func testAnsweringKVKeepsANodeOutOfDegradation() throws {
        let n = try KVLeaseFixture.node("k2")
        // The KV answers (a conflict: someone holds the key) but the watch is silent.
        var t: Int64 = 0
        while t < 3_000 * ms {
            if n.lease.next(nowMonoNs: t) != nil { _ = n.lease.complete(.conflict, nowMonoNs: t + ms) }
            XCTAssertEqual(n.updateDegradation(nowMonoNs: t + ms), .none, "at \(t / ms) ms")
            t += 20 * ms
        }
        XCTAssertFalse(n.degraded)
    }

    func testNoTimelineNoDegradation() throws {
        let n = KVLeadership(
            lease: KVLease(timing: KVLeaseTiming(), owner: "k1 1-2", nowMonoNs: 0),
            timeline: KVLeaseTimeline(flags: try TimelineShape(bar: 4, phases: ["beat"])))
        for t in stride(from: Int64(0), through: 5_000 * ms, by: 50_000_000) {
            XCTAssertEqual(n.updateDegradation(nowMonoNs: t), .none)
        }
    }

    func testTurnsAreRankedAmongThePulsesSeenAndMeasuredOnTheLowest() throws {
        let n = try KVLeaseFixture.node("k3")
        n.peers.seen("k2", nowMonoNs: 10 * ms)
        XCTAssertNil(n.peers.add(sample(atNs: 20 * ms, offsetNs: 7 * ms), from: "k1", nowMonoNs: 20 * ms))
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 1_000 * ms), .none, "leaderless from here")
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 2_000 * ms), .entered)
        XCTAssertEqual(n.rank, 2)
        XCTAssertEqual(n.referenceId, "k1")
        XCTAssertEqual(n.degradedReference?.offsetNs, 7 * ms, "the lowest pulse's clock")
        guard case .degraded(let delay, let slot) = n.publishMode(nowMonoNs: 2_000 * ms, periodNs: 500 * ms) else {
            return XCTFail("a degraded node takes its turn")
        }
        XCTAssertEqual(delay, 60 * ms)
        XCTAssertEqual(slot, 10 * ms)
        // A pulse gone quiet keeps its place for the whole window: no rank
        // shifts under the others during an outage.
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 50_000 * ms), .none)
        XCTAssertEqual(n.rank, 2)
        // After the window it leaves the list.
        n.updateDegradation(nowMonoNs: 61_000 * ms)
        XCTAssertEqual(n.rank, 0)
        XCTAssertNil(n.degradedReference, "its own clock when it is the lowest")
        // At 600 bpm (100 ms) a turn 60 ms late would be past half a period: rank 2 follows.
        n.peers.seen("k1", nowMonoNs: 61_000 * ms)
        n.peers.seen("k2", nowMonoNs: 61_000 * ms)
        n.updateDegradation(nowMonoNs: 61_000 * ms)
        XCTAssertEqual(n.publishMode(nowMonoNs: 61_000 * ms, periodNs: 100 * ms), .follower)
    }

    func testAHolderWithinItsLeaseIsNeverDegraded() throws {
        let n = try KVLeaseFixture.node("k1")
        XCTAssertEqual(n.lease.next(nowMonoNs: 0), .create)
        XCTAssertEqual(n.lease.complete(.written(revision: 9), nowMonoNs: ms), [.acquired(term: 9)])
        // Its own lease counts as a leader; then it runs down with no answer.
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 300 * ms), .none)
        XCTAssertEqual(n.publishMode(nowMonoNs: 300 * ms, periodNs: 500 * ms), .waiting, "no term start yet")
        var t: Int64 = 400 * ms
        var entered: Int64?
        while t < 3_000 * ms, entered == nil {
            if n.updateDegradation(nowMonoNs: t) == .entered { entered = t }
            t += 20 * ms
        }
        let at = try XCTUnwrap(entered)
        XCTAssertGreaterThanOrEqual(at, KVLeaseTiming().validNs + 1_000 * ms, "a whole degradeAfter after the lease")
        XCTAssertFalse(n.lease.mayPublish(nowMonoNs: at))
        guard case .degraded = n.publishMode(nowMonoNs: at, periodNs: 500 * ms) else {
            return XCTFail("the old holder, its lease run down, takes its degraded turn")
        }
    }

    func testPeerInputIsBounded() {
        var peers = KVLeasePeers(selfId: "k1")
        XCTAssertEqual(peers.seen("", nowMonoNs: 0), "empty_peer_id")
        XCTAssertEqual(peers.seen(String(repeating: "x", count: 129), nowMonoNs: 0), "long_peer_id")
        for i in 0..<KVLeasePeers.maxPeers { XCTAssertNil(peers.seen("p\(i)", nowMonoNs: 0)) }
        XCTAssertEqual(peers.seen("one-more", nowMonoNs: ms), "too_many_peers")
        XCTAssertNil(peers.seen("p3", nowMonoNs: 3 * ms), "a known pulse is still seen")
        // Once the others left the window, a new one fits.
        XCTAssertNil(peers.seen("one-more", nowMonoNs: KVLeasePeers.memberWindowNs + 2 * ms))
        XCTAssertEqual(
            peers.members(nowMonoNs: KVLeasePeers.memberWindowNs + 2 * ms), ["k1", "one-more", "p3"])
        // An impossible sample is refused and counted by the caller.
        XCTAssertEqual(
            peers.add(SyncSample(t1: 10, t2: 5, t3: 4, t4: 9), from: "p3", nowMonoNs: 0), "clock_negative_round_trip")
    }

    /// A peer id from a ping, an answer or a report follows the `-node-id`
    /// rule (`IdToken.violation`, the function the flag is checked with):
    /// one the flag would refuse is refused (`bad_peer_id`, counted by the
    /// caller; the whole report `bad_peer_report`), never listed or ranked.
    func testPeerIdsFollowTheNodeIdRule() {
        var peers = KVLeasePeers(selfId: "k1")
        let sample = SyncSample(t1: 10, t2: 11, t3: 11, t4: 12)
        for id in ["k.2", "k 2", "k*", "k>", "k/2", "k\\2", "k\u{7}2", "k\t2", "k\n2", "k\u{FFFD}"] {
            XCTAssertNotNil(IdToken.violation(id), "the flag refuses \(id.debugDescription)")
            XCTAssertEqual(peers.seen(id, nowMonoNs: 0), "bad_peer_id", id.debugDescription)
            XCTAssertEqual(peers.add(sample, from: id, nowMonoNs: 0), "bad_peer_id", id.debugDescription)
            XCTAssertEqual(peers.merge(from: "k2", [(id, 0)], nowMonoNs: 0), "bad_peer_id", id.debugDescription)
            for report in ["k2 5:\(id)", "\(id) 5:k2"] {
                guard case .failure(let error) = KVLeasePeers.decodeReport(report) else {
                    XCTFail("refused: \(report.debugDescription)")
                    continue
                }
                XCTAssertEqual(error.reason, "bad_peer_report")
            }
        }
        XCTAssertEqual(peers.members(nowMonoNs: 0), ["k1", "k2"], "only the good sender")
        XCTAssertTrue(peers.syncs.isEmpty)
        // What the flag accepts, the wire accepts.
        for id in ["pulse-0a1b2c", "node_1", "k:8", "ü-pulse", String(repeating: "x", count: 128)] {
            XCTAssertNil(IdToken.violation(id))
            XCTAssertNil(peers.seen(id, nowMonoNs: ms), id)
        }
    }
}
