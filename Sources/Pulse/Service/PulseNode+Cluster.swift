// Service: the node as the Raft cluster sees it — the publish gate, the
// committed epoch and tempo changes, leadership changes, and forwarding of
// tempo requests from followers to the leader.
import CLoop
import Crypto
import Foundation
import PulseCore
import PulsePolicy
import Raft

extension PulseNode {
    /// The local wall time at which the committed timeline (the last
    /// leader's clock) reads `timelineNs`; identity without an estimate.
    func localNs(forTimelineNs timelineNs: Int64) -> Int64 {
        guard let sync = cluster?.core.referenceSync else { return timelineNs }
        return sync.localNs(atReference: timelineNs)
    }

    /// The inverse of `localNs(forTimelineNs:)`.
    func timelineNs(forLocalNs localNs: Int64) -> Int64 {
        guard let sync = cluster?.core.referenceSync else { return localNs }
        return sync.referenceNs(atLocal: localNs)
    }

    /// The cluster core's events, as they reach the service (the shell has
    /// logged, counted and persisted what is its own). The beat side reacts
    /// first (`BeatShell.clusterEvent`: it reads the committed timeline from
    /// the core, its one owner); the service then logs and announces.
    func clusterEvent(_ event: ClusterEvent) {
        let retroactiveBefore = beats.retroactiveTempoChanges
        beats.shell.clusterEvent(event)
        if beats.retroactiveTempoChanges != retroactiveBefore, case .applied(.tempo(let change), _) = event {
            // Cannot happen (fault 4: the proposer's barrier, a leader's
            // term-start gate): the committed log still wins, alike on every
            // node, but the breach is logged.
            logger.error(
                "committed tempo change at a beat already published here",
                metadata: ["at_beat": "\(change.atBeat)", "next_beat": "\(beats.nextBeat)"])
        }
        switch event {
        case .applied(.epoch(let epoch), _):
            logger.info("timeline committed", metadata: ["start_ns": "\(epoch.startNs)", "bpm": "\(epoch.bpm)"])
            committedTimelineChanged()
        case .applied(.tempo, _):
            tempo.committedChangeApplied(justification: cluster?.core.machine.justification ?? "")
            committedTimelineChanged()
        case .restored(_, let state):
            logger.info(
                "timeline restored", metadata: ["start_ns": "\(state.epoch.startNs)", "bpm": "\(state.epoch.bpm)"])
            if state.pending != nil { tempo.committedChangeApplied(justification: state.justification) }
            committedTimelineChanged()
        case .leadership(let role, _, _):
            if role == .leader {
                committedTimelineChanged()
            } else if stopRequested {
                loop.requestStop()  // leadership handed over: now stop
            }
        case .votersChanged:
            membersGeneration &+= 1  // the beat subscription's publishers follow it (`subscribeBeats`)
        case .peerClock(let wallNs):
            // §3: Raft traffic merges into the HLC like beat frames (as `(ms, 0)`).
            beats.shell.mergeRemote(HLCStamp(wallMs: wallNs / 1_000_000, counter: 0), wallNs: cloop_realtime_ns())
        case .applied, .proposal, .configuration, .rejected, .refusal, .degradation, .compacted:
            break
        }
    }

    /// A follower forwards tempo requests to the leader over the Raft
    /// transport (RaftForwarding.swift: only members speak there, and no
    /// credential travels); the leader serves members' requests like its own
    /// `POST /tempo`.
    func enableForwarding() throws {
        guard let cluster, let link = cluster.forwardLink else { return }
        let forwarder = try TempoForwarder(loop: loop, link: link, rejected: rejected, logger: logger)
        if raftTLS == nil, let token = config.adminToken, !token.isEmpty {
            forwarder.macKey = SymmetricKey(data: Array(token.utf8))
        }
        forwarder.leader = { [unowned cluster] in
            let leader = cluster.leader
            return leader == noNode || leader == cluster.peers.me.raftId ? nil : leader
        }
        forwarder.serve = { [unowned self] body, answer in self.serveForwardedTempo(body, answer: answer) }
        tempo.forward = { [unowned self] request, reply in
            forwarder.forward(request) { decision in
                // Refusals of the forwarder itself (the leader counts its own).
                if case .refused(_, let code, _) = decision, code == "no_leader" || code == "outcome_unknown" {
                    self.metrics.tempoRefused(reason: code)
                }
                reply(decision)
            }
        }
    }

