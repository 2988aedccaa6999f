// KV/PulseNode+KV.swift — the node's wiring in `-election nats-kv` mode
// (issue 21): the KV node feeds the beat shell (`BeatShell.leadership`), a
// tempo request on the lease holder is a CAS write of the timeline key, the
// timeline's changes are logged and announced as in Raft mode, and the
// hand-over's delete stops the node.
import CLoop
import Crypto
import Foundation
import Glibc
import PulseCore
import PulsePolicy

extension PulseNode {
    /// Opens the buckets (blocking, before the loop runs: no JetStream is one
    /// start-up line and exit status 1) and wires the KV node in.
    func startKV(flags: TimelineShape) throws -> KVNode {
        // The KV connection's threads start now, before the loop watches the
        // stop signals: they must inherit the signals blocked, or SIGTERM
        // would kill the process on one of them instead of reaching the loop.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        for signo in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&stopSignals, signo) }
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
        let node = try openKV(flags: flags)
        if let risk = node.buckets.oldServer {
            logger.warning("nats-kv: -kv-allow-old-server: starting anyway", metadata: ["refused": "\(risk)"])
        }
        logger.info(
            "election: nats-kv",
            metadata: [
                "lease_bucket": "\(node.buckets.leaseBucket)", "timeline_bucket": "\(node.buckets.timelineBucket)",
                "ttl_ms": "\(node.leadership.lease.timing.ttlNs / 1_000_000)",
                "valid_ms": "\(node.leadership.lease.timing.validNs / 1_000_000)",
            ])
        tempo.canCommit = { [unowned node] in node.leadership.isReadyHolder }
        tempo.leaderKnown = { [unowned node] in node.leadership.isReadyHolder || node.holderNodeId != nil }
        tempo.lastCommitUnsettled = { [unowned node] in node.leadership.tempoChangeUnsettled }
        tempo.commit = { [unowned node] change, justification, done in
            node.commitTempo(change, justification: justification, done: done)
        }
        // A non-holder forwards POST /tempo to the holder, as a Raft follower does.
        let forwarder = try TempoForwarder(loop: loop, link: node.forwardLink, rejected: rejected, logger: logger)
        // With an admin token, requests carry its MAC as on plain-TCP Raft:
        // anyone who may write the bucket's keys could otherwise forward one.
        if let token = config.adminToken, !token.isEmpty { forwarder.macKey = SymmetricKey(data: Array(token.utf8)) }
        let me = nodeId
        forwarder.leader = { [unowned node] in
            guard let holder = node.holderNodeId, holder != me else { return nil }
            return node.forwardLink.member(nodeId: holder)
        }
        forwarder.serve = { [unowned self] body, answer in self.serveForwardedTempo(body, answer: answer) }
        tempo.forward = { [unowned self] request, reply in
            forwarder.forward(request) { decision in
                // The forwarder's own refusals (the holder counts its own).
                if case .refused(_, let code, _) = decision, code == "no_leader" || code == "outcome_unknown" {
                    self.metrics.tempoRefused(reason: code)
                }
                reply(decision)
            }
        }
        node.onReleased = { [unowned self] in self.loop.requestStop() }
        node.onTimelineChange = { [unowned self] change in self.kvTimelineChanged(change) }
        // The timeline with the new holder's term, as Raft mode publishes it
        // when leadership moves: consumers take the new fencing token from it
        // before the first frame of that term, not refuse it as term_ahead.
        node.onTakeOver = { [unowned self] in self.committedTimelineChanged() }
        return node
    }

    /// Opens the KV node, retrying every second for `-kv-start-wait-ms`
    /// while no NATS server answers (a pulse started before its servers),
    /// with one log line; a stop signal ends the wait (`StoppedBeforeStart`:
    /// exit 0, as any asked-for stop), and anything
    /// else (no JetStream, refused credentials, a bucket with other settings)
    /// is the start-up line at once.
    private func openKV(flags: TimelineShape) throws -> KVNode {
        let nats = self.nats
        let deadline = cloop_monotonic_ns() + Int64(config.kvStartWaitMs) * 1_000_000
        var waiting = false
        while true {
            do {
                let node = try KVNode(
                    config: config, nodeId: nodeId, shape: flags, loop: loop, beats: beats, rejected: rejected,
                    logger: logger, applySecurity: { try nats.applySecurity($0) })
                if waiting { logger.info("nats-kv: a NATS server answered; starting") }
                return node
            } catch let error as KVNoServer {
                guard cloop_monotonic_ns() < deadline else {
                    throw PulseError.startup(
                        "\(error.description) (waited \(config.kvStartWaitMs) ms: -kv-start-wait-ms)")
                }
                if !waiting {
                    logger.warning(
                        "nats-kv: no NATS server of -nats answers yet; retrying every second",
                        metadata: ["nats": "\(config.natsURL)", "wait_ms": "\(config.kvStartWaitMs)"])
                    waiting = true
                }
                var pending = sigset_t()
                sigpending(&pending)
                for signo in [SIGINT, SIGTERM] where sigismember(&pending, signo) == 1 {
                    logger.info(
                        "stopping while waiting for a NATS server",
                        metadata: ["signal": signo == SIGTERM ? "SIGTERM" : "SIGINT"])
                    throw StoppedBeforeStart()
                }
                usleep(1_000_000)
            }
        }
    }

