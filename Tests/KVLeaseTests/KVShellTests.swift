// The KV-mode driver (Sources/PulsePolicy/KVShell.swift) over fake ports:
// what it sends, in what order, and when a holder gives the key up. The
// service (Pulse/KV/KVNode) and the nats-kv simulator run this class; the
// process tests (KVLeaseProcessTests) run it against real servers.
import PulseCore
import PulsePolicy
import XCTest

final class KVShellTests: XCTestCase {
    private let ms: Int64 = 1_000_000
    private let startNs: Int64 = 1_800_000_000_000_000_000

    /// A holder of term 7 whose epoch is applied (revision 8) and which
    /// publishes; the ports hold nothing in flight.
    private func readyHolder() throws -> (KVShell, FakeKVPorts) {
        let ports = FakeKVPorts(wallNs: startNs)
        let beatPorts = ShellBeatPorts(ports)
        ports.beatPorts = beatPorts  // BeatShell holds its ports unowned
        let shape = try TimelineShape(bar: 4, phases: ["beat"])
        let leadership = KVLeadership(
            lease: KVLease(timing: KVLeaseTiming(), owner: "k1 1-2", nowMonoNs: 0),
            timeline: KVLeaseTimeline(flags: shape))
        let beat = BeatShell(
            ports: beatPorts, planner: PlannerConfig(maxLeadNs: 2 * ms, handoffGuardNs: 295 * ms),
            handOverGuardNs: 45 * ms, clusterId: "c1", phases: ["beat"], nodeId: "k1", maxOffsetMs: 250)
        let shell = KVShell(
            ports: ports, leadership: leadership, beat: beat, shape: shape, bootstrapBpm: 120, recordLimitBytes: 4096)
        XCTAssertTrue(beat.leadership === leadership, "the shell hands its leadership to the beat side")
        ports.monoNs = 1 * ms
        shell.tick()
        XCTAssertEqual(ports.leaseOps.map(\.op), [.create])
        ports.answerLease(0, .written(revision: 7))
        XCTAssertEqual(ports.events.first, .acquired(term: 7))
        // The first holder writes the epoch (a create: revision 0).
        let epoch = try XCTUnwrap(ports.writes.first)
        XCTAssertEqual(epoch.lastRevision, 0)
        XCTAssertEqual(KVTimelineRecord.decoded(epoch.value, bar: 4)?.state.epoch.bpm, 120)
        ports.answerWrite(0, .written(revision: 8))
        shell.timelineWatched(KVWatched(revision: 8, value: epoch.value))
        XCTAssertTrue(beat.started)
        XCTAssertTrue(ports.events.contains(.tookOver(term: 7, afterHandOver: false)), "\(ports.events)")
        XCTAssertTrue(shell.leadership.isReadyHolder)
        ports.leaseOps.removeAll()
        ports.writes.removeAll()
        ports.events.removeAll()
        return (shell, ports)
    }

    func testATempoWriteOfUnknownFateMovesTheKeyEvery100msThenGivesTheLeaseUp() throws {
        let (shell, ports) = try readyHolder()
        var answer: String??
        shell.commitTempo(TempoChange(atBeat: 9, bpm: 110), justification: "") { answer = $0 }
        let tempo = try XCTUnwrap(ports.writes.first)
        XCTAssertEqual(tempo.lastRevision, 8)
        XCTAssertEqual(shell.leadership.tempoBarrierBeat, 12, "held until the key moved past revision 8")
        ports.answerWrite(0, .unknown)
        XCTAssertEqual(answer, "outcome_unknown")
        // At once: a term start on the same base (a conflict if the change was stored).
        XCTAssertEqual(ports.writes.count, 2)
        XCTAssertEqual(ports.writes[1].lastRevision, 8)
        XCTAssertEqual(KVTimelineRecord.decoded(ports.writes[1].value, bar: 4)?.state.epoch.bpm, 120)
        // Its answer is lost too: nothing more while it is in flight ...
        var renewals = 0
        func tickTo(_ t: Int64) {
            ports.monoNs = t
            shell.tick()
            while let i = ports.leaseOps.indices.first(where: { ports.leaseOps[$0].done != nil }) {
                renewals += 1
                ports.answerLease(i, .written(revision: 100 + UInt64(renewals)))
            }
        }
        tickTo(ports.monoNs + 150 * ms)
        XCTAssertEqual(ports.writes.count, 2, "one move in flight at a time")
        ports.answerWrite(1, .unknown)
        // ... then again once 100 ms passed since the last one was sent.
        tickTo(ports.monoNs + 20 * ms)
        XCTAssertEqual(ports.writes.count, 3)
        ports.answerWrite(2, .conflict)
        tickTo(ports.monoNs + 20 * ms)
        XCTAssertEqual(ports.writes.count, 3, "not before 100 ms")
        tickTo(ports.monoNs + 100 * ms)
        XCTAssertEqual(ports.writes.count, 4)
        XCTAssertEqual(shell.leadership.tempoBarrierBeat, 12, "nothing watched: still held")
        XCTAssertTrue(shell.holdsLease, "the lease is renewed meanwhile")
        // Never settled within 4 TTLs (1.8 s): the key is given up.
        var t = ports.monoNs
        while t < 2_400 * ms, !ports.events.contains(where: { if case .steppedDown = $0 { true } else { false } }) {
            for i in ports.writes.indices where ports.writes[i].done != nil { ports.answerWrite(i, .unknown) }
            t += 20 * ms
            tickTo(t)
        }
        XCTAssertEqual(ports.rejected["tempo_write_unsettled"], 1)
        guard case .steppedDown(let reason, let term, let revision, let waitedMs)? = ports.events.last else {
            return XCTFail("no step-down: \(ports.events)")
        }
        XCTAssertEqual(reason, "tempo_write_unsettled")
        XCTAssertEqual(term, 7)
        XCTAssertEqual(revision, 8)
        XCTAssertGreaterThan(waitedMs, 1_800)
        XCTAssertLessThan(waitedMs, 1_900)
        XCTAssertFalse(shell.leadership.isHolder)
        // The next tick deletes the key on the last revision renewed.
        ports.monoNs += 20 * ms
        shell.tick()
        XCTAssertEqual(ports.leaseOps.last?.op, .delete(lastRevision: 100 + UInt64(renewals)))
    }

