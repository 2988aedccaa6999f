// SimulatorTests.swift — the seeded simulator: 3- and 5-node clusters of the
// real core over a network that drops, duplicates, reorders and delays
// messages, with partitions and crash-restarts, checking the Raft safety
// properties (and the lease) after every step, then liveness once healed.
//
//   RAFT_SIM_SEEDS=N   run N seeds (default 1500)
//   RAFT_SIM_SEED=S    run only seed S (printed on failure)
//   RAFT_SIM_STEPS=K   chaos steps per seed (default 300)
//   RAFT_SIM_TRACE=1   print each membership change and retirement
//
// With `membership`, the leader adds and removes voters at random
// (single-server changes, one at a time) under the same faults, as an
// operator replaces machines: a new node is started (empty log, the current
// voters as its bootstrap configuration, like `-join -peers`) just before it
// is added, always under a fresh id; a node whose removal is committed is
// shut down for good. The invariants are the same: at most one leader per
// term, committed logs agree, one lease at a time, and liveness once healed
// (on the final voter set).

import Foundation
import XCTest

@testable import Raft

struct SimFailure: Error, CustomStringConvertible {
    var seed: UInt64
    var step: Int
    var what: String
    var description: String {
        "seed \(seed) step \(step): \(what) — rerun with RAFT_SIM_SEED=\(seed)"
    }
}

/// One simulation run. Time is a step: every up node ticks once per step,
/// then the messages due are delivered in random order.
final class Simulation {
    let seed: UInt64
    var rng: TestRNG
    let cluster: Cluster
    let size: Int
    var now = 0
    var step = 0
    /// In-flight messages with the step at which they arrive.
    var network: [(due: Int, message: Message)] = []

    // Fault knobs, drawn from the seed.
    let dropRate: Double
    let duplicateRate: Double
    let maxDelay: Int
    let crashRate: Double
    let partitionRate: Double
    let proposeRate: Double
    /// How often a Ready stays "being persisted" while the node keeps running.
    let holdRate: Double
    var faultsOn = true
    /// Slot in `currentSteps` this run reports to.
    var worker = 0

    // Global knowledge for the invariants.
    var leaderOfTerm: [UInt64: NodeID] = [:]
    /// (index, term) → prefix hash: two logs that share an entry share the prefix.
    var prefixByPosition: [UInt64: [UInt64: UInt64]] = [:]
    /// index → prefix hash of the committed log.
    var committed: [UInt64: UInt64] = [:]
    var committedTerm: [UInt64: UInt64] = [:]
    var maxCommitted: UInt64 = 0
    /// The term in which each node was last seen leading.
    var ledTerm: [NodeID: UInt64] = [:]
    var lastCommit: [NodeID: UInt64] = [:]
    var proposals = 0

    /// Voters are added and removed at random (see the file header).
    let membership: Bool
    /// Node count at the start (the first `size` ids are the voters).
    static let spares = 5
    var configChanges = 0
    var removals = 0
    /// Spare nodes started to join, with the voters they were given.
    var joined: [NodeID: [NodeID]] = [:]
    /// Nodes shut down once their removal committed (never started again).
    var retired: Set<NodeID> = []
    /// Nodes that exist as machines: the initial voters and started spares, not retired.
    func isMachine(_ id: NodeID) -> Bool {
        (id <= UInt64(size) || joined[id] != nil) && !retired.contains(id)
    }

