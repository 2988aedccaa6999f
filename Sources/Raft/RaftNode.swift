// RaftNode.swift — the Raft state machine of one node (etcd-raft style): it
// owns roles, terms, votes, elections (pre-vote, check-quorum, stickiness),
// replication, commitment, the leader lease and leadership transfer.
//
// The core does no I/O, reads no clock, starts no thread. Its inputs are
// `tick()` (abstract time), `step(_:)` (a message from a peer), `propose(_:)`,
// `transferLeadership(to:)` and `campaign()`; its output is a `Ready` batch.
//
// THE CALLER'S LOOP (the order matters for safety):
//
//     if node.hasReady, let rd = node.ready() {
//       1. persist rd.snapshot (if any), then rd.entries (drop stable entries
//          with index >= rd.entries[0].index, append), then rd.hardState
//          (if any) — and sync;
//       2. send rd.messages (only now: they may acknowledge what step 1 wrote);
//       3. apply rd.snapshot (if any) to the state machine, then
//          rd.committedEntries in order;
//       4. node.advance(rd)
//     }
//
// `tick`, `step` and `propose` may be called while a Ready is being handled
// (steps 1–3); their effects appear in the next Ready. Only one Ready can be
// outstanding: `hasReady` is false until `advance` is called.
//
// After a restart, build the node with `init(config:hardState:snapshot:entries:)`
// from what was persisted; it re-delivers committed entries after the snapshot
// (the state machine is rebuilt from the snapshot, then replays them).

/// The result of `propose`.
public enum ProposeResult: Equatable, Sendable {
    /// Appended to the leader's log at `index` in `term`; it is committed when
    /// it comes back in `Ready.committedEntries` with the same term.
    case accepted(index: UInt64, term: UInt64)
    /// Only the leader accepts proposals; `leaderHint` is the leader this node knows of.
    case notLeader(leaderHint: NodeID?)
    /// A leadership transfer is in progress.
    case transferInProgress
    /// The payload exceeds `Config.maxProposalBytes`.
    case tooLarge
    /// Too many entries are not yet committed (`Config.maxInflightEntries`).
    case tooManyUncommitted
    /// A configuration change is refused while another one is uncommitted,
    /// and until this leader has committed an entry of its own term (the
    /// single-server-change bug: a leader that has not committed in its term
    /// may hold a configuration that a rival elected by the old one ignores).
    case configChangePending
    /// The change is not a single-server step from the current voter set,
    /// or not well formed (`ConfigChange.problem`); or a `.config` entry was
    /// given to `propose` instead of `proposeConfigChange`.
    case invalidConfigChange(String)
}

/// Persisted state that cannot be used to restart a node.
public enum RaftError: Error, Equatable, Sendable {
    case invalidPersistedState(String)
}

/// A batch of work for the caller; see the loop in the file header.
public struct Ready: Sendable {
    /// Leader or role changed since the last Ready.
    public var softState: SoftState?
    /// Term, vote or commit changed: persist before sending `messages`.
    public var hardState: HardState?
    /// A snapshot received from the leader: persist it (replacing the log
    /// through its index) and restore the state machine from it.
    public var snapshot: Snapshot?
    /// Entries to write to stable storage. They start at `entries[0].index`;
    /// stable entries at or after that index are replaced (an explicit truncation).
    public var entries: [Entry]
    /// Messages to send after persisting.
    public var messages: [Message]
    /// Committed entries to apply, in order, after persisting.
    public var committedEntries: [Entry]

    /// Index of the first entry to write, or nil when there are none.
    public var firstEntryIndex: UInt64? { entries.first?.index }

    let sequence: UInt64
    let applyingIndex: UInt64
}

/// Replication state of one follower, as seen by the leader.
final class Progress {
    enum State { case probe, replicate, snapshot }

    let id: NodeID
    var match: UInt64 = 0
    var next: UInt64
    var state: State = .probe
    /// In probe state: an append is in flight, wait for its answer or a heartbeat answer.
    var probeSent = false
    /// In snapshot state: the index of the snapshot sent.
    var pendingSnapshot: UInt64 = 0
    /// Heard from in the current check-quorum window.
    var recentActive = false
    /// Largest leader tick echoed by this follower in this term (0: none).
    var ackedTick: UInt64 = 0

    init(id: NodeID, next: UInt64) {
        self.id = id
        self.next = next
    }

    func isPaused(maxInflight: Int) -> Bool {
        switch state {
        case .probe: return probeSent
        case .replicate: return next - match - 1 >= UInt64(maxInflight)
        case .snapshot: return true
        }
    }

    func becomeProbe() {
        state = .probe
        next = match + 1
        probeSent = false
        pendingSnapshot = 0
    }

    func becomeReplicate() {
        state = .replicate
        next = match + 1
        probeSent = false
        pendingSnapshot = 0
    }

    /// A success answer for `index`; false if it tells nothing new.
    func maybeUpdate(_ index: UInt64) -> Bool {
        guard index > match else { return false }
        match = index
        next = max(next, index + 1)
        probeSent = false
        return true
    }

    /// A rejection of the append after `rejected`; `hint` is where to probe next.
    func maybeDecrease(rejected: UInt64, hint: UInt64) -> Bool {
        switch state {
        case .replicate:
            guard rejected > match else { return false }  // stale
            next = match + 1
            return true
        case .probe:
            // Stale unless it rejects the one index probed, above what is matched
            // (a rejection of a matched index cannot be current: ignoring it keeps
            // a forged or reordered one from looping append/reject forever).
            guard next - 1 == rejected, rejected > match else { return false }
            next = max(min(rejected, hint + 1), match + 1)
            probeSent = false
            return true
        case .snapshot:
            return false  // wait for the snapshot's answer or a heartbeat answer
        }
    }
}

/// One Raft node. Not thread-safe: confine it to one thread (the event loop).
public final class RaftNode {
    public let config: Config
    public var id: NodeID { config.id }