    func testTheWatchSettlesAnUnknownWriteAndStopsTheMoves() throws {
        let (shell, ports) = try readyHolder()
        shell.commitTempo(TempoChange(atBeat: 9, bpm: 110), justification: "") { _ in }
        let tempo = ports.writes[0]
        ports.answerWrite(0, .unknown)
        XCTAssertEqual(ports.writes.count, 2)
        // The change was stored (revision 9): the move conflicts, the watch shows it.
        ports.answerWrite(1, .conflict)
        shell.timelineWatched(KVWatched(revision: 9, value: tempo.value))
        XCTAssertEqual(shell.leadership.tempoBarrierBeat, .max)
        XCTAssertEqual(ports.events.last, .timelineChanged(.tempo(TempoChange(atBeat: 12, bpm: 110))))
        ports.monoNs += 500 * ms
        shell.tick()
        XCTAssertEqual(ports.writes.count, 2, "settled: no more moves")
        XCTAssertNil(ports.rejected["tempo_write_unsettled"])
    }

    func testAHolderThatWasReadyIsNotSteppedDownWhenANewerHolderWrites() throws {
        let (shell, ports) = try readyHolder()
        // Cut from the KV: the renewals go unanswered; meanwhile the key
        // expired and another pulse took it (term 20) and wrote its term
        // start, which the watch delivers once the KV is back.
        let next = try XCTUnwrap(shell.leadership.timeline.termStart(term: 20))
        ports.monoNs += 600 * ms
        shell.tick()
        shell.timelineWatched(KVWatched(revision: 9, value: next.value))
        XCTAssertFalse(shell.leadership.isReadyHolder)
        var t = ports.monoNs
        while t < 4_000 * ms {
            t += 20 * ms
            ports.monoNs = t
            shell.tick()
        }
        // The lease is lost by its renewal (or runs down), not given up as
        // "never ready": the step-down is for a term start that never applied.
        XCTAssertNil(ports.rejected["holder_not_ready"], "\(ports.events)")
        XCTAssertFalse(ports.events.contains { if case .steppedDown = $0 { true } else { false } })
        XCTAssertFalse(shell.holdsLease)
    }

    /// Review of 2026-12-07 evening, finding 12 (in part): a record forged
    /// with a term above the holder's (anyone with write access to the
    /// timeline bucket) made the ready holder not ready for good while its
    /// renewals succeeded. Once a renewal sent after that record succeeded
    /// and its revision reached the record's term, it gives the key up, so
    /// that the next take's revision passes the term.
    func testAHolderWhoseRenewalSucceedsAfterARecordOfAHigherTermGivesTheKeyUp() throws {
        let (shell, ports) = try readyHolder()
        let forged = try XCTUnwrap(shell.leadership.timeline.termStart(term: 30))
        shell.timelineWatched(KVWatched(revision: 9, value: forged.value))
        XCTAssertEqual(shell.leadership.timeline.recordTerm, 30, "a continuation: applied")
        XCTAssertFalse(shell.leadership.isReadyHolder)
        var renewals: UInt64 = 0
        var t = ports.monoNs
        while t < ports.monoNs + 1_000 * ms, shell.leadership.isHolder {
            t += 20 * ms
            ports.monoNs = t
            shell.tick()
            for i in ports.leaseOps.indices where ports.leaseOps[i].done != nil {
                if case .update = ports.leaseOps[i].op {
                    renewals += 1
                    ports.answerLease(i, .written(revision: 9 + renewals))
                }
            }
        }
        XCTAssertEqual(ports.rejected["timeline_term_ahead"], 1, "\(ports.events)")
        XCTAssertFalse(shell.leadership.isHolder)
        guard case .steppedDown("timeline_term_ahead", 7, 9, _)? = ports.events.last else {
            return XCTFail("\(ports.events)")
        }
        // Not before its own revision reached the record's term (30, from 9:
        // 21 renewals): giving up earlier hands the key to a take below it.
        XCTAssertGreaterThanOrEqual(renewals, 21)
        XCTAssertLessThanOrEqual(renewals, 23, "within a renewal or two of reaching it")
        XCTAssertNil(ports.rejected["holder_not_ready"])
    }

