// PulsePolicy/ClusterCore.swift — owns the cluster policy around the Raft
// core: ticks from monotonic time, the lease deadline, leadership, the
// replicated timeline, tempo proposals and their answers, degradation and
// the publish mode. Pure: the caller passes the time in, persists each Ready
// (`nextReady` → persist → `finish`), sends the messages `finish` returns
// and reads the events it reports. The simulator and (with phase B of issue
// #10) the service drive the same code.
//
// Degradation (fault 6): without a leader for `degradeAfterNs`, nodes keep
// the committed timeline and publish `"degraded":true` frames in turns —
// by rank among the voters (an order every node agrees on), 20 ms apart,
// measured on one reference (the lowest voter's clock), each only within
// half its turn and never half a period after the instant. A node stays
// quiet while it hears a leader's frames. In a double minority partition
// (no majority anywhere, and NATS split too) each NATS side has its own
// degraded publisher, so an index may be published once per side; the
// frames say `degraded`, and a consumer that later hears both sides keeps
// the first (queued frames older than the NATS socket's user timeout are
// dropped by the kernel, never delivered late).
//
// Membership (issue #12): `voters` follows the voter set in force
// (`raft.members`, appended and maybe not committed), as the service's
// ClusterNode does: degraded turns (rank) and the degraded reference (the
// lowest voter) come from it. A node outside the voter set (joining, or
// removed) never degrades and never publishes, and a voter degrades only
// while its voter set in force is committed on it (so nodes that degrade
// agree on the set, except one that never heard of a committed change: a
// removed node still running, which the runbook stops first). While the
// membership never changes, `voters` is the bootstrap list and everything
// is as before.
import PulseCore
import Raft

/// Raft timing in wall units.
public struct ClusterTiming: Sendable {
    public var tickNs: Int64 = 50_000_000
    public var electionTicks = 6
    public var heartbeatTicks = 1
    /// No leader for this long → degradation.
    public var degradeAfterNs: Int64 = 1_000_000_000
    /// Compact the log once this many entries were applied since the last snapshot.
    public var compactEvery: UInt64 = 64
    public init() {}
}

/// The answer to a tempo proposal.
public enum ProposalOutcome: Equatable, Sendable {
    /// Committed at `index` (202).
    case committed(index: UInt64)
    /// Certainly not committed (never appended, or overwritten by another term).
    case refused
    /// The proposer lost leadership: the entry may still commit (202 with
    /// "outcome unknown", never a 503 that could turn out false).
    case unknown
}

/// What happened while finishing a Ready, in order.
public enum ClusterEvent: Equatable, Sendable {
    case applied(AppliedCommand, index: UInt64)
    /// The state machine was replaced by a snapshot through `index`.
    case restored(index: UInt64)
    case leadership(isLeader: Bool, leader: NodeID, term: UInt64)
    case proposal(id: UInt64, ProposalOutcome)
    /// A configuration change committed at `index` (applied in log order).
    case configuration(ConfigChange, index: UInt64)
}

/// One node's cluster policy. Not thread-safe: one loop owns it.
public final class ClusterCore {
    public let id: NodeID
    /// The voter set in force (`raft.members`), refreshed after every call
    /// that may append or truncate a configuration entry.
    public private(set) var voters: [NodeID]
    /// `raft.members` as last synced into `voters`.
    private var syncedMembers: [Member] = []
    public let timing: ClusterTiming
    public let legacy: LegacyFaults
    public let raft: RaftNode
    public private(set) var ticks: TickPolicy
    public private(set) var machine: ReplicatedTimeline
    public private(set) var readyInFlight = false
    public private(set) var leader: NodeID = noNode
    public private(set) var isLeader = false
    public private(set) var leaseUntilMonoNs: Int64 = 0
    /// The index of this leadership's first entry (its no-op); 0 when not leader.
    public private(set) var termStartIndex: UInt64 = 0
    /// Local monotonic time each peer was last heard from (Raft traffic).
    public private(set) var lastHeardMonoNs: [NodeID: Int64] = [:]
    public private(set) var lastLeaderContactMonoNs: Int64 = .min / 2
    /// When this node keeps the timeline itself (the service's policy).
    public private(set) var degradation: DegradationPolicy
    public var degraded: Bool { degradation.degraded }
    /// Per peer: its clock relative to ours.
    public var syncs: [NodeID: ClockSync] = [:]
    /// The last leader followed (legacy degraded reference).
    public private(set) var lastLeader: NodeID = noNode
    /// Uncommitted tempo entries in our log: index → apply beat.
    private var barrier = TempoBarrier()
    /// Proposals waiting for their entry: index → (term, id).
    private var waiting: [UInt64: (term: UInt64, id: UInt64)] = [:]

