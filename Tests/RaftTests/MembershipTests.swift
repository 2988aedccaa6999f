// MembershipTests.swift — single-server configuration changes (Raft
// dissertation §4.1) on a `Cluster`: a change in force once appended, one at
// a time and only after the leader committed in its term, a truncated change
// reverting, a removed leader stepping down once its removal commits, removed
// and not-yet-added nodes never disrupting, snapshots carrying the voter set,
// and refusal of malformed configuration data from peers.

import XCTest

@testable import Raft

final class MembershipTests: XCTestCase {
    func member(_ id: NodeID) -> Member { Member(id: id, context: Array("n\(id)".utf8)) }

    func change(_ kind: ConfigChange.Kind, _ node: NodeID, _ voters: [NodeID]) -> ConfigChange {
        ConfigChange(kind: kind, node: node, members: voters.map(member))
    }

    /// `size` nodes of which the first `voters` form the cluster; the others
    /// are started to join (bootstrap configuration: everyone but themselves).
    func cluster(size: Int, voters: Int) -> Cluster {
        Cluster(size: size) { id, all in
            Config(
                id: id, voters: id <= UInt64(voters) ? Array(all.prefix(voters)) : all.filter { $0 != id },
                randomSeed: id, snapshotCheck: { $0.count == 8 })
        }
    }

    func ids(_ n: RaftNode) -> [NodeID] { n.members.map(\.id).sorted() }

    func testConfigChangeCodecAndValidation() {
        let c = change(.addVoter, 4, [1, 2, 3, 4])
        XCTAssertEqual(ConfigChange.decode(c.encoded()), c)
        XCTAssertNil(ConfigChange.decode(change(.addVoter, 5, [1, 2, 3]).encoded()), "added node missing")
        XCTAssertNil(ConfigChange.decode(change(.removeVoter, 3, [1, 2, 3]).encoded()), "removed node present")
        XCTAssertNil(ConfigChange.decode(change(.removeVoter, 1, []).encoded()), "empty voter set")
        XCTAssertNil(ConfigChange.decode(change(.addVoter, 2, [1, 2, 2]).encoded()), "duplicate")
        XCTAssertNil(ConfigChange.decode(change(.addVoter, 10, Array(1...10)).encoded()), "more than 9 voters")
        XCTAssertNil(ConfigChange.decode(change(.addVoter, 0, [0, 1]).encoded()), "id 0")
        var bytes = c.encoded()
        XCTAssertNil(ConfigChange.decode(bytes + [0]), "trailing byte")
        bytes[0] = 2
        XCTAssertNil(ConfigChange.decode(bytes), "unknown version")
        for n in 0..<c.encoded().count { XCTAssertNil(ConfigChange.decode(Array(c.encoded().prefix(n)))) }
        XCTAssertTrue(c.isSingleStep(from: [1, 2, 3]))
        XCTAssertFalse(c.isSingleStep(from: [1, 2]))
        XCTAssertFalse(change(.removeVoter, 3, [1]).isSingleStep(from: [1, 2, 3]))
    }

    func testSnapshotMembersRoundTripTheWire() throws {
        var m = Message(kind: .snapshot, from: 1, to: 2, term: 3)
        m.snapshot = Snapshot(index: 7, term: 2, data: [1, 2], members: [member(1), member(2)])
        XCTAssertEqual(try Message.decode(m.encoded()[...]), m)
        m.snapshot!.members = []
        let legacy = m.encoded()
        XCTAssertEqual(legacy[2] & 8, 0, "a snapshot without members is encoded as before")
        XCTAssertEqual(try Message.decode(legacy[...]), m)
    }

    func testAddVoterTakesEffectWhenAppendedAndCatchesUp() throws {
        let c = cluster(size: 4, voters: 3)
        try c.campaign(1)
        for k in 0..<5 { _ = try c.propose(1, [UInt8(k)]) }
        XCTAssertFalse(c[4].isVoter)
        XCTAssertEqual(c[1].proposeConfigChange(change(.addVoter, 4, [1, 2, 3, 4])), .accepted(index: 7, term: 1))
        XCTAssertEqual(ids(c[1]), [1, 2, 3, 4], "in force on the leader once appended, before it commits")
        XCTAssertEqual(c[1].configIndex, 7)
        XCTAssertGreaterThan(c[1].lastIndex, c[1].commitIndex)
        try c.stabilize()
        for id in c.ids {
            XCTAssertEqual(ids(c[id]), [1, 2, 3, 4], "node \(id)")
            XCTAssertEqual(c[id].commitIndex, 7, "node \(id)")
            XCTAssertEqual(c.applied(id), (0..<5).map { [UInt8($0)] }, "node \(id) applied the whole log")
        }
        XCTAssertTrue(c[4].isVoter)
        XCTAssertEqual(c[1].members.last?.context, Array("n4".utf8))
        // The new voter counts in quorums: with 2 of 4 down nothing commits.
        c.isolate(3)
        c.isolate(4)
        guard case .accepted(let index, _) = c[1].propose([9]) else { return XCTFail("not accepted") }
        try c.stabilize()
        XCTAssertLessThan(c[1].commitIndex, index, "2 of 4 voters are not a majority")
        c.heal()
        try c.tick(6)
        XCTAssertGreaterThanOrEqual(c[4].commitIndex, index)
    }

