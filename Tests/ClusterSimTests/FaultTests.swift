// FaultTests.swift — one simulator test per fault of issue #10, each on the
// seeds and scripted scenarios that showed it (docs/decisions.md keeps the
// history: the logic of commit e72aafc failed each one; the switch that put
// those faults back into production policy is gone with issue #19). Now
// every one of them must pass with the service's own core.
//
// Faults 2, 3 (re-plan) and 6 were found by random seeds (fault 2 seed 4,
// term_monotonic — a deposed leader's queued frames after the heal; fault 3
// seed 122, unique_index; fault 6 seed 6, degraded_no_duplicate). Faults 1,
// 3 (hand-over), 4 and 5 need a precise schedule and are scripted over the
// first scenario seeds (failures when written: fault 1 seed 1 lease_held,
// fault 3 seed 0 unique_index, fault 4 seed 0 tempo_not_retroactive, fault
// 5 seed 0 nodes_converge).
import Foundation
import PulsePolicy
import Raft
import XCTest

final class FaultTests: XCTestCase {
    /// Scenario seeds: 0..<n, or SIM_SEED alone (to replay one with SIM_TRACE=1).
    func scenarioSeeds(_ n: UInt64) -> [UInt64] {
        if let one = ProcessInfo.processInfo.environment["SIM_SEED"].flatMap({ UInt64($0) }) { return [one] }
        return Array(0..<n)
    }

    /// The seeds that showed a fault, replayed: none may fail.
    func seedsPass(fault: Int, _ seeds: [UInt64]) {
        for seed in seeds {
            let v = Simulation(seed: seed).run()
            XCTAssertNil(v, "fault \(fault) seed \(seed): \(v.map { "\($0)" } ?? "")")
        }
    }

    /// Every scenario seed passes `scenario`.
    func scenarioPasses(fault: Int, seeds n: UInt64, _ scenario: (UInt64) -> SimViolation?) {
        for seed in scenarioSeeds(n) {
            let v = scenario(seed)
            XCTAssertNil(v, "fault \(fault) scenario seed \(seed): \(v.map { "\($0)" } ?? "")")
        }
    }

    func testFault2StaleBytes() {
        seedsPass(fault: 2, [4])
    }

    /// Fault 3 (re-plan): after a wall-clock step back, e72aafc's `start`
    /// re-plans from the clock alone and the same node repeats its beat.
    func testFault3ReplanAfterClockStep() {
        seedsPass(fault: 3, [122])
    }

    /// Fault 3 (hand-over): at 12 bpm, half a period (2.5 s) is longer than
    /// a failover. The followers' NATS links reconnect just before beat k,
    /// so their echo misses it; the leader publishes k and crashes. Legacy:
    /// e72aafc's new leader published k again, late, since its echo did not show it.
    func scenarioFault3(seed: UInt64) -> SimViolation? {
        var k = SimKnobs()
        k.randomFaults = false
        k.bpm = 12
        k.chaosNs = 20_000_000_000
        k.settleNs = 16_000_000_000
        let sim = Simulation(seed: seed, knobs: k)
        sim.at(9_000_000_000) { s in
            guard let l = s.leader, let t = l.core.machine.timeline else { return }
            let beat = t.nextBeat(afterNs: Simulation.wallBase + s.now)
            let instantTrue = t.instantNs(ofBeat: beat) - Simulation.wallBase
            s.at(instantTrue - 50_000_000) { s in
                for n in s.nodes where n.index != l.index { s.abortLink(n) }
            }
            s.at(instantTrue + 30_000_000) { s in if l.up { s.crash(l) } }
        }
        return sim.run()
    }

    func testFault3Republishing() {
        scenarioPasses(fault: 3, seeds: 10) { scenarioFault3(seed: $0) }
    }