    public init(
        id: NodeID, voters: [NodeID], timing: ClusterTiming, seed: UInt64, nowMonoNs: Int64, bar: Int,
        hardState: HardState, snapshot: Snapshot?, entries: [Entry], legacy: LegacyFaults = .none
    ) throws {
        self.id = id
        self.voters = voters
        self.timing = timing
        self.legacy = legacy
        let config = Config(
            id: id, voters: voters, electionTicks: timing.electionTicks, heartbeatTicks: timing.heartbeatTicks,
            randomSeed: seed)
        raft = try RaftNode(config: config, hardState: hardState, snapshot: snapshot, entries: entries)
        ticks = TickPolicy(tickNs: timing.tickNs, startMonoNs: nowMonoNs)
        degradation = DegradationPolicy(
            electionNs: Int64(timing.electionTicks) * timing.tickNs, degradeAfterNs: timing.degradeAfterNs)
        machine = ReplicatedTimeline(bar: bar)
        if let snapshot { Self.restore(&machine, snapshot.data) }
        barrier.appended(entries)  // none is applied yet: committed ones are, in the first Ready
        syncVoters()
    }

    /// Follows the voter set in force; a node outside it leaves degradation
    /// at once (it keeps no timeline alone: `updateDegradation`).
    private func syncVoters() {
        guard raft.members != syncedMembers else { return }
        syncedMembers = raft.members
        voters = raft.members.map(\.id)
        if !raft.isVoter { _ = degradation.leave() }
    }

    // MARK: time and messages

    /// The tick timer: delivers every tick that is due.
    public func tick(nowMonoNs: Int64) {
        deliverTicks(nowMonoNs)
        updateDegradation(nowMonoNs)
    }

    private func deliverTicks(_ now: Int64) {
        let due = ticks.takeDue(nowMonoNs: now)
        for _ in 0..<due { raft.tick() }
        refreshLease()
    }

    /// A message from a peer, received at `nowMonoNs`.
    public func step(_ m: Message, nowMonoNs: Int64) {
        // Fault 1: every tick that is due is delivered before the message is
        // stepped, so a stalled follower counts its silence first (see TickPolicy).
        if !legacy.stepBeforeTicks { deliverTicks(nowMonoNs) }
        lastHeardMonoNs[m.from] = nowMonoNs
        if stickyRefuses(m) { return }
        if m.from == leader { lastLeaderContactMonoNs = nowMonoNs }
        raft.step(m)
        syncVoters()  // an append may add or truncate a configuration entry
        refreshLease()
    }

    /// The lease proof's follower side, at every term: a node that heard
    /// from a leader less than `electionTicks` ticks ago ignores (pre-)vote
    /// requests that are not a leadership transfer. The core checks this
    /// only for requests of a higher term; a rejected pre-vote answer from a
    /// newer candidate raises the term first, and the vote request of that
    /// same term was then granted although this node had just acked the old
    /// leader (found by ClusterSimTests, fault-1 scenario seeds 9 and 24).
    private func stickyRefuses(_ m: Message) -> Bool {
        Self.stickyRefuses(m, raft: raft, electionTicks: timing.electionTicks)
    }

    /// The guard above for any driver of a `RaftNode` (the service's
    /// ClusterNode uses it too): true when `m` must not be stepped.
    public static func stickyRefuses(_ m: Message, raft: RaftNode, electionTicks: Int) -> Bool {
        guard m.kind == .vote || m.kind == .preVote, !m.transfer, raft.role != .leader else { return false }
        guard m.from != raft.leader, raft.vote != m.from || m.kind == .preVote else { return false }
        return raft.ticksSinceLeaderContact < electionTicks
    }

