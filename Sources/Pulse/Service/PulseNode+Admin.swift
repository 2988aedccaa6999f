// Service: the node as the admin API and the control subject see it.
import CLoop
import Foundation
import PulseCore

extension PulseNode: AdminBackend {
    func tempoStatus() -> TempoStatus { tempo.status() }

    func requestTempoChange(_ request: TempoRequest, reply: @escaping (TempoDecision) -> Void) {
        tempo.request(request, reply: reply)
    }

    func recordTempoRefusal(reason: String) { tempo.recordRefusal(reason: reason) }

    /// The drift of this node's beat clock against the timeline, as a ratio:
    /// a publisher compares its beats with the committed instants; a node
    /// following a leader reports its clock's rate against the leader's
    /// (which the offset tracking corrects while degraded).
    var timerDriftRatio: Double {
        if let sync = cluster?.referenceSync, !(cluster?.isLeader ?? false) { return abs(sync.ratePpm) / 1e6 }
        return abs(metrics.driftRatio)
    }

    /// A single node (or the leader) is its own reference clock; a follower
    /// tracks the leader's offset and rate from Raft traffic.
    func driftStatus() -> DriftStatus {
        let percent = timerDriftRatio * 100
        let sync = cluster?.referenceSync
        let offsetSeconds = Double(sync?.offsetNs ?? 0) / 1e9
        let lastSync = sync?.lastSyncLocalNs.map { RFC3339.string(unixMs: $0 / 1_000_000) }
        return DriftStatus(
            timer_drift_percent: percent, hlc_drift_seconds: offsetSeconds, last_sync_time: lastSync,
            degradation_mode: cluster?.degraded ?? false,
            within_limits: percent <= 1 && abs(offsetSeconds) * 1000 <= Double(config.maxOffsetMs))
    }

    func leaderStatus() -> LeaderStatus {
        guard let cluster else {
            return LeaderStatus(
                node_id: nodeId, is_leader: true, leader: config.raftBind, cluster_size: 1,
                stats: .init(
                    term: beats.term, commit_index: tempo.appliedChanges, last_contact_ms: 0, leadership_changes: 0,
                    state: "leader"))
        }
        let sinceContactMs =
            cluster.isLeader ? 0 : max(0, (cloop_monotonic_ns() - cluster.lastContactMonoNs) / 1_000_000)
        return LeaderStatus(
            node_id: nodeId, is_leader: cluster.isLeader, leader: cluster.leaderPeer?.address,
            cluster_size: cluster.peers.peers.count,
            stats: .init(
                term: cluster.term, commit_index: cluster.commitIndex, last_contact_ms: sinceContactMs,
                leadership_changes: cluster.leadershipChanges,
                state: cluster.isLeader ? "leader" : cluster.leaderPeer == nil ? "candidate" : "follower"))
    }

    func health() -> [String: ComponentHealth] {
        let sinceTurnMs = (cloop_monotonic_ns() - loop.lastTurnMonotonicNs) / 1_000_000
        let stats = beats.stats
        return [
            "loop": ComponentHealth(status: "ok", detail: "last turn \(max(0, sinceTurnMs)) ms ago"),
            "nats": nats.isConnected
                ? ComponentHealth(status: "ok", detail: "connected to \(config.natsURL)")
                : ComponentHealth(status: "failing", detail: "not connected to \(config.natsURL)"),
            "timeline": ComponentHealth(
                status: stats.hotPathAllocatedBytes == 0 ? "ok" : "failing",
                detail: "beat \(stats.lastBeatIndex), \(stats.beatsPublished) published, \(stats.beatsMissed) missed"),
            "cluster": clusterHealth(),
        ]
    }

    private func clusterHealth() -> ComponentHealth {
        guard let cluster else { return ComponentHealth(status: "ok", detail: "single node, leader") }
        if let leader = cluster.leaderPeer {
            return ComponentHealth(
                status: "ok",
                detail: "\(cluster.isLeader ? "leader" : "follower"), leader \(leader.name), term \(cluster.term)")
        }
        if cluster.degraded {
            return ComponentHealth(status: "failing", detail: "no leader: degraded, keeping the timeline locally")
        }
        return ComponentHealth(status: "failing", detail: "no leader (term \(cluster.term))")
    }

