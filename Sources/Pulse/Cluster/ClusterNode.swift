// Cluster: drives the Raft core on the loop and applies its log to the
// timeline.
//
// The core is a pure state machine (Sources/Raft); this file gives it time
// (a monotonic tick timer that catches up after a stall, e.g. SIGSTOP),
// durability (RaftStore, synced off the loop thread before any message that
// depends on it is sent), a network (RaftTransport) and a state machine: log
// entries are `ClusterCommand`s — the bootstrap epoch and tempo changes.
//
// The timeline's shape (bar, phases: requirements §12) is committed with the
// first epoch and folded into every snapshot. A node whose -bar/-phases
// differ from it refuses to start when its data dir holds it, or stops
// (`refusal`, non-zero exit) when it first applies it — before its beats
// start, so it publishes nothing (PulsePolicy/TimelineShape).
//
// The leader lease is turned into a monotonic deadline at every tick and
// step (`leaseUntilMonoNs`); the beat path asks `mayPublish` with the
// current monotonic time, so a leader frozen past its lease cannot publish
// when it wakes up, before it has even read its socket.
//
// Membership (docs/decisions.md): the peer list follows the voter set in
// force (`syncMembers`, at start and after each Ready that changed it), and
// with it the transport, the degraded turn order and the echo filter's
// publishers. A node outside the voter set (joining with -join, or removed)
// never degrades, so it never publishes.
//
// Ticks before messages (fault 1 of issue #10, PulsePolicy/TickPolicy): every
// tick that is due is delivered before a message is stepped, and a follower
// that heard a leader less than an election timeout ago ignores (pre-)vote
// requests at every term (`ClusterCore.stickyRefuses`). A follower resuming
// from a stall therefore counts its silence first, then acks the leader's
// heartbeat, and stays sticky for a whole election timeout after that ack:
// it cannot renew the old lease and vote for a rival while it holds.
import CLoop
import Foundation
import Logging
import PulseCore
import PulsePolicy
import Raft

/// The committed shape as the Raft core's snapshot check sees it (loop thread only).
final class CommittedShapeBox {
    var shape: TimelineShape?
}

/// What the rest of the node hears from the cluster (loop thread).
protocol ClusterListener: AnyObject {
    func clusterEpochCommitted(_ epoch: TempoEpoch)
    func clusterTempoCommitted(_ change: TempoChange, justification: String)
    func clusterLeadershipChanged(isLeader: Bool, leader: Peer?, term: UInt64)
    /// A peer's Raft frame carried its wall clock (`wallNs`, Unix ns) and
    /// arrived at local wall time `receivedNs`: merged into the HLC (§3).
    func clusterPeerTimestamp(wallNs: Int64, receivedNs: Int64)
    /// The voter set changed (a membership change appended, or truncated):
    /// `peers` is the new view (every voter, and this node).
    func clusterMembersChanged(_ peers: PeerList)
}

/// How a proposal ended, as far as its proposer can know (fault 4 of issue #10).
enum CommitOutcome: Equatable {
    /// Committed in the term it was proposed in.
    case committed
    /// Certainly not committed (never appended, or replaced by another term's entry).
    case refused
    /// The proposer lost leadership first: the entry may still commit under
    /// the next leader and take effect, or be dropped. Nobody can tell yet.
    case unknown
}

/// Timing of the Raft core in wall units.
struct RaftTiming {
    var tickNs: Int64 = 50_000_000
    var electionTicks = 6
    var heartbeatTicks = 1
}

