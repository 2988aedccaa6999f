// Service: the node as the Raft cluster sees it — the publish gate, the
// committed epoch and tempo changes, leadership changes, and forwarding of
// tempo requests from followers to the leader.
import CLoop
import Foundation
import PulseCore

extension PulseNode: PublishGate, ClusterListener {
    /// Beat path: only the leader, while its lease holds.
    func mayPublish(monotonicNs: Int64) -> Bool {
        cluster?.mayPublish(monotonicNs: monotonicNs) ?? true
    }

    func clusterEpochCommitted(_ epoch: TempoEpoch) {
        logger.info("timeline committed", metadata: ["start_ns": "\(epoch.startNs)", "bpm": "\(epoch.bpm)"])
        beats.adopt(epoch: epoch, nowNs: cloop_realtime_ns())
    }

    func clusterTempoCommitted(_ change: TempoChange, justification: String) {
        tempo.applyCommitted(change, justification: justification)
    }

    func clusterLeadershipChanged(isLeader: Bool, leader: Peer?, term: UInt64) {
        beats.term = term
        if isLeader {
            beats.takeOver(nowNs: cloop_realtime_ns())
        } else if stopRequested {
            loop.requestStop()  // leadership handed over: now stop
        }
    }

    /// A follower forwards tempo requests to the leader over NATS
    /// request/reply on the control subject (only the leader answers there).
    func enableForwarding() {
        tempo.forward = { [unowned self] request, reply in
            let body: [String: Any] = ["tempo_bpm": request.tempoBpm, "justification": request.justification]
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
                                tempo_bpm: bpm, previous_bpm: object["previous_bpm"] as? Int ?? 0, apply_at_beat: atBeat,
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