    private func refreshLease() {
        leaseUntilMonoNs = ticks.leaseDeadline(remainingTicks: raft.leaseRemainingTicks)
    }

    // MARK: proposals

    /// Proposes `command` as request `requestId`; nil when not appended (refused).
    public func propose(_ command: ClusterCommand, requestId: UInt64) -> UInt64? {
        guard case .accepted(let index, let term) = raft.propose(command.encoded()) else { return nil }
        waiting[index] = (term, requestId)
        if case .tempo(let at, _, _) = command { barrier.proposed(index: index, atBeat: at) }
        return index
    }

    /// Proposes a single-server membership change (leader only; see
    /// Raft/Membership.swift): the Raft core's answer, unchanged. It takes
    /// effect here at once (appended), and on each node when it appends it.
    public func proposeConfigChange(_ change: ConfigChange) -> ProposeResult {
        let result = raft.proposeConfigChange(change)
        syncVoters()
        return result
    }

    // MARK: Ready

    /// The next Ready to persist, or nil (none, or one in flight).
    public func nextReady() -> Ready? {
        guard !readyInFlight, raft.hasReady, let ready = raft.ready() else { return nil }
        readyInFlight = true
        // Track tempo entries entering our log (a new batch replaces the tail).
        barrier.appended(ready.entries)
        return ready
    }

    /// The Ready was persisted: returns the messages to send now and the
    /// events (applied commands, leadership, proposal answers).
    public func finish(_ ready: Ready, nowMonoNs: Int64) -> (messages: [Message], events: [ClusterEvent]) {
        precondition(readyInFlight, "finish without a Ready in flight")
        var events: [ClusterEvent] = []
        if let snapshot = ready.snapshot {
            machine = ReplicatedTimeline(flags: machine.flags)
            Self.restore(&machine, snapshot.data)
            barrier.snapshotted(through: snapshot.index)
            events.append(.restored(index: snapshot.index))
        }
        for entry in ready.committedEntries {
            if let w = waiting.removeValue(forKey: entry.index) {
                events.append(.proposal(id: w.id, w.term == entry.term ? .committed(index: entry.index) : .refused))
            }
            barrier.applied(index: entry.index)
            if entry.kind == .config, let change = ConfigChange.decode(entry.data) {
                events.append(.configuration(change, index: entry.index))
            }
            guard entry.kind == .normal, !entry.data.isEmpty else { continue }
            events.append(.applied(machine.apply(entry.data), index: entry.index))
        }
        if let soft = ready.softState {
            let wasLeader = isLeader
            leader = soft.leader
            if leader != noNode { lastLeader = leader }
            isLeader = soft.role == .leader
            if isLeader && !wasLeader { termStartIndex = raft.lastIndex }
            if !isLeader { termStartIndex = 0 }
            if leader != noNode && !isLeader { lastLeaderContactMonoNs = nowMonoNs }
            if wasLeader && !isLeader {
                // Fault 4: the entries may still commit under the next leader.
                let outcome: ProposalOutcome = legacy.requestTimeTempo ? .refused : .unknown
                for (_, w) in waiting.sorted(by: { $0.key < $1.key }) { events.append(.proposal(id: w.id, outcome)) }
                waiting.removeAll()
            }
            events.append(.leadership(isLeader: isLeader, leader: leader, term: raft.term))
        }
        raft.advance(ready)
        readyInFlight = false
        syncVoters()
        maybeCompact()
        refreshLease()
        return (ready.messages, events)
    }

    private func maybeCompact() {
        guard machine.timeline != nil, raft.appliedIndex >= raft.snapshotIndex + timing.compactEvery else { return }
        raft.compact(upTo: raft.appliedIndex, snapshotData: machine.encodedState())
    }

    // MARK: publishing

    /// Has this leader applied its own term's first entry (so it knows every
    /// committed tempo change)? Always true in legacy mode.
    public var appliedTermStart: Bool {
        legacy.requestTimeTempo || (termStartIndex > 0 && raft.appliedIndex >= termStartIndex)
    }