    func testOneChangeAtATime() throws {
        let c = cluster(size: 5, voters: 3)
        try c.campaign(1)
        c.isolate(1)
        XCTAssertEqual(c[1].proposeConfigChange(change(.addVoter, 4, [1, 2, 3, 4])), .accepted(index: 2, term: 1))
        XCTAssertEqual(
            c[1].proposeConfigChange(change(.addVoter, 5, [1, 2, 3, 4, 5])), .configChangePending,
            "a second change while the first is uncommitted")
        c.heal()
        try c.tick(2)
        XCTAssertEqual(c[1].commitIndex, 2)
        XCTAssertEqual(c[1].proposeConfigChange(change(.addVoter, 5, [1, 2, 3, 4, 5])), .accepted(index: 3, term: 1))
    }

    func testNoChangeBeforeTheLeaderCommittedInItsTerm() throws {
        let c = cluster(size: 4, voters: 3)
        c[1].campaign()
        try c.stabilize(drop: { $0.kind == .appendResponse || $0.kind == .heartbeatResponse })
        XCTAssertEqual(c[1].role, .leader)
        XCTAssertLessThan(c[1].commitIndex, c[1].lastIndex, "its no-op is not committed")
        XCTAssertEqual(c[1].proposeConfigChange(change(.addVoter, 4, [1, 2, 3, 4])), .configChangePending)
        try c.tick(2)
        XCTAssertEqual(c[1].commitIndex, c[1].lastIndex)
        XCTAssertEqual(c[1].proposeConfigChange(change(.addVoter, 4, [1, 2, 3, 4])), .accepted(index: 2, term: 1))
    }

    func testInvalidChangesAreRefused() throws {
        let c = cluster(size: 4, voters: 3)
        try c.campaign(1)
        guard case .invalidConfigChange = c[1].proposeConfigChange(change(.addVoter, 3, [1, 2, 3])) else {
            return XCTFail("adding a voter twice")
        }
        guard case .invalidConfigChange = c[1].proposeConfigChange(change(.removeVoter, 4, [1, 2, 3])) else {
            return XCTFail("removing a non-voter")
        }
        guard case .invalidConfigChange = c[1].proposeConfigChange(change(.removeVoter, 3, [1])) else {
            return XCTFail("two servers at once")
        }
        guard case .invalidConfigChange = c[1].propose(change(.addVoter, 4, [1, 2, 3, 4]).encoded(), kind: .config)
        else { return XCTFail("a config entry through propose") }
        XCTAssertEqual(c[2].proposeConfigChange(change(.addVoter, 4, [1, 2, 3, 4])), .notLeader(leaderHint: 1))
        XCTAssertEqual(c[1].lastIndex, 1, "nothing was appended")
    }

    func testTruncatedUncommittedChangeReverts() throws {
        let c = cluster(size: 5, voters: 5)
        try c.campaign(1)
        // The removal reaches 2 only, and never commits.
        XCTAssertEqual(c[1].proposeConfigChange(change(.removeVoter, 5, [1, 2, 3, 4])), .accepted(index: 2, term: 1))
        try c.stabilize(drop: { $0.to != 2 || $0.kind != .append })
        XCTAssertEqual(ids(c[2]), [1, 2, 3, 4], "a follower uses the change once appended")
        XCTAssertEqual(c[2].commitIndex, 1)
        c.partition([[1, 2], [3, 4, 5]])
        try c.electLeader(notIn: [1, 2])
        XCTAssertEqual(c.leader.map { [3, 4, 5].contains($0.id) }, true)
        c.heal()
        try c.tick(30)
        for id in c.ids {
            XCTAssertEqual(ids(c[id]), [1, 2, 3, 4, 5], "node \(id): the truncated change reverted")
            XCTAssertEqual(c[id].configIndex, 0)
        }
        XCTAssertTrue(c[5].isVoter)
    }

