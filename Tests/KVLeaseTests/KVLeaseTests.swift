// The KV lease's state machine (Sources/PulsePolicy/KVLease.swift): taking,
// renewing and handing over the key, and the stale holder's cases — a holder
// stalled past its lease, a renewal whose fate is unknown, a rival's key.
import PulsePolicy
import XCTest

final class KVLeaseTests: XCTestCase {
    private let ms: Int64 = 1_000_000
    /// A fixed timing (TTL 600 ms, renewal 100 ms), whatever the defaults.
    private var timing: KVLeaseTiming {
        var t = KVLeaseTiming()
        t.ttlNs = 600 * ms
        t.renewEveryNs = 100 * ms
        return t
    }

    /// A candidate that took the key at revision `rev` (its create sent at `sentNs`).
    private func holder(rev: UInt64 = 7, sentNs: Int64 = 1_000 * 1_000_000) -> KVLease {
        var lease = KVLease(timing: timing, owner: "n1 a", nowMonoNs: 0)
        XCTAssertEqual(lease.next(nowMonoNs: sentNs), .create)
        XCTAssertEqual(lease.complete(.written(revision: rev), nowMonoNs: sentNs + 3 * ms), [.acquired(term: rev)])
        return lease
    }

    func testDefaultsAreConsistentAndMeetTheFailoverBound() {
        let t = KVLeaseTiming()
        XCTAssertNil(t.problem)
        // 1% of 450 ms plus 50 ms of server skew.
        XCTAssertEqual(t.marginNs, 54_500_000)
        XCTAssertEqual(t.validNs, 395_500_000)
        // A killed holder's key expires within the TTL; a candidate retries
        // every renewal; the take-over guard (295 ms) and a beat period follow.
        XCTAssertLessThan(t.ttlNs + t.renewEveryNs + 295 * ms, 1_000 * ms)
        XCTAssertNil(timing.problem)
        XCTAssertEqual(timing.validNs, 544 * ms)
        var bad = t
        bad.renewEveryNs = 300 * ms
        XCTAssertNotNil(bad.problem)
        bad = t
        bad.ttlNs = 0
        XCTAssertNotNil(bad.problem)
    }

    func testCreateTakesTheKeyAndTheRevisionIsTheTerm() {
        let sent: Int64 = 1_000 * ms
        let lease = holder(rev: 7, sentNs: sent)
        XCTAssertEqual(lease.role, .holder)
        XCTAssertEqual(lease.term, 7)
        // The lease is dated from the SEND of the create, not its reply.
        XCTAssertEqual(lease.leaseUntilMonoNs, sent + timing.validNs)
        XCTAssertTrue(lease.mayPublish(nowMonoNs: sent + timing.validNs - 1))
        XCTAssertFalse(lease.mayPublish(nowMonoNs: sent + timing.validNs))
        // Stops before the key can expire at the server (TTL from the send).
        XCTAssertLessThan(lease.leaseUntilMonoNs, sent + timing.ttlNs)
    }

    func testCandidateRetriesWhileAnotherHoldsTheKey() {
        var lease = KVLease(timing: timing, owner: "n2 b", nowMonoNs: 0)
        XCTAssertEqual(lease.next(nowMonoNs: 0), .create)
        XCTAssertNil(lease.next(nowMonoNs: 1 * ms), "one operation in flight")
        XCTAssertEqual(lease.complete(.conflict, nowMonoNs: 2 * ms), [])
        XCTAssertEqual(lease.role, .candidate)
        XCTAssertFalse(lease.mayPublish(nowMonoNs: 3 * ms))
        XCTAssertNil(lease.next(nowMonoNs: timing.renewEveryNs - 1))
        XCTAssertEqual(lease.next(nowMonoNs: timing.renewEveryNs), .create)
        _ = lease.complete(.conflict, nowMonoNs: timing.renewEveryNs + ms)
        // The watch saw the key deleted (a hand-over): try at once.
        lease.keyGone()
        XCTAssertEqual(lease.next(nowMonoNs: timing.renewEveryNs + 2 * ms), .create)
    }

