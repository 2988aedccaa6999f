// PlannerTests.swift — the pure policy's rules one at a time, without the
// simulator: lateness, the lease re-check after the spin, the hand-over
// guard, the tempo barrier, tick catch-up and the replicated timeline.
import PulseCore
import PulsePolicy
import Raft
import XCTest

final class PlannerTests: XCTestCase {
    let t = Timeline(epoch: TempoEpoch(startBeat: 0, startNs: 1_000_000_000_000, bpm: 120), bar: 4, phaseCount: 1)
    let periodNs: Int64 = 500_000_000
    func planner() -> BeatPlanner {
        BeatPlanner(config: PlannerConfig(maxLeadNs: 2_000_000, handoffGuardNs: 200_000_000))
    }
    func instant(_ k: Int64) -> Int64 { t.instantNs(ofBeat: k) }
    func inputs(_ wall: Int64, _ mode: PublishMode, barrier: Int64 = .max) -> BeatInputs {
        BeatInputs(wallNs: wall, monoNs: wall, mode: mode, natsAttachedMonoNs: 0, tempoBarrierBeat: barrier)
    }

    func testEmitsAtTheInstantAndCountsOldBeatsMissed() {
        var p = planner()
        p.start(timeline: t, wallNs: instant(3) - 10_000_000)
        XCTAssertEqual(p.nextBeat, 3)
        XCTAssertEqual(
            p.plan(inputs(instant(3) - 1_000_000, .single), timeline: t),
            .emit(index: 3, atWallNs: instant(3), degraded: false))
        p.published(3, degraded: false, published: true)
        // Woke 2.6 periods late: beats 4 and 5 missed, 6 is 0.1 period late and still sent.
        let late = instant(6) + periodNs / 10
        XCTAssertEqual(
            p.plan(inputs(late, .single), timeline: t), .emit(index: 6, atWallNs: instant(6), degraded: false))
        // More than half a period late: missed, never sent.
        p.published(6, degraded: false, published: true)
        XCTAssertEqual(p.plan(inputs(instant(7) + periodNs / 2, .single), timeline: t), .missed(count: 1))
        XCTAssertEqual(p.nextBeat, 8)
    }

    func testLeaseAndLatenessAreCheckedAgainAfterTheSpin() {
        var p = planner()
        p.start(timeline: t, wallNs: instant(2) - 5_000_000)
        let lease = instant(2) + 1_000_000
        XCTAssertEqual(
            p.plan(inputs(instant(2) - 1_000_000, .leader(leaseUntilMonoNs: lease)), timeline: t),
            .emit(index: 2, atWallNs: instant(2), degraded: false))
        XCTAssertTrue(p.confirm(mode: .leader(leaseUntilMonoNs: lease), monoNs: instant(2), wallNs: instant(2)))
        XCTAssertFalse(p.confirm(mode: .leader(leaseUntilMonoNs: lease), monoNs: lease, wallNs: instant(2)))
        XCTAssertFalse(p.confirm(mode: .single, monoNs: 0, wallNs: instant(2) + periodNs / 2))
    }

    /// A forged echo at the next index (anyone may copy a real frame's HLC
    /// suffix onto the subject) must not make the one publisher skip: a
    /// single node or a leader holding its lease emits; a node without the
    /// lease still defers to what the subject shows.
    func testForgedEchoesDoNotSilenceTheOnePublisher() {
        let lease = instant(4) + 10_000_000
        for mode: PublishMode in [.single, .leader(leaseUntilMonoNs: lease)] {
            var p = planner()
            p.start(timeline: t, wallNs: instant(2) - 5_000_000)
            p.observe(index: 3, wallNs: instant(2), fromLeaderElsewhere: false)
            XCTAssertEqual(
                p.plan(inputs(instant(2) - 1_000_000, mode), timeline: t),
                .emit(index: 2, atWallNs: instant(2), degraded: false), "\(mode)")
            p.published(2, degraded: false, published: true)
            XCTAssertEqual(
                p.plan(inputs(instant(3) - 1_000_000, mode), timeline: t),
                .emit(index: 3, atWallNs: instant(3), degraded: false), "\(mode)")
        }
        var lapsed = planner()
        lapsed.start(timeline: t, wallNs: instant(2) - 5_000_000)
        lapsed.observe(index: 2, wallNs: instant(2), fromLeaderElsewhere: false)
        XCTAssertEqual(
            lapsed.plan(inputs(instant(2) - 1_000_000, .leader(leaseUntilMonoNs: 0)), timeline: t), .skip)
    }

