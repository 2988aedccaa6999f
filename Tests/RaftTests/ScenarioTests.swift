// ScenarioTests.swift — etcd-style scenarios: elections, pre-vote,
// check-quorum, stickiness, the leader lease, leadership transfer, log
// repair, snapshots and restart, each driven step by step on a `Cluster`.

import XCTest

@testable import Raft

final class ScenarioTests: XCTestCase {
    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    func testCampaignElectsLeaderAndCommitsNoop() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        XCTAssertEqual(c[1].role, .leader)
        XCTAssertEqual(c[1].term, 1)
        for id in c.ids {
            XCTAssertEqual(c[id].leader, 1)
            XCTAssertEqual(c[id].commitIndex, 1, "the leader's no-op commits everywhere")
            XCTAssertEqual(c.storage[id]!.entries.first?.kind, .noop)
        }
        XCTAssertTrue(c[1].hasLease())
        XCTAssertFalse(c[2].hasLease())
        XCTAssertEqual(c[2].propose([1]), .notLeader(leaderHint: 1))
    }

    func testSingleNodeCommitsAlone() throws {
        let c = Cluster(size: 1)
        try c.campaign(1)
        XCTAssertEqual(c[1].role, .leader)
        XCTAssertEqual(try c.propose(1, bytes("a")), .accepted(index: 2, term: 1))
        XCTAssertEqual(c[1].commitIndex, 2)
        XCTAssertEqual(c.applied(1), [bytes("a")])
        XCTAssertTrue(c[1].hasLease())
    }

    func testProposalsCommitOnEveryNode() throws {
        let c = Cluster(size: 5)
        try c.campaign(3)
        for k in 0..<20 { _ = try c.propose(3, [UInt8(k)]) }
        for id in c.ids {
            XCTAssertEqual(c.applied(id), (0..<20).map { [UInt8($0)] })
        }
    }

    // MARK: Pre-vote and stickiness

    func testPreVoteIsolatedNodeRejoinsWithoutRaisingTerm() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        c.isolate(3)
        try c.tick(100)
        XCTAssertEqual(c[3].term, 1, "pre-vote fails in isolation, so the term stays")
        XCTAssertNotEqual(c[3].role, .leader)
        c.heal()
        try c.tick(30)
        XCTAssertEqual(c[1].role, .leader)
        XCTAssertEqual(c[1].term, 1, "the healthy leader was not disturbed")
        XCTAssertEqual(c[3].leader, 1)
        XCTAssertEqual(c[3].term, 1)
    }

    func testWithoutPreVoteARejoiningNodeDisruptsTheTerm() throws {
        // The contrast that shows what pre-vote buys.
        let c = Cluster(size: 3) { id, all in
            Config(id: id, voters: all, preVote: false, checkQuorum: false, randomSeed: id)
        }
        try c.campaign(1)
        c.isolate(3)
        try c.tick(100)
        XCTAssertGreaterThan(c[3].term, 1)
        c.heal()
        try c.tick(25)
        XCTAssertGreaterThan(c[1].term, 1, "the stale node's higher term deposed the leader")
    }

    func testRejoiningPartitionedNodeDoesNotDisturbLeader() throws {
        let c = Cluster(size: 5)
        try c.campaign(2)
        c.isolate(5)
        for k in 0..<10 {
            _ = try c.propose(2, [UInt8(k)])
            try c.tick(7)
        }
        XCTAssertEqual(c[5].term, 1)
        c.heal()
        var termsSeen: Set<UInt64> = []
        for _ in 0..<60 {
            try c.tick()
            termsSeen.insert(c[2].term)
            XCTAssertEqual(c[2].role, .leader)
        }
        XCTAssertEqual(termsSeen, [1])
        XCTAssertEqual(c.applied(5), (0..<10).map { [UInt8($0)] }, "the rejoined node caught up")
    }

    func testFollowerIgnoresVoteRequestsWhileItHearsFromLeader() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        let vote = Message(kind: .vote, from: 3, to: 2, term: 5, logTerm: 1, index: 100)
        c[2].step(vote)
        try c.processAll()
        XCTAssertEqual(c[2].term, 1, "sticky: no term change")
        XCTAssertTrue(c.inFlight.isEmpty, "and no answer")
        // After an election timeout without the leader, it votes.
        c.isolate(1)
        try c.tick(10, only: [2])
        c.inFlight = []
        c[2].step(vote)
        try c.processAll()
        XCTAssertEqual(c[2].term, 5)
        XCTAssertEqual(c[2].vote, 3)
    }

    /// A pre-candidate asks again every heartbeat interval: a voter that
    /// ignored its first request while its own lease guard held grants as
    /// soon as the guard ends (not a whole randomized timeout later), and
    /// never before.
    func testPreCandidateAsksAgainUntilTheVotersGuardEnds() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        c.crash(1)
        try c.tick(4)  // 2 and 3 last heard the leader 4 ticks ago
        c[2].campaign()
        try c.stabilize()
        XCTAssertEqual(c[2].role, .preCandidate, "3 is sticky and does not answer")
        // 3's own campaign is lost, so only 2's requests can elect anyone.
        let ownPreVotes = { (m: Message) in m.from == 3 && m.kind == .preVote }
        for t in 1...6 {
            try c.tick(1, stabilize: false)
            XCTAssertTrue(
                c.inFlight.contains { $0.kind == .preVote && $0.from == 2 && $0.to == 3 && $0.term == 2 },
                "tick \(t): 2 asks 3 again")
            try c.stabilize(drop: ownPreVotes)
            if t < 6 {
                XCTAssertNil(c.leader, "tick \(t): elected while 3's guard holds (\(4 + t) of 10 ticks)")
                XCTAssertEqual(c[2].term, 1, "a pre-vote changes no term")
            }
        }
        XCTAssertEqual(c.leader?.id, 2, "elected at the tick 3's guard ended")
        XCTAssertEqual(c[2].term, 2)
    }

    /// Two followers whose timers fire together do not split the vote: of
    /// two pre-candidates with equal logs only the lower id wins its
    /// pre-vote, and the other grants its real vote.
    func testConcurrentPreCandidatesDoNotSplitTheVote() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        c.crash(1)
        try c.tick(9, stabilize: false)  // out of touch; no timer fires before 10
        c.inFlight = []
        try c.tick(1, stabilize: false)  // both guards end now
        for id: NodeID in [2, 3] where c[id].role != .preCandidate { c[id].campaign() }
        try c.processAll()
        XCTAssertEqual(c[2].role, .preCandidate)
        XCTAssertEqual(c[3].role, .preCandidate)
        try c.stabilize()
        XCTAssertEqual(c.leader?.id, 2, "one candidate, no split vote")
        XCTAssertEqual(c[3].role, .follower)
        XCTAssertEqual(c[3].term, 2, "elected in the first term tried")
    }

    // MARK: Check-quorum and the lease

    func testCheckQuorumLeaderCutFromMajorityStepsDown() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        c.isolate(1)
        var steppedDownAt: Int? = nil
        for t in 1...30 {
            try c.tick()
            if c[1].role != .leader && steppedDownAt == nil { steppedDownAt = t }
        }
        XCTAssertNotNil(steppedDownAt)
        XCTAssertLessThanOrEqual(steppedDownAt!, 2 * 10, "within two election timeouts")
        XCTAssertEqual(c[1].term, 1, "stepping down does not raise the term")
        let newLeader = try XCTUnwrap(c.leader)
        XCTAssertNotEqual(newLeader.id, 1)
    }

    func testLeaseExpiresBeforeAnyOtherNodeCanBeElected() throws {
        for seed in 1...20 as ClosedRange<UInt64> {
            let c = Cluster(size: 5) { id, all in
                Config(id: id, voters: all, randomSeed: seed &* 31 &+ id)
            }
            try c.campaign(1)
            try c.tick(3)
            XCTAssertTrue(c[1].hasLease())
            c.isolate(1)
            var leaseLostAt: Int? = nil
            var otherLeaderAt: Int? = nil
            for t in 1...60 {
                try c.tick()
                if !c[1].hasLease() && leaseLostAt == nil { leaseLostAt = t }
                if otherLeaderAt == nil, c.ids.contains(where: { $0 != 1 && c[$0].role == .leader }) {
                    otherLeaderAt = t
                    XCTAssertFalse(
                        c[1].hasLease(), "seed \(seed): two leaders while the old one holds a lease")
                }
            }
            let lost = try XCTUnwrap(leaseLostAt)
            let other = try XCTUnwrap(otherLeaderAt)
            XCTAssertLessThan(lost, other, "seed \(seed)")
            XCTAssertLessThanOrEqual(
                lost, 10, "seed \(seed): the lease is shorter than an election timeout")
        }
    }

    func testLeaseNeedsFreshAcknowledgements() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        try c.tick(2)
        XCTAssertEqual(c[1].leaseRemainingTicks, 8)
        XCTAssertEqual(c[1].leaseExpiryTick, c[1].ticks + 8)
        // Acks stop arriving (responses dropped), heartbeats still flow out.
        c.cut = [[2, 1], [3, 1]]
        try c.tick(7)
        XCTAssertTrue(c[1].hasLease())
        try c.tick(1)
        XCTAssertFalse(c[1].hasLease())
        XCTAssertEqual(
            c[1].role, .leader, "still leader (check-quorum has not fired yet), but no lease")
        c.heal()
        try c.tick(1)
        XCTAssertTrue(c[1].hasLease())
    }

    func testRestartedFollowerDoesNotShortenTheLease() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        try c.tick(2)
        // 2 crashes and restarts at once: it must still refuse votes for an
        // election timeout, as it did before the crash.
        c.crash(2)
        try c.restart(2)
        let vote = Message(kind: .vote, from: 3, to: 2, term: 9, logTerm: 1, index: 50)
        c.inFlight = []
        c[2].step(vote)
        try c.processAll()
        XCTAssertEqual(c[2].term, 1)
        XCTAssertTrue(c.inFlight.isEmpty)
    }

    // MARK: Leadership transfer

    func testLeadershipTransferToUpToDateNode() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        _ = try c.propose(1, bytes("x"))
        XCTAssertTrue(c[1].transferLeadership(to: 2))
        XCTAssertEqual(c[1].propose(bytes("y")), .transferInProgress)
        XCTAssertFalse(c[1].hasLease(), "the lease ends when TimeoutNow is sent")
        try c.stabilize()
        XCTAssertEqual(c[2].role, .leader)
        XCTAssertEqual(c[2].term, 2)
        XCTAssertEqual(c[1].role, .follower)
        XCTAssertEqual(c[1].leader, 2)
        try c.tick(2)
        XCTAssertTrue(c[2].hasLease())
        XCTAssertEqual(try c.propose(2, bytes("z")), .accepted(index: 4, term: 2))
        for id in c.ids { XCTAssertEqual(c.applied(id), [bytes("x"), bytes("z")]) }
    }

    func testLeadershipTransferCatchesUpLaggingTargetFirst() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        c.isolate(3)
        for k in 0..<5 { _ = try c.propose(1, [UInt8(k)]) }
        c.heal()
        XCTAssertLessThan(c[3].lastIndex, c[1].lastIndex)
        XCTAssertTrue(c[1].transferLeadership(to: 3))
        var sawTimeoutNow = false
        for _ in 0..<50 where !c.inFlight.isEmpty || c[1].hasReady {
            try c.processAll()
            for m in c.inFlight where m.kind == .timeoutNow {
                sawTimeoutNow = true
                XCTAssertEqual(
                    c[3].lastIndex, c[1].lastIndex, "TimeoutNow only once the target is caught up")
            }
            try c.deliverAll()
        }
        XCTAssertTrue(sawTimeoutNow)
        XCTAssertEqual(c[3].role, .leader)
        XCTAssertEqual(c.applied(3), (0..<5).map { [UInt8($0)] })
    }

    func testLeadershipTransferAbortsAfterElectionTimeout() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        _ = try c.propose(1, [7])
        c.isolate(3)
        _ = try c.propose(1, [8])  // 3 now lags and cannot catch up
        XCTAssertTrue(c[1].transferLeadership(to: 3))
        XCTAssertEqual(c[1].transferTarget, 3)
        try c.tick(10)
        XCTAssertEqual(c[1].transferTarget, noNode, "aborted")
        XCTAssertEqual(c[1].role, .leader, "no TimeoutNow was sent, so it keeps leading")
        XCTAssertTrue(c[1].hasLease())
        if case .accepted = c[1].propose([9]) {} else { XCTFail("proposals accepted again") }
    }

    func testTransferAbortedAfterTimeoutNowStepsDown() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        try c.tick(1)
        // TimeoutNow is lost: the leader cannot know whether 2 will campaign, so
        // after the abort it gives up leadership instead of holding a lease.
        XCTAssertTrue(c[1].transferLeadership(to: 2))
        try c.stabilize { $0.kind == .timeoutNow }
        XCTAssertEqual(c[1].role, .leader)
        XCTAssertFalse(c[1].hasLease())
        try c.tick(10)
        XCTAssertNotEqual(c[1].role, .leader)
        let l = try c.electLeader()
        XCTAssertGreaterThan(l.term, 1)
    }

    // MARK: Log repair, snapshots, restart

    func testDivergentFollowerLogIsRepaired() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        _ = try c.propose(1, bytes("base"))
        c.isolate(1)
        for k in 0..<3 { _ = try c.propose(1, bytes("lost\(k)")) }  // appended on 1 only
        XCTAssertEqual(c[1].lastIndex, 5)
        XCTAssertEqual(c[1].commitIndex, 2)
        let newLeader = try c.electLeader(notIn: [1])
        for k in 0..<4 { _ = try c.propose(newLeader.id, bytes("kept\(k)")) }
        c.heal()
        try c.tick(20)
        let expected = [bytes("base")] + (0..<4).map { bytes("kept\($0)") }
        for id in c.ids {
            XCTAssertEqual(c.applied(id), expected, "node \(id)")
            XCTAssertEqual(
                c.storage[id]!.entries.map(\.term), c.storage[newLeader.id]!.entries.map(\.term))
            XCTAssertEqual(c.storage[id]!.hashes, c.storage[newLeader.id]!.hashes)
        }
    }

    func testLeaderCommitsOldTermEntriesOnlyThroughCurrentTermEntry() throws {
        // Raft §5.4.2 (the paper's Figure 8): an entry from an earlier term that
        // reaches a majority is not committed by counting replicas.
        let c = Cluster(size: 3) { id, all in
            Config(
                id: id, voters: all, preVote: false, checkQuorum: false, randomSeed: id,
                maxEntriesPerMessage: 1)
        }
        try c.campaign(1)
        c.isolate(1)
        _ = try c.propose(1, [0xA])  // (2, term 1) on node 1 only
        c.crash(1)
        try c.restart(1)
        c.heal()
        c[1].campaign()
        // Lose the no-op once a follower has the old entry (the first probe must
        // pass, so that its rejection makes the leader back up to index 2).
        let carriesNewTerm: (Message) -> Bool = { m in
            m.kind == .append && m.entries.contains { $0.term == 2 } && c[m.to].lastIndex >= 2
        }
        try c.stabilize(drop: carriesNewTerm)
        XCTAssertEqual(c[1].role, .leader)
        XCTAssertEqual(c[1].term, 2)
        XCTAssertEqual(c[2].lastIndex, 2, "the old-term entry reached a majority")
        XCTAssertEqual(c[3].lastIndex, 2)
        XCTAssertEqual(c[1].commitIndex, 1, "but it is not committed by counting")
        try c.tick(3)
        XCTAssertEqual(c[1].commitIndex, 3, "it commits with the current term's no-op")
        for id in c.ids { XCTAssertEqual(c.applied(id), [[0xA]]) }
    }

    func testFastBacktrackingOverLongDivergentTail() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        c.isolate(1)
        for k in 0..<100 { _ = c[1].propose([UInt8(k)]) }
        try c.processAll()
        c.inFlight = []
        let l = try c.electLeader(notIn: [1])
        _ = try c.propose(l.id, [1])
        c.heal()
        var rejects = 0
        for _ in 0..<30 {
            try c.processAll()
            rejects += c.inFlight.filter { $0.kind == .appendResponse && $0.reject && $0.from == 1 }.count
            try c.tick(1)
        }
        XCTAssertEqual(c[1].lastIndex, l.lastIndex)
        XCTAssertLessThanOrEqual(rejects, 3, "the conflict hint skips the divergent term at once")
    }

    func testLaggingFollowerInstallsSnapshot() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        c.isolate(3)
        for k in 0..<30 { _ = try c.propose(1, [UInt8(k)]) }
        c.compact(1)
        c.compact(2)
        XCTAssertEqual(c[1].snapshotIndex, 31)
        c.heal()
        try c.tick(5)
        XCTAssertEqual(c[3].snapshotIndex, 31, "installed from the leader's snapshot")
        XCTAssertEqual(c.machines[3]!.appliedHash, c.machines[1]!.appliedHash)
        _ = try c.propose(1, [200])
        XCTAssertEqual(c.applied(3), [[200]])
        XCTAssertEqual(c.machines[3]!.appliedHash, c.machines[1]!.appliedHash)
        // And it restarts from the snapshot it persisted.
        c.crash(3)
        try c.restart(3)
        try c.tick(3)
        XCTAssertEqual(c.machines[3]!.appliedHash, c.machines[1]!.appliedHash)
    }

    func testWholeClusterRestartsFromPersistedState() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        for k in 0..<10 { _ = try c.propose(1, [UInt8(k)]) }
        c.compact(2)
        let hashes = c.ids.map { c.machines[$0]!.appliedHash }
        let term = c[1].term
        for id in c.ids { c.crash(id) }
        c.inFlight = []
        for id in c.ids { try c.restart(id) }
        XCTAssertEqual(c[2].snapshotIndex, 11)
        XCTAssertEqual(c[1].term, term)
        try c.processAll()
        XCTAssertEqual(
            c.ids.map { c.machines[$0]!.appliedHash }, hashes, "committed entries are re-applied")
        let l = try c.electLeader()
        XCTAssertGreaterThan(l.term, term)
        _ = try c.propose(l.id, [99])
        for id in c.ids { XCTAssertEqual(c.applied(id).last, [99]) }
    }

    func testRestoreRejectsMissingCommittedEntries() {
        let config = Config(id: 1, voters: [1, 2, 3])
        let entries = [Entry(index: 1, term: 1, kind: .noop), Entry(index: 2, term: 1)]
        XCTAssertThrowsError(
            try RaftNode(
                config: config, hardState: HardState(term: 1, commit: 3), snapshot: nil, entries: entries))
        XCTAssertThrowsError(
            try RaftNode(
                config: config, hardState: HardState(term: 1), snapshot: nil,
                entries: [Entry(index: 2, term: 1)]))
        XCTAssertThrowsError(
            try RaftNode(config: config, hardState: HardState(term: 0), snapshot: nil, entries: entries))
        XCTAssertNoThrow(
            try RaftNode(
                config: config, hardState: HardState(term: 1, commit: 2), snapshot: nil, entries: entries))
    }

    func testStepsWhileReadyOutstandingAppearInNextReady() throws {
        let c = Cluster(size: 3)
        try c.campaign(1)
        let node = c[1]
        _ = node.propose([1])
        let rd1 = try XCTUnwrap(node.ready())
        XCTAssertFalse(node.hasReady, "one Ready at a time")
        _ = node.propose([2])
        XCTAssertNil(node.ready())
        XCTAssertEqual(rd1.entries.map(\.index), [2])
        c.storage[1]!.persist(rd1) { _, _ in }
        node.advance(rd1)
        let rd2 = try XCTUnwrap(node.ready())
        XCTAssertEqual(rd2.entries.map(\.index), [3])
        c.storage[1]!.persist(rd2) { _, _ in }
        c.inFlight += rd1.messages + rd2.messages
        node.advance(rd2)
        try c.stabilize()
        XCTAssertEqual(c.applied(2), [[1], [2]])
    }
}