    func testRenewalExtendsFromItsSendTimeAndKeepsTheTerm() {
        var lease = holder(rev: 7, sentNs: 1_000 * ms)
        XCTAssertNil(lease.next(nowMonoNs: 1_050 * ms), "not due yet")
        let sent: Int64 = 1_100 * ms
        XCTAssertEqual(lease.next(nowMonoNs: sent), .update(lastRevision: 7))
        // The reply comes late: the lease still counts from the send.
        XCTAssertEqual(lease.complete(.written(revision: 12), nowMonoNs: sent + 400 * ms), [])
        XCTAssertEqual(lease.revision, 12)
        XCTAssertEqual(lease.term, 7)
        XCTAssertEqual(lease.leaseUntilMonoNs, sent + timing.validNs)
        XCTAssertEqual(lease.next(nowMonoNs: sent + 400 * ms), .update(lastRevision: 12))
    }

    func testStaleHolderAfterAStallPublishesNothingUntilARenewalSentAfterTheWakeSucceeds() {
        var lease = holder(rev: 7, sentNs: 1_000 * ms)
        // SIGSTOP for two seconds: the monotonic clock ran on.
        let wake: Int64 = 3_000 * ms
        XCTAssertFalse(lease.mayPublish(nowMonoNs: wake), "stale: must not publish before any reply")
        XCTAssertEqual(lease.next(nowMonoNs: wake), .update(lastRevision: 7))
        XCTAssertFalse(lease.mayPublish(nowMonoNs: wake + ms), "still nothing while the renewal is in flight")
        // A rival took the key meanwhile (its create moved the revision).
        XCTAssertEqual(lease.complete(.conflict, nowMonoNs: wake + 2 * ms), [.lost(term: 7)])
        XCTAssertEqual(lease.role, .candidate)
        XCTAssertFalse(lease.mayPublish(nowMonoNs: wake + 3 * ms))
        XCTAssertEqual(lease.next(nowMonoNs: wake + 3 * ms), .create)
        _ = lease.complete(.conflict, nowMonoNs: wake + 4 * ms)
        XCTAssertFalse(lease.mayPublish(nowMonoNs: wake + 5 * ms))
    }

    func testStaleHolderWhoseKeyExpiredTakesANewGreaterTerm() {
        var lease = holder(rev: 7, sentNs: 1_000 * ms)
        let wake: Int64 = 3_000 * ms
        _ = lease.next(nowMonoNs: wake)
        // Expired at the server: the CAS on revision 7 fails (no last revision).
        XCTAssertEqual(lease.complete(.conflict, nowMonoNs: wake + ms), [.lost(term: 7)])
        XCTAssertEqual(lease.next(nowMonoNs: wake + ms), .create)
        XCTAssertEqual(lease.complete(.written(revision: 9), nowMonoNs: wake + 2 * ms), [.acquired(term: 9)])
        XCTAssertTrue(lease.mayPublish(nowMonoNs: wake + 2 * ms))
        XCTAssertGreaterThan(lease.term, 7)
    }

    func testStalledHolderWhoseRenewalSucceedsAfterTheWakeResumes() {
        var lease = holder(rev: 7, sentNs: 1_000 * ms)
        let wake: Int64 = 1_590 * ms  // past the lease (544 ms), before the key's TTL
        XCTAssertFalse(lease.mayPublish(nowMonoNs: wake))
        _ = lease.next(nowMonoNs: wake)
        XCTAssertEqual(lease.complete(.written(revision: 8), nowMonoNs: wake + ms), [])
        XCTAssertTrue(lease.mayPublish(nowMonoNs: wake + ms))
        XCTAssertEqual(lease.leaseUntilMonoNs, wake + timing.validNs)
        XCTAssertEqual(lease.term, 7, "the same holding: the same fencing token")
    }

