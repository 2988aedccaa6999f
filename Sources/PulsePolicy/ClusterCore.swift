// PulsePolicy/ClusterCore.swift — the node's cluster logic, whole, with no
// I/O: the Raft core (Sources/Raft) driven from monotonic time, the lease
// deadline, leadership and hand-over, the replicated timeline and its shape,
// tempo and membership proposals and their answers, the tempo barrier, clock
// samples, degradation and the publish mode, refused peer input, the
// bootstrap epoch and compaction. The `pulse` binary (Pulse/Cluster/
// ClusterNode, a driver loop over the real loop, transport and store) and
// the whole-cluster simulator (Tests/ClusterSimTests, the same loop over
// simulated ports) run this one class; what one proves, the other runs.
//
// The driver loop (etcd raft's doc.go), the only way to use it:
//
//     timer            → tick(nowMonoNs:)
//     a peer's message → step(_:clockSample:peerWallNs:nowMonoNs:)
//     while let rd = nextReady() {
//         persist rd (snapshot replaces the log; entries; hard state) and sync
//         messages = finish(rd, nowMonoNs:, nowWallNs:)   // apply, advance
//         send messages
//     }
//     takeEvents() after every call: the one event type the shell switches over
//
// Ticks before messages (fault 1 of issue #10, TickPolicy): every tick that
// is due is delivered before a message is stepped, and a follower that heard
// a leader less than an election timeout ago ignores (pre-)vote requests at
// every term (`stickyRefuses`). A follower resuming from a stall therefore
// counts its silence first, then acks the leader's heartbeat, and stays
// sticky for a whole election timeout after that ack: it cannot renew the
// old lease and vote for a rival while it holds.
//
// The lease (one publisher): the Raft lease is turned into a monotonic
// deadline at every tick, step and Ready (`leaseUntilMonoNs`); the beat path
// asks `publishMode` with the current monotonic time, so a leader frozen past
// its lease cannot publish when it wakes up, before it has read its socket.
// A leader publishes only once it has applied its own term's first entry
// (`appliedTermStart`): it then knows every tempo change committed before.
//
// Degradation (fault 6): without a leader for `degradeAfterNs`, voters keep
// the committed timeline and publish `"degraded":true` frames in turns — by
// rank among the voters in force, 20 ms apart, measured on one reference
// (the lowest voter's clock), each only within half its turn and never half
// a period after the instant (DegradationPolicy). A voter degrades only
// while its voter set in force is committed on it; a node outside the voter
// set never degrades and never publishes.
//
// The timeline's shape (bar, phases: requirements §12) is committed with the
// first epoch. A node whose flags differ stops when it applies it
// (`.refusal`, before its beats start), and refuses a leader's snapshot with
// another shape once it holds one (a forged snapshot cannot stop it).
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
    /// An election timeout in nanoseconds.
    public var electionNs: Int64 { Int64(electionTicks) * tickNs }
    /// Election timeouts are drawn from `[electionTicks, electionTicks +
    /// electionSpreadTicks)`: half an election timeout of spread (150 ms with
    /// the defaults, the Raft paper's 150–300 ms) instead of etcd's whole
    /// one. A new leader publishes its first beat a hand-over guard (295 ms)
    /// and up to a beat period after its election, so the detection must fit
    /// in what is left of the 1 s failover budget: with the defaults the
    /// first timer fires at most 400 ms after the last heartbeat (550 ms with
    /// etcd's spread, which put the budget's tail past 1 s). The spread still
    /// dwarfs an election round (two round trips and two syncs), and safety
    /// does not depend on it.
    public var electionSpreadTicks: Int { max(1, electionTicks / 2) }
    public init() {}
}

/// How a proposal ended, as far as its proposer can know (fault 4 of issue #10).
public enum ProposalOutcome: Equatable, Sendable {
    /// Committed at `index` in the term it was proposed in (202).
    case committed(index: UInt64)
    /// Certainly not committed (never appended, or overwritten by another term).
    case refused
    /// The proposer lost leadership first: the entry may still commit (202
    /// with "outcome unknown", never a 503 that could turn out false).
    case unknown
}