    public private(set) var term: UInt64 = 0
    public private(set) var vote: NodeID = noNode
    public private(set) var role: Role = .follower
    /// The leader of the current term as far as this node knows, or `noNode`.
    public private(set) var leader: NodeID = noNode
    /// Number of `tick()` calls since this node was created.
    public private(set) var ticks: UInt64 = 0
    /// What messages carry as `leaseTick` (never 0, which means "none").
    private var stampTick: UInt64 { ticks + 1 }
    /// Ticks since this node last heard from a leader of its term (saturating);
    /// a leader reports 0.
    public var ticksSinceLeaderContact: Int { role == .leader ? 0 : leaderContactElapsed }
    /// Messages refused by `step` (malformed, misaddressed, or from a non-member).
    public private(set) var droppedMessages: UInt64 = 0
    /// The target of the leadership transfer in progress, or `noNode`.
    public private(set) var transferTarget: NodeID = noNode

    var log: RaftLog
    private var rng: SplitMix64
    /// The voter set in force: the latest configuration in the log (appended,
    /// not necessarily committed), else the snapshot's, else `Config.voters`.
    public private(set) var members: [Member] = []
    /// Index of the configuration entry `members` comes from (0: from the
    /// snapshot or the bootstrap configuration).
    public private(set) var configIndex: UInt64 = 0
    /// Whether this node is in the voter set (a joining or removed node is
    /// not: it never campaigns, and never counts itself in a quorum).
    public private(set) var isVoter = false
    /// The voters other than this node, and the size of a majority of voters.
    private var peers: [NodeID] = []
    private var quorum = 1

    private var electionElapsed = 0
    private var heartbeatElapsed = 0
    private var randomizedElectionTimeout = 0
    private var leaderContactElapsed: Int
    private var transferElapsed = 0
    /// A TimeoutNow was sent in this term: another node may win an election
    /// while we are still leader, so the lease is void for the rest of the term.
    private var timeoutNowSent = false

    private var votes: [NodeID: Bool] = [:]
    private var progress: [Progress] = []
    /// Per peer: `stampTick` of the last answer to one of its stale messages
    /// (at most one per tick; keys are voters, so bounded).
    private var staleAnswerTick: [NodeID: UInt64] = [:]

    private var outbox: [Message] = []
    private var lastSoftState: SoftState
    private var lastHardState: HardState
    private var readySequence: UInt64 = 0
    private var outstandingReady: UInt64? = nil

    // MARK: - Creation

    /// A fresh node with an empty log (first start of a cluster).
    public convenience init(config: Config) {
        try! self.init(config: config, hardState: HardState(), snapshot: nil, entries: [])
    }

    /// A node restarted from what an earlier incarnation persisted through
    /// `Ready`: its hard state, its snapshot (if any) and the entries after it.
    public init(config: Config, hardState: HardState, snapshot: Snapshot?, entries: [Entry])
        throws(RaftError)
    {
        config.validate()
        self.config = config
        rng = SplitMix64(seed: config.randomSeed ^ (config.id &* 0x9E37_79B9_7F4A_7C15))

        let snap = snapshot ?? .empty
        // Bounds that messages are held to as well (see `maxTerm`): a state
        // persisted by an older version that adopted a hostile term (e.g.
        // 2^64 - 1) is refused here with a reason, instead of trapping on
        // `term + 1` at every restart.
        guard hardState.term < Self.maxTerm else {
            throw .invalidPersistedState(
                "term \(hardState.term) is not below 2^63: it was adopted from a hostile or corrupt message"
                    + " (this node's Raft state must be rebuilt from its peers)")
        }
        guard snap.index < Self.maxIndex, snap.term <= hardState.term else {
            throw .invalidPersistedState("snapshot at index \(snap.index), term \(snap.term) is out of range")
        }
        let kept = entries.filter { $0.index > snap.index }
        var expected = snap.index + 1
        var previousTerm = snap.term
        for e in kept {
            guard e.index == expected else {
                throw .invalidPersistedState("entry \(e.index) where \(expected) was expected")
            }
            guard e.term >= previousTerm else {
                throw .invalidPersistedState("entry \(e.index) has a lower term than its predecessor")
            }
            expected += 1
            previousTerm = e.term
        }
        guard previousTerm <= hardState.term else {
            throw .invalidPersistedState(
                "log term \(previousTerm) above hard state term \(hardState.term)")
        }
        // A vote may name a node since removed (or one this node's bootstrap
        // configuration does not list): it only stops us voting again in that
        // term, so it is kept as persisted.
        if !snap.members.isEmpty, let problem = Member.problem(snap.members) {
            throw .invalidPersistedState("snapshot voter set: \(problem)")
        }
        if let bad = kept.first(where: { $0.kind == .config && ConfigChange.decode($0.data) == nil }) {
            throw .invalidPersistedState("entry \(bad.index) is not a well-formed configuration change")
        }
        let commit = max(hardState.commit, snap.index)
        guard commit <= expected - 1 else {
            throw .invalidPersistedState(
                "commit \(commit) beyond the last persisted entry \(expected - 1): committed entries are missing"
            )
        }
        log = RaftLog(snapshot: snap, entries: kept, committed: commit)
        term = hardState.term
        vote = hardState.vote
        // A node that may have acknowledged a leader before it stopped (it has a
        // term) behaves as if it just heard from one: it grants no vote for an
        // election timeout, so a restart cannot shorten the lease it backed.
        leaderContactElapsed = hardState.term > 0 ? 0 : config.electionTicks
        lastHardState = HardState(term: hardState.term, vote: hardState.vote, commit: commit)
        lastSoftState = SoftState(leader: noNode, role: .follower)
        rebuildConfiguration()
        becomeFollower(term: hardState.term, leader: noNode)
    }

    // MARK: - Configuration

    /// Recomputes the voter set from the log: the latest configuration entry,
    /// else the snapshot's members, else the bootstrap configuration. Called
    /// at start, and whenever a configuration entry is appended or may have
    /// been truncated (so a truncated uncommitted change reverts).
    private func rebuildConfiguration() {
        var latest = log.snapshot.members.isEmpty ? config.voters.map { Member(id: $0) } : log.snapshot.members
        var index: UInt64 = 0
        for e in log.entries where e.kind == .config {
            // Validated before it entered the log (precheck, propose, init).
            guard let change = ConfigChange.decode(e.data) else { preconditionFailure("raft: bad config entry in log") }
            latest = change.members
            index = e.index
        }
        setConfiguration(latest, index: index)
    }

    /// The voter set in force at `index` (<= lastIndex, not compacted), as a
    /// snapshot records it: empty while no change was ever made (the
    /// bootstrap configuration), so a cluster that never changed its
    /// membership writes and sends snapshots exactly as before.
    private func configuration(at index: UInt64) -> [Member] {
        var latest = log.snapshot.members
        for e in log.entries where e.kind == .config && e.index <= index {
            if let change = ConfigChange.decode(e.data) { latest = change.members }
        }
        return latest
    }

