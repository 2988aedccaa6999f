// HostileMessageTests.swift — well-formed but hostile (or buggy) messages
// stepped into a live cluster of cores: each is refused (or clamped) with a
// reason, nothing traps, and the cluster keeps one leader per term and
// commits. Every message here trapped the core before the checks in
// `RaftNode.step` (issue #9); each test says where.
//
//   RAFT_HOSTILE_SEEDS=N   seeds of the randomized test (default 40)
//   RAFT_HOSTILE_SEED=S    run only seed S (printed on failure)

import Foundation
import XCTest

@testable import Raft

final class HostileMessageTests: XCTestCase {
    /// A 3-node cluster with 1 leading term 1 and everything committed.
    func settled() throws -> Cluster {
        let c = Cluster(size: 3)
        try c.campaign(1)
        _ = try c.propose(1, [7])
        XCTAssertEqual(c[1].role, .leader)
        XCTAssertEqual(c[2].leader, 1)
        return c
    }

    /// The cluster still has its leader and commits a proposal everywhere.
    func assertStillCommits(_ c: Cluster, leader: NodeID = 1, file: StaticString = #filePath, line: UInt = #line)
        throws
    {
        try c.tick(3 * 10)
        XCTAssertEqual(c[leader].role, .leader, "the leader was not disturbed", file: file, line: line)
        XCTAssertEqual(c[leader].term, 1, file: file, line: line)
        guard case .accepted(let index, _) = try c.propose(leader, [0xAB]) else {
            return XCTFail("the leader refused a proposal", file: file, line: line)
        }
        for id in c.ids {
            XCTAssertGreaterThanOrEqual(c[id].commitIndex, index, "node \(id) commits", file: file, line: line)
            XCTAssertEqual(c.applied(id).last, [0xAB], file: file, line: line)
        }
    }

    // Old code: adopted and persisted term 2^64-1, then `term + 1` trapped at
    // the next pre-vote, and again after every restart (a crash loop).
    func testMaxTermHeartbeatIsRefusedByLeaderAndFollower() throws {
        let c = try settled()
        let toLeader = Message(kind: .heartbeat, from: 2, to: 1, term: .max, commit: 1)
        let toFollower = Message(kind: .heartbeat, from: 1, to: 3, term: .max, commit: 1)
        XCTAssertEqual(c[1].step(toLeader), .refused(.termAbsurd))
        XCTAssertEqual(c[3].step(toFollower), .refused(.termAbsurd))
        for term in [RaftNode.maxTerm, RaftNode.maxTerm + 1, 1 << 63] {
            XCTAssertEqual(
                c[2].step(Message(kind: .vote, from: 3, to: 2, term: term, logTerm: 1, index: 9)),
                .refused(.termAbsurd), "term \(term)")
        }
        XCTAssertEqual(c[1].term, 1)
        XCTAssertEqual(c[3].term, 1)
        XCTAssertEqual(c[3].droppedMessages, 1)
        try assertStillCommits(c)
    }

    /// Elects a leader within `maxTicks` and commits a proposal on every node.
    func assertElectsAndCommits(
        _ c: Cluster, _ payload: UInt8, maxTicks: Int = 300, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let leader = try c.electLeader(maxTicks: maxTicks)
        guard case .accepted(let index, _) = try c.propose(leader.id, [payload]) else {
            return XCTFail("the leader refused a proposal", file: file, line: line)
        }
        for id in c.ids {
            XCTAssertGreaterThanOrEqual(c[id].commitIndex, index, "node \(id) commits", file: file, line: line)
            XCTAssertEqual(c.applied(id).last, [payload], "node \(id) applies", file: file, line: line)
        }
    }

    // Old code (adversarial review of #9, finding 2): one heartbeat per node
    // with term 2^62 − 1 "from" another member was adopted and persisted, and
    // then `guard term + 1 < maxTerm` (2^62) stopped every campaign: no
    // leader ever again, even after restarts. Now campaigns go on above 2^62.
    func testForgedTermJustBelowTwoToThe62CannotStopElections() throws {
        let c = Cluster(size: 3)
        try assertElectsAndCommits(c, 0x01)
        // Restarted nodes know no leader: nothing is sticky for a heartbeat.
        for id in c.ids { c.crash(id) }
        for id in c.ids { try c.restart(id) }
        for id in c.ids {
            let forged = Message(
                kind: .heartbeat, from: id % 3 + 1, to: id, term: RaftNode.freeTermLimit - 1, commit: 0)
            XCTAssertEqual(c[id].step(forged), .stepped, "a term below 2^62 is plausible")
        }
        try c.processAll()
        c.inFlight.removeAll()  // the answers go to the forger, not to the peers
        for id in c.ids { XCTAssertEqual(c[id].term, RaftNode.freeTermLimit - 1) }
        try assertElectsAndCommits(c, 0x02)
        let term = try XCTUnwrap(c.leader).term
        XCTAssertGreaterThanOrEqual(term, RaftNode.freeTermLimit, "campaigned past 2^62")
        // And after a restart of all three from what they persisted.
        for id in c.ids { c.crash(id) }
        for id in c.ids { try c.restart(id) }
        for id in c.ids { XCTAssertGreaterThanOrEqual(c[id].term, term) }
        try assertElectsAndCommits(c, 0x03)
    }

    // A term in the high range (2^62 and above) is adopted one step at a time:
    // a forged 2^63 − 1 moves a node to 2^62, not to the end of the term space.
    func testTermsAboveTwoToThe62AdvanceOneStepPerMessage() throws {
        let node = RaftNode(config: Config(id: 2, voters: [1, 2, 3]))
        let far = Message(kind: .heartbeat, from: 1, to: 2, term: RaftNode.maxTerm - 1)
        XCTAssertEqual(node.step(far), .clamped(.termJump))
        XCTAssertEqual(node.term, RaftNode.freeTermLimit)
        XCTAssertEqual(node.leader, noNode, "a clamped message is not followed")
        XCTAssertEqual(node.step(far), .clamped(.termJump))
        XCTAssertEqual(node.term, RaftNode.freeTermLimit + 1)
        // The next term up is adopted (and followed) like any other.
        let next = Message(kind: .heartbeat, from: 1, to: 2, term: RaftNode.freeTermLimit + 2)
        XCTAssertEqual(node.step(next), .stepped)
        XCTAssertEqual(node.term, RaftNode.freeTermLimit + 2)
        XCTAssertEqual(node.leader, 1)
        // Below 2^62 a jump is adopted at once (a node that missed elections).
        let low = RaftNode(config: Config(id: 2, voters: [1, 2, 3]))
        XCTAssertEqual(low.step(Message(kind: .heartbeat, from: 1, to: 2, term: 1_000_000)), .stepped)
        XCTAssertEqual(low.term, 1_000_000)
    }

    // Old code: a follower adopted any higher term from a heartbeat, so one
    // forged heartbeat unseated the leader (the follower's answers carried
    // the new term). Now a node with a live leader ignores a rival's higher
    // term (stickiness, as etcd does for votes only).
    func testFollowerAndLeaderWithALiveLeaderIgnoreAHigherTermHeartbeat() throws {
        let c = try settled()
        for (from, to) in [(2, 3), (1, 3), (3, 1), (2, 1)] as [(NodeID, NodeID)] {
            let forged = Message(kind: .heartbeat, from: from, to: to, term: RaftNode.freeTermLimit - 1)
            XCTAssertEqual(c[to].step(forged), .stepped)
            let append = Message(
                kind: .append, from: from, to: to, term: 7, logTerm: 1, index: c[to].lastIndex,
                entries: [Entry(index: c[to].lastIndex + 1, term: 7, data: [0xEE])])
            XCTAssertEqual(c[to].step(append), .stepped)
            XCTAssertEqual(c[to].term, 1, "node \(to) keeps its term")
        }
        XCTAssertEqual(c[3].leader, 1)
        try assertStillCommits(c)
    }

    // A node whose term ran ahead (here: a forged transfer vote, which is not
    // sticky) is not left out for good: the leader adopts the higher term
    // from its answer, and the cluster re-elects with all three.
    func testANodeWhoseTermRanAheadGetsBackIn() throws {
        let c = try settled()
        let forged = Message(
            kind: .vote, from: 2, to: 3, term: RaftNode.freeTermLimit - 1, logTerm: 1, index: 0, transfer: true)
        XCTAssertEqual(c[3].step(forged), .stepped)
        try c.processAll()
        c.inFlight.removeAll()
        XCTAssertEqual(c[3].term, RaftNode.freeTermLimit - 1)
        try c.tick(100)
        try assertElectsAndCommits(c, 0x04)
        let terms = Set(c.ids.map { c[$0].term })
        XCTAssertEqual(terms.count, 1, "one term again: \(terms)")
        XCTAssertGreaterThanOrEqual(terms.first ?? 0, RaftNode.freeTermLimit - 1)
    }

    // Adversarial review of #9, finding 3: each stale heartbeat was answered
    // (to the real peer its `from` names), so a flood of them became a flood
    // towards that peer. Now at most one answer per peer per tick.
    func testStaleMessagesAreAnsweredAtMostOncePerPeerPerTick() throws {
        let c = try settled()
        try c.processAll()
        func answers() throws -> Int {
            let rd = try XCTUnwrap(c[2].ready())
            defer { c[2].advance(rd) }
            return rd.messages.filter { $0.to == 3 && $0.kind == .appendResponse }.count
        }
        // Node 2 is in term 1; stale (term 0) heartbeats and appends "from 3".
        for _ in 0..<100 { XCTAssertEqual(c[2].step(Message(kind: .heartbeat, from: 3, to: 2, term: 0)), .stepped) }
        XCTAssertEqual(try answers(), 1)
        for _ in 0..<100 { c[2].step(Message(kind: .append, from: 3, to: 2, term: 0)) }
        XCTAssertFalse(c[2].hasReady, "no second answer in the same tick")
        c[2].tick()
        for _ in 0..<100 { c[2].step(Message(kind: .heartbeat, from: 3, to: 2, term: 0)) }
        XCTAssertEqual(try answers(), 1, "one more in the next tick")
        try c.stabilize()
        try assertStillCommits(c)
    }

    // Adversarial review of #9, finding 6: a snapshot whose state the
    // application refuses was adopted and persisted by the core (the service
    // then refused it on apply, and at every restart). Now the core runs the
    // application's check first and the snapshot goes nowhere.
    func testSnapshotRefusedByTheApplicationIsNotAdoptedNorInAReady() throws {
        let c = try settled()
        let before = c[3].lastIndex
        let bad = Message(
            kind: .snapshot, from: 1, to: 3, term: 1, snapshot: Snapshot(index: before + 10, term: 1, data: [1, 2, 3]))
        XCTAssertEqual(c[3].step(bad), .refused(.badSnapshot))
        XCTAssertEqual(c[3].lastIndex, before)
        XCTAssertEqual(c[3].snapshotIndex, 0)
        XCTAssertFalse(c[3].hasReady, "nothing to persist, nothing to answer")
        // The same snapshot with a state the check accepts is adopted.
        let good = Message(
            kind: .snapshot, from: 1, to: 3, term: 1,
            snapshot: Snapshot(index: before + 10, term: 1, data: hashBytes(7)))
        XCTAssertEqual(c[3].step(good), .stepped)
        XCTAssertEqual(c[3].snapshotIndex, before + 10)
        let rd = try XCTUnwrap(c[3].ready())
        XCTAssertEqual(rd.snapshot?.data, hashBytes(7))
        c[3].advance(rd)
    }

    // Old code: a state persisted with term 2^64-1 by the old code trapped on
    // every restart; now the node refuses it with a reason.
    func testPersistedAbsurdTermIsRefusedAtRestart() {
        let config = Config(id: 1, voters: [1, 2, 3])
        for term in [UInt64.max, RaftNode.maxTerm] {
            XCTAssertThrowsError(
                try RaftNode(config: config, hardState: HardState(term: term), snapshot: nil, entries: [])
            ) { error in
                guard case .invalidPersistedState(let reason) = error as? RaftError else {
                    return XCTFail("\(error)")
                }
                XCTAssertTrue(reason.contains("2^63"), reason)
            }
        }
        let absurdSnapshot = Snapshot(index: .max, term: 1, data: [])
        XCTAssertThrowsError(
            try RaftNode(config: config, hardState: HardState(term: 1), snapshot: absurdSnapshot, entries: []))
        XCTAssertNoThrow(
            try RaftNode(
                config: config, hardState: HardState(term: RaftNode.maxTerm - 1), snapshot: nil, entries: []))
    }

    // Old code: `RaftLog.commit(to:)` trapped (precondition commit <= lastIndex).
    func testHeartbeatCommitBeyondTheLogIsIgnored() throws {
        let c = try settled()
        // Follower 2 gets an entry it may not commit yet (the leader's answer is held back).
        _ = c[1].propose([9])
        try c.processAll()
        try c.deliverAll()
        let committed = c[2].commitIndex
        XCTAssertEqual(c[2].lastIndex, committed + 1)
        let m = Message(kind: .heartbeat, from: 1, to: 2, term: 1, commit: 1 << 40)
        XCTAssertEqual(c[2].step(m), .clamped(.commitBeyondLog))
        XCTAssertEqual(c[2].commitIndex, committed, "a bogus commit commits nothing, not even our own tail")
        XCTAssertEqual(
            c[2].step(Message(kind: .heartbeat, from: 1, to: 2, term: 1, commit: .max)), .clamped(.commitBeyondLog))
        XCTAssertEqual(c[2].leader, 1, "the heartbeat still counts as the leader's")
        try c.stabilize()
        try assertStillCommits(c)
    }

    // Old code: `precondition(leader == noNode || leader == m.from)` in
    // stepFollower trapped ("two leaders").
    func testAppendFromASecondLeaderOfTheSameTermIsRefused() throws {
        let c = try settled()
        let last = c[2].lastIndex
        let forged = Message(
            kind: .append, from: 3, to: 2, term: 1, logTerm: 1, index: last, commit: last,
            entries: [Entry(index: last + 1, term: 1, data: [0xEE])])
        XCTAssertEqual(c[2].step(forged), .refused(.secondLeader))
        XCTAssertEqual(c[2].step(Message(kind: .heartbeat, from: 3, to: 2, term: 1)), .refused(.secondLeader))
        XCTAssertEqual(c[2].leader, 1)
        XCTAssertEqual(c[2].lastIndex, last, "nothing appended")
        // A leader refuses another leader of its own term as well.
        XCTAssertEqual(c[1].step(Message(kind: .heartbeat, from: 2, to: 1, term: 1)), .refused(.secondLeader))
        XCTAssertEqual(
            c[2].step(Message(kind: .timeoutNow, from: 3, to: 2, term: 1)), .refused(.timeoutNowNotFromLeader))
        XCTAssertEqual(c[2].role, .follower, "no election forced by a non-leader")
        try assertStillCommits(c)
    }

    // Old code: `precondition(m.index <= log.lastIndex)` in handleAppendResponse trapped.
    func testAppendResponseBeyondTheLogIsRefused() throws {
        let c = try settled()
        let m = Message(kind: .appendResponse, from: 2, to: 1, term: 1, index: c[1].lastIndex + 1)
        XCTAssertEqual(c[1].step(m), .refused(.indexBeyondLog))
        XCTAssertEqual(
            c[1].step(Message(kind: .appendResponse, from: 3, to: 1, term: 1, index: .max)), .refused(.indexBeyondLog))
        XCTAssertEqual(c[1].matchIndex(of: 2), c[1].lastIndex)
        try assertStillCommits(c)
    }

    // Old code: `hint + 1` overflowed in Progress.maybeDecrease when the leader
    // was probing that follower.
    func testRejectHintMaxIsRefused() throws {
        let c = Cluster(size: 3)
        c.isolate(3)
        try c.campaign(1)  // 1 leads; its progress for 3 is probing at next = 1
        c.heal()
        let m = Message(
            kind: .appendResponse, from: 3, to: 1, term: 1, index: 0, reject: true, rejectHint: .max)
        XCTAssertEqual(c[1].step(m), .refused(.hintBeyondLog))
        let beyond = Message(
            kind: .appendResponse, from: 3, to: 1, term: 1, logTerm: 1, index: 0, reject: true, rejectHint: 5)
        XCTAssertEqual(c[1].step(beyond), .refused(.hintBeyondLog))
        try c.stabilize()
        try assertStillCommits(c)
    }

    // Old code: restoring a snapshot at index 2^64-1 overflowed `index + 1`.
    func testSnapshotAtAnAbsurdIndexIsRefused() throws {
        let c = try settled()
        let m = Message(
            kind: .snapshot, from: 1, to: 2, term: 1, snapshot: Snapshot(index: .max, term: 1, data: [1]))
        XCTAssertEqual(c[2].step(m), .refused(.indexAbsurd))
        let append = Message(kind: .append, from: 1, to: 2, term: 1, logTerm: 1, index: .max - 1)
        XCTAssertEqual(c[2].step(append), .refused(.indexAbsurd))
        try assertStillCommits(c)
    }

    func testForeignAndMalformedMessagesSayWhy() {
        let node = RaftNode(config: Config(id: 2, voters: [1, 2, 3]))
        XCTAssertEqual(node.step(Message(kind: .heartbeat, from: 1, to: 2, term: 1)), .stepped)
        XCTAssertEqual(node.step(Message(kind: .preVote, from: 9, to: 2, term: 2)), .refused(.unknownSender))
        XCTAssertEqual(node.step(Message(kind: .heartbeat, from: 1, to: 3, term: 1)), .refused(.misaddressed))
        XCTAssertEqual(node.step(Message(kind: .vote, from: 1, to: 2, term: 0)), .refused(.malformed))
        XCTAssertEqual(node.droppedMessages, 3)
        XCTAssertEqual(Set(MessageRejection.allCases.map(\.reason)).count, MessageRejection.allCases.count)
        for r in MessageRejection.allCases {
            XCTAssertTrue(r.reason.allSatisfy { $0.isLowercase || $0 == "_" }, "snake_case: \(r.reason)")
        }
    }

    // MARK: Randomized

    func seeds(default n: Int) -> [UInt64] {
        let env = ProcessInfo.processInfo.environment
        return env["RAFT_HOSTILE_SEED"].flatMap(UInt64.init).map { [$0] }
            ?? (1...UInt64(env["RAFT_HOSTILE_SEEDS"].flatMap(Int.init) ?? n)).map { $0 }
    }

    /// Detectably hostile traffic (every message has a field the checks must
    /// catch) mixed into a live cluster: every one is refused (or its commit
    /// ignored) for the expected reason, and afterwards the cluster still has
    /// one leader per term and commits on every node.
    func testDetectablyHostileTrafficIsRefusedAndTheClusterRecovers() throws {
        var refusals: [MessageRejection: Int] = [:]
        let seeds = seeds(default: 40)
        for seed in seeds {
            let run = HostileRun(seed: seed)
            do {
                try run.run(hostileSteps: 300, poisoned: true)
                try run.recover()
            } catch {
                return XCTFail("\(error) — rerun with RAFT_HOSTILE_SEED=\(seed)")
            }
            for (r, n) in run.refusals { refusals[r, default: 0] += n }
        }
        for r in MessageRejection.allCases {
            XCTAssertGreaterThan(refusals[r] ?? 0, 0, "no hostile message was refused as \(r.reason)")
        }
        print("raft hostile (detectable): \(seeds.count) seeds, refused \(refusals)")
    }

    /// Random messages from anyone (terms 0/max/huge, indexes beyond the log,
    /// random hints and commits, unknown senders), many of them plausible
    /// forgeries that no unauthenticated Raft can tell from a peer's: the core
    /// must never trap nor break its own invariants (the harness checks the
    /// Ready contract and apply order), and the network must settle (no
    /// append/reject loop). Safety against forgeries needs authenticated peers.
    func testRandomHostileTrafficNeverTraps() throws {
        var refusals: [MessageRejection: Int] = [:]
        var stepped = 0
        let seeds = seeds(default: 40)
        for seed in seeds {
            let run = HostileRun(seed: seed)
            do {
                try run.run(hostileSteps: 300, poisoned: false)
            } catch {
                return XCTFail("\(error) — rerun with RAFT_HOSTILE_SEED=\(seed)")
            }
            for (r, n) in run.refusals { refusals[r, default: 0] += n }
            stepped += run.hostileStepped
        }
        XCTAssertGreaterThan(refusals.values.reduce(0, +), 0)
        XCTAssertGreaterThan(stepped, 0, "some hostile messages were plausible enough to be stepped")
        print("raft hostile (random): \(seeds.count) seeds, refused \(refusals), stepped \(stepped)")
    }
}

/// One seeded run: a live 3-node cluster with honest traffic, into which a
/// generator steps hostile messages; then the hostile traffic stops and the
/// cluster must elect a leader and commit a proposal on every node.
final class HostileRun {
    let seed: UInt64
    var rng: TestRNG
    let cluster = Cluster(size: 3)
    var leaderOfTerm: [UInt64: NodeID] = [:]
    var refusals: [MessageRejection: Int] = [:]
    var hostileStepped = 0

