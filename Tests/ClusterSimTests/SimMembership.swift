// SimMembership.swift — membership changes in the whole-cluster simulator
// (issue #12; on with `SimKnobs.membership`, see ClusterSimMembershipTests).
//
// During the chaos phase the leader replaces nodes as an operator does, one
// single-server change at a time and only once the previous one is
// committed (the Raft core refuses otherwise): it removes a voter other than
// itself (the service answers 409 `is_leader` to that) and adds a fresh node
// — a new id, an empty data dir, started as a joining non-voter with the
// voters in force as its bootstrap configuration (`-join -peers`). The voter
// count moves between n−1, n and n+1 (n = 3 or 5). A removed node is shut
// down for good once its removal is committed on it, or two seconds after
// the removal is seen committed anywhere (it may never hear of it); in a
// third of the removals the node is stopped first (the runbook's order). A
// joining node whose addition was lost waits and is added by a later change.
//
// The committed configurations are an oracle like the committed timeline:
// every node that commits an index agrees on the change there, and each is
// a single-server step from the one before (`config_changes`).
import PulseCore
import PulsePolicy
import Raft

/// What the simulator knows about membership (committed, so global).
struct MembershipState {
    /// The latest committed voter set and its index (0: the bootstrap set).
    var voters: [NodeID]
    var votersIndex: UInt64 = 0
    /// Every committed change, by index.
    var committed: [UInt64: ConfigChange] = [:]
    /// Every id that was a voter in a committed configuration.
    var everVoters: Set<NodeID>
    /// Nodes shut down for good (by index): never restarted.
    var retired: Set<Int> = []
    /// Removed nodes still running: node index → true time the removal was seen committed.
    var removedSince: [Int: Int64] = [:]
    /// A fresh node started to join and not yet a committed voter.
    var joiner: Int?
    /// Degraded frames of one index from a voter and a removed node still
    /// running unaware of its removal, both heard (not a violation: see
    /// `Simulation.serverReceives`).
    var duplicatesWithRemoved = 0

    init(voters: [NodeID]) {
        self.voters = voters
        everVoters = Set(voters)
    }
}

extension Simulation {
    /// The nodes that are still machines (not shut down for good).
    var machines: [SimNode] { nodes.filter { !membership.retired.contains($0.index) } }

    /// Every 100 ms: retire removed nodes; during chaos, maybe start a change.
    func membershipTick() {
        at(now + 100_000_000, always: true) { $0.membershipTick() }
        retireRemoved()
        if chaosOn && memberRng.chance(knobs.replaceRate * 0.1) { changeMembership() }
    }

    /// The leader of the highest term that leads now, if any.
    var currentLeader: SimNode? {
        nodes.filter { $0.up && $0.core.isLeader }.max { $0.core.raft.term < $1.core.raft.term }
    }

    /// One single-server step towards replacing a node (see the file header).
    func changeMembership() {
        guard let l = currentLeader, !l.stalled(now), l.core.raft.role == .leader, l.core.appliedTermStart,
            l.core.raft.configIndex <= l.core.raft.commitIndex
        else { return }
        let current = l.core.voters
        let target = knobs.nodes
        let add = current.count < target || (current.count == target && memberRng.chance(0.5))
        let change: ConfigChange
        var stopFirst: SimNode?
        if add {
            guard current.count < Member.maxVoters else { return }
            let j: SimNode
            if let i = membership.joiner {
                j = nodes[i]
            } else {
                guard nodes.count < 60 else { return }  // link keys hold 64 nodes
                j = startJoiner(voters: current, near: l)
                membership.joiner = j.index
            }
            guard !current.contains(j.id) else { return }
            change = ConfigChange(kind: .addVoter, node: j.id, members: (current + [j.id]).map { Member(id: $0) })
        } else {
            let others = current.filter { $0 != l.id }
            guard !others.isEmpty else { return }
            // A voter already stopped (its removal was lost) goes first.
            let dead = others.filter { membership.retired.contains(Int($0) - 1) }
            let x = dead.first ?? memberRng.pick(others)
            change = ConfigChange(
                kind: .removeVoter, node: x, members: current.filter { $0 != x }.map { Member(id: $0) })
            if dead.isEmpty && memberRng.chance(1.0 / 3) { stopFirst = nodes[Int(x) - 1] }
        }
        let result = l.shell.proposeMembership(
            add: change.kind == .addVoter ? Member(id: change.node) : nil,
            remove: change.kind == .removeVoter ? change.node : nil, context: { _ in nil }, done: { _ in })
        trace("n\(l.id): proposes \(change.kind) n\(change.node) → \(change.members.map(\.id)): \(result)")
        guard case .accepted = result else {
            // Only a full window of uncommitted entries may refuse here.
            if result != .pending {
                fail(.configChanges, "leader \(l.id) refused \(change.kind) of \(change.node): \(result)")
            }
            return
        }
        if let s = stopFirst { shutDown(s) }
    }