    private func setConfiguration(_ newMembers: [Member], index: UInt64) {
        members = newMembers
        configIndex = index
        let ids = newMembers.map(\.id)
        isVoter = ids.contains(id)
        peers = ids.filter { $0 != id }
        quorum = ids.count / 2 + 1
        guard role == .leader else { return }
        // The leader replicates to exactly the other voters: new ones are
        // probed from our end, removed ones are no longer sent anything.
        progress.removeAll { !peers.contains($0.id) }
        for p in peers where !progress.contains(where: { $0.id == p }) {
            progress.append(Progress(id: p, next: log.lastIndex + 1))
        }
        if transferTarget != noNode && !peers.contains(transferTarget) {
            transferTarget = noNode
            transferElapsed = 0
        }
    }

    /// A leader that is not in the voter set steps down once the change that
    /// removed it has committed (dissertation §4.2.2: until then it manages
    /// the cluster without counting itself in majorities).
    private func maybeStepDownRemoved() {
        if role == .leader && !isVoter && log.committed >= configIndex {
            becomeFollower(term: term, leader: noNode)
        }
    }

    // MARK: - Public state

    public var commitIndex: UInt64 { log.committed }
    public var lastIndex: UInt64 { log.lastIndex }
    public var lastTerm: UInt64 { log.lastTerm }
    /// Highest index the caller has applied (acknowledged by `advance`).
    public var appliedIndex: UInt64 { log.applied }
    /// Index of the snapshot the log starts after (0: none).
    public var snapshotIndex: UInt64 { log.snapshot.index }
    /// The snapshot the log starts after (`Snapshot.empty` if never compacted).
    public var snapshot: Snapshot { log.snapshot }
    public var hardState: HardState { HardState(term: term, vote: vote, commit: log.committed) }
    public var softState: SoftState { SoftState(leader: leader, role: role) }

    /// Leader only: the highest index known to be replicated on `peer`.
    public func matchIndex(of peer: NodeID) -> UInt64? {
        guard role == .leader else { return nil }
        return progress.first { $0.id == peer }?.match
    }

    // MARK: - Leader lease
    //
    // Why no other leader can exist while `hasLease()` is true:
    // the lease is dated from the leader's tick count at the moment it SENT the
    // append/heartbeat that a quorum (with itself) answered; a follower answers
    // only after it received the message, so it heard from the leader no earlier
    // than that tick. From that moment such a follower refuses every vote and
    // pre-vote (stickiness) until it has counted `electionTicks` ticks of its
    // own — also across a restart, because a restarted node with a term starts
    // as if it had just heard from a leader. The leader itself never votes while
    // it leads, and it cannot take part in a rival's election before it steps
    // down. Any new leader needs a quorum of votes, and every quorum contains a
    // node that backed the lease, so no election can complete before
    // `send tick + electionTicks` on that node's clock, which is at least
    // `(electionTicks - 1)` tick periods after the send (its first tick may come
    // right after the receipt). The lease lasts `leaseTicks < electionTicks - 1`
    // periods from the send, so it ends at least one tick period earlier: that
    // period is the margin for clock-rate drift between nodes. The only vote a
    // sticky node grants early is one from a leadership transfer, which the
    // leader starts itself by sending TimeoutNow — after that the lease is void
    // for the rest of its term (and an aborted transfer makes it step down).
    //
    // The lease is in ticks. On the caller's side, deliver tick number n (the
    // n-th call of `tick()`) never before `start + n × interval` on the monotonic
    // clock, and catch up missed ticks (e.g. after SIGSTOP) before trusting the
    // lease. Then the lease is certainly over at monotonic time
    // `start + leaseExpiryTick × interval`: a safe deadline that holds even if
    // the loop stalls before its next tick.

    /// True while this node is leader and a quorum (itself included) answered
    /// a message it sent less than `leaseTicks` ago.
    public func hasLease() -> Bool { ticks < leaseExpiryTick }

    /// The tick count (`ticks`) at which the current lease ends; 0 without one.
    public var leaseExpiryTick: UInt64 {
        guard role == .leader, config.checkQuorum, !timeoutNowSent else { return 0 }
        // Acknowledgements besides our own (a leader being removed does not
        // count itself). Single-server changes keep the proof below: any
        // majority of the old voter set meets any majority of the new one, so
        // a lease backed by either still meets every possible rival's quorum.
        let needed = isVoter ? quorum - 1 : quorum
        if needed == 0 { return ticks + UInt64(config.leaseTicks) }
        // Messages carry `ticks + 1` at sending, so that 0 means "none".
        let sentPlusOne = quorumValue(self: 0, needed: needed) { $0.ackedTick }
        guard sentPlusOne > 0 else { return 0 }
        return sentPlusOne - 1 + UInt64(config.leaseTicks)
    }

    /// Ticks of lease left after the latest `tick()`; 0 without a lease.
    public var leaseRemainingTicks: Int {
        let expiry = leaseExpiryTick
        return expiry > ticks ? Int(expiry - ticks) : 0
    }

    // MARK: - Inputs

    /// Advances logical time by one tick.
    public func tick() {
        ticks += 1
        if leaderContactElapsed < Int.max { leaderContactElapsed += 1 }
        switch role {
        case .leader: tickLeader()
        case .follower, .preCandidate, .candidate: tickElection()
        }
    }

    /// Starts an election now (with a pre-vote first if configured). For tests
    /// and bootstrap; a leader ignores it.
    public func campaign() {
        hup(transfer: false)
    }

    /// Proposes an entry. Only the leader accepts it. Configuration entries
    /// go through `proposeConfigChange`.
    public func propose(_ data: [UInt8], kind: EntryKind = .normal) -> ProposeResult {
        guard kind != .config else { return .invalidConfigChange("use proposeConfigChange") }
        return proposeChecked(data, kind: kind)
    }

