// Service: the node as the Raft cluster sees it — the publish gate, the
// committed epoch and tempo changes, leadership changes, and forwarding of
// tempo requests from followers to the leader.
import CLoop
import Foundation
import PulseCore

extension PulseNode: PublishGate, ClusterListener {
    /// Between degraded nodes, each waits its turn after the instant: the
    /// lowest id first. A live leader publishes at the instant itself, so a
    /// degraded node normally sees its frame first and stays silent.
    static let degradedTurnNs: Int64 = 3_000_000

    /// Beat path: the leader while its lease holds; followers keep silent;
    /// after too long without a leader, degraded publishing.
    func publishMode(monotonicNs: Int64) -> PublishMode {
        guard let cluster else { return .publish }
        if cluster.mayPublish(monotonicNs: monotonicNs) { return .publish }
        if cluster.isLeader { return .wait }
        if cluster.degraded { return .degraded(delayNs: Int64(1 + cluster.rank) * Self.degradedTurnNs) }
        return .silent
    }

    var referenceClock: ClockSync? { cluster?.referenceSync }

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
        committedTimelineChanged()
    }

    func clusterTempoCommitted(_ change: TempoChange, justification: String) {
        tempo.applyCommitted(change, justification: justification)
        committedTimelineChanged()
    }

    func clusterLeadershipChanged(isLeader: Bool, leader: Peer?, term: UInt64) {
        beats.term = term
        if isLeader {
            beats.takeOver(nowNs: cloop_realtime_ns())
            committedTimelineChanged()
        } else if stopRequested {
            loop.requestStop()  // leadership handed over: now stop
        }
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
