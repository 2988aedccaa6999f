// EpochMigration (issue 19) on a real data dir, without a process: the
// exact state a single node's `epoch.json` becomes, a crash between the
// synced Raft state and the rename finished at the next start, and the
// refusals (a disagreeing `epoch.json`, no timeline and no -bootstrap).
import Foundation
import Logging
import PulseCore
import PulsePolicy
import Raft
import XCTest

@testable import Pulse

final class EpochMigrationTests: XCTestCase {
    private let logger = Logger(label: "test")

    private func prepare(_ dataDir: DataDir, bootstrap: Bool = false) throws {
        var config = PulseConfig()
        config.clusterId = "mc"
        config.bar = 4
        config.phases = ["p", "q"]
        config.bootstrap = bootstrap
        try EpochMigration.prepare(
            dataDir: dataDir, config: config, flags: try TimelineShape(bar: 4, phases: ["p", "q"]),
            rejected: RejectedInput(), sync: .untimed, logger: logger)
    }

    func testTheFilesTimelineBecomesTheSnapshotAndACrashBeforeTheRenameIsFinished() throws {
        let dir = Harness.tempDir("migrate-unit")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let dataDir = try DataDir(path: dir, rejected: RejectedInput())
        let startNs = (Int64(Date().timeIntervalSince1970) - 60) * 1_000_000_000
        var stored = StoredEpoch(
            clusterId: "mc", startBeat: 0, startNs: startNs, bpm: 120, bar: 4, phases: ["p", "q"],
            pendingAtBeat: 400, pendingBpm: 126, pendingJustification: "load \"peak\"")
        try dataDir.saveEpoch(stored)
        try prepare(dataDir)

        let epochPath = dir + "/epoch.json"
        let migratedPath = dir + "/" + EpochMigration.migratedName
        XCTAssertFalse(FileManager.default.fileExists(atPath: epochPath))
        XCTAssertTrue(FileManager.default.fileExists(atPath: migratedPath))
        let persisted = try RaftStore(dataDir: dir).load()
        let snapshot = try XCTUnwrap(persisted.snapshot)
        XCTAssertEqual([snapshot.index, snapshot.term], [1, 1])
        XCTAssertEqual(persisted.hardState, HardState(term: 1, vote: noNode, commit: 1))
        XCTAssertEqual(
            try JSONDecoder().decode(ClusterState.self, from: Data(snapshot.data)),
            ClusterState(
                epoch: .init(startBeat: 0, startNs: startNs, bpm: 120), pending: .init(atBeat: 400, bpm: 126),
                justification: "load \"peak\"", bar: 4, phases: ["p", "q"]))

        // A crash after the synced Raft state, before the rename: both are
        // there and agree; the next start finishes the rename, writes nothing.
        XCTAssertEqual(rename(migratedPath, epochPath), 0)
        try prepare(dataDir)
        XCTAssertFalse(FileManager.default.fileExists(atPath: epochPath))
        XCTAssertEqual(try RaftStore(dataDir: dir).load().snapshot, snapshot)

        // An epoch.json that says something else next to the log: refused, left alone.
        stored.bpm = 121
        try dataDir.saveEpoch(stored)
        XCTAssertThrowsError(try prepare(dataDir)) { error in
            XCTAssertTrue("\(error)".contains("holds both a Raft log and an epoch.json"), "\(error)")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: epochPath))
        XCTAssertEqual(try RaftStore(dataDir: dir).load().snapshot, snapshot)
    }

    func testNoTimelineNeedsBootstrap() throws {
        let dir = Harness.tempDir("migrate-empty")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let dataDir = try DataDir(path: dir, rejected: RejectedInput())
        XCTAssertThrowsError(try prepare(dataDir)) { error in
            XCTAssertTrue("\(error)".contains("start with -bootstrap"), "\(error)")
        }
        XCTAssertNoThrow(try prepare(dataDir, bootstrap: true), "the core proposes the first epoch")
    }
}