    /// Proposes a single-server configuration change (see Membership.swift).
    /// It takes effect on each node as soon as that node appends it. Refused
    /// while another change is uncommitted or before this leader has
    /// committed an entry of its own term (`configChangePending`), and when
    /// it is not exactly `change.node` added to or removed from the current
    /// voter set (`invalidConfigChange`).
    public func proposeConfigChange(_ change: ConfigChange) -> ProposeResult {
        guard role == .leader else { return .notLeader(leaderHint: leader == noNode ? nil : leader) }
        if let problem = change.problem { return .invalidConfigChange(problem) }
        guard change.isSingleStep(from: members.map(\.id)) else {
            return .invalidConfigChange("not a single-server change from the current voter set")
        }
        guard configIndex <= log.committed, log.term(at: log.committed) == term else { return .configChangePending }
        return proposeChecked(change.encoded(), kind: .config)
    }

    private func proposeChecked(_ data: [UInt8], kind: EntryKind) -> ProposeResult {
        guard role == .leader else { return .notLeader(leaderHint: leader == noNode ? nil : leader) }
        guard transferTarget == noNode else { return .transferInProgress }
        guard data.count <= config.maxProposalBytes else { return .tooLarge }
        guard log.lastIndex - log.committed < UInt64(config.maxInflightEntries) else {
            return .tooManyUncommitted
        }
        let entry = Entry(index: log.lastIndex + 1, term: term, kind: kind, data: data)
        appendAsLeader(entry)
        return .accepted(index: entry.index, term: entry.term)
    }

    /// Leader only: hands leadership to `target` once its log is caught up
    /// (it is sent a TimeoutNow). Aborted after an election timeout. Returns
    /// false if this node is not leader or `target` is not another voter.
    @discardableResult
    public func transferLeadership(to target: NodeID) -> Bool {
        guard role == .leader, target != id, let pr = progress.first(where: { $0.id == target }) else {
            return false
        }
        if transferTarget == target { return true }
        transferTarget = target
        transferElapsed = 0
        if pr.match == log.lastIndex {
            sendTimeoutNow(to: target)
        } else {
            sendAppend(pr)
        }
        return true
    }

    /// Terms at or above this (2^63) are refused (`term_absurd`), in messages
    /// and in persisted state, and the node never campaigns into it, so
    /// `term + 1` can never overflow, now or after a restart.
    ///
    /// Guarantee: no message can leave the cluster unable to elect. Terms
    /// below `freeTermLimit` (2^62) are adopted as Raft says; a term at or
    /// above it is adopted only one step at a time: a message whose term is
    /// beyond `max(term, freeTermLimit − 1) + 1` advances our term by that one
    /// step (`term_jump`) and is not stepped further. A real cluster raises its
    /// term about once per election and never reaches 2^62. A forged term can
    /// put a node at 2^62 − 1 in one message, but from there every campaign
    /// still has 2^62 terms of room, which forged messages consume one per
    /// message (about 1.5 million years at 10^5 messages a second), and nodes
    /// whose terms drifted apart in the high range still converge (each
    /// message from the one ahead brings the one behind a step closer). A
    /// bound relative to our own term everywhere would instead let a hostile
    /// peer push one node out of its honest peers' reach for good.
    /// Stickiness (see `stepChecked`) keeps a node with a live leader from
    /// adopting any higher term at all, except by a leadership transfer.
    public static let maxTerm: UInt64 = 1 << 63
    /// Terms from here up to `maxTerm` are adopted one step at a time (see `maxTerm`).
    public static let freeTermLimit: UInt64 = 1 << 62
    /// Log indexes at or above this are refused (`index_absurd`), so
    /// `index + 1` and `index + entries.count` never overflow.
    public static let maxIndex: UInt64 = 1 << 62

    /// Processes a message from a peer. Nothing a peer sends can trap the
    /// node: malformed, misaddressed, foreign or out-of-range messages are
    /// refused (and counted in `droppedMessages`), and the outcome says why,
    /// for the caller to count.
    @discardableResult
    public func step(_ m: Message) -> StepOutcome {
        if let problem = precheck(m) {
            droppedMessages &+= 1
            return .refused(problem)
        }
        // The application's check of a snapshot's state comes before anything
        // changes: a refused snapshot is not adopted, so never in a Ready, so
        // never persisted (see `Config.snapshotCheck`).
        if m.kind == .snapshot, let check = config.snapshotCheck, let s = m.snapshot, !check(s.data) {
            droppedMessages &+= 1
            return .refused(.badSnapshot)
        }
        let outcome = stepChecked(m)
        if !outcome.wasStepped { droppedMessages &+= 1 }
        return outcome
    }

    /// The checks that need no role-specific state: addressing, membership,
    /// shape, and the absolute bounds on terms and indexes.
    private func precheck(_ m: Message) -> MessageRejection? {
        if m.to != id { return .misaddressed }
        // Vote requests from a node outside our voter set (not yet added, or
        // removed) are refused while we follow (or are) a live leader, so
        // such a node cannot disrupt a working cluster. Without a leader they
        // are judged like any other: a voter whose configuration lags (it has
        // not yet appended the change that added the candidate) must still be
        // able to elect, or the cluster can deadlock (the simulator found such
        // cases); pre-vote and the up-to-date check keep a removed node, whose
        // log lacks its own committed removal, from winning. Replication and answers are taken
        // from any node (dissertation §4.1: servers process requests without
        // consulting their configuration), so a follower whose configuration
        // lags — e.g. one that installed a snapshot older than the change
        // that added its leader — still learns the log from that leader; a
        // live leader's followers ignore a rival by stickiness, and a node
        // outside every voter set cannot win an election to become one.
        if m.kind == .vote || m.kind == .preVote, !members.contains(where: { $0.id == m.from }),
            inLease || !config.checkQuorum
        {
            return .unknownSender
        }
        if m.structuralProblem() != nil { return .malformed }
        // Configuration data comes from a peer: checked before it can reach the log.
        for e in m.entries where e.kind == .config && ConfigChange.decode(e.data) == nil { return .badConfigEntry }
        if let s = m.snapshot, !s.members.isEmpty {
            if Member.problem(s.members) != nil { return .badConfigEntry }
            if isForeign(s.members, from: m.from) { return .foreignVoterSet }
        }
        // Entry and snapshot terms are <= m.term (structural), so this bounds them too.
        if m.term >= Self.maxTerm { return .termAbsurd }
        switch m.kind {
        case .append:
            // Entry indexes are m.index + 1 ... m.index + count (structural, no overflow).
            if m.index >= Self.maxIndex { return .indexAbsurd }
        case .snapshot:
            if let s = m.snapshot, s.index >= Self.maxIndex { return .indexAbsurd }
        default:
            break
        }
        return nil
    }