    /// First beat an uncommitted tempo entry in our log forbids (Int64.max: none).
    public var tempoBarrierBeat: Int64 {
        legacy.requestTimeTempo ? .max : barrier.beat
    }

    /// The publish mode at `nowMonoNs` (beat path).
    /// A non-voter never publishes: a removed node that still leads (until
    /// its removal commits) only waits, and one that is not a voter never
    /// takes a degraded turn.
    public func publishMode(nowMonoNs: Int64, turnNs: Int64, periodNs: Int64) -> PublishMode {
        if isLeader && !raft.isVoter { return .waiting }
        if isLeader && nowMonoNs < leaseUntilMonoNs && appliedTermStart {
            return .leader(leaseUntilMonoNs: leaseUntilMonoNs)
        }
        if isLeader { return .waiting }
        if degraded && raft.isVoter {
            // Fault 6: a turn too late for the lateness rule is no turn at all (legacy: kept).
            return DegradationPolicy.turnMode(
                rank: degradedPosition(nowMonoNs), turnNs: turnNs, periodNs: periodNs,
                lateTurns: legacy.ownReferenceTurns)
        }
        return .follower
    }

    /// Spacing of degraded turns. Legacy: 3 ms. Fixed: `minTurnNs`, which
    /// must exceed a frame's way through NATS (publisher → server → the
    /// next node) plus twice the reference-clock error; nodes whose turn
    /// would come half a period after the instant or later do not publish
    /// (see `publishMode`).
    public func degradedTurnNs(minTurnNs: Int64 = 20_000_000) -> Int64 {
        legacy.ownReferenceTurns ? 3_000_000 : minTurnNs
    }

    /// Our turn among degraded nodes: the rank among the voters in force (a
    /// total order every node that appended the same configuration agrees
    /// on, whatever it can hear).
    public func degradedPosition(_ nowMonoNs: Int64) -> Int {
        DegradationPolicy.rank(of: id, among: voters)
    }

    /// Fault 6: the clock degraded turns are measured on. Legacy: our own
    /// last leader's, so two nodes that followed different leaders measure
    /// turns on different clocks. Fixed: the lowest voter's clock — the same
    /// reference for every node (our own clock when we are that voter, our
    /// last estimate of it otherwise, extrapolated with its rate).
    public func degradedReference(nowMonoNs: Int64) -> ClockSync? {
        let ref = legacy.ownReferenceTurns ? lastLeader : (voters.min() ?? id)
        guard ref != noNode, ref != id else { return nil }
        return legacy.ownReferenceTurns
            ? syncs[ref].flatMap { $0.hasEstimate ? $0 : nil }
            : DegradationPolicy.usableReference(syncs[ref])
    }

    /// Enters degradation after `degradeAfterNs` without a leader (with a
    /// committed timeline to keep); leaves it as soon as one is back. Only a
    /// voter whose voter set in force is committed on it enters it: a node
    /// holding an uncommitted change ranks among a set the others may not
    /// have (a removal shifts every later rank), so two nodes could take the
    /// same turn (found by ClusterSimMembershipTests, seeds 148 and 301).
    private func updateDegradation(_ now: Int64) {
        _ = degradation.update(
            nowMonoNs: now, isLeader: isLeader, leader: leader, lastLeaderContactMonoNs: lastLeaderContactMonoNs,
            mayKeepTimeline: DegradationPolicy.mayKeepTimeline(
                hasTimeline: machine.timeline != nil, isVoter: raft.isVoter, configIndex: raft.configIndex,
                commitIndex: raft.commitIndex))
    }
}

extension ClusterCore {
    /// Installs a snapshot this cluster's own machine encoded: a failure is a
    /// broken invariant of the simulated cluster.
    fileprivate static func restore(_ machine: inout ReplicatedTimeline, _ data: [UInt8]) {
        guard !data.isEmpty else { return }
        guard let state = ReplicatedTimeline.validatedSnapshot(data, bar: machine.bar),
            case .epoch = machine.adopt(state)
        else { preconditionFailure("ClusterCore: a snapshot of this cluster does not restore") }
    }
}
