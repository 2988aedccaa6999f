// backbeat_fsync_duration_seconds{file}: every sync of the data dir is
// counted under the file it made durable, from the storage queues; a failed
// sync keeps its errno for the caller's message.
import Foundation
import Glibc
import Raft
import XCTest

@testable import Pulse

final class FsyncMetricsTests: XCTestCase, RaftStoreFixtures {
    func testRaftStoreSaveCountsEachSyncByFile() throws {
        let dir = Harness.tempDir("fsync-raft")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let metrics = PulseMetrics()
        let store = try RaftStore(dataDir: dir, sync: metrics.diskSync)
        _ = try store.load()
        XCTAssertEqual(counts(metrics), [:], "nothing synced by a load")

        // A new term and entries: the hard state (temp file, then the raft/
        // directory for the rename), the log (created: its data, then raft/),
        // then the commit's hard state again.
        try save(store, hard: HardState(term: 1, vote: 1, commit: 2), entries: entries(1...2, term: 1))
        XCTAssertEqual(counts(metrics), ["raft/hardstate": 2, "raft/log": 1, "raft/": 3])

        // An append to the existing log: its data only, no directory sync.
        try save(store, hard: nil, entries: entries(3...3, term: 1))
        XCTAssertEqual(counts(metrics), ["raft/hardstate": 2, "raft/log": 2, "raft/": 3])
        let sum = try XCTUnwrap(value(metrics, "backbeat_fsync_duration_seconds_sum", file: "raft/log"))
        XCTAssertGreaterThan(sum, 0, "durations are recorded, not only counts")
        XCTAssertLessThan(sum, 10)
    }

    func testDataDirEpochSaveCountsItsSyncs() throws {
        let dir = Harness.tempDir("fsync-epoch")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let metrics = PulseMetrics()
        let dataDir = try DataDir(path: dir, rejected: RejectedInput(), sync: metrics.diskSync)
        try dataDir.saveEpoch(StoredEpoch(clusterId: "c1", startBeat: 0, startNs: 1, bpm: 120, bar: 4))
        XCTAssertEqual(counts(metrics), ["epoch.json": 1, ".": 1])
        _ = try dataDir.nodeId(preferring: "")  // generated and written: node_id and the directory
        XCTAssertEqual(counts(metrics), ["epoch.json": 1, "node_id": 1, ".": 2])
    }

    func testAFailedSyncIsTimedAndKeepsItsErrno() {
        let seen = Seen()
        let sync = DiskSync { file, durationNs in seen.add(file, durationNs) }
        errno = 0
        XCTAssertFalse(sync.fsync(-1, .raftLog))
        XCTAssertEqual(errno, EBADF, "the caller's message reads errno after the observer ran")
        XCTAssertEqual(seen.files, [.raftLog])
    }

    // MARK: helpers

    /// Nonzero `backbeat_fsync_duration_seconds_count` per `file` label, scraped.
    private func counts(_ metrics: PulseMetrics) -> [String: Int] {
        var result: [String: Int] = [:]
        for file in DiskSync.File.allCases {
            let count = value(metrics, "backbeat_fsync_duration_seconds_count", file: file.rawValue) ?? -1
            if count != 0 { result[file.rawValue] = Int(count) }
        }
        return result
    }

    private func value(_ metrics: PulseMetrics, _ name: String, file: String) -> Double? {
        var buffer: [UInt8] = []
        metrics.registry.emit(into: &buffer)
        let prefix = "\(name){file=\"\(file)\"} "
        for line in String(decoding: buffer, as: UTF8.self).split(separator: "\n") where line.hasPrefix(prefix) {
            return Double(line.dropFirst(prefix.count))
        }
        return nil
    }
}

/// What an observer saw, from any thread.
private final class Seen: @unchecked Sendable {
    private let lock = NSLock()
    private var seen: [DiskSync.File] = []
    func add(_ file: DiskSync.File, _ durationNs: Int64) { lock.withLock { seen.append(file) } }
    var files: [DiskSync.File] { lock.withLock { seen } }
}