    /// Whether a snapshot's voter set `voters`, sent by `sender`, is too
    /// foreign to be real: we are a voter of our own configuration of at
    /// least `foreignCheckMinVoters`, and it shares no node with anything we
    /// know — not us, not the sender, no voter of our configuration. A
    /// forged `{evil}` (issue 20, item 3) is refused before anything
    /// changes, so never persisted. Refusing is safe (as a lost message).
    ///
    /// Why a real snapshot passes in practice: configurations change one
    /// voter at a time and each change commits before the next, so for a
    /// snapshot to share nothing with what we know, every voter we know (at
    /// least three), the sender and we ourselves must all have been replaced
    /// between the snapshot's index and our log — six or more committed
    /// changes while we lagged, before the leader compacted again. Smaller
    /// configurations are not judged: with one or two voters two changes
    /// replace them all (the simulator's membership seeds do this), and a
    /// joiner or a learner (not a voter of its own configuration) knows too
    /// little. This is not authentication: without mutual TLS a forger who
    /// names a real voter, or who sends single-step configuration entries as
    /// the leader, still passes; the transport's TLS is the defence.
    private func isForeign(_ voters: [Member], from sender: NodeID) -> Bool {
        isVoter && members.count >= Self.foreignCheckMinVoters
            && !voters.contains { voter in
                voter.id == id || voter.id == sender || members.contains { $0.id == voter.id }
            }
    }

    /// Smallest configuration whose voters judge a snapshot's voter set (`isForeign`).
    public static let foreignCheckMinVoters = 3

    private func stepChecked(_ m: Message) -> StepOutcome {
        if m.term > term {
            let isVoteRequest = m.kind == .vote || m.kind == .preVote
            if isVoteRequest && !m.transfer && inLease {
                // Stickiness: we heard from a leader within an election timeout
                // (or are one), so this candidate cannot be legitimate yet.
                return .stepped
            }
            let isResponse: Bool
            switch m.kind {
            case .appendResponse, .heartbeatResponse, .voteResponse, .preVoteResponse: isResponse = true
            default: isResponse = false
            }
            if !isVoteRequest && inLease && leader != noNode && !(isResponse && role == .leader) {
                // Stickiness for a rival leader's messages too (etcd applies it
                // to votes only), so a forged term cannot take a follower from
                // its live leader: while we follow (or are) one, a rival can
                // only have been elected by a leadership transfer (whose vote
                // requests are not sticky) or by a quorum that lost our leader,
                // which then steps down by check-quorum within an election
                // timeout. So a real new leader is followed at most about an
                // election timeout later (a deposed leader knows no leader: it
                // follows at once). A leader still adopts a higher term from a
                // response, as etcd does: that is how a node whose term ran
                // ahead (e.g. by a forged message while it had no leader) gets
                // back into the cluster instead of being left out for good.
                return .stepped
            }
            switch m.kind {
            case .preVote:
                break  // a pre-vote never changes our term
            case .preVoteResponse where !m.reject:
                break  // granted pre-votes carry the future term
            default:
                // In the high range, at most one step per message (see `maxTerm`).
                let ceiling = max(term, Self.freeTermLimit - 1) + 1  // <= maxTerm: no overflow
                if m.term > ceiling {
                    becomeFollower(term: ceiling, leader: noNode)
                    return .clamped(.termJump)
                }
                switch m.kind {
                case .append, .heartbeat, .snapshot:
                    becomeFollower(term: m.term, leader: m.from)
                default:
                    becomeFollower(term: m.term, leader: noNode)
                }
            }
        } else if m.term < term {
            // Each answer to a stale message goes to a real peer (whose id the
            // message names), so a flood of forged stale messages would become
            // a flood towards it: at most one answer per peer per tick.
            if (config.checkQuorum || config.preVote) && (m.kind == .heartbeat || m.kind == .append) {
                // A stale leader (e.g. one that was partitioned): tell it our term so
                // it steps down.
                if mayAnswerStale(m.from) { send(Message(kind: .appendResponse, from: id, to: m.from, term: term)) }
            } else if m.kind == .preVote {
                if mayAnswerStale(m.from) {
                    send(Message(kind: .preVoteResponse, from: id, to: m.from, term: term, reject: true))
                }
            }
            return .stepped
        }

        switch m.kind {
        case .vote, .preVote:
            handleVoteRequest(m)
            return .stepped
        default:
            break
        }
        switch role {
        case .leader: return stepLeader(m)
        case .preCandidate, .candidate: return stepCandidate(m)
        case .follower: return stepFollower(m)
        }
    }

    /// Discards log entries up to `index` (which must be applied), keeping
    /// `snapshotData` — the state machine at `index` — to send to followers
    /// that need those entries. The caller persists the snapshot itself.
    public func compact(upTo index: UInt64, snapshotData: [UInt8]) {
        guard index > log.snapshot.index else { return }
        log.compact(upTo: index, data: snapshotData, members: configuration(at: index))
    }

    // MARK: - Output

    /// True when `ready()` has something and no Ready is outstanding.
    public var hasReady: Bool {
        guard outstandingReady == nil else { return false }
        return !outbox.isEmpty || log.hasUnstable || log.snapshotPending || log.applying < log.committed
            || softState != lastSoftState || hardState != lastHardState
    }

    /// The next batch of work, or nil if there is none (or one is outstanding).
    public func ready() -> Ready? {
        guard hasReady else { return nil }
        let soft = softState
        let hard = hardState
        precondition(hard.term >= lastHardState.term, "raft: term went backwards")
        precondition(hard.commit >= lastHardState.commit, "raft: commit went backwards")
        precondition(role != .leader || leader == id, "raft: leader that does not know itself")
        let snapshot: Snapshot? = log.snapshotPending ? log.snapshot : nil
        log.snapshotPending = false
        let entries = log.takeUnstable()
        let committed =
            log.applying < log.committed ? log.slice(log.applying + 1, log.committed + 1) : []
        log.applying = log.committed
        readySequence += 1
        let rd = Ready(
            softState: soft != lastSoftState ? soft : nil,
            hardState: hard != lastHardState ? hard : nil,
            snapshot: snapshot, entries: entries, messages: outbox, committedEntries: committed,
            sequence: readySequence, applyingIndex: log.applying)
        lastSoftState = soft
        lastHardState = hard
        outbox = []
        outstandingReady = readySequence
        return rd
    }