    init(seed: UInt64, steps: Int, membership: Bool = false) {
        self.seed = seed
        self.membership = membership
        rng = TestRNG(seed: seed)
        size = seed % 2 == 0 ? 3 : 5
        dropRate = [0, 0.01, 0.05, 0.2, 0.35].randomElement(using: &rng)!
        duplicateRate = [0, 0.02, 0.1].randomElement(using: &rng)!
        maxDelay = [0, 1, 2, 5].randomElement(using: &rng)!
        crashRate = [0, 0.005, 0.02, 0.05].randomElement(using: &rng)!
        partitionRate = [0, 0.01, 0.03, 0.1].randomElement(using: &rng)!
        proposeRate = [0.05, 0.2, 0.5].randomElement(using: &rng)!
        holdRate = [0, 0, 0.3, 0.7].randomElement(using: &rng)!
        let electionTicks = [5, 10].randomElement(using: &rng)!
        let heartbeatTicks = electionTicks == 10 ? [1, 3].randomElement(using: &rng)! : 1
        let maxEntries = [1, 4, 64].randomElement(using: &rng)!
        let nodeSeed = rng.next()
        let voters = size
        cluster = Cluster(size: size + (membership ? Self.spares : 0)) { id, all in
            Config(
                id: id, voters: id <= UInt64(voters) ? Array(all.prefix(voters)) : all.filter { $0 != id },
                electionTicks: electionTicks, heartbeatTicks: heartbeatTicks,
                randomSeed: nodeSeed &+ id, maxEntriesPerMessage: maxEntries, maxInflightEntries: 64)
        }
        // A spare starts as a joiner: the voters it was given, not itself.
        let base = cluster.configure
        cluster.configure = { [unowned self] id in
            var config = base(id)
            if let voters = self.joined[id] { config.voters = voters }
            return config
        }
        for id in cluster.ids where id > UInt64(size) { cluster.crash(id) }  // not started yet
        cluster.onPersist = { [unowned self] id, e, h in
            if let known = self.prefixByPosition[e.index]?[e.term] {
                if known != h {
                    self.fail("log matching: node \(id) has a different prefix at (\(e.index), \(e.term))")
                }
            } else {
                self.prefixByPosition[e.index, default: [:]][e.term] = h
            }
        }
        cluster.onReady = { [unowned self] id, rd in try self.checkReady(id, rd) }
        cluster.shouldHold = { [unowned self] _ in self.faultsOn && self.rng.chance(self.holdRate) }
        cluster.onApply = { [unowned self] id, index, h in
            guard let c = self.committed[index] else {
                throw self.failure("state machine safety: node \(id) applied \(index), not known committed")
            }
            if c != h {
                throw self.failure("state machine safety: node \(id) applied a different entry at \(index)")
            }
        }
    }

    var pendingFailure: SimFailure? = nil
    func fail(_ what: String) { if pendingFailure == nil { pendingFailure = failure(what) } }
    func failure(_ what: String) -> SimFailure { SimFailure(seed: seed, step: step, what: what) }

    // MARK: Invariants

    func checkReady(_ id: NodeID, _ rd: Ready) throws {
        let s = cluster.storage[id]!
        if let hs = rd.hardState {
            let previous = lastCommit[id] ?? 0
            if hs.commit < previous {
                throw failure("commit index of node \(id) went back \(previous) → \(hs.commit)")
            }
            if hs.commit > previous {
                for i in max(previous + 1, s.snapshotIndex)...hs.commit {
                    guard let h = s.hash(at: i) else {
                        throw failure("node \(id) committed \(i) it does not store")
                    }
                    if let known = committed[i] {
                        if known != h { throw failure("two nodes committed different entries at \(i)") }
                    } else {
                        committed[i] = h
                        committedTerm[i] = s.term(at: i)!
                    }
                }
                maxCommitted = max(maxCommitted, hs.commit)
                lastCommit[id] = hs.commit
            }
        }
    }

    /// A node that just became leader holds every committed entry. (Checked
    /// on its in-memory log right after the election, before it can commit
    /// anything of its own term; same (index, term) means same prefix, which
    /// the log-matching check verifies for every persisted entry.)
    func checkLeaderCompleteness(_ n: RaftNode) throws {
        let k = maxCommitted
        guard k > 0 else { return }
        let snapshot = n.log.snapshot
        if k <= snapshot.index {
            if let t = committedTerm[snapshot.index], t != snapshot.term {
                throw failure(
                    "leader completeness: new leader \(n.id) has a snapshot off the committed log")
            }
        } else if n.log.term(at: k) != committedTerm[k] {
            throw failure(
                "leader completeness: new leader \(n.id) (term \(n.term)) lacks committed entry \(k)")
        }
    }

    func checkState() throws {
        if let f = pendingFailure { throw f }
        var leaseHolders: [RaftNode] = []
        var leaders: [RaftNode] = []
        for id in cluster.ids {
            guard let n = cluster.nodes[id] else { continue }
            if n.role == .leader {
                leaders.append(n)
                if let other = leaderOfTerm[n.term], other != id {
                    throw failure("election safety: \(other) and \(id) both lead term \(n.term)")
                }
                leaderOfTerm[n.term] = id
                if ledTerm[id] != n.term {
                    ledTerm[id] = n.term
                    try checkLeaderCompleteness(n)
                }
                if n.hasLease() { leaseHolders.append(n) }
            } else if n.hasLease() {
                throw failure("node \(id) holds a lease but is not leader")
            }
            if n.commitIndex < (lastCommit[id] ?? 0) && n.hasReady == false {
                throw failure("node \(id) commit \(n.commitIndex) below what it reported")
            }
        }
        if leaseHolders.count > 1 { throw failure("two nodes hold a lease") }
        if let holder = leaseHolders.first, let newer = leaders.first(where: { $0.term > holder.term }) {
            throw failure(
                "node \(holder.id) holds a lease in term \(holder.term) while \(newer.id) leads term \(newer.term)"
            )
        }
    }