    func testAHolderWhoseTermStartNeverAppliesGivesTheKeyUpAfterFourTTLs() throws {
        let ports = FakeKVPorts(wallNs: startNs)
        let shape = try TimelineShape(bar: 4, phases: ["beat"])
        let leadership = KVLeadership(
            lease: KVLease(timing: KVLeaseTiming(), owner: "k2 1-2", nowMonoNs: 0),
            timeline: KVLeaseTimeline(flags: shape))
        let beatPorts = ShellBeatPorts(ports)
        ports.beatPorts = beatPorts
        let beat = BeatShell(
            ports: beatPorts, planner: PlannerConfig(maxLeadNs: 2 * ms, handoffGuardNs: 295 * ms),
            handOverGuardNs: 45 * ms, clusterId: "c1", phases: ["beat"], nodeId: "k2", maxOffsetMs: 250)
        let shell = KVShell(
            ports: ports, leadership: leadership, beat: beat, shape: shape, bootstrapBpm: 120, recordLimitBytes: 4096)
        ports.monoNs = 1 * ms
        shell.tick()
        ports.answerLease(0, .written(revision: 3))
        var renewals: UInt64 = 0
        while ports.monoNs < 2_500 * ms, leadership.isHolder {
            ports.monoNs += 20 * ms
            shell.tick()
            for i in ports.writes.indices where ports.writes[i].done != nil { ports.answerWrite(i, .conflict) }
            for i in ports.leaseOps.indices where ports.leaseOps[i].done != nil {
                if case .update = ports.leaseOps[i].op {
                    renewals += 1
                    ports.answerLease(i, .written(revision: 3 + renewals))
                }
            }
        }
        XCTAssertEqual(ports.rejected["holder_not_ready"], 1)
        XCTAssertFalse(leadership.isHolder)
        XCTAssertGreaterThan(ports.monoNs, 4 * 450 * ms, "not before 4 TTLs")
        XCTAssertLessThan(ports.monoNs, 4 * 450 * ms + 30 * ms)
        // Term starts were retried, at most one in flight, every 100 ms at most.
        XCTAssertGreaterThan(ports.writes.count, 10)
        XCTAssertLessThanOrEqual(ports.writes.count, 19)
        XCTAssertFalse(ports.events.contains { if case .tookOver = $0 { true } else { false } })
    }
}

/// KV ports that record every operation and let the test answer it.
private final class FakeKVPorts: KVPorts {
    var monoNs: Int64 = 0
    var wallNs: Int64
    var leaseOps: [(op: KVLeaseOp, done: ((KVLeaseReply) -> Void)?)] = []
    var writes: [(value: [UInt8], lastRevision: UInt64, done: ((KVWriteReply) -> Void)?)] = []
    var rejected: [String: Int] = [:]
    var events: [KVShellEvent] = []
    var beatPorts: ShellBeatPorts?

    init(wallNs: Int64) { self.wallNs = wallNs }

    func nowMonoNs() -> Int64 { monoNs }
    func nowWallNs() -> Int64 { wallNs + monoNs }
    func lease(_ op: KVLeaseOp, owner: String, marked: Bool, done: @escaping (KVLeaseReply) -> Void) {
        leaseOps.append((op, done))
    }
    func writeTimeline(_ value: [UInt8], lastRevision: UInt64, done: @escaping (KVWriteReply) -> Void) {
        writes.append((value, lastRevision, done))
    }
    func reject(_ reason: String) { rejected[reason, default: 0] += 1 }
    func handle(_ event: KVShellEvent) { events.append(event) }

    func answerLease(_ i: Int, _ reply: KVLeaseReply) {
        let done = leaseOps[i].done
        leaseOps[i].done = nil
        done?(reply)
    }
    func answerWrite(_ i: Int, _ reply: KVWriteReply) {
        let done = writes[i].done
        writes[i].done = nil
        done?(reply)
    }
}

/// Beat ports on the fake KV ports' clocks (no timer, no NATS).
private final class ShellBeatPorts: BeatPorts {
    unowned let kv: FakeKVPorts
    init(_ kv: FakeKVPorts) { self.kv = kv }
    func nowWallNs() -> Int64 { kv.nowWallNs() }
    func nowMonoNs() -> Int64 { kv.nowMonoNs() }
    var natsAttachedMonoNs: Int64? { 0 }
    func armBeat(atWallNs wallNs: Int64, exact: Bool) {}
    func spin(untilWallNs wallNs: Int64, beat: Int64, degraded: Bool) -> Int64? { wallNs }
    func publish(_ frame: UnsafeRawBufferPointer, beat: Int64, targetWallNs: Int64, degraded: Bool) -> Bool { true }
    func dropConnection() {}
    func note(_ note: BeatNote) {}
    func tempoTookEffect(epoch: TempoEpoch, previousBpm: Int64) {}
}