    func testUnknownRenewalIsReadBackAndNeverExtendsTheLease() {
        var lease = holder(rev: 7, sentNs: 1_000 * ms)
        let until = lease.leaseUntilMonoNs
        XCTAssertEqual(lease.next(nowMonoNs: 1_100 * ms), .update(lastRevision: 7))
        XCTAssertEqual(lease.complete(.unknown, nowMonoNs: 1_300 * ms), [])
        XCTAssertTrue(lease.mustRead)
        XCTAssertEqual(lease.leaseUntilMonoNs, until, "no extension from a write of unknown fate")
        XCTAssertEqual(lease.next(nowMonoNs: 1_300 * ms), .read)
        // The renewal was stored: the key is ours at 8, but a read proves no send time.
        XCTAssertEqual(lease.complete(.found(revision: 8, owner: "n1 a"), nowMonoNs: 1_301 * ms), [])
        XCTAssertEqual(lease.revision, 8)
        XCTAssertFalse(lease.mayPublish(nowMonoNs: 1_302 * ms), "published only after a renewal with a known send")
        XCTAssertEqual(lease.next(nowMonoNs: 1_302 * ms), .update(lastRevision: 8))
        _ = lease.complete(.written(revision: 10), nowMonoNs: 1_303 * ms)
        XCTAssertEqual(lease.leaseUntilMonoNs, 1_302 * ms + timing.validNs)
    }

    func testUnknownRenewalThenAnotherOwnerLoses() {
        var lease = holder(rev: 7, sentNs: 1_000 * ms)
        _ = lease.next(nowMonoNs: 1_100 * ms)
        _ = lease.complete(.unknown, nowMonoNs: 1_700 * ms)
        XCTAssertEqual(lease.next(nowMonoNs: 1_700 * ms), .read)
        XCTAssertEqual(lease.complete(.found(revision: 11, owner: "n3 c"), nowMonoNs: 1_701 * ms), [.lost(term: 7)])
        XCTAssertFalse(lease.mayPublish(nowMonoNs: 1_702 * ms))
        // A past incarnation of the same node id is another owner too.
        var restarted = KVLease(timing: timing, owner: "n1 z", nowMonoNs: 0)
        _ = restarted.next(nowMonoNs: 0)
        _ = restarted.complete(.unknown, nowMonoNs: ms)
        _ = restarted.next(nowMonoNs: ms)
        XCTAssertEqual(restarted.complete(.found(revision: 3, owner: "n1 a"), nowMonoNs: 2 * ms), [])
        XCTAssertEqual(restarted.role, .candidate)
    }

    func testUnknownCreateThatWasStoredIsAdoptedWithoutPublishingUntilRenewed() {
        var lease = KVLease(timing: timing, owner: "n1 a", nowMonoNs: 0)
        _ = lease.next(nowMonoNs: 0)
        _ = lease.complete(.unknown, nowMonoNs: 500 * ms)
        XCTAssertEqual(lease.next(nowMonoNs: 500 * ms), .read)
        XCTAssertEqual(lease.complete(.found(revision: 4, owner: "n1 a"), nowMonoNs: 501 * ms), [.acquired(term: 4)])
        XCTAssertEqual(lease.termFloor, 4, "a revision read is a revision seen")
        XCTAssertFalse(lease.mayPublish(nowMonoNs: 501 * ms))
        XCTAssertEqual(lease.next(nowMonoNs: 501 * ms), .update(lastRevision: 4))
        _ = lease.complete(.written(revision: 5), nowMonoNs: 502 * ms)
        XCTAssertTrue(lease.mayPublish(nowMonoNs: 502 * ms))
        XCTAssertEqual(lease.term, 4)
    }

    func testReadThatFindsNoKeyLosesAndAReadWithoutAnswerRetries() {
        var lease = holder()
        _ = lease.next(nowMonoNs: 1_100 * ms)
        _ = lease.complete(.unknown, nowMonoNs: 1_200 * ms)
        _ = lease.next(nowMonoNs: 1_200 * ms)
        XCTAssertEqual(lease.complete(.unknown, nowMonoNs: 1_300 * ms), [])
        XCTAssertEqual(lease.next(nowMonoNs: 1_300 * ms), .read)
        XCTAssertEqual(lease.complete(.absent, nowMonoNs: 1_400 * ms), [.lost(term: 7)])
        XCTAssertEqual(lease.next(nowMonoNs: 1_400 * ms), .create)
    }