    /// The core's checks against hostile messages must never refuse what an
    /// honest peer sends. The one exception: a TimeoutNow that reaches a target
    /// which restarted since it acknowledged the leader (it does not know the
    /// leader yet, so it refuses; the transfer then times out).
    func checkHonestTrafficAccepted() throws {
        // With membership changes, a node outside a voter set (removed, or
        // not yet told it was added) is refused by those who know the set.
        for (m, rejection) in cluster.refusals
        where rejection != .timeoutNowNotFromLeader && !(membership && rejection == .unknownSender) {
            throw failure("node \(m.to) refused an honest message (\(rejection.reason)): \(m)")
        }
        cluster.refusals.removeAll()
    }

    // MARK: Driving

    func send(_ messages: [Message]) {
        for m in messages {
            if faultsOn && rng.chance(dropRate) { continue }
            let delay = maxDelay == 0 ? 0 : Int.random(in: 0...maxDelay, using: &rng)
            network.append((now + delay, m))
            if faultsOn && rng.chance(duplicateRate) {
                network.append((now + Int.random(in: 0...maxDelay + 2, using: &rng), m))
            }
        }
    }

    func flushOutbox() {
        let out = cluster.inFlight
        cluster.inFlight = []
        send(out)
    }

    func deliverDue() throws {
        var rounds = 0
        while true {
            var due: [Message] = []
            var rest: [(due: Int, message: Message)] = []
            for item in network {
                if item.due <= now { due.append(item.message) } else { rest.append(item) }
            }
            if due.isEmpty { return }
            network = rest
            due.shuffle(using: &rng)
            for var m in due {
                if rng.chance(0.05) {
                    // Through the wire format now and then.
                    m = try Message.decode(m.encoded()[...])
                }
                try cluster.deliver(m)
                try checkHonestTrafficAccepted()
                flushOutbox()
                try checkState()
            }
            rounds += 1
            if rounds > 1000 { throw failure("message storm within one step") }
        }
    }

    func chaos() throws {
        for id in cluster.ids where cluster.held[id] != nil && rng.chance(0.5) {
            try cluster.completeHeld(id)
            flushOutbox()
        }
        let up = cluster.upIDs
        if rng.chance(crashRate) && up.count > 0 {
            let victim = up.randomElement(using: &rng)!
            cluster.crash(victim)
        }
        let down = cluster.ids.filter { !cluster.isUp($0) && isMachine($0) }
        if !down.isEmpty && rng.chance(0.05) {
            try cluster.restart(down.randomElement(using: &rng)!)
            try cluster.processAll()
            flushOutbox()
        }
        if rng.chance(partitionRate) {
            if cluster.cut.isEmpty {
                let shuffled = cluster.ids.shuffled(using: &rng)
                let k = Int.random(in: 1...(size / 2), using: &rng)
                cluster.partition([Array(shuffled[..<k]), Array(shuffled[k...])])
            } else {
                cluster.heal()
            }
        }
        if let l = cluster.leader, rng.chance(0.01) {
            let target = cluster.ids.filter { $0 != l.id }.randomElement(using: &rng)!
            l.transferLeadership(to: target)
        }
        if rng.chance(0.02), let id = cluster.upIDs.randomElement(using: &rng) {
            cluster.compact(id)
        }
        if membership && rng.chance(0.04) { try changeMembership() }
        if membership { retireRemoved() }
    }