    /// Leader side: a member's forwarded `POST /tempo` body. A node that is
    /// not the leader (any more) answers 503 `no_leader` and never forwards it again.
    func serveForwardedTempo(_ body: [UInt8], answer: @escaping (Int, Data) -> Void) {
        guard tempo.canCommit() else {
            return answer(503, Self.errorBody("the node asked is not the leader (any more)", "no_leader"))
        }
        switch AdminRouter.parseTempoBody(body, maxJustificationBytes: 1024) {
        case .failure(let failure):
            tempo.recordRefusal(reason: failure.code)
            answer(400, Self.errorBody(failure.message, failure.code))
        case .success(let request):
            tempo.request(request) { decision in
                let (status, body) = Self.answerBody(decision)
                answer(status, body)
            }
        }
    }
}

// MARK: - membership (admin API)

extension PulseNode {
    /// The voter set in force on this node (`GET /members`): a single node
    /// answers with its one voter (itself, no Raft address: it listens
    /// nowhere); with -election nats-kv, the pulses seen (`kvMembers`).
    func members() -> MembersBody? {
        if let kv { return kvMembers(kv) }
        guard let cluster else { return nil }
        let entries = cluster.voters.map { voter in
            MemberEntry(
                id: String(voter.id, radix: 16).leftPadded(to: 16), name: voter.peer?.name,
                raft: alone ? nil : voter.peer?.address, leader: voter.id == cluster.leader)
        }
        return MembersBody(
            members: entries, leader: cluster.leaderPeer?.name, change_pending: cluster.changePending,
            node_id: nodeId, voter: cluster.isVoter)
    }

    /// 503 `not_leader`, naming the leader when known (retry there).
    private func notLeader(_ cluster: ClusterNode) -> MembershipAnswer {
        let leader = cluster.leaderPeer?.name
        return .refused(
            status: 503, code: "not_leader",
            message: "this node is not the leader; retry on the leader's admin API"
                + (leader.map { " (\($0))" } ?? " (none known yet)"), leader: leader)
    }

    /// `POST /members` / `DELETE /members/{name}`: one single-server change
    /// through Raft, answered once committed. Refusals: 503 `not_leader`,
    /// 409 `change_pending` (a change is uncommitted, or the leader has not
    /// committed in its term yet), 409 `already_member`, 404 `not_member`,
    /// 400 `name_collision` (an HLC suffix another voter has), 400
    /// `invalid_change` (e.g. removing the last voter), 409 `is_leader`
    /// (removing the leader itself: transfer first); after acceptance 503
    /// `outcome_unknown` (leadership lost: it may still commit) or
    /// `not_committed`.
    func changeMembers(_ request: MembershipRequest, reply: @escaping (MembershipAnswer) -> Void) {
        if kv != nil { return reply(Self.kvNoVoterSet) }
        guard let cluster, !alone else {
            return reply(
                .refused(
                    status: 409, code: "not_clustered",
                    message: "a single node's voter set is itself alone: it has no transport to add voters over",
                    leader: nil))
        }
        guard cluster.isLeader else { return reply(notLeader(cluster)) }
        if cluster.changePending {
            return reply(
                .refused(
                    status: 409, code: "change_pending",
                    message:
                        "a membership change is not committed yet; retry when GET /members shows change_pending false",
                    leader: nil))
        }
        let change: (add: Peer?, remove: NodeID?)
        switch Self.validated(request, cluster: cluster) {
        case .success(let valid): change = valid
        case .failure(let refusal): return reply(refusal.answer)
        }
        let outcome = cluster.proposeMembership(add: change.add, remove: change.remove) { [weak self] outcome in
            guard let self, let body = self.members() else { return }
            switch outcome {
            case .committed: reply(.done(status: 200, body))
            case .refused:
                reply(
                    .refused(status: 503, code: "not_committed", message: "the change was not committed", leader: nil))
            case .unknown:
                reply(
                    .refused(
                        status: 503, code: "outcome_unknown",
                        message:
                            "leadership was lost before the change committed; it may still take effect (check GET /members)",
                        leader: nil))
            }
        }
        switch outcome {
        case .accepted:
            logger.info("raft: membership change proposed", metadata: ["change": "\(request)"])
        case .notLeader: reply(notLeader(cluster))
        case .pending:
            reply(
                .refused(
                    status: 409, code: "change_pending",
                    message:
                        "a change is not committed yet, or the leader has not committed in its term; retry shortly",
                    leader: nil))
        case .invalid(let why):
            reply(.refused(status: 400, code: "invalid_change", message: why, leader: nil))
        }
    }