final class ClusterNode: LoopHandler, RaftInbox {
    /// The cluster as the voter set in force describes it (and this node):
    /// rebuilt whenever the Raft configuration changes (`syncMembers`).
    private(set) var peers: PeerList
    /// -peers as given: the addresses of bootstrap voters, whose entries in
    /// the voter set carry no context.
    let bootstrapPeers: PeerList
    /// The voter set `peers` was built from.
    private var syncedMembers: [Member] = []
    /// Started with -join: not a voter until the leader adds it; never bootstraps.
    let joining: Bool
    let timing: RaftTiming
    private unowned let loop: EventLoop
    private let logger: Logger
    /// Refused Raft input: bad frames (transport), messages the core refuses,
    /// clock samples outside physical bounds (requirements §10).
    private let rejected: RejectedInput
    /// Reasons already logged once (a hostile peer must not flood the log).
    private var loggedRejections: Set<String> = []
    private let raft: RaftNode
    private let store: RaftStore
    private var transport: RaftTransport!
    private var tickToken: UInt32 = 0
    /// Ticks due from monotonic time, with bounded catch-up after a stall.
    private var ticks: TickPolicy
    private var readyInFlight = false
    private(set) var leaseUntilMonoNs: Int64 = 0
    private(set) var leader: NodeID = noNode
    private(set) var isLeader = false
    private(set) var term: UInt64 = 0
    private(set) var leadershipChanges: UInt64 = 0
    /// When the leader last asked us to campaign (TimeoutNow), or nil.
    private var timeoutNowMonoNs: Int64?
    /// Whether this node's current leadership came from the previous
    /// leader's hand-over (TimeoutNow less than an election timeout before).
    private(set) var electedByHandOver = false
    private(set) var lastContactMonoNs: Int64 = 0
    /// The replicated state machine (PulsePolicy, the one the simulator runs):
    /// the epoch with earlier changes folded in, the latest change, the shape.
    private var machine: ReplicatedTimeline
    /// Whether the timeline's first epoch is applied.
    var hasEpoch: Bool { machine.state != nil }
    private var state: ClusterState? { machine.state }
    /// State restored from a snapshot at start-up, announced in `start()`.
    private var restored: ClusterState?
    /// Compact the log once this many entries were applied since the last snapshot.
    var compactEvery: UInt64 = 64
    private(set) var storeErrors: UInt64 = 0
    private var epochProposed = false
    private let bootstrapBpm: Int64?
    /// This node's -bar/-phases; it runs only while they equal the committed shape.
    let shape: TimelineShape
    private var bar: Int { shape.bar }
    /// The shape of the committed timeline, once the epoch is applied.
    var committedShape: TimelineShape? { machine.shape }
    /// The committed shape, for the core's snapshot check (set when the machine gets one).
    private let committedShapeBox: CommittedShapeBox
    /// Why this node stopped itself (the committed shape differs from its
    /// flags): the service exits non-zero with it once the loop has stopped.
    private(set) var refusal: PulseError?
    /// Proposals waiting for their entry to commit: index → (term, reply).
    private var waiting: [UInt64: (UInt64, (CommitOutcome) -> Void)] = [:]
    /// The tempo entries in this node's log not applied yet, its own
    /// proposals and any leader's (PulsePolicy/TempoBarrier, fault 4): the
    /// planner emits no beat at or after `tempoBarrierBeat`.
    private var barrier = TempoBarrier()
    /// The index of this leader's own term's first entry (0: not leader).
    private var termStartIndex: UInt64 = 0
    weak var listener: ClusterListener?

    // Clock sync and degradation (REQ-003).
    /// Per peer: its clock relative to ours, from the transport's timestamps.
    private(set) var syncs: [NodeID: ClockSync] = [:]
    /// The last leader we followed (its clock is the timeline's reference).
    private(set) var lastLeader: NodeID = noNode
    /// No leader for this long → degradation (set by the service).
    var degradeAfterNs: Int64 {
        get { degradation.degradeAfterNs }
        set { degradation.degradeAfterNs = newValue }
    }
    /// When this node keeps the timeline itself (PulsePolicy, shared with the simulator).
    private var degradation: DegradationPolicy
    var degraded: Bool { degradation.degraded }
    var degradedSinceMonoNs: Int64 { degradation.sinceMonoNs }
    /// This node's turn among degraded nodes: its position in the sorted
    /// voter ids (recomputed when the voter set changes, off the beat path,
    /// which only reads it).
    private(set) var rank: Int
    /// Spacing of degraded turns: more than a frame's way through NATS to
    /// the next node plus twice the reference clock's error (fault 6).
    static let degradedTurnNs: Int64 = 20_000_000
    /// The lowest voter: the one clock all degraded nodes measure turns on.
    private(set) var degradedReferenceId: NodeID
    /// Degraded turns (fault 6 of issue #10): every node measures them on the
    /// same reference — the lowest voter's clock (our own when we are that
    /// voter, our last estimate of it otherwise) — so turns of nodes that
    /// followed different leaders do not overlap. Nil: our own clock.
    var degradedReference: ClockSync? {
        guard degradedReferenceId != peers.me.raftId else { return nil }
        return DegradationPolicy.usableReference(syncs[degradedReferenceId])
    }

