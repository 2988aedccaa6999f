// Service: the node as the live view sees it (`LiveSource`, Admin/AdminEvents.swift):
// role, term, leader, peers, degradation, NATS, tempo and pending change, and
// each accepted frame from the beat subject. Loop thread only; nothing here
// runs on the beat path (frames come from the subscription's handler, the
// rest from the admin server's before-sleep fan-out).
import CLoop
import PulseCore

extension PulseNode: LiveSource {
    /// A peer heard from (a Raft message with a clock sample) this recently is "in contact".
    static let liveContactNs: Int64 = 2_000_000_000

    func liveSignature() -> LiveSignature {
        var signature = LiveSignature()
        signature.started = beats.started
        signature.natsConnected = nats.isConnected
        let timeline = beats.timeline
        signature.epochStartBeat = timeline.epoch.startBeat
        signature.bpm = timeline.epoch.bpm
        if let pending = timeline.pendingEpoch {
            signature.pendingAtBeat = pending.startBeat
            signature.pendingBpm = pending.bpm
        }
        signature.term = cluster?.term ?? beats.term
        guard let cluster else { return signature }
        signature.leader = cluster.leader
        signature.role = cluster.isLeader ? 1 : cluster.leaderPeer != nil ? 2 : 3
        signature.degraded = cluster.degraded
        let nowNs = cloop_realtime_ns()
        for (i, peer) in cluster.peers.peers.enumerated() where i < 64 && inContact(peer, nowNs: nowNs) {
            signature.peerContact |= 1 << UInt64(i)
        }
        return signature
    }

    private func inContact(_ peer: Peer, nowNs: Int64) -> Bool {
        guard let cluster, peer.raftId != cluster.peers.me.raftId else { return true }
        guard let last = cluster.syncs[peer.raftId]?.lastSyncLocalNs else { return false }
        return nowNs &- last < Self.liveContactNs
    }

    private var liveRole: String {
        guard let cluster else { return "single" }
        return cluster.isLeader ? "leader" : cluster.leaderPeer != nil ? "follower" : "candidate"
    }

    func liveState() -> LiveState {
        let timeline = beats.timeline
        let pending = timeline.pendingEpoch.map {
            LiveState.Pending(at_beat: $0.startBeat, at_ns: $0.startNs, bpm: $0.bpm)
        }
        let nowNs = cloop_realtime_ns()
        // A leader hears from every peer, so one it does not hear is silent; a
        // follower hears only the leader, so for it other peers are just out of sight.
        let silence = cluster?.isLeader ?? false ? "silent" : "no_contact"
        let peers: [LiveState.Peer] =
            cluster.map { cluster in
                cluster.peers.peers.map { peer in
                    let isSelf = peer.raftId == cluster.peers.me.raftId
                    let state =
                        isSelf
                        ? liveRole
                        : peer.raftId == cluster.leader
                            ? "leader" : inContact(peer, nowNs: nowNs) ? "in_contact" : silence
                    return LiveState.Peer(name: peer.name, address: peer.address, state: state, is_self: isSelf)
                }
            } ?? []
        return LiveState(
            node_id: nodeId, cluster_id: config.clusterId, role: liveRole, term: cluster?.term ?? beats.term,
            leader: cluster.map { $0.leaderPeer?.name } ?? nodeId, degraded: cluster?.degraded ?? false,
            nats_connected: nats.isConnected, nats_server: nats.redactedURL, started: beats.started,
            bar: shape.bar, phases: shape.phases, tempo_bpm: timeline.epoch.bpm, min_bpm: config.minBpm,
            max_bpm: config.maxBpm, pending: pending, peers: peers, now_ns: timelineNs(forLocalNs: nowNs))
    }

    func nanosecondsToNextBeat() -> Int64? {
        guard beats.started else { return nil }
        return localNs(forTimelineNs: beats.timeline.instantNs(ofBeat: beats.nextBeat)) &- cloop_realtime_ns()
    }

    /// An accepted frame from the beat subject, for the live view (queued
    /// there, sent before the loop sleeps). Nothing when no page is open.
    func liveFrameSeen(_ frame: DecodedBeatFrame, receivedNs: Int64) {
        guard let events = admin?.events, events.streamCount > 0 else { return }
        let instant = beats.timeline.instantNs(ofBeat: frame.beatIndex)
        let ownStats = beats.stats
        let jitter: Int64? =
            frame.hlcSuffix == beats.ownSuffix && frame.beatIndex == ownStats.lastBeatIndex
            ? ownStats.lastJitterNs : nil
        events.beatSeen(
            LiveBeat(
                beat_index: frame.beatIndex, downbeat: frame.downbeat, phase: frame.phase, tempo_bpm: frame.tempoBpm,
                term: frame.term, from: frame.hlcSuffix, degraded: frame.degraded, instant_ns: instant,
                received_ns: receivedNs, latency_ns: receivedNs &- instant, jitter_ns: jitter))
    }
}
