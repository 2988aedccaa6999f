// When a degraded nats-kv pulse may take its turns (issue 21; the
// 100,000-seed run's seeds 20229, 42853 and 48489): a holder's frames are
// contact, a reattached or stalled pulse listens first, a changed ranking
// settles, and the pulses' reports make the ranking converge
// (Sources/PulsePolicy/KVLeaseLeadership.swift, KVLeasePeers.swift). The
// last test drives the service's path: BeatShell.hear and its attach notice.
import PulseCore
import PulsePolicy
import XCTest

final class KVLeaseDegradedTurnTests: XCTestCase {
    private let ms: Int64 = 1_000_000
    private let periodNs: Int64 = 500_000_000  // 120 bpm
    private let startNs = KVLeaseFixture.startNs

    /// Node `id`, alone and degraded at 1,560 ms (no KV answer, no holder watched).
    private func degradedNode(_ id: String) throws -> KVLeadership {
        let n = try KVLeaseFixture.node(id)
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 560 * ms), .none)
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 1_560 * ms), .entered)
        return n
    }

    private func takesTurn(_ n: KVLeadership, at t: Int64, periodNs: Int64? = nil) -> Bool {
        if case .degraded = n.publishMode(nowMonoNs: t, periodNs: periodNs ?? self.periodNs) { return true }
        return false
    }

    func testAHoldersFrameIsContactAndStopsTheTurnsAtOnce() throws {
        let n = try degradedNode("k2")
        XCTAssertTrue(takesTurn(n, at: 1_600 * ms))
        // Seed 20229: a holder's frame heard (its lease still runs; the
        // watch is cut off): no turn from this instant, degradation left at
        // the next update, and re-entered only a TTL and a second later.
        n.leaderFrameHeard(nowMonoNs: 1_700 * ms)
        XCTAssertFalse(takesTurn(n, at: 1_700 * ms), "no turn beside a live holder")
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 1_720 * ms), .left)
        XCTAssertEqual(n.publishMode(nowMonoNs: 1_720 * ms, periodNs: periodNs), .follower)
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 2_160 * ms), .none, "a TTL: leaderless from here")
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 3_100 * ms), .none)
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 3_160 * ms), .entered)
        XCTAssertTrue(takesTurn(n, at: 3_160 * ms), "two periods after the last frame")
        // At 20 bpm (3 s) the holder's frames are further apart than the
        // re-entry: degraded again, but no turn within two periods of a frame.
        n.leaderFrameHeard(nowMonoNs: 4_000 * ms)
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 4_020 * ms), .left)
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 4_500 * ms), .none)
        XCTAssertEqual(n.updateDegradation(nowMonoNs: 5_500 * ms), .entered)
        XCTAssertFalse(takesTurn(n, at: 9_999 * ms, periodNs: 3_000 * ms))
        XCTAssertTrue(takesTurn(n, at: 10_000 * ms, periodNs: 3_000 * ms))
    }

    func testAReattachedSubjectListensBeforeTheTurns() throws {
        let n = try degradedNode("k2")
        // Seed 42853: cut off from NATS, degraded meanwhile, back 27 ms
        // before its turn, which the holder published in the same instant.
        n.subjectReconnected(atMonoNs: 2_000 * ms)
        XCTAssertFalse(takesTurn(n, at: 2_000 * ms))
        XCTAssertFalse(takesTurn(n, at: 2_999 * ms), "two periods of 500 ms")
        XCTAssertTrue(takesTurn(n, at: 3_000 * ms))
        // At 600 bpm the wait is KVLeasePeers.settleNs (the gossip's), not 200 ms.
        n.subjectReconnected(atMonoNs: 4_000 * ms)
        XCTAssertFalse(takesTurn(n, at: 4_250 * ms, periodNs: 100 * ms))
        XCTAssertTrue(takesTurn(n, at: 4_000 * ms + KVLeasePeers.settleNs, periodNs: 100 * ms))
        // An older attach reported late does not shorten the wait.
        n.subjectReconnected(atMonoNs: 5_000 * ms)
        n.subjectReconnected(atMonoNs: 4_500 * ms)
        XCTAssertFalse(takesTurn(n, at: 5_500 * ms))
    }

    func testALoopStallIsNoticedOnTheBeatPathAndThenListened() throws {
        let n = try degradedNode("k2")
        n.loopTick(nowMonoNs: 1_600 * ms)
        XCTAssertTrue(takesTurn(n, at: 1_650 * ms))
        // Stopped for 2 s: the beat timer may fire before the lease timer.
        XCTAssertFalse(takesTurn(n, at: 3_600 * ms), "no tick for a stall's length")
        n.loopTick(nowMonoNs: 3_610 * ms)
        XCTAssertEqual(n.listeningSinceMonoNs, 3_610 * ms)
        n.loopTick(nowMonoNs: 4_000 * ms)
        XCTAssertEqual(n.listeningSinceMonoNs, 4_000 * ms, "390 ms between two ticks is a stall too")
        for t in stride(from: 4_020 * ms, through: 4_980 * ms, by: Int64.Stride(20 * ms)) { n.loopTick(nowMonoNs: t) }
        XCTAssertEqual(n.listeningSinceMonoNs, 4_000 * ms, "ticks 20 ms apart are no stall")
        XCTAssertFalse(takesTurn(n, at: 4_990 * ms), "listening for two periods")
        n.loopTick(nowMonoNs: 5_000 * ms)
        XCTAssertTrue(takesTurn(n, at: 5_000 * ms))
    }

    func testARankingChangeSettlesBeforeATurn() throws {
        let n = try degradedNode("k2")
        XCTAssertTrue(takesTurn(n, at: 1_600 * ms))
        n.peers.seen("k1", nowMonoNs: 1_700 * ms)
        n.updateDegradation(nowMonoNs: 1_700 * ms)
        XCTAssertEqual(n.rank, 1)
        XCTAssertFalse(takesTurn(n, at: 1_700 * ms + KVLeasePeers.settleNs - 1))
        XCTAssertTrue(takesTurn(n, at: 1_700 * ms + KVLeasePeers.settleNs))
        // A pulse joining after it moves neither its turn nor its reference:
        // no wait (review of 2026-12-07, F8).
        let joined = 2_100 * ms
        n.peers.seen("k9", nowMonoNs: joined)
        n.updateDegradation(nowMonoNs: joined)
        XCTAssertEqual(n.rank, 1)
        XCTAssertTrue(takesTurn(n, at: joined), "a change below its rank")
        // One that sorts first moves both: it waits again.
        n.peers.seen("k0", nowMonoNs: joined + 10 * ms)
        n.updateDegradation(nowMonoNs: joined + 10 * ms)
        XCTAssertEqual(n.rank, 2)
        XCTAssertFalse(takesTurn(n, at: joined + 10 * ms))
    }

    /// Seed 48489: k3 was stalled while k1 ran and stopped; k2 and k4 kept
    /// k1 for the window, k3 never saw it and ranked itself where k2 was.
    func testReportsMakeTheRankingsConverge() throws {
        var k2 = KVLeasePeers(selfId: "k2")
        var k3 = KVLeasePeers(selfId: "k3")
        k2.seen("k1", nowMonoNs: 100 * ms)
        k2.seen("k4", nowMonoNs: 1_900 * ms)
        k3.seen("k4", nowMonoNs: 2_000 * ms)
        k3.seen("k2", nowMonoNs: 2_000 * ms)
        XCTAssertEqual(k2.members(nowMonoNs: 2_000 * ms).firstIndex(of: "k2"), 1)
        XCTAssertEqual(k3.members(nowMonoNs: 2_000 * ms).firstIndex(of: "k3"), 1, "the same turn as k2's")
        // k2's report, through the wire form, reaches k3 (k3's clock 40 ms ahead: its own ages).
        let text = KVLeasePeers.encodeReport(from: "k2", k2.report(nowMonoNs: 2_000 * ms))
        XCTAssertEqual(text, "k2 1900:k1 100:k4")
        guard case .success(let report) = KVLeasePeers.decodeReport(text) else { return XCTFail("decodes") }
        XCTAssertNil(k3.merge(from: report.from, report.entries, nowMonoNs: 2_040 * ms))
        XCTAssertEqual(k3.members(nowMonoNs: 2_040 * ms), ["k1", "k2", "k3", "k4"])
        XCTAssertEqual(k3.members(nowMonoNs: 2_040 * ms).firstIndex(of: "k3"), 2, "its own turn")
        // k1 leaves both lists at its last sighting plus the window (k2's
        // clock), not a window after the report: gossip never refreshes it.
        XCTAssertEqual(k3.lastSeenMonoNs["k1"], 140 * ms)
        XCTAssertFalse(k3.members(nowMonoNs: 140 * ms + KVLeasePeers.memberWindowNs).contains("k1"))
        // A sighting of k4 older than k3's own does not move it back.
        XCTAssertEqual(k3.lastSeenMonoNs["k4"], 2_000 * ms)
        // An age past the window is no sighting (never brought back).
        var fresh = KVLeasePeers(selfId: "k5")
        fresh.merge(from: "k2", [("k9", KVLeasePeers.memberWindowNs)], nowMonoNs: 70_000 * ms)
        XCTAssertEqual(fresh.members(nowMonoNs: 70_000 * ms), ["k2", "k5"])
        // Itself in a report changes nothing.
        fresh.merge(from: "k2", [("k5", 0)], nowMonoNs: 70_000 * ms)
        XCTAssertEqual(fresh.members(nowMonoNs: 70_000 * ms), ["k2", "k5"])
    }

    func testBadReportsAreRefused() {
        for bad in [
            "", "k1 x:k2", "k1 5:", "k1 -5:k2", "k1 5k2", "k1 60000:k2", " 5:k2",
            "k1 5:" + String(repeating: "x", count: 129), "k1" + String(repeating: " 1:x", count: 65),
            "k1 " + String(repeating: "y", count: KVLeasePeers.maxReportBytes),
        ] {
            guard case .failure(let error) = KVLeasePeers.decodeReport(bad) else {
                XCTFail("refused: \(bad.prefix(40))")
                continue
            }
            XCTAssertEqual(error.reason, "bad_peer_report")
        }
        guard case .success(let ok) = KVLeasePeers.decodeReport("k1") else { return XCTFail("an empty report") }
        XCTAssertEqual(ok.from, "k1")
        XCTAssertTrue(ok.entries.isEmpty)
        // More pulses than the bound: refused when recorded, counted by the caller.
        var peers = KVLeasePeers(selfId: "k0")
        let many = (0...KVLeasePeers.maxPeers).map { (id: "p\($0)", ageNs: Int64(0)) }
        XCTAssertEqual(peers.merge(from: "k1", many, nowMonoNs: 0), "too_many_peers")
    }

    /// The service's path: frames reach the strategy through BeatShell.hear
    /// (a holder's frame, placed or not; not a degraded one, not our own, not
    /// another cluster's) and the subject's attach through its publish mode.
    func testTheBeatShellTellsTheStrategy() throws {
        let holderPorts = FramePorts(wallNs: startNs + 10_000 * ms)
        let holder = try KVLeaseFixture.node("k1")
        let holderShell = shell(holderPorts, nodeId: "k1", leadership: holder)
        let ports = FramePorts(wallNs: startNs + 10_000 * ms)
        let n = try KVLeaseFixture.node("k2")
        let listener = shell(ports, nodeId: "k2", leadership: n)
        let t = try XCTUnwrap(n.committedTimeline)
        var policy = EchoPolicy(clusterId: "c1", publishers: .any, maxTermLead: EchoPolicy.clusterTermLead)

        func frame(_ k: Int64, degraded: Bool, from shell: BeatShell, _ p: FramePorts) throws -> DecodedBeatFrame {
            shell.prepareWindowId(forBeat: k)
            XCTAssertTrue(
                shell.emit(
                    k, t, nowNs: t.instantNs(ofBeat: k), targetWallNs: t.instantNs(ofBeat: k), degraded: degraded))
            return try BeatFrameDecoder.result(p.lastFrame).get()
        }
        // A holder's frame at its instant: accepted, contact.
        ports.monoNs = 7_000 * ms
        let k: Int64 = 21
        XCTAssertEqual(
            listener.hear(
                try frame(k, degraded: false, from: holderShell, holderPorts), wallNs: t.instantNs(ofBeat: k),
                policy: &policy), .accept)
        XCTAssertEqual(n.lastLeaderFrameMonoNs, 7_000 * ms)
        // One it cannot place (heard a bar later: another timeline's index): contact too.
        ports.monoNs = 8_000 * ms
        let unplaced = listener.hear(
            try frame(k + 1, degraded: false, from: holderShell, holderPorts), wallNs: t.instantNs(ofBeat: k + 9),
            policy: &policy)
        XCTAssertNotEqual(unplaced, .accept)
        XCTAssertEqual(n.lastLeaderFrameMonoNs, 8_000 * ms)
        // A degraded frame is no holder's; our own frame is not another's.
        ports.monoNs = 9_000 * ms
        _ = listener.hear(
            try frame(k + 12, degraded: true, from: holderShell, holderPorts), wallNs: t.instantNs(ofBeat: k + 12),
            policy: &policy)
        _ = listener.hear(
            try frame(k + 13, degraded: false, from: listener, ports), wallNs: t.instantNs(ofBeat: k + 13),
            policy: &policy)
        XCTAssertEqual(n.lastLeaderFrameMonoNs, 8_000 * ms)
        // Another cluster's frame says nothing about ours.
        var other = EchoPolicy(clusterId: "c2", publishers: .any, maxTermLead: EchoPolicy.clusterTermLead)
        XCTAssertEqual(
            listener.hear(
                try frame(k + 14, degraded: false, from: holderShell, holderPorts), wallNs: t.instantNs(ofBeat: k + 14),
                policy: &other), .reject(.wrongCluster))
        XCTAssertEqual(n.lastLeaderFrameMonoNs, 8_000 * ms)
        // The subject (re)attached: noticed with the next publish mode.
        ports.attachedMonoNs = 9_500 * ms
        _ = listener.publishMode(t, monoNs: 9_600 * ms)
        XCTAssertEqual(n.listeningSinceMonoNs, 9_500 * ms)
    }

    private func shell(_ ports: FramePorts, nodeId: String, leadership: KVLeadership) -> BeatShell {
        let shell = BeatShell(
            ports: ports, planner: PlannerConfig(maxLeadNs: 2 * ms, handoffGuardNs: 295 * ms),
            handOverGuardNs: 45 * ms, clusterId: "c1", phases: ["beat"], nodeId: nodeId, maxOffsetMs: 250)
        shell.leadership = leadership
        shell.start()
        return shell
    }
}

/// Beat ports that keep the last frame written (no timer, no NATS).
private final class FramePorts: BeatPorts {
    var wallNs: Int64
    var monoNs: Int64 = 0
    var attachedMonoNs: Int64? = 0
    var lastFrame: [UInt8] = []

    init(wallNs: Int64) { self.wallNs = wallNs }

    func nowWallNs() -> Int64 { wallNs }
    func nowMonoNs() -> Int64 { monoNs }
    var natsAttachedMonoNs: Int64? { attachedMonoNs }
    func armBeat(atWallNs wallNs: Int64, exact: Bool) {}
    func spin(untilWallNs wallNs: Int64, beat: Int64, degraded: Bool) -> Int64? { wallNs }
    func publish(_ frame: UnsafeRawBufferPointer, beat: Int64, targetWallNs: Int64, degraded: Bool) -> Bool {
        lastFrame = Array(frame)
        return true
    }
    func dropConnection() {}
    func note(_ note: BeatNote) {}
    func tempoTookEffect(epoch: TempoEpoch, previousBpm: Int64) {}
}