    /// `/leader` in nats-kv mode: the holder named by the lease key's claim
    /// (none while degraded); `cluster_size` counts the pulses seen.
    func kvLeaderStatus(_ kv: KVNode) -> LeaderStatus {
        let holder = kv.holdsLease
        let sinceWatchMs = holder ? 0 : max(0, (cloop_monotonic_ns() - kv.lastWatchedMonoNs) / 1_000_000)
        let leader = kvLeaderName(kv)
        return LeaderStatus(
            node_id: nodeId, is_leader: holder, leader: leader,
            cluster_size: kv.leadership.peers.members(nowMonoNs: cloop_monotonic_ns()).count,
            stats: .init(
                term: kv.term, commit_index: kv.leadership.timeline.revision, last_contact_ms: sinceWatchMs,
                leadership_changes: kv.acquisitions,
                state: holder ? "leader" : leader == nil ? "candidate" : "follower"), election: "nats-kv")
    }

    /// The leader named by the admin API and timeline replies in nats-kv
    /// mode: this node while its lease runs, none while degraded, else the
    /// holder named by the lease key's claim.
    func kvLeaderName(_ kv: KVNode) -> String? {
        kv.holdsLease ? nodeId : kv.leadership.degraded ? nil : kv.holderNodeId
    }

    /// The `term`, `leader` and `degraded` of a timeline reply in nats-kv
    /// mode: the fencing token the holder's frames carry
    /// (`KVLeadership.fencingToken`), never the last renewal's revision.
    func kvTimelineFields(_ kv: KVNode) -> (term: UInt64, leader: String?, degraded: Bool) {
        (kv.leadership.fencingToken, kvLeaderName(kv), kv.leadership.degraded)
    }

    /// `/members` in nats-kv mode: no voter set; the pulses seen (pings
    /// within `KVLeasePeers.memberWindowNs`, this one included), the holder marked.
    func kvMembers(_ kv: KVNode) -> MembersBody {
        let leader = kvLeaderName(kv)
        let entries = kv.leadership.peers.members(nowMonoNs: cloop_monotonic_ns()).map { name in
            MemberEntry(
                id: String(format: "%016llx", kv.forwardLink.member(nodeId: name)), name: name, raft: nil,
                leader: name == leader)
        }
        return MembersBody(
            members: entries, leader: leader, change_pending: false, node_id: nodeId, voter: false,
            election: "nats-kv")
    }

    /// Membership changes and transfers in nats-kv mode: 409, there is no voter set.
    static let kvNoVoterSet = MembershipAnswer.refused(
        status: 409, code: "not_clustered",
        message:
            "nats-kv mode has no voter set: the pulses that run take part (GET /members lists those seen); stop the holder with SIGTERM to hand over",
        leader: nil)

    /// Whether this node is degraded in nats-kv mode (false in other modes).
    var kvDegraded: Bool { kv?.leadership.degraded ?? false }

    /// `/health`'s cluster component in nats-kv mode: the strategy named.
    func kvHealth(_ kv: KVNode) -> ComponentHealth {
        if kv.holdsLease { return ComponentHealth(status: "ok", detail: "nats-kv: lease holder, term \(kv.term)") }
        if kv.leadership.degraded {
            return ComponentHealth(
                status: "failing",
                detail:
                    "nats-kv: no lease holder (JetStream unreachable or without quorum): degraded, keeping the timeline locally"
            )
        }
        if let holder = kv.holderNodeId {
            return ComponentHealth(status: "ok", detail: "nats-kv: follower, lease held by \(holder)")
        }
        return ComponentHealth(status: "failing", detail: "nats-kv: nobody holds the lease")
    }

    private func kvTimelineChanged(_ change: KVTimelineChange) {
        switch change {
        case .started(let epoch):
            logger.info("timeline committed", metadata: ["start_ns": "\(epoch.startNs)", "bpm": "\(epoch.bpm)"])
            committedTimelineChanged()
        case .tempo:
            tempo.committedChangeApplied(justification: kv?.leadership.timeline.machine.justification ?? "")
            committedTimelineChanged()
        case .resynced, .resyncedOverPassedBeats:
            committedTimelineChanged()
        case .restamped, .refused, .shapeMismatch:
            break
        }
    }
}

/// A stop signal arrived before the node started (the nats-kv start-up
/// wait): the process exits 0, as after any stop it was asked for.
struct StoppedBeforeStart: Error {}

extension PulseMetrics {
    /// `backbeat_election_strategy{strategy}`: 1 for the strategy this node runs
    /// (`raft`, `nats-kv`, or `single` for a node without peers).
    func exportElectionStrategy(_ strategy: String) {
        registry.makeGauge(
            name: "backbeat_election_strategy", labels: [("strategy", strategy)],
            help: "Always 1; the label says how the publisher is elected (raft, nats-kv, single)."
        ).set(Double(1))
    }
}
