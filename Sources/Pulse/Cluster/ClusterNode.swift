// Cluster: the live ports of PulsePolicy.ClusterShell, the driver loop
// (etcd raft's doc.go) that the whole-cluster simulator runs too:
//
//     tick timer      → shell.tick      (core.tick)
//     RaftTransport   → shell.receive   (core.step)
//     core.nextReady  → RaftStore (synced on its own thread) → core.finish
//                     → RaftTransport.send → events
//
// Everything that is not I/O — leadership, the lease, hand-over, clock
// samples, degradation, the publish mode, the tempo barrier, proposals,
// membership, the shape refusal, the bootstrap epoch, compaction — is the
// core's, the class the whole-cluster simulator runs. This file gives it
// time (a monotonic tick timer that catches up after a stall, e.g. SIGSTOP),
// durability (RaftStore: a Ready's messages go out only once what they
// acknowledge is synced), a network (RaftTransport) and a listener for its
// events (the service: `onEvent`).
//
// Membership: the peer list follows the voter set in force (`.votersChanged`),
// and with it the transport and the echo filter's publishers. While a change
// is new, the transport keeps the old members too until the next Ready's
// messages are out (a removed follower gets its last append).
import CLoop
import Foundation
import Logging
import PulseCore
import PulsePolicy
import Raft

final class ClusterNode: LoopHandler, RaftInbox, ClusterPorts {
    /// The cluster as the voter set in force describes it (and this node).
    private(set) var peers: PeerList
    /// -peers as given: addresses of bootstrap voters (no context in the log).
    let bootstrapPeers: PeerList
    let core: ClusterCore
    /// The driver loop over this node's ports (set once at the end of init).
    private(set) var shell: ClusterShell!
    private unowned let loop: EventLoop
    private let logger: Logger
    /// Refused Raft input (transport frames, messages, clock samples: §10).
    private let rejected: RejectedInput
    /// Reasons already logged once (a hostile peer must not flood the log).
    private var loggedRejections: Set<String> = []
    private let store: RaftStore
    private var transport: RaftLink!
    private let clock: ShellClock
    private var tickToken: UInt32 = 0
    /// A lone voter (a single node: `NoPeerLink`) has no heartbeat to send
    /// and none to hear, and its lease lasts while it leads
    /// (`ClusterCore.refreshLease`): its ticks need not be punctual. Its
    /// tick timer coalesces (`EventLoop.armCoalescing`): the ticks due are
    /// delivered at the end of a turn the loop makes anyway (a beat's) once
    /// `loneTickIntervalNs / 2` passed since the last delivery, and the
    /// timer itself fires only `loneTickIntervalNs` after it, so a single
    /// node's loop does not wake twenty times a second for nothing (issue
    /// 24: in timer-only mode the ticks were most of its wakes). Ticks are
    /// never early (TickPolicy).
    private var lone = false
    static let loneTickIntervalNs: Int64 = 1_000_000_000
    /// Old members kept reachable until the next Ready's messages are out.
    private var transitional = false
    private(set) var storeErrors: UInt64 = 0
    /// Store completions run on the loop (a Ready's save came back).
    private(set) var completedSaves = 0
    /// The core's events, for the service (loop thread).
    var onEvent: ((ClusterEvent) -> Void)?

    /// The service's node: `<dataDir>/raft`, RaftTransport (a `NoPeerLink`
    /// for a lone voter: `alone`, a single node), the loop's clocks.
    convenience init(
        peers: PeerList, timing: ClusterTiming, dataDir: String, bootstrapBpm: Int64?, shape: TimelineShape,
        loop: EventLoop, rejected: RejectedInput, logger: Logger, tls: RaftTLS? = nil, joining: Bool = false,
        sync: DiskSync = .untimed, alone: Bool = false
    ) throws {
        let store = try RaftStore(dataDir: dataDir, rejected: rejected, sync: sync)
        try self.init(
            peers: peers, timing: timing, store: store, dataDir: dataDir,
            seed: UInt64.random(in: 1...UInt64.max), clock: ShellClock(), bootstrapBpm: bootstrapBpm, shape: shape,
            loop: loop, rejected: rejected, logger: logger, joining: joining
        ) { inbox, peers in
            if alone { return NoPeerLink() }
            return try RaftTransport(
                loop: loop, peers: peers, limits: .forElectionTimeout(timing.electionNs), rejected: rejected,
                logger: logger, inbox: inbox, tls: tls)
        }
    }