    /// Acknowledges that `rd` was fully handled (persisted, sent, applied).
    public func advance(_ rd: Ready) {
        precondition(
            outstandingReady == rd.sequence, "raft: advance with a Ready that is not the outstanding one")
        outstandingReady = nil
        log.applied = max(log.applied, rd.applyingIndex)
    }

    /// True (and noted) if `peer` has had no answer to a stale message in this tick.
    private func mayAnswerStale(_ peer: NodeID) -> Bool {
        guard staleAnswerTick[peer] != stampTick else { return false }
        staleAnswerTick[peer] = stampTick
        return true
    }

    // MARK: - Roles

    private var inLease: Bool {
        config.checkQuorum && (role == .leader || leaderContactElapsed < config.electionTicks)
    }

    private func reset(term newTerm: UInt64) {
        if term != newTerm {
            precondition(newTerm > term, "raft: term going backwards \(term) -> \(newTerm)")
            term = newTerm
            vote = noNode
        }
        if role == .leader {
            leaderContactElapsed = 0  // a deposed leader is as sticky as its followers
        }
        leader = noNode
        electionElapsed = 0
        heartbeatElapsed = 0
        randomizedElectionTimeout = config.electionTicks + rng.below(config.electionSpreadTicks)
        votes = [:]
        progress = []
        transferTarget = noNode
        transferElapsed = 0
        timeoutNowSent = false
    }

    private func becomeFollower(term newTerm: UInt64, leader newLeader: NodeID) {
        reset(term: newTerm)
        role = .follower
        leader = newLeader
    }

    private func becomePreCandidate() {
        precondition(role != .leader, "raft: leader cannot become pre-candidate")
        role = .preCandidate
        leader = noNode
        votes = [:]
        randomizedElectionTimeout = config.electionTicks + rng.below(config.electionSpreadTicks)
    }

    private func becomeCandidate() {
        precondition(role != .leader, "raft: leader cannot become candidate")
        reset(term: term + 1)
        vote = id
        role = .candidate
    }

    private func becomeLeader() {
        precondition(role == .candidate, "raft: only a candidate can become leader")
        reset(term: term)
        role = .leader
        leader = id
        progress = peers.map { Progress(id: $0, next: log.lastIndex + 1) }
        // An entry of the new term, so that earlier entries can commit (§5.4.2).
        appendAsLeader(Entry(index: log.lastIndex + 1, term: term, kind: .noop))
    }

    private func hup(transfer: Bool) {
        guard role != .leader else { return }
        // A node outside the voter set never campaigns: one joining, or one
        // whose removal has committed. Until its removal commits, a removed
        // node may still campaign (and lead, as a removed leader does until
        // commit, §4.2.2), counting only the votes of the new voter set: else
        // a leader that appended its own removal and then lost office to a
        // partition could hold the only log with that entry, and the
        // remaining voters, refused by it as less up to date, could never
        // elect anyone.
        guard isVoter || configIndex > log.committed else { return }
        // Never campaign into the refused range (only a forged term can bring us
        // here), so a persisted term always stays below `maxTerm`.
        guard term + 1 < Self.maxTerm else { return }
        if config.preVote && !transfer {
            campaignPre()
        } else {
            campaignVote(transfer: transfer)
        }
    }

    private func campaignPre() {
        becomePreCandidate()
        if poll(id, granted: true) == .won {
            campaignVote(transfer: false)
            return
        }
        sendPreVotes()
    }

    /// The pre-vote request to every voter that has not answered this pre-election.
    private func sendPreVotes() {
        for p in peers where votes[p] == nil {
            send(
                Message(
                    kind: .preVote, from: id, to: p, term: term + 1, logTerm: log.lastTerm,
                    index: log.lastIndex))
        }
    }

    private func campaignVote(transfer: Bool) {
        becomeCandidate()
        if poll(id, granted: true) == .won {
            becomeLeader()
            return
        }
        for p in peers {
            send(
                Message(
                    kind: .vote, from: id, to: p, term: term, logTerm: log.lastTerm, index: log.lastIndex,
                    transfer: transfer))
        }
    }

    private enum VoteResult { case pending, won, lost }

    private func poll(_ voter: NodeID, granted: Bool) -> VoteResult {
        if votes[voter] == nil { votes[voter] = granted }
        var yes = 0
        var no = 0
        // Only the current voters count (the configuration may change mid-election).
        for (v, g) in votes where (v == id && isVoter) || peers.contains(v) {
            if g { yes += 1 } else { no += 1 }
        }
        if yes >= quorum { return .won }
        if no > peers.count + (isVoter ? 1 : 0) - quorum { return .lost }
        return .pending
    }

    // MARK: - Ticks

    /// Election timer. A pre-candidate also asks again, every heartbeat
    /// interval, the voters that have not answered (etcd waits for its next
    /// election timeout instead). A voter that heard the old leader a little
    /// later than we did ignores our first request while its lease guard
    /// holds (stickiness; it sends no answer); asked again, it grants as soon
    /// as that guard ends, not a whole randomized timeout later: failover is
    /// then bounded by the first timeout plus one heartbeat interval. Safe: a
    /// pre-vote changes no state on either side (no term, no vote, no timer),
    /// and every voter still refuses while it heard from a leader within
    /// `electionTicks`, so the lease argument (`hasLease`) is untouched.
    private func tickElection() {
        electionElapsed += 1
        if electionElapsed >= randomizedElectionTimeout {
            electionElapsed = 0
            hup(transfer: false)
        } else if role == .preCandidate && electionElapsed % config.heartbeatTicks == 0 {
            sendPreVotes()
        }
    }

    private func tickLeader() {
        heartbeatElapsed += 1
        electionElapsed += 1
        if electionElapsed >= config.electionTicks {
            electionElapsed = 0
            if config.checkQuorum {
                let active = (isVoter ? 1 : 0) + progress.filter(\.recentActive).count
                if active < quorum {
                    becomeFollower(term: term, leader: noNode)
                    return
                }
                for pr in progress { pr.recentActive = false }
            }
        }
        if transferTarget != noNode {
            transferElapsed += 1
            if transferElapsed >= config.electionTicks {
                if timeoutNowSent {
                    // The target may still win with the TimeoutNow we sent; we cannot
                    // hold a lease any more in this term, so stop leading.
                    becomeFollower(term: term, leader: noNode)
                    return
                }
                transferTarget = noNode
                transferElapsed = 0
            }
        }
        if heartbeatElapsed >= config.heartbeatTicks {
            heartbeatElapsed = 0
            for pr in progress {
                send(
                    Message(
                        kind: .heartbeat, from: id, to: pr.id, term: term, commit: min(pr.match, log.committed),
                        leaseTick: stampTick))
            }
        }
    }

