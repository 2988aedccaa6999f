// Service: the node as the Raft cluster sees it — the publish gate, the
// committed epoch and tempo changes, leadership changes, and forwarding of
// tempo requests from followers to the leader.
import CLoop
import Foundation
import PulseCore
import PulsePolicy

extension PulseNode: PublishGate, ClusterListener {
    /// Beat path (allocation-free): the leader holding its lease, with the
    /// lease deadline (the planner checks it again immediately before the
    /// write and drops the connection once it lapses: fault 2 of issue #10);
    /// a leader without a confirmed lease waits; followers keep silent;
    /// after too long without a leader, degraded publishing in turns.
    func publishMode(monotonicNs: Int64) -> PulsePolicy.PublishMode {
        guard let cluster else { return .single }
        if cluster.mayPublish(monotonicNs: monotonicNs) { return .leader(leaseUntilMonoNs: cluster.leaseUntilMonoNs) }
        if cluster.isLeader { return .waiting }
        if cluster.degraded {
            let t = beats.timeline
            let k = beats.nextBeat
            return cluster.degradedMode(periodNs: t.instantNs(ofBeat: k + 1) - t.instantNs(ofBeat: k))
        }
        return .follower
    }

    /// The clock degraded turns are measured on (the planner's `reference`):
    /// the lowest voter's, the same for every node (fault 6).
    var referenceClock: ClockSync? { cluster?.degradedReference }

    /// Beat path: the barrier of our own uncommitted tempo entries (fault 4).
    var tempoBarrierBeat: Int64 { cluster?.tempoBarrierBeat ?? .max }

    func localNs(forTimelineNs timelineNs: Int64) -> Int64 {
        guard let sync = cluster?.referenceSync else { return timelineNs }
        return sync.localNs(atReference: timelineNs)
    }

    func timelineNs(forLocalNs localNs: Int64) -> Int64 {
        guard let sync = cluster?.referenceSync else { return localNs }
        return sync.referenceNs(atLocal: localNs)
    }

    func clusterEpochCommitted(_ epoch: TempoEpoch) {
        logger.info("timeline committed", metadata: ["start_ns": "\(epoch.startNs)", "bpm": "\(epoch.bpm)"])
        beats.adopt(epoch: epoch, nowNs: cloop_realtime_ns())
        // A leader that learns the timeline only now (a restarted node whose
        // log is applied after its election) starts past the hand-over guard too.
        if let cluster, cluster.isLeader {
            beats.takeOver(nowNs: cloop_realtime_ns(), gracefulHandOver: cluster.electedByHandOver)
        }
        committedTimelineChanged()
    }

    func clusterTempoCommitted(_ change: TempoChange, justification: String) {
        tempo.applyCommitted(change, justification: justification)
        committedTimelineChanged()
    }

    func clusterLeadershipChanged(isLeader: Bool, leader: Peer?, term: UInt64) {
        beats.term = term
        if isLeader {
            beats.takeOver(nowNs: cloop_realtime_ns(), gracefulHandOver: cluster?.electedByHandOver ?? false)
            committedTimelineChanged()
        } else if stopRequested {
            loop.requestStop()  // leadership handed over: now stop
        }
    }

    /// The voter set changed: the beat subscription's publishers follow it
    /// (`subscribeBeats`).
    func clusterMembersChanged(_ peers: PeerList) {
        membersGeneration &+= 1
    }

    /// §3: Raft traffic merges into the HLC like beat frames (the frame
    /// carries the sender's wall clock, merged as `(ms, 0)`).
    func clusterPeerTimestamp(wallNs: Int64, receivedNs: Int64) {
        beats.mergeRemote(HLCStamp(wallMs: wallNs / 1_000_000, counter: 0), wallNs: receivedNs)
    }

    /// A follower forwards tempo requests to the leader over NATS
    /// request/reply on the control subject (only the leader answers there).
    func enableForwarding() {
        tempo.forward = { [unowned self] request, reply in
            var body: [String: Any] = ["tempo_bpm": request.tempoBpm, "justification": request.justification]
            // The leader requires the admin token on the control subject too (every node shares it).
            if let token = config.adminToken, !token.isEmpty { body["token"] = token }
            let payload = (try? JSONSerialization.data(withJSONObject: body)) ?? Data()
            nats.request(subject: config.controlSubject, payload: payload, timeoutNs: 3_000_000_000) { answer in
                guard let answer, let object = try? JSONSerialization.jsonObject(with: answer) as? [String: Any],
                    let status = object["status"] as? Int
                else {
                    self.metrics.tempoRefused(reason: "no_leader")
                    return reply(.refused(status: 503, code: "no_leader", message: "no leader answered"))
                }
                if status == 202, let bpm = object["tempo_bpm"] as? Int,
                    let atBeat = (object["apply_at_beat"] as? NSNumber)?.int64Value
                {
                    reply(
                        .scheduled(
                            ScheduledTempoChange(
                                tempo_bpm: bpm, previous_bpm: object["previous_bpm"] as? Int ?? 0,
                                apply_at_beat: atBeat,
                                apply_at: object["apply_at"] as? String ?? "",
                                justification: object["justification"] as? String ?? "")))
                } else {
                    reply(
                        .refused(
                            status: status, code: object["code"] as? String ?? "refused",
                            message: object["error"] as? String ?? "refused by the leader"))
                }
            }
        }
    }
}