    func testLapsedLeaseWithUnechoedFramesDropsTheConnection() {
        var p = planner()
        p.start(timeline: t, wallNs: instant(1) - 5_000_000)
        let lease = instant(1) + 10_000_000
        _ = p.plan(inputs(instant(1) - 1_000_000, .leader(leaseUntilMonoNs: lease)), timeline: t)
        p.published(1, degraded: false, published: true)
        XCTAssertEqual(p.plan(inputs(instant(2) - 1_000_000, .waiting), timeline: t), .dropConnection)
    }

    /// `leaseLapsed` (issue 24) is true exactly at the wake where the lease
    /// held at the previous wake is gone: where a driver whose echoes wait
    /// for the loop's turn (`BeatPorts.catchUp`) must hear them before the
    /// plan. Heard, the lapse drops nothing.
    func testALapsedLeaseIsAnnouncedSoThatWaitingEchoesAreHeardFirst() {
        var p = planner()
        p.start(timeline: t, wallNs: instant(1) - 5_000_000)
        let lease = instant(1) + 10_000_000
        XCTAssertFalse(p.leaseLapsed(.waiting, monoNs: instant(1) - 1_000_000), "no lease held yet")
        _ = p.plan(inputs(instant(1) - 1_000_000, .leader(leaseUntilMonoNs: lease)), timeline: t)
        p.published(1, degraded: false, published: true)
        XCTAssertFalse(p.leaseLapsed(.leader(leaseUntilMonoNs: lease), monoNs: lease - 1), "still held")
        XCTAssertTrue(p.leaseLapsed(.leader(leaseUntilMonoNs: lease), monoNs: lease), "expired")
        XCTAssertTrue(p.leaseLapsed(.waiting, monoNs: instant(2) - 1_000_000), "lost")
        // Beat 1's echo waited in the socket; read now, before the plan.
        p.observe(index: 1, wallNs: instant(2) - 1_000_000, fromLeaderElsewhere: false)
        XCTAssertNotEqual(p.plan(inputs(instant(2) - 1_000_000, .waiting), timeline: t), .dropConnection)
        XCTAssertFalse(p.leaseLapsed(.waiting, monoNs: instant(2)), "announced once per lapse")
    }

    func testNewLeaderPublishesOnlyPastTheHandOverGuard() {
        // Elected 0.1 period after beat 5's instant: e72aafc republished 5 late
        // (its echo was empty); the planner starts after the guard.
        var p = planner()
        p.takeOver(timeline: t, wallNs: instant(5) + periodNs / 10)
        XCTAssertEqual(p.nextBeat, 6)
        p.takeOver(timeline: t, wallNs: instant(6) - 100_000_000)  // 0.1 s before 6: inside the 0.2 s guard
        XCTAssertEqual(p.nextBeat, 7)
    }

    func testTempoBarrierHoldsBeatsOfAnUncommittedChange() {
        var p = planner()
        p.start(timeline: t, wallNs: instant(8) - 5_000_000)
        let mode = PublishMode.leader(leaseUntilMonoNs: .max)
        XCTAssertEqual(
            p.plan(inputs(instant(8) - 1_000_000, mode, barrier: 8), timeline: t),
            .retry(atWallNs: instant(8)))  // retried 1 ms later, until committed or half a period late
        XCTAssertEqual(p.nextBeat, 8)
        XCTAssertEqual(p.plan(inputs(instant(8) + periodNs / 2, mode, barrier: 8), timeline: t), .missed(count: 1))
    }