    func testRemovedLeaderStepsDownOnceTheRemovalCommits() throws {
        let c = cluster(size: 3, voters: 3)
        try c.campaign(1)
        c.isolate(1)
        XCTAssertEqual(c[1].proposeConfigChange(change(.removeVoter, 1, [2, 3])), .accepted(index: 2, term: 1))
        XCTAssertFalse(c[1].isVoter)
        XCTAssertEqual(c[1].role, .leader, "it keeps leading until the change commits")
        c.heal()
        try c.tick(1)
        XCTAssertEqual(c[1].commitIndex, 2)
        XCTAssertEqual(c[1].role, .follower)
        let leader = try c.electLeader(notIn: [1])
        XCTAssertEqual(ids(leader), [2, 3])
        let term = c[1].term
        try c.tick(100)
        XCTAssertEqual(c[1].term, term, "a removed node never campaigns")
        XCTAssertEqual(c[1].role, .follower)
        _ = try c.propose(leader.id, [7])
        XCTAssertEqual(c.applied(2), [[7]])
        XCTAssertEqual(c.applied(3), [[7]])
    }

    func testRemovedAndUnknownNodesCannotDisrupt() throws {
        let c = cluster(size: 4, voters: 3)
        try c.campaign(1)
        c.isolate(3)
        XCTAssertEqual(c[1].proposeConfigChange(change(.removeVoter, 3, [1, 2])), .accepted(index: 2, term: 1))
        try c.stabilize()
        c.heal()
        XCTAssertEqual(c[1].commitIndex, 2)
        // The leader no longer replicates to 3, and 3 missed the one last
        // append, so it never learns of its removal (as in etcd): its
        // (pre-)campaigns are refused, nobody's term moves, the leader stays.
        XCTAssertTrue(c[3].isVoter, "3 did not receive its removal")
        c.refusals.removeAll()
        try c.tick(60)
        XCTAssertTrue(c.refusals.contains { $0.message.from == 3 && $0.rejection == .unknownSender })
        XCTAssertEqual(c[1].term, 1)
        XCTAssertEqual(c[2].term, 1)
        XCTAssertEqual(c[1].role, .leader)
        // Forged or stray messages from nodes outside the voter set are refused.
        let vote = Message(kind: .vote, from: 3, to: 2, term: 9, logTerm: 1, index: 99)
        XCTAssertEqual(c[2].step(vote), .refused(.unknownSender))
        let stranger = Message(kind: .preVote, from: 4, to: 1, term: 2, logTerm: 1, index: 99)
        XCTAssertEqual(c[1].step(stranger), .refused(.unknownSender))
        XCTAssertEqual(c[2].term, 1)
        XCTAssertEqual(c[1].role, .leader)
    }

    func testLiveRemovedFollowerLearnsItsRemovalAndStaysQuiet() throws {
        let c = cluster(size: 3, voters: 3)
        try c.campaign(1)
        XCTAssertEqual(c[1].proposeConfigChange(change(.removeVoter, 3, [1, 2])), .accepted(index: 2, term: 1))
        try c.stabilize()
        XCTAssertEqual(c[1].commitIndex, 2)
        XCTAssertFalse(c[3].isVoter, "the last append carried the removal to 3")
        XCTAssertEqual(ids(c[3]), [1, 2])
        try c.tick(100)
        XCTAssertEqual(c[3].term, 1, "a node that knows it was removed never campaigns")
        XCTAssertEqual(c[1].term, 1)
        XCTAssertEqual(c[1].role, .leader)
        XCTAssertNil(c[1].matchIndex(of: 3), "no progress kept for the removed node")
    }

    func testJoiningNodeDoesNotCampaignUntilAdded() throws {
        let c = cluster(size: 4, voters: 3)
        try c.campaign(1)
        c.isolate(4)
        try c.tick(60)
        XCTAssertEqual(c[4].term, 0, "a node waiting to be added never campaigns")
        XCTAssertEqual(c[4].lastIndex, 0)
        c.heal()
    }