    /// The leader adds a new node or removes a voter (possibly itself).
    func changeMembership() throws {
        guard let l = cluster.leader else { return }
        let current = l.members.map(\.id)
        let fresh = cluster.ids.filter { $0 > UInt64(size) && joined[$0] == nil }
        let add = !fresh.isEmpty && current.count < Member.maxVoters && (current.count == 1 || rng.chance(0.5))
        if !add && current.count == 1 { return }
        let node = add ? fresh[0] : current.randomElement(using: &rng)!
        let after = add ? current + [node] : current.filter { $0 != node }
        let change = ConfigChange(
            kind: add ? .addVoter : .removeVoter, node: node, members: after.map { Member(id: $0, context: [1]) })
        guard l.configIndex <= l.commitIndex, l.log.term(at: l.commitIndex) == l.term, l.transferTarget == noNode
        else {
            let result = l.proposeConfigChange(change)
            if result != .configChangePending && result != .transferInProgress {
                fail("leader \(l.id) answered \(result) to a change it must refuse")
            }
            return
        }
        if add {
            // A new machine, started to join with the current voters.
            joined[node] = current
            try cluster.restart(node)
            try cluster.processAll()
            flushOutbox()
        }
        guard case .accepted = l.proposeConfigChange(change) else { return fail("leader \(l.id) refused \(change)") }
        configChanges += 1
        if !add { removals += 1 }
        if ProcessInfo.processInfo.environment["RAFT_SIM_TRACE"] != nil {
            print(
                "step \(step): leader \(l.id) t\(l.term) \(add ? "adds" : "removes") \(node) at \(l.lastIndex) → \(after)"
            )
        }
    }

    /// Shuts down every machine outside the leader's committed voter set
    /// (committed and persisted: what the service answers the operator after).
    func retireRemoved() {
        guard let l = cluster.leader, l.configIndex <= cluster.storage[l.id]!.hardState.commit else { return }
        let voters = Set(l.members.map(\.id))
        for id in cluster.ids where isMachine(id) && !voters.contains(id) {
            if ProcessInfo.processInfo.environment["RAFT_SIM_TRACE"] != nil {
                print(
                    "step \(step): retire \(id) (leader \(l.id) t\(l.term) voters \(voters.sorted()) commit \(l.commitIndex))"
                )
            }
            retired.insert(id)
            if cluster.isUp(id) { cluster.crash(id) }
        }
    }

    func propose() {
        guard rng.chance(proposeRate) else { return }
        // Mostly to the leader (that is where proposals succeed), sometimes anywhere.
        let target = rng.chance(0.7) ? cluster.leader?.id : cluster.upIDs.randomElement(using: &rng)
        guard let id = target else { return }
        let data = (0..<Int.random(in: 0...12, using: &rng)).map { _ in
            UInt8.random(in: 0...255, using: &rng)
        }
        if case .accepted = cluster[id].propose(data) { proposals += 1 }
    }

    func runStep() throws {
        step += 1
        now += 1
        currentSteps[worker] = step
        if faultsOn { try chaos() }
        propose()
        for id in cluster.upIDs { cluster[id].tick() }
        try cluster.processAll()
        flushOutbox()
        try checkState()
        try deliverDue()
    }

    func run(steps: Int) throws {
        for _ in 0..<steps { try runStep() }
        // Liveness: heal everything, restart everyone, and require progress.
        faultsOn = false
        for id in cluster.ids { try cluster.completeHeld(id) }
        cluster.heal()
        for id in cluster.ids where !cluster.isUp(id) && (!membership || isMachine(id)) { try cluster.restart(id) }
        try cluster.processAll()
        flushOutbox()
        var marker: (id: NodeID, index: UInt64, term: UInt64)? = nil
        for _ in 0..<400 {
            try runStep()
            if marker == nil, let l = cluster.leader, l.hasLease() {
                if case .accepted(let index, let term) = l.propose([0xEE]) {
                    marker = (l.id, index, term)
                }
                try cluster.processAll()
                flushOutbox()
            }
            if let m = marker, let l = cluster.leader, l.term != m.term {
                marker = nil  // the proposal's leader lost office; propose again
            }
            let voters = cluster.leader.map { $0.members.map(\.id) } ?? cluster.ids
            if let m = marker, voters.allSatisfy({ cluster.machines[$0]!.appliedIndex >= m.index }) {
                // onApply already checked that they all applied the committed entry.
                return
            }
        }
        let states = cluster.ids.map { id -> String in
            guard let n = cluster.nodes[id] else { return "\(id): down\(retired.contains(id) ? " (retired)" : "")" }
            return
                "\(id): \(n.role) t\(n.term) voters \(n.members.map(\.id)) last \(n.lastIndex) commit \(n.commitIndex)"
        }
        throw failure(
            "liveness: no leader committed a proposal on all nodes within 400 healed steps (marker \(String(describing: marker))); \(states.joined(separator: "; "))"
        )
    }
}

