// Backup/PulseNode+Backup.swift — owns `GET /backup` on the node: a
// consistent snapshot of the committed timeline, taken on the loop thread
// from in-memory state (no disk read, nothing on the beat path).
//
// Guarantees:
// - Cluster: only the leader answers, and only once it has applied its whole
//   log (its own term's no-op included): the state then holds every entry
//   committed before the backup, at the index it names (the Raft state
//   machine itself, as a snapshot would store it). A follower answers 409
//   `not_leader` naming the leader; without a leader, 503 `no_leader`.
// - Single node: the timeline in force and its pending change are what the
//   data dir committed (a change is scheduled only after its synced write).
// - The file is validated before it leaves (`BackupFile.encoded`): the node
//   never hands out a backup `pulse restore` would refuse.
import CLoop
import Foundation
import PulseCore

/// The answer to `GET /backup`.
enum BackupAnswer: Equatable {
    /// A backup file's bytes (`backbeat.backup.v1`).
    case file([UInt8])
    /// Why not: 409 `not_leader`, 503 `no_leader`/`no_timeline`/`not_caught_up`, 500 `internal`.
    case refused(status: Int, code: String, message: String)
}

extension PulseNode {
    func backup() -> BackupAnswer {
        let nowNs = timelineNs(forLocalNs: cloop_realtime_ns())
        let seen = max(beats.stats.lastBeatIndex, beats.lastSeenIndex)
        var file = BackupFile(
            clusterId: config.clusterId, nodeId: nodeId, bar: shape.bar, phases: shape.phases,
            epoch: .init(startBeat: 0, startNs: 0, bpm: 1), pending: nil, term: beats.term, index: 0,
            lastBeat: seen >= 0 ? seen : nil, takenAtNs: nowNs)
        if let cluster {
            guard cluster.isLeader else {
                if let leader = cluster.leaderPeer {
                    return .refused(
                        status: 409, code: "not_leader",
                        message: "this node is not the leader; ask the leader, \(leader.name) (\(leader.address))")
                }
                return .refused(status: 503, code: "no_leader", message: "no leader: a backup needs one")
            }
            let applied = cluster.appliedState
            guard let state = applied.state else {
                return .refused(status: 503, code: "no_timeline", message: "no committed timeline yet")
            }
            guard applied.complete else {
                return .refused(
                    status: 503, code: "not_caught_up",
                    message: "the leader has not applied its whole log yet; retry in a moment")
            }
            file.epoch = .init(startBeat: state.epoch.startBeat, startNs: state.epoch.startNs, bpm: state.epoch.bpm)
            file.pending = state.pending.map {
                .init(atBeat: $0.atBeat, bpm: $0.bpm, justification: state.justification)
            }
            file.term = cluster.term
            file.index = applied.index
        } else {
            guard beats.started else {
                return .refused(status: 503, code: "no_timeline", message: "no committed timeline yet")
            }
            let timeline = beats.timeline
            file.epoch = .init(
                startBeat: timeline.epoch.startBeat, startNs: timeline.epoch.startNs, bpm: timeline.epoch.bpm)
            file.pending = timeline.pending.map {
                .init(atBeat: $0.atBeat, bpm: $0.bpm, justification: tempo.pendingJustification)
            }
        }
        do {
            let bytes = try file.encoded()
            logger.info(
                "backup taken", metadata: ["index": "\(file.index)", "term": "\(file.term)", "bytes": "\(bytes.count)"])
            return .file(bytes)
        } catch {
            logger.error("backup refused by its own validation", metadata: ["error": "\(error)"])
            return .refused(status: 500, code: "internal", message: "the backup does not validate: \(error)")
        }
    }
}
