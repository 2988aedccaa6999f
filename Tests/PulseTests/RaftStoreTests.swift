// Raft's stable storage: what is synced comes back after a restart; a torn
// log tail is cut at the last good record; a bad last record that the commit
// covers, and a corrupt hard state, refuse to start (DataDirTests has the rest).
import Foundation
import PulsePolicy
import Raft
import XCTest

@testable import Pulse

final class RaftStoreTests: XCTestCase, RaftStoreFixtures {
    func testRoundTripWithTruncationAndSnapshot() throws {
        let dir = Harness.tempDir("store")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var store = try RaftStore(dataDir: dir)
        XCTAssertEqual(try store.load().entries, [])
        try save(store, hard: HardState(term: 2, vote: 7, commit: 3), entries: entries(1...5, term: 2))
        // A new leader overwrites the uncommitted tail from index 4.
        try save(store, hard: HardState(term: 3, vote: 9, commit: 4), entries: entries(4...6, term: 3))
        store = try RaftStore(dataDir: dir)
        let loaded = try store.load()
        XCTAssertEqual(loaded.hardState, HardState(term: 3, vote: 9, commit: 4))
        XCTAssertEqual(loaded.entries.map(\.index), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(loaded.entries.map(\.term), [2, 2, 2, 3, 3, 3])
        XCTAssertEqual(loaded.truncatedBytes, 0)
        // A compaction at 4 drops the entries it covers and keeps the rest.
        let state = ClusterState(
            epoch: .init(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 12), pending: nil, justification: "")
        let data = [UInt8](try JSONEncoder().encode(state))
        try compact(store, Snapshot(index: 4, term: 3, data: data))
        let afterSnapshot = try RaftStore(dataDir: dir).load()
        XCTAssertEqual(afterSnapshot.snapshot, Snapshot(index: 4, term: 3, data: data))
        XCTAssertEqual(afterSnapshot.entries.map(\.index), [5, 6])
    }

    // Issue #19, the exact two-message sequence: a follower appends entries
    // 1–3 of term 3 (message term 5), then installs a snapshot at (1, term 5).
    // The core drops its whole log (the snapshot does not match entry 1's
    // term); the store used to keep entries 2–3, and the restart refused
    // for good ("entry 2 has a lower term than its predecessor").
    func testInstalledSnapshotReplacesTheStoredLogAndTheNodeRestarts() throws {
        let dir = Harness.tempDir("install")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RaftStore(dataDir: dir)
        _ = try store.load()
        let config = Config(id: 2, voters: [1, 2, 3], electionTicks: 6, heartbeatTicks: 1, randomSeed: 7)
        let node = RaftNode(config: config)
        func persistReady() throws {
            guard let ready = node.ready() else { return XCTFail("no Ready") }
            try save(store, hard: ready.hardState, entries: ready.entries, snapshot: ready.snapshot)
            node.advance(ready)
        }
        node.step(Message(kind: .append, from: 1, to: 2, term: 5, entries: entries(1...3, term: 3)))
        try persistReady()
        let state = ClusterState(
            epoch: .init(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120), pending: nil, justification: "")
        let data = [UInt8](try JSONEncoder().encode(state))
        node.step(Message(kind: .snapshot, from: 1, to: 2, term: 5, snapshot: Snapshot(index: 1, term: 5, data: data)))
        try persistReady()
        XCTAssertEqual(node.lastIndex, 1, "the core dropped its log for the snapshot")

        let loaded = try RaftStore(dataDir: dir).load()
        XCTAssertEqual(loaded.snapshot?.index, 1)
        XCTAssertEqual(loaded.entries, [], "the stored log is the core's: nothing after the snapshot")
        XCTAssertNoThrow(
            try RaftNode(
                config: config, hardState: loaded.hardState, snapshot: loaded.snapshot, entries: loaded.entries))
    }

    // A data dir written before that fix (snapshot at 1 of term 5, a stale
    // log of term 3 after it, commit 1) starts: the stale tail is dropped,
    // counted, and the log rewritten without it.
    func testStaleTailAfterAnInstalledSnapshotIsDroppedAtLoad() throws {
        let dir = Harness.tempDir("stale")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let state = ClusterState(
            epoch: .init(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120), pending: nil, justification: "")
        let data = [UInt8](try JSONEncoder().encode(state))
        let store = try RaftStore(dataDir: dir)
        try save(store, hard: HardState(term: 5, vote: 0, commit: 0), entries: entries(1...3, term: 3))
        // The old store's install: snapshot written, entries 2–3 kept.
        try compact(store, Snapshot(index: 1, term: 5, data: data))
        try save(store, hard: HardState(term: 5, vote: 0, commit: 1), entries: [])
        let rejected = RejectedInput()
        let loaded = try RaftStore(dataDir: dir, rejected: rejected).load()
        XCTAssertEqual(loaded.entries, [])
        XCTAssertEqual(rejected.count(.dataDir, reason: "stale_tail_after_snapshot"), 1)
        XCTAssertEqual(try RaftStore(dataDir: dir).load().entries, [], "the log was rewritten without the tail")
        // A crash between writing an installed snapshot (10, term 3) and
        // emptying the log can leave [11 of term 2, 12 of term 4]
        // (adversarial review): the whole tail goes, not just its head.
        XCTAssertEqual(
            RaftStore.staleAfterSnapshot(
                [
                    Entry(index: 11, term: 2, kind: .normal, data: []),
                    Entry(index: 12, term: 4, kind: .normal, data: []),
                ],
                snapshot: Snapshot(index: 10, term: 3, data: data), commit: 10), 2)
        XCTAssertEqual(
            RaftStore.staleAfterSnapshot(
                entries(2...3, term: 3), snapshot: Snapshot(index: 1, term: 5, data: data), commit: 2),
            0, "a committed entry is never dropped (the consistency checks refuse such a dir)")
    }

    // Adversarial review of #19, item 3: the log holds [1, 2, 3] of term 5;
    // a leader's snapshot at (2, term 4) does not match entry 2, so the core
    // installs it and drops its whole log; the process dies after the
    // snapshot's write and before the log's rewrite. The tail [3 of term 5]
    // has a term above the snapshot's, and survived the load: a log the node
    // never had (it claimed a last term of 5). Entry 2's other term shows the
    // install; a crashed compaction (entry 2 of the snapshot's term) keeps its tail.
    func testStaleTailOfAHigherTermAfterACrashedInstallIsDropped() throws {
        let state = ClusterState(
            epoch: .init(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120), pending: nil, justification: "")
        let data = [UInt8](try JSONEncoder().encode(state))
        /// A data dir holding entries 1–3 of term 5 and, as a crash right
        /// after the snapshot's write leaves it, `snapshot` beside that log.
        func crashedAfterSnapshotWrite(_ snapshot: Snapshot) throws -> String {
            let dir = Harness.tempDir("crashed")
            try save(
                try RaftStore(dataDir: dir), hard: HardState(term: 6, vote: 0, commit: 0),
                entries: entries(1...3, term: 5))
            let other = Harness.tempDir("snapshot")
            defer { try? FileManager.default.removeItem(atPath: other) }
            try compact(try RaftStore(dataDir: other), snapshot)
            try FileManager.default.copyItem(atPath: other + "/raft/snapshot", toPath: dir + "/raft/snapshot")
            return dir
        }
        let installed = try crashedAfterSnapshotWrite(Snapshot(index: 2, term: 4, data: data))
        defer { try? FileManager.default.removeItem(atPath: installed) }
        let rejected = RejectedInput()
        let loaded = try RaftStore(dataDir: installed, rejected: rejected).load()
        XCTAssertEqual(loaded.snapshot?.index, 2)
        XCTAssertEqual(loaded.entries, [], "the tail the install replaced is gone")
        XCTAssertEqual(rejected.count(.dataDir, reason: "stale_tail_after_snapshot"), 1)
        XCTAssertEqual(try RaftStore(dataDir: installed).load().entries, [], "the log was rewritten without it")

        let compacted = try crashedAfterSnapshotWrite(Snapshot(index: 2, term: 5, data: data))
        defer { try? FileManager.default.removeItem(atPath: compacted) }
        XCTAssertEqual(try RaftStore(dataDir: compacted).load().entries, entries(3...3, term: 5))
    }

    // Appends are written and synced in chunks of at most maxAppendBytes (so a
    // torn tail is never longer): a batch larger than that round-trips.
    func testAppendLargerThanOneChunkRoundTrips() throws {
        let dir = Harness.tempDir("chunks")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RaftStore(dataDir: dir)
        _ = try store.load()
        let big = (1...6).map { Entry(index: UInt64($0), term: 1, data: [UInt8](repeating: UInt8($0), count: 1 << 20)) }
        try save(store, hard: HardState(term: 1, vote: 1, commit: 6), entries: big)
        let loaded = try RaftStore(dataDir: dir).load()
        XCTAssertEqual(loaded.entries, big)
        XCTAssertEqual(loaded.truncatedBytes, 0)
    }

    // Review of #9, finding 6: a leader's snapshot that the node refused on
    // apply had already been persisted, so the node then refused to start.
    // Now the core runs ClusterNode.snapshotState before adopting one; it
    // must accept nothing that the start-up check (with the same bar) refuses.
    func testSnapshotCheckAgreesWithTheStartUpCheck() throws {
        let start: Int64 = 1_700_000_000_000_000_000
        func state(bpm: Int64 = 120, pendingAt: Int64? = nil, pendingBpm: Int64 = 90) throws -> [UInt8] {
            let s = ClusterState(
                epoch: .init(startBeat: 0, startNs: start, bpm: bpm),
                pending: pendingAt.map { .init(atBeat: $0, bpm: pendingBpm) }, justification: "x")
            return [UInt8](try JSONEncoder().encode(s))
        }
        let cases: [(String, [UInt8], Bool)] = [
            ("no pending change", try state(), true),
            ("a change at a downbeat", try state(pendingAt: 8), true),
            ("a change off the downbeats of 4", try state(pendingAt: 6), false),
            ("a change before the start", try state(pendingAt: -4), false),
            ("bpm 0", try state(bpm: 0), false),
            ("a change to bpm 0", try state(pendingAt: 8, pendingBpm: 0), false),
            ("a change beyond the timeline's range", try state(pendingAt: 1 << 60), false),
            ("not JSON", Array("garbage".utf8), false),
            ("empty", [], false),
        ]
        for (name, data, valid) in cases {
            let checked = ReplicatedTimeline.validatedSnapshot(data, bar: 4) != nil
            let loads = (try? RaftStore.parseSnapshot(snapshotBytes(index: 9, term: 2, data: data), bar: 4)) != nil
            XCTAssertEqual(checked, valid, name)
            XCTAssertEqual(loads, valid, "start-up agrees: \(name)")
        }
    }

    // parseSnapshot used to check without the bar (`bar: nil`); the store
    // now checks with the node's bar when it is given one.
    func testStartUpChecksTheSnapshotWithTheNodesBar() throws {
        let dir = Harness.tempDir("snapbar")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RaftStore(dataDir: dir)
        _ = try store.load()
        let state = ClusterState(
            epoch: .init(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120),
            pending: .init(atBeat: 6, bpm: 90), justification: "")
        let data = [UInt8](try JSONEncoder().encode(state))
        try save(store, hard: HardState(term: 2, vote: 1, commit: 9), entries: [])
        try save(store, hard: nil, entries: [], snapshot: Snapshot(index: 9, term: 2, data: data))
        XCTAssertNoThrow(try RaftStore(dataDir: dir).load(bar: 3), "beat 6 is a downbeat of a bar of 3")
        XCTAssertNoThrow(try RaftStore(dataDir: dir).load())
        XCTAssertThrowsError(try RaftStore(dataDir: dir).load(bar: 4)) { error in
            XCTAssertTrue("\(error)".contains("raft/snapshot"), "\(error)")
        }
    }

    func testTornTailsAreCutAndCommittedOnesRefused() throws {
        let dir = Harness.tempDir("torn")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RaftStore(dataDir: dir)
        _ = try store.load()
        try save(store, hard: HardState(term: 1, vote: 1, commit: 2), entries: entries(1...3, term: 1))
        let log = dir + "/raft/log"
        let full = try Data(contentsOf: URL(fileURLWithPath: log))
        // Torn: the last record is cut short.
        try full.prefix(full.count - 5).write(to: URL(fileURLWithPath: log))
        var loaded = try RaftStore(dataDir: dir).load()
        XCTAssertEqual(loaded.entries.map(\.index), [1, 2])
        XCTAssertGreaterThan(loaded.truncatedBytes, 0)
        // The cut is written back: a second load is clean.
        loaded = try RaftStore(dataDir: dir).load()
        XCTAssertEqual(loaded.truncatedBytes, 0)
        XCTAssertEqual(loaded.entries.map(\.index), [1, 2])
        // Corrupt: a flipped byte inside the second record's payload. It is
        // the last record, but the commit (2) covers it: not a torn append.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: log)))
        bytes[bytes.count - 2] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: log))
        XCTAssertThrowsError(try RaftStore(dataDir: dir).load()) { error in
            XCTAssertTrue("\(error)".contains("raft/log at byte offset"), "\(error)")
        }
    }

    func testCorruptHardStateRefusesToStart() throws {
        let dir = Harness.tempDir("hard")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RaftStore(dataDir: dir)
        _ = try store.load()
        try save(store, hard: HardState(term: 5, vote: 3, commit: 0), entries: [])
        let path = dir + "/raft/hardstate"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[0] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try RaftStore(dataDir: dir).load()) { error in
            XCTAssertTrue("\(error)".contains("hardstate"), "\(error)")
        }
    }
}