    func readiness() -> (ready: Bool, reason: String) {
        if !nats.isConnected { return (false, "not connected to NATS") }
        if let cluster, cluster.leaderPeer == nil && !cluster.degraded { return (false, "no known leader") }
        if !beats.started { return (false, "no committed timeline yet") }
        return (true, "")
    }

    func recentBeats() -> [BeatRecord] { beats.recent.records() }

    func metricsText() -> String {
        metrics.refresh(
            MetricsSnapshot(
                beats: beats.stats, natsConnected: nats.isConnected, natsReconnects: nats.stats.reconnects,
                isLeader: cluster?.isLeader ?? true, degraded: cluster?.degraded ?? false,
                tempoBpm: beats.timeline.epoch.bpm,
                leadershipChanges: cluster?.leadershipChanges ?? 0, timerDriftRatio: timerDriftRatio,
                hlcRemoteRejected: beats.hlcRejected,
                clockOffsetSeconds: Double(cluster?.referenceSync?.offsetNs ?? 0) / 1e9,
                raftBadFrames: cluster?.transportStats.badFrames ?? 0, rejectedInput: rejected.counts))
        return metrics.text()
    }

    /// Tempo requests over NATS request/reply on the control subject; the
    /// reply is the HTTP body plus `"status"`. Messages without a reply
    /// subject (such as our own announcements) are ignored.
    func subscribeControl() {
        nats.subscribe(subject: config.controlSubject) { [weak self] message in
            // Only a node that can commit answers: followers stay silent so
            // that the leader's answer is the one the requester gets.
            guard let self, let reply = message.reply, self.tempo.canCommit() else { return }
            let answer: (Int, Data) -> Void = { status, body in
                var object = (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:]
                object["status"] = status
                let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
                self.nats.publish(subject: reply, payload: data)
            }
            switch AdminRouter.parseTempoBody([UInt8](message.data), maxJustificationBytes: 1024) {
            case .failure(let failure):
                self.tempo.recordRefusal(reason: failure.code)
                answer(400, Self.errorBody(failure.message, failure.code))
            case .success(let request):
                self.tempo.request(request) { decision in
                    switch decision {
                    case .scheduled(let change):
                        answer(202, (try? JSONEncoder().encode(change)) ?? Data())
                    case .refused(let status, let code, let text):
                        answer(status, Self.errorBody(text, code))
                    case .redirect(let location):
                        answer(307, Self.errorBody("the leader is at \(location)", "not_leader"))
                    }
                }
            }
        }
    }

    /// Follows the beat subject: the delivery latency of every frame (receive
    /// time, taken on the client's delivery thread, minus its instant).
    func subscribeBeats() {
        nats.subscribe(subject: config.beatSubject) { [weak self] message in
            guard let self,
                let object = try? JSONSerialization.jsonObject(with: message.data) as? [String: Any],
                let index = (object["beat_index"] as? NSNumber)?.int64Value
            else { return }
            let parsed = (object["hlc"] as? String).flatMap { HLCStamp.parse($0) }
            let fromOther = parsed.map { String($0.suffix) != self.beats.ownSuffix } ?? false
            let degraded = object["degraded"] as? Bool ?? false
            self.beats.observe(
                remoteIndex: index, hlc: parsed?.stamp, wallNs: message.receivedNs,
                fromLeaderElsewhere: fromOther && !degraded)
            guard self.beats.started else { return }
            self.metrics.deliveryObserved(latencyNs: message.receivedNs - self.beats.timeline.instantNs(ofBeat: index))
        }
    }

    static func errorBody(_ message: String, _ code: String) -> Data {
        (try? JSONSerialization.data(withJSONObject: ["error": message, "code": code], options: [.sortedKeys]))
            ?? Data()
    }
}