/// How a membership proposal ended at once (the commit comes later, as a
/// `.proposal` event with the same request id).
public enum MembershipProposal: Equatable, Sendable {
    case accepted
    case notLeader
    /// Another change is not committed yet, or this leader has not committed
    /// in its term (Raft's rule): retry shortly.
    case pending
    case invalid(String)
}

/// What the core reports, in order: the shell's one switch.
public enum ClusterEvent: Equatable, Sendable {
    /// A committed entry was applied (epoch, tempo change, ignored, refused).
    case applied(AppliedCommand, index: UInt64)
    /// The state machine was replaced by the snapshot's `state` through
    /// `index` (also at start-up, from the persisted one). Later entries of
    /// the same Ready follow as `.applied`.
    case restored(index: UInt64, state: ClusterState)
    /// This node's role or known leader changed (`role == .leader`: it leads).
    case leadership(role: Role, leader: NodeID, term: UInt64)
    case proposal(id: UInt64, ProposalOutcome)
    /// A configuration change committed at `index` (applied in log order).
    case configuration(ConfigChange, index: UInt64)
    /// The voter set in force changed (a change appended, or truncated).
    case votersChanged([Member])
    /// Peer input refused (a message the Raft core refuses, a clock sample
    /// outside physical bounds): counted by the shell.
    case rejected(reason: String, from: NodeID)
    /// This node must stop: the committed shape differs from its flags.
    case refusal(String)
    case degradation(DegradationPolicy.Change)
    /// A stepped message of the current term carried the peer's wall clock
    /// (merged into the HLC, §3).
    case peerClock(wallNs: Int64)
    /// The log was compacted into this snapshot: persist it.
    case compacted(Snapshot)
}

/// The committed shape as the Raft core's snapshot check sees it.
final class ShapeBox: @unchecked Sendable {
    var shape: TimelineShape?
}

/// One node's cluster logic. Not thread-safe: one loop owns it.
public final class ClusterCore {
    public let id: NodeID
    public let timing: ClusterTiming
    /// The Raft core, for reading (status, tests); only this class drives it.
    public let raft: RaftNode
    /// This node's -bar/-phases.
    public let shape: TimelineShape
    /// Started with -join: no voter until the leader adds it; never bootstraps.
    public let joining: Bool
    /// The bootstrap tempo (-bootstrap), nil when this node never proposes an epoch.
    public let bootstrapBpm: Int64?
    /// The voter set in force (`raft.members`).
    public private(set) var voters: [NodeID] = []
    private var syncedMembers: [Member]?
    /// Our turn among degraded nodes (sorted voters) and the lowest voter:
    /// recomputed when the voter set changes; the beat path only reads them.
    public private(set) var rank = 0
    public private(set) var referenceId: NodeID = noNode
    public private(set) var ticks: TickPolicy
    public private(set) var machine: ReplicatedTimeline
    private let committedShape = ShapeBox()
    public private(set) var readyInFlight = false
    public private(set) var leader: NodeID = noNode
    public private(set) var isLeader = false
    public private(set) var leadershipChanges: UInt64 = 0
    public private(set) var leaseUntilMonoNs: Int64 = 0
    /// The index of this leadership's first entry (its no-op); 0 when not leader.
    public private(set) var termStartIndex: UInt64 = 0
    /// Has this leader applied its own term's first entry? (Stored after
    /// every Ready: the beat path only reads it.)
    public private(set) var appliedTermStart = false
    /// When the leader last asked us to campaign (TimeoutNow), or nil.
    private var timeoutNowMonoNs: Int64?
    /// Whether this leadership came from the previous leader's hand-over.
    public private(set) var electedByHandOver = false
    public private(set) var lastLeaderContactMonoNs: Int64 = 0
    public private(set) var degradation: DegradationPolicy
    public var degraded: Bool { degradation.degraded }
    /// Per peer: its clock relative to ours.
    public private(set) var syncs: [NodeID: ClockSync] = [:]
    /// The last leader followed (its clock is the timeline's reference).
    public private(set) var lastLeader: NodeID = noNode
    /// Why this node stopped itself (the committed shape differs from its flags).
    public private(set) var refusal: String?
    /// Tempo entries in our log not applied yet (fault 4).
    private var barrier = TempoBarrier()
    /// Proposals waiting for their entry: index → (term, request id).
    private var waiting: [UInt64: (term: UInt64, id: UInt64)] = [:]
    private var epochProposed = false
    private var events: [ClusterEvent] = []