    /// A membership refusal, as an error so `validated` can return it.
    struct Refusal: Error { let answer: MembershipAnswer }

    /// The voter to add or remove for `request`, or the 4xx that refuses it.
    static func validated(_ request: MembershipRequest, cluster: ClusterNode) -> Result<
        (add: Peer?, remove: NodeID?), Refusal
    > {
        func refuse(_ status: Int, _ code: String, _ message: String) -> Result<(add: Peer?, remove: NodeID?), Refusal>
        {
            .failure(Refusal(answer: .refused(status: status, code: code, message: message, leader: nil)))
        }
        let voterIds = cluster.voters.map(\.id)
        switch request {
        case .add(let name, let raft):
            guard var peer = try? PeerList.parsePeer(raft) else {
                return refuse(400, "invalid_field", "raft must be host:port")
            }
            peer.name = name
            peer.hasId = name != peer.address
            peer.raftId = PeerList.stableId(name)
            if voterIds.contains(peer.raftId) {
                return refuse(409, "already_member", "\(name) is a voter already")
            }
            // Frames are told apart by the last 4 characters of the node id (PeerList.checkSuffixes).
            if peer.hasId,
                let clash = cluster.voters.compactMap(\.peer).first(where: {
                    $0.hasId && $0.name != name && $0.name.suffix(4) == name.suffix(4)
                })
            {
                return refuse(
                    400, "name_collision",
                    "\(name) ends in the same 4 characters as the voter \(clash.name); choose another name")
            }
            return .success((add: peer, remove: nil))
        case .remove(let name):
            let id =
                cluster.voters.first(where: { $0.peer?.name == name })?.id ?? PeerList.stableId(name)
            guard voterIds.contains(id) else {
                return refuse(404, "not_member", "\(name) is not a voter")
            }
            // The leader leaves without a hand-over otherwise: an election, and beats missed meanwhile.
            if id == cluster.peers.me.raftId {
                return refuse(
                    409, "is_leader",
                    "\(name) leads: hand leadership over first (pulse members transfer), then remove it")
            }
            return .success((add: nil, remove: id))
        }
    }

    /// `POST /leader/transfer`: 202 once a hand-over to `name` (or to the
    /// most up-to-date follower) started; 503 `not_leader`, 404 `not_member`,
    /// 409 `no_follower`/`transfer_refused`.
    func transferLeadership(to name: String?) -> MembershipAnswer {
        if kv != nil { return Self.kvNoVoterSet }
        guard let cluster, !alone else {
            return .refused(
                status: 409, code: "not_clustered", message: "a single node has no other voter to lead", leader: nil)
        }
        guard cluster.isLeader else { return notLeader(cluster) }
        var target: NodeID = 0
        if let name {
            let id = cluster.voters.first(where: { $0.peer?.name == name })?.id ?? PeerList.stableId(name)
            guard cluster.voters.contains(where: { $0.id == id }) else {
                return .refused(status: 404, code: "not_member", message: "\(name) is not a voter", leader: nil)
            }
            guard id != cluster.peers.me.raftId else {
                return .refused(status: 409, code: "transfer_refused", message: "\(name) leads already", leader: nil)
            }
            target = id
        } else if cluster.voters.count < 2 {
            return .refused(
                status: 409, code: "transfer_refused", message: "no voter to hand leadership to", leader: nil)
        }
        // Started once our next frame came back (as a stop does: no beat missed).
        hearEchoesPromptly()
        adminTransfer = (target, cloop_monotonic_ns())
        logger.info("handing leadership over after the next beat", metadata: ["to": "\(name ?? "the best follower")"])
        guard let body = members() else { return .refused(status: 500, code: "internal", message: "", leader: nil) }
        return .done(status: 202, body)
    }

    /// Starts the transfer asked by `POST /leader/transfer` (once).
    func startAdminTransfer() {
        guard let transfer = adminTransfer else { return }
        adminTransfer = nil
        guard let cluster, cluster.isLeader else { return }
        let started =
            transfer.target == 0 ? cluster.transferLeadership() : cluster.transferLeadership(to: transfer.target)
        if !started { logger.warning("leadership transfer not started (no such voter, or no longer leader)") }
    }
}

extension String {
    /// `self` with leading zeros up to `width` characters.
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