    func testTickPolicyCatchesUpAndNeverTicksEarly() {
        var ticks = TickPolicy(tickNs: 50, startMonoNs: 1000)
        XCTAssertEqual(ticks.takeDue(nowMonoNs: 1049), 0)
        XCTAssertEqual(ticks.takeDue(nowMonoNs: 1050), 1)
        XCTAssertEqual(ticks.takeDue(nowMonoNs: 1050 + 2000 + 49), 40)  // a stall: 40 at once
        XCTAssertEqual(ticks.lastTickMonoNs, 3050)
        XCTAssertEqual(ticks.leaseDeadline(remainingTicks: 4), 3250)
        XCTAssertEqual(ticks.leaseDeadline(remainingTicks: 0), 0)
    }

    func testReplicatedTimelineFoldsChangesDeterministically() {
        var a = ReplicatedTimeline(bar: 4)
        let t0: Int64 = 1_700_000_000_000_000_000
        XCTAssertEqual(a.apply(.tempo(atBeat: 8, bpm: 130, justification: "")), .ignored("no_epoch"))
        XCTAssertEqual(
            a.apply(.epoch(startBeat: 0, startNs: t0, bpm: 120, bar: 4, phases: nil)),
            .epoch(TempoEpoch(startBeat: 0, startNs: t0, bpm: 120)))
        XCTAssertEqual(
            a.apply(.epoch(startBeat: 0, startNs: 9, bpm: 60, bar: 4, phases: nil)), .ignored("second_epoch"))
        XCTAssertEqual(
            a.apply(.tempo(atBeat: 8, bpm: 130, justification: "x")), .tempo(TempoChange(atBeat: 8, bpm: 130)))
        // Fault 4: a change at or before the pending one's downbeat is placed on the next downbeat after it.
        XCTAssertEqual(
            a.apply(.tempo(atBeat: 8, bpm: 140, justification: "")), .tempo(TempoChange(atBeat: 12, bpm: 140)))
        // Off a downbeat: the next downbeat.
        XCTAssertEqual(
            a.apply(.tempo(atBeat: 17, bpm: 150, justification: "y")), .tempo(TempoChange(atBeat: 20, bpm: 150)))
        XCTAssertEqual(a.timeline?.epoch.startBeat, 12)
        XCTAssertEqual(a.timeline?.pending, TempoChange(atBeat: 20, bpm: 150))
        var b = ReplicatedTimeline(bar: 4)
        let snapshot = try! XCTUnwrap(ReplicatedTimeline.validatedSnapshot(a.encodedState(), bar: 4))
        XCTAssertEqual(
            b.adopt(snapshot), .epoch(TempoEpoch(startBeat: 12, startNs: a.timeline!.epoch.startNs, bpm: 140)))
        XCTAssertEqual(b, a)
        XCTAssertEqual(b.timeline?.instantNs(ofBeat: 24), a.timeline?.instantNs(ofBeat: 24))
        let cmd = ClusterCommand.tempo(atBeat: 4, bpm: 99, justification: "j")
        XCTAssertEqual(ClusterCommand.decoded(cmd.encoded()), cmd)
    }

    /// Fault 4 (found in review): the barrier holds every tempo entry in the
    /// log until it is applied, a leader's replicated to us as well as our
    /// own proposals, so a follower that degrades or is elected while holding
    /// another leader's change publishes no beat at or after its downbeat.
    func testTempoBarrierHoldsEveryUnappliedTempoEntry() {
        var b = TempoBarrier()
        XCTAssertEqual(b.beat, .max)
        let tempo = { (i: UInt64, at: Int64) in
            Entry(index: i, term: 2, data: ClusterCommand.tempo(atBeat: at, bpm: 130, justification: "").encoded())
        }
        // A leader's entries arrive in a Ready: a no-op, a tempo change, garbage.
        b.appended([Entry(index: 5, term: 2), tempo(6, 64), Entry(index: 7, term: 2, data: [0x7b])])
        XCTAssertEqual(b.beat, 64, "a replicated, unapplied change holds the barrier")
        b.proposed(index: 8, atBeat: 72)
        XCTAssertEqual(b.beat, 64)
        // A new leader's batch replaces the log from index 6: the change at 64 is gone.
        b.appended([Entry(index: 6, term: 3)])
        XCTAssertEqual(b.beat, .max, "a replaced tail no longer holds the barrier")
        b.appended([tempo(6, 80), tempo(7, 96)])
        XCTAssertEqual(b.beat, 80)
        b.applied(index: 6)
        XCTAssertEqual(b.beat, 96)
        b.snapshotted(through: 7)
        XCTAssertEqual(b.beat, .max)
    }