    /// A node from what it persisted (all empty on a first start). `voters`
    /// is the bootstrap voter set (-peers; without this node when joining).
    public init(
        id: NodeID, voters: [NodeID], timing: ClusterTiming, seed: UInt64, nowMonoNs: Int64,
        shape: TimelineShape, joining: Bool = false, bootstrapBpm: Int64? = nil,
        hardState: HardState, snapshot: Snapshot?, entries: [Entry]
    ) throws(RaftError) {
        self.id = id
        self.timing = timing
        self.shape = shape
        self.joining = joining
        self.bootstrapBpm = joining ? nil : bootstrapBpm
        let box = committedShape
        let config = Config(
            id: id, voters: voters, electionTicks: timing.electionTicks, heartbeatTicks: timing.heartbeatTicks,
            electionSpreadTicks: timing.electionSpreadTicks, randomSeed: seed,
            snapshotCheck: { data in
                guard let state = ReplicatedTimeline.validatedSnapshot(data, bar: shape.bar) else { return false }
                // Once this node holds a shape, a snapshot with another is refused
                // (counted as bad_snapshot): only a node without one stops on it.
                guard let held = box.shape else { return true }
                return state.shape(flags: held) == held
            })
        raft = try RaftNode(config: config, hardState: hardState, snapshot: snapshot, entries: entries)
        ticks = TickPolicy(tickNs: timing.tickNs, startMonoNs: nowMonoNs)
        degradation = DegradationPolicy(electionNs: timing.electionNs, degradeAfterNs: timing.degradeAfterNs)
        machine = ReplicatedTimeline(flags: shape)
        barrier.appended(entries)  // none is applied yet: committed ones are, in the first Ready
        syncVoters()
        if let snapshot, !snapshot.data.isEmpty { installSnapshot(snapshot) }
        refreshLease()
    }

    /// Counts ticks from `nowMonoNs` (the node starts now: the time spent
    /// between building the core and starting the node is no silence).
    public func resetTicks(nowMonoNs: Int64) {
        ticks = TickPolicy(tickNs: timing.tickNs, startMonoNs: nowMonoNs)
    }

    /// A lone voter (the voter set in force is this node alone: a single
    /// node, `pulse` without -peers) campaigns now instead of after an
    /// election timeout. Its quorum is itself: the pre-vote and the vote are
    /// its own and granted at once, and what it appends commits on its own
    /// append (applied and answered only once the Ready holding it is
    /// synced: the shell persists before `finish`). The lease needs no
    /// acknowledgement (`RaftNode.leaseExpiryTick`, `needed == 0`): every
    /// quorum of the voter set {self} is {self}, and a leader never votes for
    /// another, so no rival leader can exist while it leads; the previous
    /// incarnation of this node is gone (the data dir's lock), so there is
    /// no lease of another leader to wait out at start. A node whose voter
    /// set holds anyone else waits for its election timeout as before.
    public func campaignIfAlone() {
        guard raft.isVoter, voters == [id], !isLeader, refusal == nil else { return }
        raft.campaign()
    }

    /// The events since the last call, in order.
    public func takeEvents() -> [ClusterEvent] {
        defer { events.removeAll(keepingCapacity: true) }
        return events
    }

    // MARK: time and messages

    /// The tick timer: delivers every tick that is due.
    public func tick(nowMonoNs: Int64) {
        deliverTicks(nowMonoNs)
        updateDegradation(nowMonoNs)
    }

    /// Delivers every tick due at `now` (catching up after a stall, bounded
    /// by TickPolicy) and refreshes the lease deadline from them.
    private func deliverTicks(_ now: Int64) {
        let due = ticks.takeDue(nowMonoNs: now)
        for _ in 0..<due { raft.tick() }
        refreshLease()
    }