    init(seed: UInt64) {
        self.seed = seed
        rng = TestRNG(seed: seed)
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    func pick<T>(_ values: [T]) -> T { values.randomElement(using: &rng)! }

    /// A term drawn around the cluster's, and at the edges.
    func term(near t: UInt64) -> UInt64 {
        pick([
            0, t, t, t, t &+ 1, t &- 1, t &+ 2, t &+ 1000, RaftNode.maxTerm, UInt64.max, UInt64.max - 1,
            1 << 63, rng.next(), RaftNode.freeTermLimit - 1, RaftNode.freeTermLimit, RaftNode.maxTerm - 1,
        ])
    }

    /// An index drawn around the log, beyond it, and at the edges.
    func index(near last: UInt64) -> UInt64 {
        pick([
            0, 1, last, last, last &- 1, last &+ 1, last &+ 2, last &+ 1000, 1 << 40, RaftNode.maxIndex,
            RaftNode.maxIndex + 1, UInt64.max, UInt64.max - 1, rng.next(),
        ])
    }

    /// A random message for node `target` (rarely addressed elsewhere).
    func hostileMessage() -> (message: Message, target: NodeID) {
        let to = pick(cluster.upIDs)
        let node = cluster[to]
        let from = pick([1, 2, 3, 1, 2, 3, 4, 0, UInt64.max])
        let kind = pick(MessageKind.allCases)
        let t = term(near: node.term)
        let last = node.lastIndex
        var m = Message(
            kind: kind, from: from, to: rng.chance(0.97) ? to : pick([1, 2, 3, 0]), term: t,
            logTerm: rng.chance(0.5) ? min(t, node.lastTerm) : term(near: node.lastTerm),
            index: index(near: last), commit: index(near: node.commitIndex), reject: rng.chance(0.5),
            rejectHint: index(near: last), leaseTick: pick([0, 1, node.ticks, node.ticks + 1, node.ticks + 2, .max]),
            transfer: kind == .vote && rng.chance(0.3))
        switch kind {
        case .append where rng.chance(0.7):
            // Consecutive entries after `index`, terms between logTerm and term:
            // well-formed, so they reach the follower's log checks.
            let count = Int.random(in: 0...4, using: &rng)
            var entryTerm = m.logTerm
            for k in 0..<count {
                let (entryIndex, overflow) = m.index.addingReportingOverflow(UInt64(k) + 1)
                if overflow { break }
                if entryTerm < m.term && rng.chance(0.3) { entryTerm += 1 }
                m.entries.append(Entry(index: entryIndex, term: min(entryTerm, m.term), data: [UInt8(k)]))
            }
        case .snapshot:
            let sTerm =
                rng.chance(0.8) ? min(m.term, node.lastTerm + UInt64.random(in: 0...1, using: &rng)) : rng.next()
            m.snapshot = Snapshot(index: index(near: last), term: sTerm, data: hashBytes(rng.next()))
        default:
            break
        }
        return (m, to)
    }

    /// A message with exactly one field the checks must catch, and the reason expected.
    func poisonedMessage() -> (message: Message, target: NodeID, expected: MessageRejection) {
        let to = pick(cluster.upIDs)
        let node = cluster[to]
        let others = cluster.ids.filter { $0 != to }
        let leader = node.leader
        let third = others.first { $0 != leader } ?? others[0]
        var m = Message(kind: .heartbeat, from: pick(others), to: to, term: node.term)
        let poison = pick(MessageRejection.allCases)
        switch poison {
        case .secondLeader where leader != noNode && leader != to:
            m.kind = pick([.heartbeat, .append])
            m.from = third
            m.logTerm = min(node.term, node.lastTerm)
            m.index = node.lastIndex
        case .secondLeader where node.role == .leader:
            m.kind = pick([.heartbeat, .append])
        case .commitBeyondLog where leader != noNode && leader != to:
            m.from = leader
            m.commit = node.lastIndex + 1 + UInt64.random(in: 0...(1 << 50), using: &rng)
        case .indexAbsurd where leader != noNode && leader != to:
            m.from = leader
            m.kind = pick([.append, .snapshot])
            let index = pick([RaftNode.maxIndex, RaftNode.maxIndex + 1, UInt64.max, UInt64.max - 8])
            if m.kind == .append {
                m.index = index
            } else {
                m.snapshot = Snapshot(index: index, term: max(1, node.lastTerm), data: [1])
            }
        case .indexBeyondLog where node.role == .leader:
            m.kind = .appendResponse
            m.index = node.lastIndex + 1 + UInt64.random(in: 0...(1 << 50), using: &rng)
        case .hintBeyondLog where node.role == .leader:
            m.kind = .appendResponse
            m.reject = true
            m.index = UInt64.random(in: 0...node.lastIndex, using: &rng)
            m.rejectHint = pick([m.index + 1, UInt64.max, node.lastIndex + 5])
            m.logTerm = pick([0, node.term])
        case .timeoutNowNotFromLeader where leader != noNode && leader != to:
            m.kind = .timeoutNow
            m.from = third
        case .termJump:
            // A transfer vote is never sticky; its term is two or more steps into the high range.
            m.kind = .vote
            m.transfer = true
            m.term = max(node.term, RaftNode.freeTermLimit - 1) + 2 + UInt64.random(in: 0...(1 << 40), using: &rng)
            m.logTerm = node.lastTerm
            m.index = node.lastIndex
        case .badSnapshot:
            m.kind = .snapshot
            m.term = max(1, node.term)
            m.snapshot = Snapshot(index: node.lastIndex + 1, term: 1, data: [1, 2, 3])  // not 8 bytes: refused
        case .badConfigEntry:
            // A configuration entry that is not a well-formed change (or a
            // snapshot with an unusable voter set), from any member.
            m.term = max(1, node.term)
            let duplicate = [Member(id: 4), Member(id: 4)]
            if rng.chance(0.8) {
                m.kind = .append
                m.logTerm = min(m.term, node.lastTerm)
                m.index = node.lastIndex
                let data = pick([
                    [], [1, 1, 9], ConfigChange(kind: .addVoter, node: 4, members: duplicate).encoded(),
                    ConfigChange(kind: .removeVoter, node: 1, members: []).encoded(),
                ])
                m.entries = [Entry(index: node.lastIndex + 1, term: m.term, kind: .config, data: data)]
            } else {
                m.kind = .snapshot
                m.snapshot = Snapshot(index: node.lastIndex + 1, term: 1, data: hashBytes(1), members: duplicate)
            }
        case .foreignVoterSet:
            // A snapshot whose voter set names no node the target knows (a
            // forged `{evil}`, issue 20), even from its live leader.
            m.kind = .snapshot
            m.term = max(1, node.term)
            if leader != noNode && leader != to { m.from = leader }
            let strangers = [Member(id: 99), Member(id: UInt64.max)]
            m.snapshot = Snapshot(
                index: node.lastIndex + 1, term: 1, data: hashBytes(1),
                members: rng.chance(0.5) ? [strangers[0]] : strangers)
        case .misaddressed:
            m.to = pick(others + [0])
        case .unknownSender where node.ticksSinceLeaderContact < node.config.electionTicks:
            // Refused while the node follows (or is) a live leader.
            m.from = pick([4, 99, UInt64.max, noNode])
            m.kind = pick([.vote, .preVote])
        case .malformed:
            m.from = to  // a message to itself
        default:
            // termAbsurd, and the cases whose state is not there right now.
            m.kind = pick(MessageKind.allCases.filter { $0 != .snapshot })
            m.term = pick([RaftNode.maxTerm, RaftNode.maxTerm + 1, 1 << 63, UInt64.max, UInt64.max - 1])
            return (m, to, .termAbsurd)
        }
        return (m, to, poison)
    }

    func checkOneLeaderPerTerm() throws {
        for id in cluster.upIDs where cluster[id].role == .leader {
            let t = cluster[id].term
            if let other = leaderOfTerm[t], other != id {
                throw Failure(description: "nodes \(other) and \(id) both lead term \(t)")
            }
            leaderOfTerm[t] = id
            if t >= RaftNode.maxTerm { throw Failure(description: "node \(id) leads the absurd term \(t)") }
            if t > RaftNode.freeTermLimit + 100_000 {
                throw Failure(
                    description: "node \(id) leads term \(t): the high range was not climbed one step at a time")
            }
        }
    }

    /// Honest life (ticks, proposals, delivery) with hostile messages stepped
    /// in: poisoned ones (each must be refused for its reason) or random ones.
    func run(hostileSteps: Int, poisoned: Bool) throws {
        try cluster.electLeader()
        for step in 0..<hostileSteps {
            if rng.chance(0.3), let l = cluster.leader { _ = l.propose([UInt8(truncatingIfNeeded: step)]) }
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let (m, target, expected): (Message, NodeID, MessageRejection?) =
                    poisoned
                    ? poisonedMessage()
                    : {
                        let h = hostileMessage()
                        return (h.message, h.target, nil)
                    }()
                guard let node = cluster.nodes[target] else { continue }
                let outcome = node.step(m)
                if let expected, outcome.rejection != expected {
                    throw Failure(description: "step \(step): expected \(expected.reason), got \(outcome) for \(m)")
                }
                if let r = outcome.rejection { refusals[r, default: 0] += 1 }
                if outcome.wasStepped { hostileStepped += 1 }
                try cluster.process(node.id)
                try checkOneLeaderPerTerm()
            }
            if rng.chance(0.5) { try cluster.tick() } else { try cluster.tick(stabilize: false) }
            try checkOneLeaderPerTerm()
            if cluster.inFlight.count > 10_000 { cluster.inFlight.removeAll() }  // the network drops a flood
        }
        try cluster.stabilize()
    }