    // MARK: - Votes

    private func handleVoteRequest(_ m: Message) {
        let responseKind: MessageKind = m.kind == .vote ? .voteResponse : .preVoteResponse
        let canVote =
            vote == m.from || (vote == noNode && leader == noNode)
            || (m.kind == .preVote && m.term > term)
        let yields = m.kind != .preVote || role != .preCandidate || yieldsPreVote(to: m)
        if canVote && yields && log.isUpToDate(lastIndex: m.index, lastTerm: m.logTerm) {
            send(Message(kind: responseKind, from: id, to: m.from, term: m.term))
            if m.kind == .vote {
                electionElapsed = 0
                vote = m.from
            }
        } else {
            send(Message(kind: responseKind, from: id, to: m.from, term: term, reject: true))
        }
    }

    /// A pre-candidate grants another pre-candidate's pre-vote only if that
    /// one's log is more up to date than ours, or as up to date and its id is
    /// lower. Two followers whose timers fire together (a loaded machine
    /// starves both loops, each catches its ticks up at once) would
    /// otherwise both win their pre-votes, both become candidates of the
    /// same term and split the vote: another whole timeout. The tie-break
    /// only decides who campaigns first: the one refused stays a
    /// pre-candidate and grants the other's real vote; a refused pre-vote
    /// changes nothing, so safety is untouched (etcd grants either way).
    private func yieldsPreVote(to m: Message) -> Bool {
        if m.logTerm != log.lastTerm { return m.logTerm > log.lastTerm }
        if m.index != log.lastIndex { return m.index > log.lastIndex }
        return m.from < id
    }

    private func stepCandidate(_ m: Message) -> StepOutcome {
        switch m.kind {
        case .append, .heartbeat, .snapshot:
            becomeFollower(term: term, leader: m.from)
            return stepFollower(m)
        case .preVoteResponse:
            guard role == .preCandidate, m.reject || m.term == term + 1 else { return .stepped }
            switch poll(m.from, granted: !m.reject) {
            case .won: campaignVote(transfer: false)
            case .lost: becomeFollower(term: term, leader: noNode)
            case .pending: break
            }
        case .voteResponse:
            guard role == .candidate else { return .stepped }
            switch poll(m.from, granted: !m.reject) {
            case .won: becomeLeader()
            case .lost: becomeFollower(term: term, leader: noNode)
            case .pending: break
            }
        default:
            break
        }
        return .stepped
    }

    // MARK: - Follower

    private func stepFollower(_ m: Message) -> StepOutcome {
        switch m.kind {
        case .append, .heartbeat, .snapshot:
            // At most one leader per term: a second one is a buggy or hostile
            // peer, never a reason to trap (or to follow it).
            guard leader == noNode || leader == m.from else { return .refused(.secondLeader) }
            leader = m.from
            electionElapsed = 0
            leaderContactElapsed = 0
            switch m.kind {
            case .append: handleAppend(m)
            case .heartbeat: return handleHeartbeat(m)
            default: handleSnapshot(m)
            }
        case .timeoutNow:
            // Only our leader starts a transfer; anyone else would just force elections.
            guard leader != noNode && leader == m.from else { return .refused(.timeoutNowNotFromLeader) }
            hup(transfer: true)
        default:
            break
        }
        return .stepped
    }

    private func handleAppend(_ m: Message) {
        defer {
            // A configuration entry appended, or one possibly replaced by a
            // conflicting suffix: the voter set follows the log.
            if m.entries.contains(where: { $0.kind == .config }) || configIndex > m.index { rebuildConfiguration() }
        }
        if m.index < log.committed {
            send(
                Message(
                    kind: .appendResponse, from: id, to: m.from, term: term, index: log.committed,
                    leaseTick: m.leaseTick))
            return
        }
        if let lastNew = log.maybeAppend(
            prevIndex: m.index, prevTerm: m.logTerm, leaderCommit: m.commit, m.entries)
        {
            send(
                Message(
                    kind: .appendResponse, from: id, to: m.from, term: term, index: lastNew,
                    leaseTick: m.leaseTick))
        } else {
            let hint = log.findConflictByTerm(min(m.index, log.lastIndex), m.logTerm)
            send(
                Message(
                    kind: .appendResponse, from: id, to: m.from, term: term, logTerm: hint.term,
                    index: m.index,
                    reject: true, rejectHint: hint.index, leaseTick: m.leaseTick))
        }
    }

    private func handleHeartbeat(_ m: Message) -> StepOutcome {
        // A leader sends min(match, commit), never beyond our log. A larger
        // commit is bogus: the heartbeat still counts as leader contact, but its
        // commit is clamped to what we have already committed. (Clamping to our
        // last index instead could commit a stale tail of an older term that the
        // leader has not matched yet: entries the cluster never committed.)
        let beyond = m.commit > log.lastIndex
        if !beyond { log.commit(to: m.commit) }
        send(
            Message(kind: .heartbeatResponse, from: id, to: m.from, term: term, leaseTick: m.leaseTick))
        return beyond ? .clamped(.commitBeyondLog) : .stepped
    }

    private func handleSnapshot(_ m: Message) {
        let s = m.snapshot!
        if s.index <= log.committed {
            // Nothing new.
        } else if log.matchTerm(s.index, s.term) {
            log.commit(to: s.index)  // we already have that prefix
        } else {
            log.restore(s)
            rebuildConfiguration()
        }
        send(
            Message(
                kind: .appendResponse, from: id, to: m.from, term: term, index: log.committed,
                leaseTick: m.leaseTick))
    }

    // MARK: - Leader