    /// A message from a peer (decoded and addressed by the transport),
    /// received at `nowMonoNs`. The Raft core refuses what it cannot trust
    /// (`.rejected`). The frame's clock sample and wall time count only when
    /// the message was stepped and is of our current term (a stale or
    /// future-term message is no exchange with a live peer: a flood of them
    /// must not steer the clock or the HLC), the sample only within
    /// ClockSync's physical bounds.
    public func step(_ m: Message, clockSample: SyncSample? = nil, peerWallNs: Int64? = nil, nowMonoNs now: Int64) {
        deliverTicks(now)
        if stickyRefuses(m) { return }
        let outcome = raft.step(m)
        if let rejection = outcome.rejection { events.append(.rejected(reason: rejection.reason, from: m.from)) }
        // A TimeoutNow from our leader starts a campaign at once, so the term
        // has already moved on: it is checked before the current-term gate.
        if outcome.wasStepped && m.kind == .timeoutNow && m.from == leader { timeoutNowMonoNs = now }
        if outcome.wasStepped && m.term == raft.term {
            if m.from == leader { lastLeaderContactMonoNs = now }
            if let clockSample, let refusal = syncs[m.from, default: ClockSync()].add(clockSample) {
                events.append(.rejected(reason: refusal.rawValue, from: m.from))
            }
            if let peerWallNs { events.append(.peerClock(wallNs: peerWallNs)) }
        }
        syncVoters()  // an append may add or truncate a configuration entry
        refreshLease()
    }

    /// The lease proof's follower side, at every term: a node that heard
    /// from a leader less than `electionTicks` ticks ago ignores (pre-)vote
    /// requests that are not a leadership transfer. The Raft core checks this
    /// itself for requests of a higher term (after validating the term, so a
    /// hostile one is counted as `term_absurd`); this guard covers the rest:
    /// a rejected pre-vote answer from a newer candidate raises the term
    /// first, and the vote request of that same term was then granted
    /// although this node had just acked the old leader (found by
    /// ClusterSimTests, fault-1 scenario seeds 9 and 24).
    private func stickyRefuses(_ m: Message) -> Bool {
        guard m.kind == .vote || m.kind == .preVote, m.term <= raft.term, !m.transfer, raft.role != .leader
        else { return false }
        guard m.from != raft.leader, raft.vote != m.from || m.kind == .preVote else { return false }
        return raft.ticksSinceLeaderContact < timing.electionTicks
    }

    private func refreshLease() {
        let remaining = raft.leaseRemainingTicks
        // A lone voter's lease needs no acknowledgement, and no rival can be
        // elected while it leads (its vote is every quorum: see
        // `campaignIfAlone`): it lasts as long as it leads, whatever its
        // ticks, until a refresh sees another voter or a lost leadership.
        // So a single node's ticks need not be punctual (ClusterNode
        // coalesces them with its beats: issue 24).
        if remaining > 0 && voters.count == 1 && voters[0] == id {
            leaseUntilMonoNs = .max
            return
        }
        leaseUntilMonoNs = ticks.leaseDeadline(remainingTicks: remaining)
    }

    // MARK: proposals

    /// Proposes `command` as request `requestId`: nil when not appended
    /// (certainly refused); else its index, and a `.proposal` event later. A
    /// tempo entry raises the beat barrier until applied (fault 4).
    public func propose(_ command: ClusterCommand, requestId: UInt64) -> UInt64? {
        guard refusal == nil, case .accepted(let index, let term) = raft.propose(command.encoded()) else { return nil }
        waiting[index] = (term, requestId)
        if case .tempo(let at, _, _) = command { barrier.proposed(index: index, atBeat: at) }
        return index
    }

    /// Leader only: proposes adding `member` or removing the voter `remove`
    /// as a single-server change (Raft/Membership.swift), answered later as
    /// `.proposal(id: requestId, …)`. The entry's voter set carries every
    /// member's context; `context` fills in those the log has none for
    /// (bootstrap voters, whose addresses come from -peers).
    public func proposeMembership(
        add member: Member?, remove: NodeID?, requestId: UInt64, context: (NodeID) -> [UInt8]?
    ) -> MembershipProposal {
        guard isLeader else { return .notLeader }
        var members = raft.members.map { m in m.context.isEmpty ? Member(id: m.id, context: context(m.id) ?? []) : m }
        let change: ConfigChange
        if let member {
            members.append(member)
            change = ConfigChange(kind: .addVoter, node: member.id, members: members)
        } else if let remove {
            members.removeAll { $0.id == remove }
            change = ConfigChange(kind: .removeVoter, node: remove, members: members)
        } else {
            return .invalid("nothing to change")
        }
        let result = raft.proposeConfigChange(change)
        syncVoters()
        switch result {
        case .accepted(let index, let term):
            waiting[index] = (term, requestId)
            return .accepted
        case .notLeader: return .notLeader
        case .configChangePending, .tooManyUncommitted, .transferInProgress: return .pending
        case .invalidConfigChange(let why): return .invalid(why)
        case .tooLarge: return .invalid("the voter set is too large")
        }
    }