    func testNotSentChangesNothingButTheNextAttempt() {
        var lease = holder(rev: 7, sentNs: 1_000 * ms)
        let until = lease.leaseUntilMonoNs
        _ = lease.next(nowMonoNs: 1_100 * ms)
        XCTAssertEqual(lease.complete(.notSent, nowMonoNs: 1_100 * ms), [])
        XCTAssertFalse(lease.mustRead)
        XCTAssertEqual(lease.leaseUntilMonoNs, until)
        XCTAssertNil(lease.next(nowMonoNs: 1_120 * ms))
        XCTAssertEqual(lease.next(nowMonoNs: 1_150 * ms), .update(lastRevision: 7))
    }

    func testHandOverStopsPublishingAndDeletesWithTheRevision() {
        var lease = holder(rev: 7, sentNs: 1_000 * ms)
        XCTAssertEqual(lease.release(), [])
        XCTAssertFalse(lease.mayPublish(nowMonoNs: 1_001 * ms))
        XCTAssertEqual(lease.next(nowMonoNs: 1_001 * ms), .delete(lastRevision: 7))
        XCTAssertEqual(lease.complete(.written(revision: 8), nowMonoNs: 1_002 * ms), [.released])
        XCTAssertEqual(lease.role, .released)
        XCTAssertNil(lease.next(nowMonoNs: 5_000 * ms), "never takes the key again")
    }

    func testHandOverDuringARenewalDeletesTheRenewedRevision() {
        var lease = holder(rev: 7, sentNs: 1_000 * ms)
        _ = lease.next(nowMonoNs: 1_100 * ms)
        XCTAssertEqual(lease.release(), [])
        XCTAssertNil(lease.next(nowMonoNs: 1_101 * ms))
        XCTAssertEqual(lease.complete(.written(revision: 9), nowMonoNs: 1_102 * ms), [])
        XCTAssertFalse(lease.mayPublish(nowMonoNs: 1_102 * ms))
        XCTAssertEqual(lease.next(nowMonoNs: 1_102 * ms), .delete(lastRevision: 9))
        // The key moved on (expired, taken): released all the same.
        XCTAssertEqual(lease.complete(.conflict, nowMonoNs: 1_103 * ms), [.released])
    }

    func testCandidateReleasedWithACreateInFlightDeletesWhatItTook() {
        var lease = KVLease(timing: timing, owner: "n1 a", nowMonoNs: 0)
        _ = lease.next(nowMonoNs: 0)
        XCTAssertEqual(lease.release(), [])
        XCTAssertEqual(lease.complete(.written(revision: 3), nowMonoNs: ms), [])
        XCTAssertFalse(lease.mayPublish(nowMonoNs: ms))
        XCTAssertEqual(lease.next(nowMonoNs: ms), .delete(lastRevision: 3))
        XCTAssertEqual(lease.complete(.written(revision: 4), nowMonoNs: 2 * ms), [.released])

        var idle = KVLease(timing: timing, owner: "n2 b", nowMonoNs: 0)
        XCTAssertEqual(idle.release(), [.released])
        XCTAssertNil(idle.next(nowMonoNs: ms))
    }

    func testUnreachableAfterNoDefiniteAnswer() {
        var lease = KVLease(timing: timing, owner: "n1 a", nowMonoNs: 0)
        var now: Int64 = 0
        for _ in 0..<20 {
            guard lease.next(nowMonoNs: now) != nil else {
                now += 10 * ms
                continue
            }
            _ = lease.complete(.notSent, nowMonoNs: now)
            now += 10 * ms
        }
        XCTAssertFalse(lease.unreachable(nowMonoNs: now))
        XCTAssertTrue(lease.unreachable(nowMonoNs: timing.unreachableAfterNs))
        // A read's answer is no proof: a replica without quorum serves it.
        var reading = lease
        _ = reading.next(nowMonoNs: timing.unreachableAfterNs)
        _ = reading.complete(.unknown, nowMonoNs: timing.unreachableAfterNs)
        XCTAssertEqual(reading.next(nowMonoNs: timing.unreachableAfterNs), .read)
        _ = reading.complete(.absent, nowMonoNs: timing.unreachableAfterNs)
        XCTAssertTrue(reading.unreachable(nowMonoNs: timing.unreachableAfterNs + ms))
        _ = lease.next(nowMonoNs: timing.unreachableAfterNs)
        _ = lease.complete(.conflict, nowMonoNs: timing.unreachableAfterNs)
        XCTAssertFalse(lease.unreachable(nowMonoNs: timing.unreachableAfterNs + ms))
    }