    /// Committed entries are input: refused alike on every node, never a trap.
    func testReplicatedTimelineRefusesBadEntries() {
        var a = ReplicatedTimeline(bar: 4)
        XCTAssertEqual(a.apply(Array("not json".utf8)), .refused("does not decode"))
        XCTAssertEqual(
            a.apply(.epoch(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 0, bar: 4, phases: nil)),
            .refused("epoch out of range"))
        XCTAssertEqual(
            a.apply(.epoch(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120, bar: 0, phases: nil)),
            .refused("shape out of range"))
        guard
            case .shapeMismatch(let why) = a.apply(
                .epoch(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120, bar: 8, phases: ["beat"]))
        else { return XCTFail("a bar of 8 on a node with -bar 4 must be a mismatch") }
        XCTAssertTrue(why.contains("-bar 8") && why.contains("-bar 4"), why)
        XCTAssertNil(a.state, "nothing is adopted from refused entries")
        XCTAssertEqual(
            a.apply(.epoch(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120, bar: 4, phases: ["beat"])),
            .epoch(TempoEpoch(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120)))
        XCTAssertEqual(a.apply(.tempo(atBeat: 8, bpm: 0, justification: "")), .refused("tempo change out of range"))
        XCTAssertEqual(
            a.apply(.tempo(atBeat: .max - 1, bpm: 120, justification: "")), .refused("tempo change out of range"))
        XCTAssertNil(a.timeline?.pending)
        XCTAssertNil(ReplicatedTimeline.validatedSnapshot(Array("{}".utf8), bar: 4))
    }

    /// A frame the echo policy refused (another term or timeline) still
    /// marks its index: a degraded node skips that index in its turn, and
    /// the frame does not move its index further (docs/decisions.md).
    func testADegradedTurnSkipsAnIndexAnotherTimelinePublished() {
        let mode = PublishMode.degraded(turnDelayNs: 20_000_000, slotNs: 20_000_000)
        func run(unplaced: Int64?) -> (BeatDecision, Int64) {
            var p = planner()
            p.start(timeline: t, wallNs: instant(6) - 100_000_000)
            if let unplaced { p.noteUnplaced(index: unplaced) }
            let decision = p.plan(inputs(instant(6) + 20_000_000, mode), timeline: t)
            return (decision, p.nextBeat)
        }
        let (control, _) = run(unplaced: nil)
        guard case .emit(index: 6, _, degraded: true) = control else {
            return XCTFail("without the refused frame beat 6 is this node's to publish: \(control)")
        }
        let (decision, next) = run(unplaced: 6)
        XCTAssertEqual(decision, .skip)
        XCTAssertEqual(next, 7, "the refused frame's index is skipped, nothing more")
        XCTAssertEqual(run(unplaced: 9).1, 6, "a refused frame far ahead moves nothing")
    }