    /// Hands leadership to `target`, or (nil) to the most up-to-date other
    /// voter. False when this node is not the leader or has no such voter.
    /// The lease is void once TimeoutNow is sent.
    public func transferLeadership(to target: NodeID? = nil) -> Bool {
        guard isLeader else { return false }
        let others = raft.members.map(\.id).filter { $0 != id }
        let best = others.max { (raft.matchIndex(of: $0) ?? 0) < (raft.matchIndex(of: $1) ?? 0) }
        guard let chosen = target ?? best else { return false }
        let started = raft.transferLeadership(to: chosen)
        refreshLease()
        return started
    }

    // MARK: Ready

    /// The next Ready to persist, or nil (none, one in flight, or stopped).
    public func nextReady() -> Ready? {
        guard refusal == nil, !readyInFlight, raft.hasReady, let ready = raft.ready() else { return nil }
        readyInFlight = true
        barrier.appended(ready.entries)  // from now on, until applied (fault 4)
        return ready
    }

    /// The Ready was persisted: applies it, advances the core and returns
    /// the messages to send now (they may acknowledge what was persisted).
    public func finish(_ ready: Ready, nowMonoNs: Int64, nowWallNs: Int64) -> [Message] {
        precondition(readyInFlight, "ClusterCore.finish without a Ready in flight")
        let (termBefore, appliedBefore) = (raft.term, raft.appliedIndex)
        if let snapshot = ready.snapshot {
            barrier.snapshotted(through: snapshot.index)
            installSnapshot(snapshot)
        }
        for entry in ready.committedEntries { apply(entry) }
        if let soft = ready.softState { leadershipChanged(soft, nowMonoNs) }
        raft.advance(ready)
        readyInFlight = false
        appliedTermStart = termStartIndex > 0 && raft.appliedIndex >= termStartIndex
        syncVoters()
        maybeCompact()
        refreshLease()
        maybeBootstrap(nowWallNs: nowWallNs)
        // Postconditions (TigerBeetle's style; the core's own invariants).
        precondition(!isLeader || leader == id, "a leader names itself")
        precondition(raft.appliedIndex <= raft.commitIndex, "applied beyond the commit")
        precondition(raft.appliedIndex >= appliedBefore && raft.term >= termBefore, "applied index or term went back")
        return ready.messages
    }

    private func leadershipChanged(_ soft: SoftState, _ now: Int64) {
        let wasLeader = isLeader
        if soft.leader != leader { leadershipChanges &+= 1 }
        leader = soft.leader
        if leader != noNode { lastLeader = leader }
        isLeader = soft.role == .leader
        if isLeader && !wasLeader {
            electedByHandOver = timeoutNowMonoNs.map { now - $0 < timing.electionNs } ?? false
            timeoutNowMonoNs = nil
            termStartIndex = raft.lastIndex  // the new term's first entry (its no-op)
        }
        if !isLeader { termStartIndex = 0 }
        if leader != noNode && !isLeader { lastLeaderContactMonoNs = now }
        // A known leader ends degradation now, not at the next tick: a
        // degraded node must not publish next to the new leader's first beats.
        if leader != noNode { updateDegradation(now) }
        if wasLeader && !isLeader {
            // Fault 4: the entries may still commit under the next leader.
            for (_, w) in waiting.sorted(by: { $0.key < $1.key }) { answer(w.id, .unknown) }
            waiting.removeAll()
        }
        events.append(.leadership(role: soft.role, leader: leader, term: raft.term))
    }