    /// Fault 4: the leader proposes a tempo change that reaches one
    /// follower (slow disk) and then loses both links. Legacy: it answers
    /// the request "refused" (503) when it steps down, but the follower
    /// holding the entry becomes leader and commits it: the change takes
    /// effect after all (and that leader may publish before applying it).
    func scenarioFault4(seed: UInt64) -> SimViolation? {
        var k = SimKnobs()
        k.randomFaults = false
        k.bpm = 600
        let sim = Simulation(seed: seed, knobs: k)
        var cut: [Int] = []
        sim.at(3_000_000_000) { s in
            guard let l = s.leader else { return }
            let f = s.nodes.filter { $0.index != l.index }
            f[0].storeFixedNs = 300_000_000
            s.cutLinks = [s.linkKey(l.index, f[1].index)]
            s.tempoRequest(l)
            cut = [l.index, f[0].index]
        }
        sim.at(3_020_000_000) { s in if cut.count == 2 { s.cutLinks.insert(s.linkKey(cut[0], cut[1])) } }
        sim.at(4_500_000_000) { s in for n in s.nodes { n.storeFixedNs = nil } }
        sim.at(5_500_000_000) { s in s.cutLinks = [] }
        return sim.run()
    }

    func testFault4TempoAfterItsDownbeat() {
        scenarioPasses(fault: 4, seeds: 10) { scenarioFault4(seed: $0) }
    }

    func testFault6DegradedTurns() {
        seedsPass(fault: 6, [6])
    }

    /// Fault 1: a follower resumes from a stall just longer than an
    /// election timeout (but short enough for the leader's check-quorum),
    /// with the leader's heartbeats in its socket; a rival cannot hear the
    /// leader. Legacy: it acks the heartbeat (renewing the lease), then
    /// counts the missed ticks at once, is no longer sticky and helps a
    /// rival win (or campaigns itself) while the old lease holds; its link
    /// to the leader then flaps, so the old leader publishes after its
    /// successor was elected.
    func scenarioFault1(seed: UInt64) -> SimViolation? {
        var k = SimKnobs()
        k.randomFaults = false
        k.bpm = 600
        let sim = Simulation(seed: seed, knobs: k)
        var cut: (leader: Int, rival: Int)?
        for i in 0..<Int64(12) {
            sim.at(2_000_000_000 + i * 500_000_000) { s in
                guard let l = s.leader else { return }
                if let c = cut, c.leader == l.index {
                    // The rival has not heard the leader for a while: stall the third node.
                    let third = s.nodes.first { $0.index != c.leader && $0.index != c.rival }!
                    let ns = s.rng.range(300_000_000, 380_000_000)
                    s.stall(third, ns: ns)
                    // Right after its wake the link to the leader flaps: the
                    // leader learns of no newer term while its lease runs.
                    s.at(s.now + ns) { s in s.cutLinks.insert(s.linkKey(c.leader, third.index)) }
                    s.at(s.now + ns + 400_000_000) { s in s.cutLinks = [s.linkKey(c.leader, c.rival)] }
                } else {
                    let rival = s.nodes.first { $0.index != l.index }!.index
                    cut = (l.index, rival)
                    s.cutLinks = [s.linkKey(l.index, rival)]
                }
            }
        }
        return sim.run()
    }

    func testFault1LeaseVsTickCatchUp() {
        scenarioPasses(fault: 1, seeds: 30) { scenarioFault1(seed: $0) }
    }

    /// Fault 5: one follower has a slow disk (every save takes 0.6 s) and
    /// its loop stalls for 1.5 s at a time, while tempo entries keep the log
    /// busy and the subject keeps delivering frames into a 2-slot doorway.
    /// Legacy: a store completion posted into the full shared doorway is
    /// lost; that node never finishes its Ready again and stops applying.
    func scenarioFault5(seed: UInt64) -> SimViolation? {
        var k = SimKnobs()
        k.randomFaults = false
        k.bpm = 600
        k.doorwayCapacity = 2
        let sim = Simulation(seed: seed, knobs: k)
        var slow: SimNode?
        sim.at(2_500_000_000) { s in
            guard let l = s.leader else { return }
            slow = s.nodes.first { $0.index != l.index }
            slow?.storeFixedNs = 600_000_000
        }
        for i in 0..<Int64(3) {
            sim.at(3_000_000_000 + i * 1_700_000_000) { s in if let n = slow { s.stall(n, ns: 1_500_000_000) } }
        }
        for i in 0..<Int64(24) {
            sim.at(3_000_000_000 + i * 200_000_000) { s in if let l = s.leader { s.tempoRequest(l) } }
        }
        sim.at(8_000_000_000, always: true) { _ in slow?.storeFixedNs = nil }
        return sim.run()
    }

    func testFault5LostCompletions() {
        scenarioPasses(fault: 5, seeds: 20) { scenarioFault5(seed: $0) }
    }
}