/// Which seed and step each worker runs, for the crash handler.
nonisolated(unsafe) let currentSeeds: UnsafeMutablePointer<UInt64> = {
    let p = UnsafeMutablePointer<UInt64>.allocate(capacity: 2)
    p.initialize(repeating: UInt64.max, count: 2)
    return p
}()
nonisolated(unsafe) let currentSteps: UnsafeMutablePointer<Int> = {
    let p = UnsafeMutablePointer<Int>.allocate(capacity: 2)
    p.initialize(repeating: 0, count: 2)
    return p
}()

private func installTrapReporter() {
    let handler: @convention(c) (Int32) -> Void = { sig in
        var text = "\nraft simulator trapped (signal \(sig)); running seeds:"
        for k in 0..<2 where currentSeeds[k] != UInt64.max {
            text += " \(currentSeeds[k]) (step \(currentSteps[k]))"
        }
        text += " — rerun with RAFT_SIM_SEED=<seed>\n"
        _ = text.withCString { write(2, $0, strlen($0)) }
        signal(sig, SIG_DFL)
        raise(sig)
    }
    signal(SIGILL, handler)
    signal(SIGTRAP, handler)
    signal(SIGSEGV, handler)
}

final class FailureBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var failures: [String] = []
    private(set) var steps = 0
    func add(_ s: String) { lock.withLock { failures.append(s) } }
    func count(_ n: Int) { lock.withLock { steps += n } }
}

final class SimulatorTests: XCTestCase {
    func env(_ name: String) -> Int? { ProcessInfo.processInfo.environment[name].flatMap { Int($0) } }

    func testSeededSimulation() {
        runSeeds(membership: false)
    }

    /// The same chaos with voters added and removed at random.
    func testSeededSimulationWithMembershipChanges() {
        runSeeds(membership: true, defaultSeeds: 600)
    }

    func runSeeds(membership: Bool, defaultSeeds: Int = 1500) {
        installTrapReporter()
        let steps = env("RAFT_SIM_STEPS") ?? 300
        let seeds: [UInt64]
        if let one = ProcessInfo.processInfo.environment["RAFT_SIM_SEED"].flatMap({ UInt64($0) }) {
            seeds = [one]
        } else {
            seeds = (0..<UInt64(env("RAFT_SIM_SEEDS") ?? defaultSeeds)).map { $0 }
        }
        let box = FailureBox()
        let workers = min(2, seeds.count)
        let started = Date()
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            for k in stride(from: w, to: seeds.count, by: workers) {
                let seed = seeds[k]
                currentSeeds[w] = seed
                let sim = Simulation(seed: seed, steps: steps, membership: membership)
                sim.worker = w
                do {
                    try sim.run(steps: steps)
                } catch {
                    box.add("\(error)")
                }
                box.count(sim.step)
            }
            currentSeeds[w] = UInt64.max
        }
        let seconds = Date().timeIntervalSince(started)
        print(
            "raft simulator\(membership ? " (membership changes)" : ""): \(seeds.count) seeds, \(box.steps) steps in \(String(format: "%.1f", seconds)) s"
        )
        for f in box.failures.prefix(20) { XCTFail(f) }
        XCTAssertTrue(box.failures.isEmpty, "\(box.failures.count) failing seeds")
    }

    /// The simulator must actually exercise faults: elections, crashes,
    /// snapshots and commits all happen across seeds.
    func testSimulatorCoverage() throws {
        var terms: UInt64 = 0
        var commits: UInt64 = 0
        var snapshots = 0
        for seed in 0..<UInt64(30) {
            let sim = Simulation(seed: seed, steps: 300)
            try sim.run(steps: 300)
            terms = max(terms, sim.leaderOfTerm.keys.max() ?? 0)
            commits += sim.maxCommitted
            snapshots += sim.cluster.ids.filter { sim.cluster.storage[$0]!.snapshotIndex > 0 }.count
        }
        XCTAssertGreaterThan(terms, 3)
        XCTAssertGreaterThan(commits, 500)
        XCTAssertGreaterThan(snapshots, 10)
    }

    /// Membership changes actually happen, including removals of the leader.
    func testMembershipSimulatorCoverage() throws {
        var changes = 0
        var removals = 0
        var changedVoters = 0
        for seed in 0..<UInt64(20) {
            let sim = Simulation(seed: seed, steps: 300, membership: true)
            try sim.run(steps: 300)
            changes += sim.configChanges
            removals += sim.removals
            if let l = sim.cluster.leader, l.members.map(\.id) != Array(1...UInt64(sim.size)) { changedVoters += 1 }
        }
        XCTAssertGreaterThan(changes, 40)
        XCTAssertGreaterThan(removals, 10)
        XCTAssertGreaterThan(changedVoters, 5)
    }
}