    /// A node over `store` (of `dataDir`, for messages), the link `makeLink`
    /// builds and `clock`.
    init(
        peers: PeerList, timing: ClusterTiming, store: RaftStore, dataDir: String, seed: UInt64,
        clock: ShellClock, bootstrapBpm: Int64?, shape: TimelineShape, loop: EventLoop, rejected: RejectedInput,
        logger: Logger, joining: Bool = false, makeLink: (RaftInbox, PeerList) throws -> RaftLink
    ) throws {
        self.peers = peers
        self.bootstrapPeers = peers
        self.rejected = rejected
        self.loop = loop
        self.logger = logger
        self.store = store
        self.clock = clock
        // A joining node's bootstrap configuration is everyone it knows but
        // itself: it is no voter (never campaigns) until the leader adds it.
        let voters = peers.peers.map(\.raftId).filter { !joining || $0 != peers.me.raftId }
        (core, _) = try Self.coreFromDisk(
            store: store, id: peers.me.raftId, voters: voters, timing: timing, seed: seed, nowMonoNs: clock.monoNs(),
            shape: shape, joining: joining, bootstrapBpm: bootstrapBpm, dataDir: dataDir, logger: logger)
        // A restarted node's voter set may differ from -peers (changes in its log).
        self.peers = Self.peerList(core.members, current: peers, fallback: peers, logger: logger)
        transport = try makeLink(self, self.peers)
        lone = transport is NoPeerLink
        tickToken = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: self)
        shell = ClusterShell(core: core, ports: self)
    }

    func start() throws {
        try transport.start()
        if lone {
            try loop.armCoalescing(tickToken, intervalNs: Self.loneTickIntervalNs, earlyNs: Self.loneTickIntervalNs / 2)
        } else {
            try loop.armTimer(tickToken, afterNs: core.timing.tickNs, intervalNs: core.timing.tickNs)
        }
        shell.start()  // ticks from now; a lone voter campaigns at once (as in the simulator)
    }

    func stop() {
        loop.disarmTimer(tickToken)
        transport.stop()
    }

    // MARK: inputs

    func loopEvent(token: UInt32, events: UInt32) {
        loop.readTimer(tickToken)
        shell.tick()
    }

    /// A message from a peer (decoded, addressed and within its connection's
    /// rate: RaftTransport); the core validates it and its clock sample.
    func transportReceived(_ message: Message, clockSample: SyncSample?, peerWallNs: Int64) {
        shell.receive(message, clockSample: clockSample, peerWallNs: peerWallNs)
    }

    // MARK: ports

    var monoNs: Int64 { clock.monoNs() }
    var wallNs: Int64 { clock.wallNs() }

    /// RaftStore syncs on its own queue; the completion comes back through
    /// the loop's completion slot (never dropped: fault 5).
    func persist(_ ready: Ready, done: @escaping (Error?) -> Void) {
        store.save(hardState: ready.hardState, snapshot: ready.snapshot, entries: ready.entries) { [loop] error in
            loop.postCompletion { [weak self] in
                self?.completedSaves += 1
                done(error)
            }
        }
    }

    func send(_ message: Message) { transport.send(message) }

    func messagesSent() {
        guard transitional else { return }
        transitional = false
        transport.setPeers(peers)
    }

    func persistFailed(_ error: Error) {
        storeErrors &+= 1
        logger.critical("raft: cannot persist; stopping", metadata: ["error": "\(error)"])
        loop.requestStop()
    }

    func handle(_ event: ClusterEvent) {
        switch event {
        case .rejected(let reason, let from): reject(reason, from: from)
        case .compacted(let snapshot): persistCompaction(snapshot)
        case .votersChanged(let members): votersChanged(members)
        case .refusal(let why):
            logger.critical("refusing to run: \(why)")
            loop.requestStop()
        case .degradation(let change): logDegradation(change)
        case .leadership(let role, _, let term):
            // The role as it is: a pre-candidate or candidate is no follower.
            logger.info(
                "raft: \(Self.roleName(role))",
                metadata: ["term": "\(term)", "leader": "\(leaderPeer?.name ?? "none")"])
        case .applied(.refused(let why), let index):
            rejected.record(.raft, "bad_committed_entry")
            logger.error("raft: committed entry refused", metadata: ["index": "\(index)", "why": "\(why)"])
        case .applied, .restored, .configuration, .peerClock, .proposal: break
        }
        onEvent?(event)
    }

    /// The role's name in the log (`raft: <name>`).
    static func roleName(_ role: Role) -> String {
        switch role {
        case .leader: "leader"
        case .follower: "follower"
        case .preCandidate: "pre-candidate"
        case .candidate: "candidate"
        }
    }

    private func reject(_ reason: String, from peer: NodeID) {
        rejected.record(.raft, reason)
        guard loggedRejections.insert(reason).inserted else { return }
        logger.warning(
            "raft: refused input from a peer (logged once per reason, counted in backbeat_rejected_input_total)",
            metadata: ["reason": "\(reason)", "from": "\(peers.peer(raftId: peer)?.name ?? "\(peer)")"])
    }

    private func persistCompaction(_ snapshot: Snapshot) {
        store.compact(snapshot) { [logger] error in
            if let error { logger.error("raft: snapshot not persisted", metadata: ["error": "\(error)"]) }
        }
    }

    /// The voter set in force changed: the new members become reachable now,
    /// the old ones stay until the next Ready's messages are out.
    private func votersChanged(_ members: [Member]) {
        let list = Self.peerList(members, current: peers, fallback: bootstrapPeers, logger: logger)
        var union = list
        for old in peers.peers where union.peer(raftId: old.raftId) == nil { union.peers.append(old) }
        peers = list
        transitional = true
        transport.setPeers(union)
        logger.info(
            "raft: voter set changed",
            metadata: [
                "voters": "\(members.map { list.peer(raftId: $0.id)?.name ?? "\($0.id)" })", "voter": "\(isVoter)",
            ])
    }

    private static func peerList(_ members: [Member], current: PeerList, fallback: PeerList, logger: Logger)
        -> PeerList
    {
        let (list, unknown) = current.reconfigured(members: members, fallback: fallback)
        if !unknown.isEmpty {
            logger.warning(
                "raft: voters without a known address (no context in the log, not in -peers)",
                metadata: ["ids": "\(unknown)"])
        }
        return list
    }

    private func logDegradation(_ change: DegradationPolicy.Change) {
        switch change {
        case .none: break
        case .left: logger.info("leaving degradation", metadata: ["leader": "\(leaderPeer?.name ?? "none")"])
        case .entered:
            logger.warning(
                "entering degradation: no leader; keeping the committed timeline locally",
                metadata: [
                    "offset_ms": "\(Double(core.referenceSync?.offsetNs ?? 0) / 1e6)",
                    "rate_ppm": "\(core.referenceSync?.ratePpm ?? 0)",
                    // The clock its turns are measured on (none: its own).
                    "turn_reference_rate_ppm": "\(core.degradedReference.map { "\($0.ratePpm)" } ?? "none")",
                ])
        }
    }

    // MARK: requests (loop thread)

    /// Proposes `command`; `done` hears how it ended (fault 4: `.unknown`
    /// when leadership was lost first, the entry may still commit).
    func propose(_ command: ClusterCommand, done: @escaping (ProposalOutcome) -> Void) {
        shell.propose(command, done: done)
    }

    /// Leader only: adds `peer` or removes the voter `id` (single-server
    /// change); `done` hears the commit outcome when `.accepted` is returned.
    func proposeMembership(add peer: Peer?, remove id: NodeID?, done: @escaping (ProposalOutcome) -> Void)
        -> MembershipProposal
    {
        let member = peer.map { Member(id: $0.raftId, context: $0.memberContext) }
        return shell.proposeMembership(
            add: member, remove: id, context: { [peers] id in peers.peer(raftId: id)?.memberContext }, done: done)
    }

    /// Hands leadership to `target` (nil: the most up-to-date follower).
    @discardableResult
    func transferLeadership(to target: NodeID? = nil) -> Bool { shell.transferLeadership(to: target) }

    // MARK: status (loop thread)

    var isLeader: Bool { core.isLeader }
    var isVoter: Bool { core.isVoter }
    var term: UInt64 { core.term }
    var commitIndex: UInt64 { core.commitIndex }
    var leader: NodeID { core.leader }
    var leaderPeer: Peer? { peers.peer(raftId: core.leader) }
    var leadershipChanges: UInt64 { core.leadershipChanges }
    var lastContactMonoNs: Int64 { core.lastLeaderContactMonoNs }
    var degraded: Bool { core.degraded }
    var degradedSinceMonoNs: Int64 { core.degradation.sinceMonoNs }
    var syncs: [NodeID: ClockSync] { core.syncs }
    var referenceSync: ClockSync? { core.referenceSync }
    /// The shape of the committed timeline, once the epoch is applied.
    var committedShape: TimelineShape? { core.machine.shape }
    var changePending: Bool { core.changePending }
    var refusal: PulseError? { core.refusal.map { PulseError.config($0) } }
    var transportStats: RaftTransportStats { transport.stats }
    /// Forwarded admin requests between members (RaftForwarding.swift), nil for a link without them.
    var forwardLink: ForwardLink? { transport as? ForwardLink }
    /// The voters in force, as peers when their address is known.
    var voters: [(id: NodeID, peer: Peer?)] { core.members.map { ($0.id, peers.peer(raftId: $0.id)) } }
    /// For backups: the applied state, the index it reflects, and whether
    /// that is the whole log.
    var appliedState: (state: ClusterState?, index: UInt64, complete: Bool) {
        (core.machine.state, core.appliedIndex, core.appliedAll)
    }
}