    /// Applies a committed entry to the replicated timeline, which validates
    /// it (a refused entry changes nothing, alike on every node); a shape
    /// other than this node's flags stops the node before its beats start.
    private func apply(_ entry: Entry) {
        barrier.applied(index: entry.index)  // decided, whatever entry this is
        if let w = waiting.removeValue(forKey: entry.index) {
            answer(w.id, w.term == entry.term ? .committed(index: entry.index) : .refused)
        }
        if entry.kind == .config, let change = ConfigChange.decode(entry.data) {
            events.append(.configuration(change, index: entry.index))
        }
        // Stopped: nothing more reaches the timeline, not even a later epoch entry.
        guard entry.kind == .normal, !entry.data.isEmpty, refusal == nil else { return }
        let applied = machine.apply(entry.data)
        if case .shapeMismatch(let why) = applied { return refuse(why) }
        committedShape.shape = machine.shape
        events.append(.applied(applied, index: entry.index))
    }

    /// Installs a snapshot's state (validated by the Raft core's
    /// `snapshotCheck` before it was adopted, and by the store at load) and
    /// reports it as `.restored`; a state that does not validate or adopt is
    /// reported as refused input, or stops the node (another shape).
    private func installSnapshot(_ snapshot: Snapshot) {
        guard let state = ReplicatedTimeline.validatedSnapshot(snapshot.data, bar: shape.bar) else {
            events.append(.rejected(reason: "bad_snapshot", from: leader))
            return
        }
        var fresh = ReplicatedTimeline(flags: shape)
        switch fresh.adopt(state) {
        case .shapeMismatch(let why):
            refuse(why)
        case .refused(let why):
            refuse("raft: a snapshot that passed validation cannot be adopted (\(why))")
        default:
            machine = fresh
            committedShape.shape = machine.shape
            guard let adopted = machine.state else { return }
            events.append(.restored(index: snapshot.index, state: adopted))
        }
    }

    /// Stops this node for good: no more applying, no more Readies.
    private func refuse(_ why: String) {
        guard refusal == nil else { return }
        refusal = why
        events.append(.refusal(why))
    }

    /// Keeps the log short: once `compactEvery` entries were applied since
    /// the last snapshot, the state machine becomes the snapshot.
    private func maybeCompact() {
        guard machine.timeline != nil, raft.appliedIndex >= raft.snapshotIndex + timing.compactEvery else { return }
        raft.compact(upTo: raft.appliedIndex, snapshotData: machine.encodedState())
        events.append(.compacted(raft.snapshot))
    }

    /// A bootstrapping leader proposes the first epoch once it has applied
    /// its whole log (its own term's no-op included, so no earlier epoch hides).
    private func maybeBootstrap(nowWallNs: Int64) {
        guard isLeader, let bpm = bootstrapBpm, machine.state == nil, !epochProposed, appliedTermStart,
            raft.appliedIndex >= raft.lastIndex
        else { return }
        let epoch = Timeline.bootstrapEpoch(nowNs: nowWallNs, bpm: bpm)
        let command = ClusterCommand.epoch(
            startBeat: epoch.startBeat, startNs: epoch.startNs, bpm: epoch.bpm, bar: shape.bar, phases: shape.phases)
        epochProposed = propose(command, requestId: Self.bootstrapRequest) != nil
    }

    /// The request id of the bootstrap epoch, answered inside the core (a
    /// failed proposal re-arms it); shells number their requests from 1.
    public static let bootstrapRequest: UInt64 = 0

    /// Reports a proposal's outcome (the bootstrap epoch's stays inside).
    private func answer(_ id: UInt64, _ outcome: ProposalOutcome) {
        guard id == Self.bootstrapRequest else { return events.append(.proposal(id: id, outcome)) }
        if case .committed = outcome { return }
        epochProposed = false
    }

    // MARK: membership and degradation

    /// Follows the voter set in force: rank, reference and degradation.
    private func syncVoters() {
        guard raft.members != syncedMembers else { return }
        let first = syncedMembers == nil
        syncedMembers = raft.members
        voters = raft.members.map(\.id)
        rank = DegradationPolicy.rank(of: id, among: voters)
        referenceId = voters.min() ?? id
        if !first { events.append(.votersChanged(raft.members)) }
        if !raft.isVoter, degradation.leave() == .left { events.append(.degradation(.left)) }
    }

