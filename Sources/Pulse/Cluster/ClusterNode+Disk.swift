// Cluster/ClusterNode+Disk.swift — a node's core from what its data dir holds:
// the one start from disk the service and the simulator's restarts share.
import Foundation
import Logging
import PulsePolicy
import Raft

extension ClusterNode {
    /// The core a node starts with, from what its store holds (`RaftStore.load`
    /// validates every file and cuts a torn tail), after checking that the
    /// data dir's committed shape is this node's (§12). The service's
    /// `init` and the simulator's restarts both start through it.
    static func coreFromDisk(
        store: RaftStore, id: NodeID, voters: [NodeID], timing: ClusterTiming, seed: UInt64, nowMonoNs: Int64,
        shape: TimelineShape, joining: Bool = false, bootstrapBpm: Int64?, dataDir: String, logger: Logger
    ) throws -> (core: ClusterCore, persisted: RaftPersisted) {
        let persisted = try store.load(bar: shape.bar)
        if persisted.truncatedBytes > 0 {
            logger.warning("raft: cut a torn log tail", metadata: ["bytes": "\(persisted.truncatedBytes)"])
        }
        // The data dir's committed shape, if any, must be this node's (§12).
        let restored = try persisted.snapshot.map { try JSONDecoder().decode(ClusterState.self, from: Data($0.data)) }
        if let committed = ClusterCore.persistedShape(
            snapshot: restored, entries: persisted.entries, commit: persisted.hardState.commit, flags: shape),
            let why = committed.mismatch(flags: shape, committedIn: "data dir \(dataDir)")
        {
            throw PulseError.config(why)
        }
        do {
            let core = try ClusterCore(
                id: id, voters: voters, timing: timing, seed: seed, nowMonoNs: nowMonoNs, shape: shape,
                joining: joining, bootstrapBpm: bootstrapBpm, hardState: persisted.hardState,
                snapshot: persisted.snapshot, entries: persisted.entries)
            return (core, persisted)
        } catch {
            throw PulseError.startup("raft state in \(dataDir)/raft cannot be used: \(error)")
        }
    }
}