    /// A new machine with an empty data dir, started to join with `voters`.
    func startJoiner(voters: [NodeID], near l: SimNode) -> SimNode {
        let k = knobs
        let ppb = memberRng.range(-k.ppmMax * 1000, k.ppmMax * 1000)
        let monoBase = memberRng.range(1_000_000_000_000, 2_000_000_000_000)
        let half = k.maxOffsetNs / 2 - 1_000_000
        let offset = memberRng.range(-min(k.offsetMaxNs, half), min(k.offsetMaxNs, half))
        let clock = NodeClock(ppb: ppb, monoBase: monoBase, wallOffsetNs: Self.wallBase - monoBase + offset)
        let n = SimNode(
            index: nodes.count, clock: clock, planner: plannerConfig, diskSeed: seed ^ UInt64(nodes.count) << 40)
        n.bootVoters = voters
        nodes.append(n)
        raftGroup.append(raftGroup[l.index])
        natsCut.append(false)
        trace("n\(n.id): started to join with voters \(voters)")
        boot(n)
        return n
    }

    /// Shuts a node down for good (its restart, if scheduled, never happens).
    func shutDown(_ n: SimNode) {
        trace("n\(n.id): shut down for good")
        membership.retired.insert(n.index)
        membership.removedSince[n.index] = nil
        if membership.joiner == n.index { membership.joiner = nil }
        n.up = false
        n.gen += 1
        n.link.gen += 1
        n.link.connected = false
        n.link.kernelQueue = []
        n.link.serverQueue = []
    }

    /// Shuts down removed nodes once their removal is committed on them, or
    /// two seconds after it was seen committed.
    func retireRemoved() {
        let voters = Set(membership.voters)
        for n in machines where !voters.contains(n.id) && membership.everVoters.contains(n.id) {
            let since = membership.removedSince[n.index] ?? now
            membership.removedSince[n.index] = since
            let knowsIt = n.up && !n.core.raft.isVoter && n.core.raft.configIndex <= n.core.raft.commitIndex
            if knowsIt || now - since >= 2_000_000_000 { shutDown(n) }
        }
        // A joiner that became a voter is a member (never added again, even once removed).
        if let j = membership.joiner, membership.everVoters.contains(nodes[j].id) { membership.joiner = nil }
    }

    /// The oracle of committed configurations (see the file header).
    func configurationCommitted(_ change: ConfigChange, index: UInt64, by n: SimNode) {
        trace("n\(n.id): committed \(change.kind) n\(change.node) at \(index) → \(change.members.map(\.id))")
        if let known = membership.committed[index] {
            if known != change { fail(.configChanges, "node \(n.id) committed \(change) at \(index), others \(known)") }
            return
        }
        membership.committed[index] = change
        count(.configChanges)
        guard index > membership.votersIndex else {
            fail(.configChanges, "configuration at \(index) committed after \(membership.votersIndex)")
            return
        }
        if !change.isSingleStep(from: membership.voters) {
            fail(.configChanges, "change at \(index) is not one step from \(membership.voters): \(change)")
        }
        membership.voters = change.members.map(\.id)
        membership.votersIndex = index
        membership.everVoters.formUnion(membership.voters)
    }
}