    /// The hostile traffic has stopped: the cluster must elect a leader and
    /// commit a proposal on every node.
    func recover() throws {
        var marker: (index: UInt64, term: UInt64)?
        for _ in 0..<600 {
            try cluster.tick()
            try checkOneLeaderPerTerm()
            if marker == nil, let l = cluster.leader, l.hasLease(),
                case .accepted(let index, let term) = l.propose([0xC0])
            {
                marker = (index, term)
                try cluster.stabilize()
            }
            if let m = marker, cluster.ids.allSatisfy({ cluster[$0].appliedIndex >= m.index }) {
                if let bad = cluster.ids.first(where: { !cluster.applied($0).contains([0xC0]) }) {
                    throw Failure(description: "node \(bad) did not apply the proposal")
                }
                return
            }
            if let m = marker, let l = cluster.leader, l.term != m.term {
                marker = nil  // that leader lost office before its proposal committed: propose again
            }
        }
        let state = cluster.ids.map { id in
            let n = cluster[id]
            return
                "\(id): \(n.role) term \(n.term) leader \(n.leader) last \(n.lastIndex)/\(n.lastTerm) commit \(n.commitIndex) applied \(n.appliedIndex) snap \(n.snapshotIndex)"
        }
        throw Failure(
            description: "no proposal committed on every node within 600 ticks after the hostile traffic: "
                + state.joined(separator: "; "))
    }
}