    /// Turns order degraded nodes only on one timeline: a node that heard a
    /// publisher on another committed timeline (`noteForeignTimeline`) follows
    /// for two of the longer of the two periods, then takes its turns again;
    /// a leader is not affected (issue 19: seeds 13542, 18889, 38750, 79764).
    func testADegradedNodeYieldsToAPublisherOnAnotherTimeline() {
        let mode = PublishMode.degraded(turnDelayNs: 20_000_000, slotNs: 20_000_000)
        let turn = { (k: Int64) in self.instant(k) + 20_000_000 }
        func started() -> BeatPlanner {
            var p = planner()
            p.start(timeline: t, wallNs: instant(6) - 100_000_000)
            return p
        }
        var control = started()
        guard case .emit(index: 6, _, degraded: true) = control.plan(inputs(turn(6), mode), timeline: t) else {
            return XCTFail("without a foreign frame beat 6 is this node's to publish")
        }
        // Heard 0.3 s before beat 6, at 100 bpm (600 ms, longer than our 500 ms): 1.2 s.
        var p = started()
        let heard = instant(6) - 300_000_000
        p.noteForeignTimeline(wallNs: heard, periodNs: 600_000_000)
        XCTAssertEqual(p.plan(inputs(turn(6), mode), timeline: t), .follow)
        XCTAssertEqual(p.nextBeat, 7, "yielding moves on by one beat, as following does")
        XCTAssertEqual(p.plan(inputs(turn(7), mode), timeline: t), .follow, "0.82 s after it")
        guard case .emit(index: 8, _, degraded: true) = p.plan(inputs(turn(8), mode), timeline: t) else {
            return XCTFail("1.32 s after the foreign frame the node takes its turn again")
        }
        // A faster foreign timeline (100 ms): our own period bounds the wait (1 s).
        var fast = started()
        fast.noteForeignTimeline(wallNs: heard, periodNs: 100_000_000)
        XCTAssertEqual(fast.plan(inputs(turn(6), mode), timeline: t), .follow, "0.32 s after it")
        guard case .emit(index: 8, _, _) = fast.plan(inputs(turn(8), mode), timeline: t) else {
            return XCTFail("1.32 s after it (beat 7 at 0.82 s still yields)")
        }
        // A leader holding its lease is the one publisher: the rule is for degraded turns only.
        var leader = started()
        leader.noteForeignTimeline(wallNs: heard, periodNs: 600_000_000)
        XCTAssertEqual(
            leader.plan(inputs(instant(6) - 1_000_000, .leader(leaseUntilMonoNs: .max)), timeline: t),
            .emit(index: 6, atWallNs: instant(6), degraded: false))
    }