    func testSnapshotCarriesVotersAndRestartRebuildsThem() throws {
        let c = cluster(size: 4, voters: 3)
        try c.campaign(1)
        _ = try c.propose(1, [0])
        c.compact(1)
        XCTAssertEqual(c[1].snapshot.index, 2)
        XCTAssertEqual(c[1].snapshot.members, [], "no change yet: the bootstrap set, encoded as before")
        XCTAssertEqual(c[1].proposeConfigChange(change(.removeVoter, 3, [1, 2])), .accepted(index: 3, term: 1))
        try c.stabilize()
        for k in 0..<4 { _ = try c.propose(1, [UInt8(k)]) }
        c.compact(1)
        XCTAssertEqual(c[1].snapshot.members.map(\.id), [1, 2], "the snapshot holds the voters at its index")
        // Node 4 joins after compaction: it learns the voters from the snapshot, then the add.
        XCTAssertEqual(c[1].proposeConfigChange(change(.addVoter, 4, [1, 2, 4])), .accepted(index: 8, term: 1))
        try c.tick(3)
        XCTAssertEqual(c.storage[4]!.snapshot?.members.map(\.id), [1, 2])
        XCTAssertEqual(ids(c[4]), [1, 2, 4])
        XCTAssertEqual(c.applied(4), [], "state came with the snapshot")
        XCTAssertEqual(c.applied(1).count, 5)
        // Restart from storage: snapshot + log rebuild the voter set.
        for id: NodeID in [1, 2, 4] {
            c.crash(id)
            try c.restart(id)
            XCTAssertEqual(ids(c[id]), [1, 2, 4], "node \(id) after restart")
        }
        try c.electLeader()
        c.compact(2)
        XCTAssertEqual(c[2].snapshot.members.map(\.id), [1, 2, 4])
        c.crash(2)
        try c.restart(2)
        XCTAssertEqual(c[2].configIndex, 0)
        XCTAssertEqual(ids(c[2]), [1, 2, 4], "from a snapshot past the change")
        let leader = try c.electLeader()
        _ = try c.propose(leader.id, [42])
        for id: NodeID in [1, 2, 4] { XCTAssertEqual(c.applied(id).last, [42], "node \(id)") }
    }

    func testMalformedConfigurationFromAPeerIsRefused() throws {
        let c = cluster(size: 3, voters: 3)
        try c.campaign(1)
        let bad = Entry(index: 2, term: 1, kind: .config, data: [1, 1, 9])
        let append = Message(
            kind: .append, from: 1, to: 2, term: 1, logTerm: 1, index: 1, commit: 1, entries: [bad])
        XCTAssertEqual(c[2].step(append), .refused(.badConfigEntry))
        let tooMany = ConfigChange(kind: .addVoter, node: 10, members: (1...10).map { Member(id: $0) })
        var crafted = append
        crafted.entries[0].data = tooMany.encoded()
        XCTAssertEqual(c[2].step(crafted), .refused(.badConfigEntry))
        var snap = Message(kind: .snapshot, from: 1, to: 2, term: 1)
        snap.snapshot = Snapshot(index: 5, term: 1, data: hashBytes(1), members: [member(1), member(1)])
        XCTAssertEqual(c[2].step(snap), .refused(.badConfigEntry))
        XCTAssertEqual(c[2].lastIndex, 1, "nothing of them was used")
        XCTAssertEqual(ids(c[2]), [1, 2, 3])
        // A persisted log with a bad config entry refuses to start.
        XCTAssertThrowsError(
            try RaftNode(
                config: Config(id: 2, voters: [1, 2, 3]), hardState: HardState(term: 1, commit: 0), snapshot: nil,
                entries: [Entry(index: 1, term: 1, kind: .config, data: [1, 1, 9])]))
    }

    /// Issue 20, item 3: a snapshot from the live leader whose voter set names
    /// nobody the node knows (`{evil}`) is refused before anything changes;
    /// one that names the receiver, the sender or one voter it knows is a
    /// possible real snapshot (a learner, a leader added after it) and is installed.
    func testASnapshotOfStrangersIsRefused() throws {
        let c = cluster(size: 3, voters: 3)
        try c.campaign(1)
        func snapshot(_ voters: [NodeID], index: UInt64, to: NodeID = 2) -> Message {
            var m = Message(kind: .snapshot, from: 1, to: to, term: c[to].term)
            m.snapshot = Snapshot(index: index, term: c[2].term, data: hashBytes(1), members: voters.map(member))
            return m
        }
        let before = [c[2].lastIndex, c[2].commitIndex, c[2].term, c[2].snapshotIndex]
        XCTAssertEqual(c[2].step(snapshot([66], index: 50)), .refused(.foreignVoterSet))
        XCTAssertEqual(c[2].step(snapshot([66, 77, 88], index: 50)), .refused(.foreignVoterSet))
        XCTAssertEqual(
            [c[2].lastIndex, c[2].commitIndex, c[2].term, c[2].snapshotIndex], before, "nothing of them was used")
        XCTAssertEqual(ids(c[2]), [1, 2, 3])
        // Sharing one node is enough: a sender added after the snapshot, or
        // a receiver being caught up that is no voter yet.
        XCTAssertEqual(c[2].step(snapshot([3, 66], index: 50)), .stepped)
        XCTAssertEqual(ids(c[2]), [3, 66])
        XCTAssertEqual(c[3].step(snapshot([2], index: 60, to: 3)), .stepped)
        XCTAssertEqual(c[3].snapshotIndex, 60)
    }
}