    /// Beat path (allocation-free): the degraded publish mode for a beat of
    /// `periodNs`. Our turn is `(1 + rank) × 20 ms` after the instant on the
    /// reference clock, and only within half a turn of it; a turn that would
    /// come half a period after the instant or later is no turn at all (the
    /// lateness rule), so such a node only follows.
    @inline(__always)
    func degradedMode(periodNs: Int64) -> PulsePolicy.PublishMode {
        DegradationPolicy.turnMode(rank: rank, turnNs: Self.degradedTurnNs, periodNs: periodNs)
    }

    /// The reference clock estimate: the last leader's, if any.
    var referenceSync: ClockSync? {
        guard lastLeader != noNode, lastLeader != peers.me.raftId, let sync = syncs[lastLeader], sync.hasEstimate
        else { return nil }
        return sync
    }

    init(
        peers: PeerList, timing: RaftTiming, dataDir: String, bootstrapBpm: Int64?, shape: TimelineShape,
        loop: EventLoop,
        rejected: RejectedInput, logger: Logger, tls: RaftTLS? = nil, joining: Bool = false
    ) throws {
        self.peers = peers
        self.bootstrapPeers = peers
        self.joining = joining
        self.rejected = rejected
        (self.rank, self.degradedReferenceId) = Self.turns(voters: peers.peers.map(\.raftId), me: peers.me.raftId)
        self.degradation = DegradationPolicy(
            electionNs: Int64(timing.electionTicks) * timing.tickNs, degradeAfterNs: 1_000_000_000)
        self.ticks = TickPolicy(tickNs: timing.tickNs, startMonoNs: cloop_monotonic_ns())
        self.timing = timing
        self.loop = loop
        self.logger = logger
        self.bootstrapBpm = bootstrapBpm
        self.shape = shape
        machine = ReplicatedTimeline(flags: shape)
        let shapeBox = CommittedShapeBox()
        committedShapeBox = shapeBox
        let bar = shape.bar
        store = try RaftStore(dataDir: dataDir, rejected: rejected)
        // The snapshot is checked with this node's bar, as the core checks a
        // leader's snapshot before it is persisted (`snapshotCheck` below).
        let persisted = try store.load(bar: bar)
        if persisted.truncatedBytes > 0 {
            logger.warning("raft: cut a torn log tail", metadata: ["bytes": "\(persisted.truncatedBytes)"])
        }
        // A leader's snapshot is checked before the core adopts it, so one this
        // node would refuse (on apply, and at its next start) is never
        // persisted: the core refuses it (`bad_snapshot`, counted in
        // transportReceived) before it can reach a Ready.
        // A joining node's bootstrap configuration is everyone it knows but
        // itself: it is no voter (never campaigns) until a configuration
        // entry or snapshot from the leader says otherwise.
        let voters = peers.peers.map(\.raftId).filter { !joining || $0 != peers.me.raftId }
        let config = Config(
            id: peers.me.raftId, voters: voters, electionTicks: timing.electionTicks,
            heartbeatTicks: timing.heartbeatTicks, randomSeed: UInt64.random(in: 1...UInt64.max),
            snapshotCheck: { [bar, committedShape = shapeBox] data in
                guard let state = ReplicatedTimeline.validatedSnapshot(data, bar: bar) else { return false }
                // A timeline's shape never changes: once this node holds one, a
                // snapshot with another is refused (counted as bad_snapshot) and the
                // node keeps running; a hostile peer cannot make it stop for good by
                // having a foreign shape persisted (only a node without a shape yet
                // stops on one, as a joining node with the wrong flags must).
                guard let held = committedShape.shape else { return true }
                return state.shape(flags: held) == held
            })
        do {
            raft = try RaftNode(
                config: config, hardState: persisted.hardState, snapshot: persisted.snapshot, entries: persisted.entries
            )
        } catch {
            throw PulseError.startup("raft state in \(dataDir)/raft cannot be used: \(error)")
        }
        barrier.appended(persisted.entries)  // none is applied yet: committed ones are, in the first Ready
        if let snapshot = persisted.snapshot {
            // The store's load validated these bytes (RaftStore.parseSnapshot); failing here is a broken invariant.
            restored = try JSONDecoder().decode(ClusterState.self, from: Data(snapshot.data))
        }
        // The data dir's committed shape, if any, must be this node's (§12).
        if let committed = Self.persistedShape(
            snapshot: restored, entries: persisted.entries, commit: persisted.hardState.commit, flags: shape),
            let why = committed.mismatch(flags: shape, committedIn: "data dir \(dataDir)")
        {
            throw PulseError.config(why)
        }
        term = persisted.hardState.term
        // A restarted node's voter set may differ from -peers (changes in its log).
        syncMembers(announce: false)
        transport = try RaftTransport(
            loop: loop, peers: peers,
            limits: .forElectionTimeout(Int64(timing.electionTicks) * timing.tickNs),
            rejected: rejected, logger: logger, inbox: self, tls: tls)
        tickToken = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: self)
    }

    func start() throws {
        if let restored {  // its shape was checked in init
            self.restored = nil
            adopt(restored)
        }
        try transport.start()
        ticks = TickPolicy(tickNs: timing.tickNs, startMonoNs: cloop_monotonic_ns())
        _ = cloop_timer_arm_after(loop.raw, tickToken, timing.tickNs, timing.tickNs)
        processReady()
    }

    func stop() {
        _ = cloop_timer_disarm(loop.raw, tickToken)
        transport.stop()
    }

    var transportStats: RaftTransportStats { transport.stats }
    var commitIndex: UInt64 { raft.commitIndex }
    var leaderPeer: Peer? { peers.peer(raftId: leader) }
    /// For backups (read-only, loop thread): the applied state machine, the
    /// log index it reflects, and whether that is the whole log (on a leader:
    /// its own term's no-op included, so every earlier commit is in the state).
    var appliedState: (state: ClusterState?, index: UInt64, complete: Bool) {
        (state, raft.appliedIndex, raft.appliedIndex >= raft.lastIndex)
    }

    /// Beat path: may this node publish a frame now? Allocation-free.
    /// A leader publishes only after applying its own term's first entry
    /// (fault 4): by then it has applied every tempo change committed before
    /// its term, so no beat it emits ignores one.
    @inline(__always)
    func mayPublish(monotonicNs: Int64) -> Bool {
        isLeader && raft.isVoter && monotonicNs < leaseUntilMonoNs && appliedTermStart
    }

    /// Has this leader applied its own term's first entry?
    /// (Stored, updated after every Ready: the beat path only reads it.)
    private(set) var appliedTermStart = false

    /// Beat path (allocation-free): the first beat a tempo entry this node
    /// proposed but has not applied may change (Int64.max: none). The planner
    /// emits no beat at or after it until the entry is applied (fault 4), so
    /// a change is never retroactive on the node that proposed it.
    var tempoBarrierBeat: Int64 { barrier.beat }

    // MARK: time

    func loopEvent(token: UInt32, events: UInt32) {
        _ = cloop_timer_read(loop.raw, tickToken)
        let now = cloop_monotonic_ns()
        deliverDueTicks(now)
        updateDegradation(nowMonoNs: now)
        processReady()
    }

    /// Delivers every tick due at `now` (catching up after a stall, bounded
    /// by TickPolicy) and refreshes the lease deadline from them.
    private func deliverDueTicks(_ now: Int64) {
        let due = ticks.takeDue(nowMonoNs: now)
        for _ in 0..<due { raft.tick() }
        refreshLease()
    }

    /// Enters degradation after `degradeAfterNs` without a leader (and only
    /// with a committed timeline to keep); leaves it as soon as one is back.
    private func updateDegradation(nowMonoNs now: Int64) {
        // Only a voter keeps the timeline alone: a node being added, or
        // removed, publishes nothing on its own.
        switch degradation.update(
            nowMonoNs: now, isLeader: isLeader, leader: leader, lastLeaderContactMonoNs: lastContactMonoNs,
            mayKeepTimeline: DegradationPolicy.mayKeepTimeline(
                hasTimeline: hasEpoch, isVoter: raft.isVoter, configIndex: raft.configIndex,
                commitIndex: raft.commitIndex))
        {
        case .none:
            break
        case .left:
            logger.info("leaving degradation: a leader is back", metadata: ["leader": "\(leaderPeer?.name ?? "?")"])
        case .entered:
            logger.warning(
                "entering degradation: no leader; keeping the committed timeline locally",
                metadata: [
                    "offset_ms": "\(Double(referenceSync?.offsetNs ?? 0) / 1e6)",
                    "rate_ppm": "\(referenceSync?.ratePpm ?? 0)",
                ])
        }
    }

    private func refreshLease() {
        leaseUntilMonoNs = ticks.leaseDeadline(remainingTicks: raft.leaseRemainingTicks)
    }

    /// A message from a peer (already decoded and addressed, and within its
    /// connection's rate: RaftTransport). The core refuses what it cannot
    /// trust and says why; each refusal is counted. The frame's clock sample
    /// and wall time count only when its message was stepped and is of our
    /// current term (a stale or future-term message is no exchange with a
    /// live peer: a flood of them must not steer the clock or the HLC), and
    /// the sample only within ClockSync's physical bounds.
    func transportReceived(_ message: Message, clockSample: SyncSample?, peerWallNs: Int64) {
        let now = cloop_monotonic_ns()
        // Fault 1: the ticks that are due first, then the message.
        deliverDueTicks(now)
        // The lease proof's follower side at every term (see the header).
        // Higher terms go to the core, which applies the same stickiness to
        // them after validating the term (`term_absurd` is counted there).
        if message.term <= raft.term,
            ClusterCore.stickyRefuses(message, raft: raft, electionTicks: timing.electionTicks)
        {
            return
        }
        let outcome = raft.step(message)
        if let rejection = outcome.rejection { reject(rejection.reason, from: message.from) }
        // A TimeoutNow from our leader starts a campaign at once, so the term
        // has already moved on: it is checked before the current-term gate.
        if outcome.wasStepped && message.kind == .timeoutNow && message.from == leader { timeoutNowMonoNs = now }
        if outcome.wasStepped && message.term == raft.term {
            if message.from == leader { lastContactMonoNs = now }
            if let clockSample, let refusal = syncs[message.from, default: ClockSync()].add(clockSample) {
                reject(refusal.rawValue, from: message.from)
            }
            listener?.clusterPeerTimestamp(wallNs: peerWallNs, receivedNs: cloop_realtime_ns())
        }
        refreshLease()
        processReady()
    }

    private func reject(_ reason: String, from peer: NodeID) {
        rejected.record(.raft, reason)
        if loggedRejections.insert(reason).inserted {
            logger.warning(
                "raft: refused input from a peer (logged once per reason, counted in backbeat_rejected_input_total)",
                metadata: ["reason": "\(reason)", "from": "\(peers.peer(raftId: peer)?.name ?? "\(peer)")"])
        }
    }

    // MARK: proposals

    /// Proposes `command`; `done(.committed)` once it is committed in this
    /// term, `done(.refused)` if it certainly is not (not leader, transfer,
    /// replaced), `done(.unknown)` if leadership was lost first (it may still
    /// commit: fault 4). A tempo entry raises the beat barrier until applied.
    func propose(_ command: ClusterCommand, done: @escaping (CommitOutcome) -> Void) {
        guard let data = try? JSONEncoder().encode(command) else { return done(.refused) }
        switch raft.propose([UInt8](data)) {
        case .accepted(let index, let term):
            waiting[index] = (term, done)
            if case .tempo(let atBeat, _, _) = command { barrier.proposed(index: index, atBeat: atBeat) }
            processReady()
        default:
            done(.refused)
        }
    }

    /// Hands leadership to the most up-to-date follower (graceful stop).
    /// Returns false when this node is not the leader or has no follower.
    @discardableResult
    func transferLeadership() -> Bool {
        guard isLeader else { return false }
        let voters = raft.members.map(\.id).filter { $0 != peers.me.raftId }
        let best = voters.max { (raft.matchIndex(of: $0) ?? 0) < (raft.matchIndex(of: $1) ?? 0) }
        guard let best else { return false }
        return transferLeadership(to: best)
    }

    /// Hands leadership to the voter `target` once its log is caught up
    /// (admin `POST /leader/transfer`). False when this node is not the
    /// leader or `target` is not another voter.
    @discardableResult
    func transferLeadership(to target: NodeID) -> Bool {
        guard isLeader else { return false }
        let started = raft.transferLeadership(to: target)
        refreshLease()  // the lease is void once TimeoutNow is sent
        processReady()
        return started
    }

    // MARK: membership

    /// The voters in force (appended, maybe not committed), as peers when
    /// their address is known, and the index of the entry they come from.
    var voters: [(id: NodeID, peer: Peer?)] { raft.members.map { ($0.id, peers.peer(raftId: $0.id)) } }
    /// Whether this node is in the voter set in force.
    var isVoter: Bool { raft.isVoter }
    /// Whether a configuration change is appended but not committed yet.
    var changePending: Bool { raft.configIndex > raft.commitIndex }

    /// How a membership proposal ended at once (the commit comes later, to `done`).
    enum MembershipProposal: Equatable {
        case accepted
        case notLeader
        /// Another change is not committed yet, or this leader has not
        /// committed in its term (Raft's rule): retry shortly.
        case pending
        case invalid(String)
    }

    /// Leader only: proposes adding `peer` (`add: true`) or removing the
    /// voter `id`, as a single-server change. The voter set in the entry
    /// carries every member's name and Raft address (bootstrap voters get
    /// theirs from -peers here), so nodes learn addresses from the log.
    /// `done` hears the commit outcome when `.accepted` is returned.
    func proposeMembership(add peer: Peer?, remove id: NodeID?, done: @escaping (CommitOutcome) -> Void)
        -> MembershipProposal
    {
        guard isLeader else { return .notLeader }
        var members = raft.members.map { member -> Member in
            guard member.context.isEmpty, let known = peers.peer(raftId: member.id) else { return member }
            return Member(id: member.id, context: known.memberContext)
        }
        let change: ConfigChange
        if let peer {
            members.append(Member(id: peer.raftId, context: peer.memberContext))
            change = ConfigChange(kind: .addVoter, node: peer.raftId, members: members)
        } else if let id {
            members.removeAll { $0.id == id }
            change = ConfigChange(kind: .removeVoter, node: id, members: members)
        } else {
            return .invalid("nothing to change")
        }
        switch raft.proposeConfigChange(change) {
        case .accepted(let index, let term):
            waiting[index] = (term, done)
            processReady()
            return .accepted
        case .notLeader: return .notLeader
        case .configChangePending, .tooManyUncommitted, .transferInProgress: return .pending
        case .invalidConfigChange(let why): return .invalid(why)
        case .tooLarge: return .invalid("the voter set is too large")
        }
    }

    /// Degraded turns for `voters`: this node's position among them (sorted),
    /// and the lowest voter (whose clock all degraded nodes measure turns on).
    static func turns(voters: [NodeID], me: NodeID) -> (rank: Int, reference: NodeID) {
        (DegradationPolicy.rank(of: me, among: voters), voters.min() ?? me)
    }

    /// Rebuilds `peers` (and so the transport's members, TLS identities and
    /// connections, and the echo filter's publishers through the listener),
    /// `rank` and `degradedReferenceId` when the voter set in force changed.
    /// `transitional`: keep the previous members too (new connections open
    /// before the messages of a Ready go out, old ones close after).
    private func syncMembers(announce: Bool = true, transitional: Bool = false) {
        let members = raft.members
        guard members != syncedMembers || transitional else { return }
        let (list, unknown) = peers.reconfigured(members: members, fallback: bootstrapPeers)
        if transitional {
            var union = list
            for old in peers.peers where union.peer(raftId: old.raftId) == nil { union.peers.append(old) }
            transport?.setPeers(union)
            return
        }
        syncedMembers = members
        peers = list
        (rank, degradedReferenceId) = Self.turns(voters: members.map(\.id), me: peers.me.raftId)
        if !unknown.isEmpty {
            logger.warning(
                "raft: voters without a known address (no context in the log, not in -peers)",
                metadata: ["ids": "\(unknown)"])
        }
        guard announce else { return }
        logger.info(
            "raft: voter set changed",
            metadata: [
                "voters": "\(members.map { peers.peer(raftId: $0.id)?.name ?? "\($0.id)" })",
                "voter": "\(raft.isVoter)",
            ])
        transport?.setPeers(list)
        if !raft.isVoter && degradation.leave() == .left {
            logger.info("leaving degradation: this node is no longer a voter")
        }
        listener?.clusterMembersChanged(list)
    }

    // MARK: Ready

    private func processReady() {
        guard refusal == nil, !readyInFlight, raft.hasReady, let ready = raft.ready() else { return }
        readyInFlight = true
        barrier.appended(ready.entries)  // from now on, until applied (fault 4)
        if ready.hardState == nil && ready.entries.isEmpty && ready.snapshot == nil {
            finish(ready)
            return
        }
        store.save(hardState: ready.hardState, snapshot: ready.snapshot, entries: ready.entries) { [weak self] error in
            guard let self else { return }
            // Fault 5: a completion, never dropped (EventLoop.postCompletion).
            self.loop.postCompletion {
                if let error {
                    // Nothing in this Ready may be acknowledged: stop here.
                    self.storeErrors &+= 1
                    self.logger.critical("raft: cannot persist; stopping", metadata: ["error": "\(error)"])
                    self.loop.requestStop()
                    return
                }
                self.finish(ready)
            }
        }
    }

    private func finish(_ ready: Ready) {
        let membersChanged = raft.members != syncedMembers
        if membersChanged { syncMembers(transitional: true) }  // new members reachable for these messages
        for message in ready.messages { transport.send(message) }
        if membersChanged { syncMembers() }
        if let snapshot = ready.snapshot {
            barrier.snapshotted(through: snapshot.index)
            applySnapshot(snapshot.data)
        }
        for entry in ready.committedEntries { apply(entry) }
        if let soft = ready.softState { leadershipChanged(soft) }
        if let hard = ready.hardState { term = hard.term }
        raft.advance(ready)
        appliedTermStart = termStartIndex > 0 && raft.appliedIndex >= termStartIndex
        readyInFlight = false
        maybeCompact()
        refreshLease()
        maybeBootstrap()
        processReady()
    }

    private func leadershipChanged(_ soft: SoftState) {
        let wasLeader = isLeader
        if soft.leader != leader { leadershipChanges &+= 1 }
        leader = soft.leader
        if leader != noNode { lastLeader = leader }
        isLeader = soft.role == .leader
        term = raft.hardState.term
        if isLeader && !wasLeader {
            let now = cloop_monotonic_ns()
            electedByHandOver =
                timeoutNowMonoNs.map { now - $0 < Int64(timing.electionTicks) * timing.tickNs } ?? false
            timeoutNowMonoNs = nil
            termStartIndex = raft.lastIndex  // the new term's first entry (its no-op)
        }
        if !isLeader { termStartIndex = 0 }
        appliedTermStart = termStartIndex > 0 && raft.appliedIndex >= termStartIndex
        if leader != noNode && !isLeader { lastContactMonoNs = cloop_monotonic_ns() }
        // A known leader ends degradation now, not at the next tick: a
        // degraded node must not publish next to the new leader's first beats.
        if leader != noNode { updateDegradation(nowMonoNs: cloop_monotonic_ns()) }
        if wasLeader && !isLeader {
            // Fault 4: the entries may still commit under the next leader.
            for (_, pending) in waiting.sorted(by: { $0.key < $1.key }) { pending.1(.unknown) }
            waiting.removeAll()
        }
        logger.info(
            isLeader ? "raft: leader" : "raft: follower",
            metadata: ["term": "\(term)", "leader": "\(leaderPeer?.name ?? "none")"])
        listener?.clusterLeadershipChanged(isLeader: isLeader, leader: leaderPeer, term: term)
    }

    /// Applies a committed entry to the state machine (`ReplicatedTimeline`,
    /// which validates it: see its header). A refused entry is counted
    /// (`raft`/`bad_committed_entry`) and changes nothing, alike on every
    /// node; a shape other than this node's flags stops the node before its
    /// beats start.
    private func apply(_ entry: Entry) {
        barrier.applied(index: entry.index)  // decided, whatever entry this is
        if let pending = waiting.removeValue(forKey: entry.index) {
            pending.1(pending.0 == entry.term ? .committed : .refused)
        }
        guard entry.kind == .normal, !entry.data.isEmpty else { return }
        // Stopped (the shape differs): nothing more reaches the timeline, not even a later epoch entry.
        guard refusal == nil else { return }
        switch machine.apply(entry.data) {
        case .epoch(let epoch):
            committedShapeBox.shape = machine.shape
            listener?.clusterEpochCommitted(epoch)
        case .tempo(let change):
            listener?.clusterTempoCommitted(change, justification: machine.justification)
        case .ignored:
            break
        case .refused(let why):
            refuseEntry(entry, why)
        case .shapeMismatch(let why):
            // Before the listener hears the epoch: a node with other flags never starts its beats.
            refuse(why)
        }
    }

    private func refuseEntry(_ entry: Entry, _ why: String) {
        rejected.record(.raft, "bad_committed_entry")
        logger.error(
            "raft: committed entry refused",
            metadata: ["index": "\(entry.index)", "term": "\(entry.term)", "why": "\(why)"])
    }

    /// Installs a snapshot's state: the epoch, then the latest change. Its
    /// shape (the node's flags for a snapshot without one, written into the
    /// next snapshot) must be this node's, or the node stops here.
    private func adopt(_ snapshotState: ClusterState) {
        switch machine.adopt(snapshotState) {
        case .shapeMismatch(let why):
            refuse(why)
        case .refused(let why):
            // `validatedSnapshot` and the store's load checked it already.
            refuse("raft: a snapshot that passed validation cannot be adopted (\(why))")
        default:
            committedShapeBox.shape = machine.shape
            guard let state = machine.state else { return }
            listener?.clusterEpochCommitted(TempoEpoch(state.epoch))
            if let pending = state.pending {
                listener?.clusterTempoCommitted(TempoChange(pending), justification: state.justification)
            }
        }
    }

    /// The shape a data dir committed: its snapshot's (the flags' for one
    /// without a shape), else that of the first valid epoch among its
    /// committed log entries; nil when it has none yet (a fresh node).
    /// Undecodable or invalid entries are left to `apply`, which refuses them.
    static func persistedShape(snapshot: ClusterState?, entries: [Entry], commit: UInt64, flags: TimelineShape)
        -> TimelineShape?
    {
        if let snapshot { return snapshot.shape(flags: flags) }
        for entry in entries where entry.index <= commit && entry.kind == .normal && !entry.data.isEmpty {
            // The first epoch `apply` would accept.
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

    /// Stops this node for good: one critical line, no more applying, the
    /// loop stopped; the service exits non-zero with `why` (PulseNode.run).
    private func refuse(_ why: String) {
        guard refusal == nil else { return }
        refusal = PulseError.config(why)
        logger.critical("refusing to run: \(why)")
        loop.requestStop()
    }

    /// A snapshot sent by the leader is validated like a committed entry: one
    /// that does not decode or holds a timeline outside the supported range is
    /// counted and not adopted (the state machine keeps what it had). The
    /// core refused such a snapshot already (with the same check), so this
    /// is defence in depth.
    private func applySnapshot(_ data: [UInt8]) {
        guard let snapshotState = ReplicatedTimeline.validatedSnapshot(data, bar: bar) else {
            rejected.record(.raft, "bad_snapshot")
            logger.error("raft: snapshot from the leader refused (does not decode or is out of range)")
            return
        }
        adopt(snapshotState)
    }

    /// Keeps the log short: once `compactEvery` entries were applied since
    /// the last snapshot, the state machine becomes the snapshot.
    private func maybeCompact() {
        guard let state, raft.appliedIndex >= raft.snapshotIndex + compactEvery,
            let data = try? JSONEncoder().encode(state)
        else { return }
        raft.compact(upTo: raft.appliedIndex, snapshotData: [UInt8](data))
        store.compact(raft.snapshot) { [logger] error in
            if let error { logger.error("raft: snapshot not persisted", metadata: ["error": "\(error)"]) }
        }
    }

    /// A bootstrapping leader proposes the first epoch once its own term's
    /// no-op has committed (so it has applied everything before it).
    private func maybeBootstrap() {
        guard isLeader, !joining, !hasEpoch, !epochProposed, let bpm = bootstrapBpm,
            raft.appliedIndex >= raft.lastIndex
        else { return }
        epochProposed = true
        let epoch = Timeline.bootstrapEpoch(nowNs: cloop_realtime_ns(), bpm: bpm)
        logger.info("raft: proposing the bootstrap epoch", metadata: ["start_ns": "\(epoch.startNs)", "bpm": "\(bpm)"])
        propose(
            .epoch(
                startBeat: epoch.startBeat, startNs: epoch.startNs, bpm: epoch.bpm, bar: shape.bar,
                phases: shape.phases)
        ) {
            [weak self] outcome in
            if outcome != .committed { self?.epochProposed = false }
        }
    }
}