    /// What `BeatShell.hear` takes for another committed timeline: a peer's
    /// frame refused for its index, or at an index near now with another
    /// tempo or deadline; not a frame on this timeline (the turns order
    /// those), nor another cluster's, nor a far index refused for its term
    /// (no arithmetic on it).
    func testTheShellTellsFramesOfAnotherTimeline() {
        let ports = StillPorts(wallNs: instant(6) - 100_000_000)
        let shell = BeatShell(
            ports: ports, planner: PlannerConfig(maxLeadNs: 2_000_000, handoffGuardNs: 200_000_000),
            handOverGuardNs: 50_000_000, clusterId: "c", phases: ["beat"], nodeId: "node-1", maxOffsetMs: 500)
        shell.startLocal(t)
        XCTAssertEqual(shell.nextBeat, 6)
        var policy = EchoPolicy(clusterId: "c", publishers: .any, maxTermLead: EchoPolicy.clusterTermLead)
        let none = shell.lastForeignFrameWallNs
        var at = instant(6) + 30_000_000
        func frame(_ k: Int64, bpm: Int64 = 120, deadlineMs: Int64? = nil, term: UInt64 = 1, cluster: String = "c")
            -> DecodedBeatFrame
        {
            DecodedBeatFrame(
                clusterId: cluster, beatIndex: k, downbeat: false, phase: "beat",
                hlc: HLCStamp(wallMs: at / 1_000_000, counter: 0), hlcSuffix: "de-2",
                deadlineUnixMs: deadlineMs ?? t.deadlineUnixMs(ofBeat: k), tempoBpm: bpm, windowId: "", term: term,
                degraded: true)
        }
        func hear(_ f: DecodedBeatFrame) -> EchoVerdict? {
            at += 1_000_000
            return shell.hear(f, wallNs: at, policy: &policy)
        }
        XCTAssertEqual(hear(frame(6)), .accept)
        XCTAssertEqual(shell.lastForeignFrameWallNs, none, "a peer on this timeline: its turn came first")
        XCTAssertEqual(hear(frame(6, cluster: "other")), .reject(.wrongCluster))
        XCTAssertEqual(hear(frame(0, term: 0)), .reject(.termStale))
        XCTAssertEqual(hear(frame(.max, deadlineMs: 0, term: 0)), .reject(.termStale))
        XCTAssertEqual(shell.lastForeignFrameWallNs, none, "another cluster, a far index: nothing")
        // Accepted (near now) but 132 bpm from beat 6 on: another tempo and deadline.
        let other = Timeline(
            epoch: TempoEpoch(startBeat: 6, startNs: instant(6), bpm: 132), bar: 4, phaseCount: 1)
        XCTAssertEqual(hear(frame(6, bpm: 132, deadlineMs: other.deadlineUnixMs(ofBeat: 6))), .accept)
        XCTAssertEqual(shell.lastForeignFrameWallNs, at)
        let first = at
        XCTAssertEqual(hear(frame(6, deadlineMs: t.deadlineUnixMs(ofBeat: 6) - 1)), .accept)
        XCTAssertGreaterThan(shell.lastForeignFrameWallNs, first, "the same tempo, another deadline")
        at += 10_000_000
        // Index 9 published now (another timeline's deadline near now).
        let nearNowMs = (at + 500_000_000) / 1_000_000
        XCTAssertEqual(hear(frame(9, deadlineMs: nearNowMs)), .reject(.indexAhead))
        XCTAssertEqual(shell.lastForeignFrameWallNs, at, "an index this timeline does not put near now")
        XCTAssertEqual(shell.foreignPeriodNs, 500_000_000, "its own period (120 bpm)")
        // Review of 2026-12-07: what a forged or replayed frame can do.
        let marked = shell.lastForeignFrameWallNs
        XCTAssertEqual(hear(frame(9)), .reject(.indexAhead))
        XCTAssertEqual(shell.lastForeignFrameWallNs, marked, "its deadline 2 s from now: not published now")
        XCTAssertEqual(
            hear(frame(6, bpm: 132, deadlineMs: other.deadlineUnixMs(ofBeat: 6), term: 0)), .reject(.termStale))
        XCTAssertEqual(shell.lastForeignFrameWallNs, marked, "a stale term never silences the higher")
        XCTAssertEqual(hear(frame(9, bpm: 1, deadlineMs: nearNowMs)), .reject(.indexAhead))
        XCTAssertGreaterThan(shell.lastForeignFrameWallNs, marked)
        XCTAssertEqual(shell.foreignPeriodNs, 1_000_000_000, "a 1-bpm frame buys twice our period, not 60 s")
        // A frame of this timeline refused for its index (late after a
        // stall: beat 4 heard at beat 6) is not another timeline.
        let late = shell.lastForeignFrameWallNs
        XCTAssertEqual(hear(frame(4)), .reject(.indexBehind))
        XCTAssertEqual(shell.lastForeignFrameWallNs, late, "a late frame of this timeline")
    }
}

/// Beat ports that stand still: one wall and monotonic time, a NATS link
/// attached at 0, no timer, nothing written (hear-path tests of the shell).
final class StillPorts: BeatPorts {
    let wallNs: Int64
    init(wallNs: Int64) { self.wallNs = wallNs }
    func nowWallNs() -> Int64 { wallNs }
    func nowMonoNs() -> Int64 { wallNs }
    var natsAttachedMonoNs: Int64? { 0 }
    func armBeat(atWallNs wallNs: Int64, exact: Bool) {}
    func spin(untilWallNs wallNs: Int64, beat: Int64, degraded: Bool) -> Int64? { nil }
    func publish(_ frame: UnsafeRawBufferPointer, beat: Int64, targetWallNs: Int64, degraded: Bool) -> Bool { false }
    func dropConnection() {}
    func note(_ note: BeatNote) {}
    func tempoTookEffect(epoch: TempoEpoch, previousBpm: Int64) {}
}
