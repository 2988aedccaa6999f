// Storage: a single node's data dir becomes a one-voter Raft log (issue 19).
//
// A single node (no -peers) runs the cluster's core with itself as the only
// voter: its committed timeline is its Raft log in `<data-dir>/raft`, and a
// tempo change commits through the same proposal path as a cluster's. The
// releases before kept a single node's timeline in `epoch.json` and
// committed a change by a synced write of that file. A data dir they wrote
// (an `epoch.json`, no Raft state) is migrated once at start-up, before any
// thread or socket:
//
// 1. `epoch.json` is loaded and validated as before (cluster id, shape
//    against the flags, not a day ahead of the clock): a refusal is the same
//    one line, and nothing is written.
// 2. Its exact timeline — epoch, shape, tempo, the pending change and its
//    justification — becomes the Raft snapshot at index 1, term 1 (the
//    first state of the one-voter log; a snapshot, not entries, so that a
//    pending change is kept as it was placed, justification included),
//    with a hard state committed through it, written and synced through
//    the node's own `RaftStore` and read back.
// 3. Only then `epoch.json` is renamed `epoch.json.migrated` (directory
//    synced): kept for the operator, never read again. A crash between 2
//    and 3 leaves both; the next start finds the Raft state equal to what
//    the file migrates to and finishes the rename. A Raft state next to an
//    `epoch.json` that says something else (an older release ran on the dir
//    after the migration) is refused with one line: neither is guessed.
//
// `pulse restore` writes a Raft state directly (`RaftStore.seed`, with or
// without --peers); only data dirs of releases before the one-voter cluster
// hold an `epoch.json` to migrate.
import CLoop
import Foundation
import Glibc
import Logging
import PulseCore
import PulsePolicy
import Raft

enum EpochMigration {
    /// What `epoch.json` is renamed to once its timeline is in the Raft log.
    static let migratedName = "epoch.json.migrated"

    /// Makes `dataDir` ready for a lone voter: migrates an `epoch.json`
    /// into the Raft state when there is none; refuses (one line) a data dir
    /// with neither and no -bootstrap, or with both disagreeing.
    static func prepare(
        dataDir: DataDir, config: PulseConfig, flags: TimelineShape, rejected: RejectedInput, sync: DiskSync,
        logger: Logger
    ) throws {
        let stored = try dataDir.loadEpoch()
        // Checked before `raft/` is created: a refused file leaves the dir as it was.
        let migrated = try stored.map { try snapshot(of: $0, config: config, flags: flags, dataDir: dataDir) }
        let store = try RaftStore(dataDir: dataDir.path, rejected: rejected, sync: sync)
        let persisted = try store.load(bar: flags.bar)
        let hasRaftState =
            persisted.snapshot != nil || !persisted.entries.isEmpty || persisted.hardState != HardState()
        guard let stored, let snapshot = migrated else {
            guard hasRaftState || config.bootstrap else {
                throw PulseError.config(
                    "no timeline in \(dataDir.path): start with -bootstrap to create one (joining a cluster needs -peers and Raft)"
                )
            }
            return
        }
        if hasRaftState {
            // A crash after the Raft state was synced and before the rename.
            guard persisted.snapshot == snapshot, persisted.entries.isEmpty else {
                throw PulseError.config(
                    "data dir \(dataDir.path) holds both a Raft log and an epoch.json that differs from it (an older release ran on it after the migration?): move one of them away"
                )
            }
        } else {
            try write(snapshot, to: store, dataDir: dataDir, rejected: rejected)
        }
        try dataDir.retireEpoch(as: migratedName)
        logger.info(
            "epoch.json migrated into the one-voter Raft log; kept as \(migratedName), no longer read",
            metadata: [
                "start_beat": "\(stored.startBeat)", "bpm": "\(stored.bpm)",
                "pending_at_beat": "\(stored.pendingAtBeat.map(String.init) ?? "none")",
            ])
    }

    /// The Raft snapshot (index 1, term 1) holding exactly `stored`'s
    /// timeline, after the checks a single node always ran on its file.
    static func snapshot(of stored: StoredEpoch, config: PulseConfig, flags: TimelineShape, dataDir: DataDir)
        throws -> Snapshot
    {
        guard stored.clusterId == config.clusterId else {
            throw PulseError.config(
                "data dir \(dataDir.path) belongs to cluster '\(stored.clusterId)', not '\(config.clusterId)'")
        }
        let shape: TimelineShape
        do {
            shape = try DataDirFiles.checkShape(
                file: "epoch.json", bar: stored.bar, phases: stored.phases, flags: flags)
            try DataDirFiles.checkNotFarAhead(stored, nowNs: cloop_realtime_ns())
        } catch {
            throw dataDir.refuse(error)
        }
        if let why = shape.mismatch(flags: flags, committedIn: "data dir \(dataDir.path)") {
            throw PulseError.config(why)
        }
        var pending: TempoChange.Stored?
        if let atBeat = stored.pendingAtBeat, let bpm = stored.pendingBpm {
            pending = TempoChange.Stored(atBeat: atBeat, bpm: bpm)
        }
        let state = ClusterState(
            epoch: TempoEpoch.Stored(startBeat: stored.startBeat, startNs: stored.startNs, bpm: stored.bpm),
            pending: pending, justification: pending == nil ? "" : stored.pendingJustification ?? "",
            bar: shape.bar, phases: shape.phases)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]  // the same bytes every time (compared after a crash)
        let data = [UInt8](try encoder.encode(state))
        // The core adopts only what its own snapshot check accepts.
        guard ReplicatedTimeline.validatedSnapshot(data, bar: flags.bar) == state else {
            throw PulseError.config("\(dataDir.path)/epoch.json: its timeline cannot be carried into the Raft log")
        }
        return Snapshot(index: 1, term: 1, data: data)
    }

    /// Writes the snapshot and a hard state committed through it, synced,
    /// and reads them back through the node's own loader.
    private static func write(_ snapshot: Snapshot, to store: RaftStore, dataDir: DataDir, rejected: RejectedInput)
        throws
    {
        let hardState = HardState(term: snapshot.term, vote: noNode, commit: snapshot.index)
        do {
            try store.saveAndReadBack(hardState: hardState, snapshot: snapshot, rejected: rejected)
        } catch {
            throw PulseError.startup("migrating epoch.json into \(dataDir.path)/raft: \(error)")
        }
    }
}
