// ClusterSimTests.swift — runs the whole-cluster simulator over many seeds.
//
//   SIM_SEEDS=N   run N seeds (default 2000)
//   SIM_SEED=S    replay only seed S (printed on failure)
// `make sim SEEDS=N` runs this test and prints one summary line.
import Foundation
import PulsePolicy
import XCTest

final class SimTotals: @unchecked Sendable {
    private let lock = NSLock()
    var failures: [String] = []
    var steps = 0
    var exercised: [Invariant: Int] = [:]
    func add(_ sim: Simulation, _ v: SimViolation?) {
        lock.withLock {
            steps += sim.steps
            for (k, c) in sim.exercised { exercised[k, default: 0] += c }
            if let v { failures.append("\(v)") }
        }
    }
}

final class ClusterSimTests: XCTestCase {
    func env(_ name: String) -> String? { ProcessInfo.processInfo.environment[name] }

    func testSeededClusterSimulation() {
        let seeds: [UInt64]
        if let one = env("SIM_SEED").flatMap({ UInt64($0) }) {
            seeds = [one]
        } else {
            seeds = Array(0..<UInt64(env("SIM_SEEDS").flatMap { Int($0) } ?? 2000))
        }
        // SIM_LEGACY=1,3 runs with those faults of e72aafc put back (to see them fail).
        var faults = LegacyFaults.none
        for f in (env("SIM_LEGACY") ?? "").split(separator: ",") { faults.enable(fault: Int(f) ?? 0) }
        let legacy = faults
        let totals = SimTotals()
        let workers = min(2, seeds.count)
        let started = Date()
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            for k in stride(from: w, to: seeds.count, by: workers) {
                let sim = Simulation(seed: seeds[k], legacy: legacy)
                totals.add(sim, sim.run())
            }
        }
        let seconds = Date().timeIntervalSince(started)
        let counts = Invariant.allCases.map { "\($0.rawValue)=\(totals.exercised[$0] ?? 0)" }.joined(separator: " ")
        print(
            "seeds=\(seeds.count) steps=\(totals.steps) violations=\(totals.failures.count) "
                + "seconds=\(String(format: "%.1f", seconds)) \(counts)")
        for f in totals.failures.prefix(10) { XCTFail(f) }
        for inv in Invariant.allCases where seeds.count >= 200 {
            XCTAssertGreaterThan(totals.exercised[inv] ?? 0, 0, "invariant \(inv.rawValue) never exercised")
        }
    }
}