    private func appendAsLeader(_ entry: Entry) {
        precondition(role == .leader && entry.term == term && entry.index == log.lastIndex + 1)
        log.append([entry])
        let before = progress
        if entry.kind == .config { rebuildConfiguration() }  // in force once appended
        _ = maybeCommit()  // a single-node cluster commits at once
        for pr in progress { sendAppend(pr) }
        // A removed follower gets one last append (best effort, never
        // counted: its progress is gone), so a live one usually learns its
        // removal — the change is in force on append — and stops campaigning
        // instead of timing out; its answer is ignored (no progress).
        for pr in before where !progress.contains(where: { $0.id == pr.id }) && pr.state != .snapshot {
            sendAppend(pr)
        }
        maybeStepDownRemoved()
    }

    /// Commits the highest index replicated on a quorum, if it is of the
    /// current term (§5.4.2). Returns true if the commit index moved.
    private func maybeCommit() -> Bool {
        // A leader being removed replicates but does not count itself (§4.2.2).
        let candidate = quorumValue(self: isVoter ? log.lastIndex : 0, needed: quorum) { $0.match }
        guard candidate > log.committed, log.term(at: candidate) == term else { return false }
        log.commit(to: candidate)
        return true
    }

    /// The largest value `v` such that at least `needed` of {our own value,
    /// every follower's value} are `>= v`: what a quorum has reached. No allocation.
    private func quorumValue(self own: UInt64, needed: Int, _ value: (Progress) -> UInt64) -> UInt64 {
        func reached(_ v: UInt64) -> Bool {
            var atLeast = own >= v ? 1 : 0
            for pr in progress where value(pr) >= v { atLeast += 1 }
            return atLeast >= needed
        }
        var best: UInt64 = reached(own) ? own : 0
        for pr in progress {
            let v = value(pr)
            if v > best && reached(v) { best = v }
        }
        return best
    }

    /// Sends entries from `pr.next` (or the snapshot if they are compacted).
    @discardableResult
    private func sendAppend(_ pr: Progress, sendIfEmpty: Bool = true) -> Bool {
        if pr.isPaused(maxInflight: config.maxInflightEntries) { return false }
        let prevIndex = pr.next - 1
        guard let prevTerm = log.term(at: prevIndex) else {
            // The entries this follower needs are compacted: send the snapshot.
            let s = log.snapshot
            precondition(s.index > 0)
            pr.state = .snapshot
            pr.pendingSnapshot = s.index
            pr.probeSent = false
            send(
                Message(
                    kind: .snapshot, from: id, to: pr.id, term: term, leaseTick: stampTick, snapshot: s))
            return true
        }
        let entries = log.slice(pr.next, log.lastIndex + 1, limit: config.maxEntriesPerMessage)
        if entries.isEmpty && !sendIfEmpty { return false }
        send(
            Message(
                kind: .append, from: id, to: pr.id, term: term, logTerm: prevTerm, index: prevIndex,
                commit: log.committed,
                entries: entries, leaseTick: stampTick))
        switch pr.state {
        case .replicate:
            if let last = entries.last { pr.next = last.index + 1 }
        case .probe:
            pr.probeSent = true
        case .snapshot:
            preconditionFailure("raft: append sent in snapshot state")
        }
        return true
    }

    private func sendTimeoutNow(to target: NodeID) {
        timeoutNowSent = true
        send(Message(kind: .timeoutNow, from: id, to: target, term: term))
    }

    private func stepLeader(_ m: Message) -> StepOutcome {
        guard let pr = progress.first(where: { $0.id == m.from }) else { return .stepped }
        switch m.kind {
        case .appendResponse:
            // Validated before anything is noted: an acknowledgement of an index
            // we do not have, or a hint beyond the index it rejects, is refused.
            // (In our term our log only grows, and every append we sent was
            // within it; a follower's hint is never beyond the rejected index.)
            if m.index > log.lastIndex { return .refused(.indexBeyondLog) }
            if m.reject && m.rejectHint > m.index { return .refused(.hintBeyondLog) }
            noteAcknowledgement(m, pr)
            handleAppendResponse(m, pr)
        case .heartbeatResponse:
            noteAcknowledgement(m, pr)
            pr.probeSent = false
            if pr.state == .snapshot || (pr.state == .replicate && pr.match < log.lastIndex) {
                // The snapshot or appends in flight may be lost: probe again.
                pr.becomeProbe()
            }
            if pr.match < log.lastIndex { sendAppend(pr) }
        case .append, .heartbeat, .snapshot:
            // Another leader's messages cannot exist in our term.
            return .refused(.secondLeader)
        case .timeoutNow:
            return .refused(.timeoutNowNotFromLeader)
        default:
            return .stepped
        }
        if m.from == transferTarget && pr.match == log.lastIndex && !timeoutNowSent {
            sendTimeoutNow(to: m.from)
        }
        return .stepped
    }

    private func noteAcknowledgement(_ m: Message, _ pr: Progress) {
        pr.recentActive = true
        if m.leaseTick <= stampTick {
            pr.ackedTick = max(pr.ackedTick, m.leaseTick)
        } else {
            droppedMessages += 1  // echoes a tick we never sent: ignore it for the lease
        }
    }

    private func handleAppendResponse(_ m: Message, _ pr: Progress) {
        if m.reject {
            var hint = m.rejectHint
            if m.logTerm > 0 { hint = log.findConflictByTerm(m.rejectHint, m.logTerm).index }
            if pr.maybeDecrease(rejected: m.index, hint: hint) {
                if pr.state == .replicate { pr.becomeProbe() }
                sendAppend(pr)
            }
            return
        }
        assert(m.index <= log.lastIndex, "raft: refused in stepLeader")
        let wasPaused = pr.isPaused(maxInflight: config.maxInflightEntries)
        let updated = pr.maybeUpdate(m.index) || (pr.match == m.index && pr.state == .probe)
        guard updated else { return }
        switch pr.state {
        case .probe:
            pr.becomeReplicate()
        case .snapshot:
            if pr.match + 1 >= log.firstIndex { pr.becomeReplicate() }
        case .replicate:
            break
        }
        if maybeCommit() {
            for other in progress { sendAppend(other) }
            maybeStepDownRemoved()
            guard role == .leader else { return }
        } else if wasPaused {
            sendAppend(pr)
        }
        // Keep the pipeline full while there is more to send.
        while pr.state == .replicate && pr.next <= log.lastIndex && sendAppend(pr, sendIfEmpty: false) {
        }
    }

    private func send(_ m: Message) {
        assert(m.structuralProblem() == nil, "raft: built a malformed message: \(m)")
        outbox.append(m)
    }
}