    /// Enters degradation after `degradeAfterNs` without a leader (with a
    /// committed timeline to keep); leaves it as soon as one is back. Only a
    /// voter whose voter set in force is committed on it enters it: a node
    /// holding an uncommitted change ranks among a set the others may not
    /// have (a removal shifts every later rank), so two nodes could take the
    /// same turn (found by ClusterSimMembershipTests, seeds 148 and 301).
    private func updateDegradation(_ now: Int64) {
        let change = degradation.update(
            nowMonoNs: now, isLeader: isLeader, leader: leader, lastLeaderContactMonoNs: lastLeaderContactMonoNs,
            mayKeepTimeline: DegradationPolicy.mayKeepTimeline(
                hasTimeline: machine.timeline != nil, isVoter: raft.isVoter, configIndex: raft.configIndex,
                commitIndex: raft.commitIndex))
        if change != .none { events.append(.degradation(change)) }
    }

    // MARK: publishing (beat path: allocation-free)

    /// First beat an uncommitted tempo entry in our log forbids (Int64.max: none).
    public var tempoBarrierBeat: Int64 { barrier.beat }

    /// Spacing of degraded turns: more than a frame's way through NATS
    /// (publisher → server → the next node) plus twice the reference clock's
    /// error; nodes whose turn would come half a period after the instant or
    /// later do not publish.
    public static let degradedTurnNs: Int64 = 20_000_000

    /// The publish mode at `nowMonoNs` for a beat of `periodNs`. A leader
    /// holding its lease, having applied its term's first entry; a leader
    /// without both waits; a non-voter never publishes; a degraded voter
    /// takes its turn; everyone else follows.
    @inline(__always)
    public func publishMode(nowMonoNs: Int64, periodNs: Int64) -> PublishMode {
        if isLeader && !raft.isVoter { return .waiting }
        if isLeader && nowMonoNs < leaseUntilMonoNs && appliedTermStart {
            return .leader(leaseUntilMonoNs: leaseUntilMonoNs)
        }
        if isLeader { return .waiting }
        if degraded && raft.isVoter {
            return DegradationPolicy.turnMode(rank: rank, turnNs: Self.degradedTurnNs, periodNs: periodNs)
        }
        return .follower
    }

    /// The clock degraded turns are measured on: the lowest voter's — the
    /// same reference for every node (nil: our own clock, when we are that
    /// voter) — with the better-fitted rate of it and the last leader's
    /// estimate, or the last leader's alone when the lowest voter's is
    /// unusable (`DegradationPolicy.turnReference`).
    public var degradedReference: ClockSync? {
        guard referenceId != noNode, referenceId != id else { return nil }
        return DegradationPolicy.turnReference(voter: syncs[referenceId], lastLeader: referenceSync)
    }

    /// The last leader's clock estimate, if any (the timeline's reference).
    public var referenceSync: ClockSync? {
        guard lastLeader != noNode, lastLeader != id, let sync = syncs[lastLeader], sync.hasEstimate else { return nil }
        return sync
    }

    // MARK: status

    public var term: UInt64 { raft.term }
    public var commitIndex: UInt64 { raft.commitIndex }
    public var appliedIndex: UInt64 { raft.appliedIndex }
    public var isVoter: Bool { raft.isVoter }
    public var members: [Member] { raft.members }
    /// Whether a configuration change is appended but not committed yet.
    public var changePending: Bool { raft.configIndex > raft.commitIndex }
    /// Whether the applied state is the whole log (on a leader: its own
    /// term's no-op included, so every earlier commit is in the state).
    public var appliedAll: Bool { raft.appliedIndex >= raft.lastIndex }

    /// The shape a data dir committed: its snapshot's (the flags' for one
    /// without a shape), else that of the first valid epoch among its
    /// committed log entries; nil when it has none yet (a fresh node).
    public static func persistedShape(snapshot: ClusterState?, entries: [Entry], commit: UInt64, flags: TimelineShape)
        -> TimelineShape?
    {
        if let snapshot { return snapshot.shape(flags: flags) }
        for entry in entries where entry.index <= commit && entry.kind == .normal && !entry.data.isEmpty {
            guard
                case .epoch(let startBeat, let startNs, let bpm, let bar, let phases)? = ClusterCommand.decoded(
                    entry.data),
                (try? TempoEpoch.validated(startBeat: startBeat, startNs: startNs, bpm: bpm)) != nil,
                let shape = try? TimelineShape.resolve(bar: bar, phases: phases, flags: flags)
            else { continue }
            return shape
        }
        return nil
    }
}