    /// Two nodes and one linearizable key with a TTL on the server's clock,
    /// the nodes' clocks running up to 1% fast or slow against it, random
    /// stalls and lost replies: at no instant do two nodes may-publish.
    func testTwoNodesOverAModelKeyNeverOverlap() {
        var rng = SplitMix(seed: 21)
        for _ in 0..<200 {
            var server = ModelKey(ttlNs: timing.ttlNs)
            let owners = ["n1 a", "n2 b"]
            var nodes = owners.map { KVLease(timing: timing, owner: $0, nowMonoNs: 0) }
            // Clock rates in ppm (server = 1,000,000 per second).
            let rates: [Int64] = [
                1_000_000 + Int64(rng.next() % 19_000) - 9_500, 1_000_000 - Int64(rng.next() % 9_500),
            ]
            var stalledUntil = [Int64](repeating: 0, count: 2)
            var stepNs: Int64 = 0
            while stepNs < 20_000 * ms {
                stepNs += 5 * ms
                for i in 0..<2 {
                    let mono = stepNs / 1_000_000 * rates[i]
                    if stepNs < stalledUntil[i] { continue }
                    if rng.next() % 400 == 0 { stalledUntil[i] = stepNs + Int64(rng.next() % 1_500) * ms }
                    guard let op = nodes[i].next(nowMonoNs: mono) else { continue }
                    // Sent at `stepNs`; stored a little later; the reply may be lost.
                    let storedNs = stepNs + Int64(rng.next() % 3) * ms
                    let reply = server.apply(op, owner: owners[i], atNs: storedNs)
                    let answered = rng.next() % 10 != 0 ? reply : .unknown
                    _ = nodes[i].complete(answered, nowMonoNs: mono + 3 * rates[i])
                }
                let publishing = (0..<2).filter { i in
                    stepNs >= stalledUntil[i] && nodes[i].mayPublish(nowMonoNs: stepNs / 1_000_000 * rates[i])
                }
                XCTAssertLessThanOrEqual(publishing.count, 1, "two publishers at \(stepNs / ms) ms")
                if publishing.count > 1 { return }
                for i in publishing { XCTAssertEqual(nodes[i].term, server.holderTerm, "the publisher holds the key") }
            }
            XCTAssertGreaterThan(server.creates, 0)
        }
    }
}

/// One KV key with a TTL, on the server's clock (the model of the test above).
private struct ModelKey {
    let ttlNs: Int64
    var revision: UInt64 = 0  // the stream's sequence: only grows
    var key: (rev: UInt64, owner: String, storedNs: Int64)?
    var holderTerm: UInt64 = 0
    var creates = 0

    init(ttlNs: Int64) { self.ttlNs = ttlNs }

    mutating func apply(_ op: KVLeaseOp, owner: String, atNs: Int64) -> KVLeaseReply {
        if let k = key, atNs >= k.storedNs + ttlNs { key = nil }
        switch op {
        case .create:
            guard key == nil else { return .conflict }
            revision += 1
            key = (revision, owner, atNs)
            holderTerm = revision
            creates += 1
            return .written(revision: revision)
        case .update(let last):
            guard let k = key, k.rev == last else { return .conflict }
            revision += 1
            key = (revision, k.owner, atNs)
            return .written(revision: revision)
        case .read:
            guard let k = key else { return .absent }
            return .found(revision: k.rev, owner: k.owner)
        case .delete(let last):
            guard let k = key, k.rev == last else { return .conflict }
            revision += 1
            key = nil
            return .written(revision: revision)
        }
    }
}

private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
