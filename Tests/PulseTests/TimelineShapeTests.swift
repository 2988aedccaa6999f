// The timeline's shape as committed state (requirements §12), pure:
// validation by the flags' rules, the rule for state of a previous version
// (the flags fill in), the one-line refusal naming both shapes, the Raft
// entry and snapshot formats (old ones still decode), the start-up scan of a
// data dir, and the files that carry the shape (epoch.json, backups).
import Foundation
import PulseCore
import PulsePolicy
import Raft
import XCTest

@testable import Pulse

final class TimelineShapeTests: XCTestCase {
    private let flags = try! TimelineShape(bar: 8, phases: ["plan", "work", "review"])
    private let startNs: Int64 = 1_700_000_000_000_000_000

    // MARK: validation

    func testShapesAreValidatedLikeTheFlags() {
        XCTAssertNoThrow(try TimelineShape(bar: 1, phases: ["x"]))
        XCTAssertNoThrow(try TimelineShape(bar: 1024, phases: [String(repeating: "é", count: 32)]))
        let bad: [(Int, [String], String)] = [
            (0, ["a"], "bar_out_of_range"),
            (1025, ["a"], "bar_out_of_range"),
            (-1, ["a"], "bar_out_of_range"),
            (Int.max, ["a"], "bar_out_of_range"),
            (4, [], "bad_phases"),
            (2, ["a", "b", "c"], "bad_phases"),
            (4, ["a", ""], "bad_phases"),
            (4, [String(repeating: "x", count: 65)], "bad_phases"),
            (4, [String(repeating: "é", count: 33)], "bad_phases"),  // 66 bytes
            (4, ["a,b"], "bad_phases"),
        ]
        for (bar, phases, reason) in bad {
            XCTAssertThrowsError(try TimelineShape(bar: bar, phases: phases), "\(bar) \(phases)") { error in
                XCTAssertEqual((error as? TimelineShapeError)?.reason, reason)
            }
        }
    }

    // MARK: state of a previous version

    func testMissingPartsAreTheFlags() throws {
        XCTAssertEqual(try TimelineShape.resolve(bar: nil, phases: nil, flags: flags), flags, "no shape: the flags")
        XCTAssertEqual(
            try TimelineShape.resolve(bar: 4, phases: nil, flags: flags),
            try TimelineShape(bar: 4, phases: flags.phases), "the bar alone (an old epoch entry)")
        XCTAssertEqual(
            try TimelineShape.resolve(bar: 3, phases: ["a"], flags: flags), try TimelineShape(bar: 3, phases: ["a"]))
        XCTAssertThrowsError(try TimelineShape.resolve(bar: nil, phases: ["a"], flags: flags))
        XCTAssertThrowsError(try TimelineShape.resolve(bar: 0, phases: nil, flags: flags))
        XCTAssertThrowsError(try TimelineShape.resolve(bar: 4, phases: ["a", ""], flags: flags))
        // A stored bar of 2 cannot hold the flags' 3 phases: the result differs from the flags, so it is refused.
        let narrow = try TimelineShape.resolve(bar: 2, phases: nil, flags: flags)
        XCTAssertEqual(narrow.bar, 2)
        XCTAssertNotNil(narrow.mismatch(flags: flags, committedIn: "x"))
    }

    func testMismatchNamesBothShapesOnOneLine() throws {
        let committed = try TimelineShape(bar: 4, phases: ["a", "b"])
        XCTAssertNil(committed.mismatch(flags: committed, committedIn: "data dir /d"))
        let why = try XCTUnwrap(committed.mismatch(flags: flags, committedIn: "data dir /d"))
        XCTAssertTrue(why.hasPrefix("data dir /d holds the timeline shape -bar 4 -phases a,b"), why)
        XCTAssertTrue(why.contains("started with -bar 8 -phases plan,work,review"), why)
        // Defaults are compared too: the phases alone differ.
        let phasesOnly = try TimelineShape(bar: 8, phases: ["x"])
        XCTAssertNotNil(phasesOnly.mismatch(flags: flags, committedIn: "d"))
        // Control characters (the flags allow them) never break the line.
        let odd = try TimelineShape(bar: 4, phases: ["a\nb"])
        XCTAssertFalse(try XCTUnwrap(odd.mismatch(flags: flags, committedIn: "d")).contains("\n"))
        // Names are compared byte for byte (frames carry the bytes): a
        // precomposed "é" and "e" + combining acute are different shapes.
        let precomposed = try TimelineShape(bar: 4, phases: ["\u{E9}"])
        let decomposed = try TimelineShape(bar: 4, phases: ["e\u{301}"])
        XCTAssertNotNil(precomposed.mismatch(flags: decomposed, committedIn: "d"))
    }

    // MARK: Raft entries and snapshots

    func testTheEpochEntryCarriesTheShapeAndOldEntriesStillDecode() throws {
        let entry = ClusterCommand.epoch(startBeat: 0, startNs: startNs, bpm: 120, bar: 4, phases: ["a", "b"])
        let data = try JSONEncoder().encode(entry)
        XCTAssertEqual(try JSONDecoder().decode(ClusterCommand.self, from: data), entry)
        let old = #"{"epoch":{"startBeat":0,"startNs":1700000000000000000,"bpm":120,"bar":4}}"#
        XCTAssertEqual(
            try JSONDecoder().decode(ClusterCommand.self, from: Data(old.utf8)),
            .epoch(startBeat: 0, startNs: startNs, bpm: 120, bar: 4, phases: nil))
    }

    func testSnapshotsCarryTheShapeAndOldOnesTakeTheFlags() throws {
        let old = #"{"epoch":{"startBeat":0,"startNs":1700000000000000000,"bpm":120},"justification":""}"#
        let legacy = try JSONDecoder().decode(ClusterState.self, from: Data(old.utf8))
        XCTAssertNil(legacy.bar)
        XCTAssertEqual(legacy.shape(flags: flags), flags)
        var shaped = legacy
        shaped.bar = 4
        shaped.phases = ["a"]
        let round = try JSONDecoder().decode(ClusterState.self, from: JSONEncoder().encode(shaped))
        XCTAssertEqual(round, shaped)
        XCTAssertEqual(round.shape(flags: flags), try TimelineShape(bar: 4, phases: ["a"]))
        shaped.phases = ["a", "b", "c", "d", "e"]  // more names than beats
        XCTAssertNil(shaped.shape(flags: flags))
    }

    private func snapshotFile(_ state: ClusterState) throws -> [UInt8] {
        var body = [UInt8]()
        RaftStore.put(&body, UInt64(9))
        RaftStore.put(&body, UInt64(2))
        body += try JSONEncoder().encode(state)
        var file = [UInt8]()
        RaftStore.put(&file, RaftStore.checksum(body))
        return file + body
    }

    /// The leader-snapshot check and the start-up check agree, with the
    /// snapshot's own bar deciding where its pending change may fall.
    func testSnapshotShapesAreValidatedAtStartUpAndFromTheLeader() throws {
        func state(bar: Int?, phases: [String]?, pendingAt: Int64? = nil) -> ClusterState {
            ClusterState(
                epoch: .init(startBeat: 0, startNs: startNs, bpm: 120),
                pending: pendingAt.map { .init(atBeat: $0, bpm: 90) }, justification: "", bar: bar, phases: phases)
        }
        let cases: [(String, ClusterState, String?)] = [
            ("no shape (a previous version)", state(bar: nil, phases: nil), nil),
            ("a shape", state(bar: 3, phases: ["a"]), nil),
            ("a change on the snapshot's bar, off this node's", state(bar: 3, phases: ["a"], pendingAt: 6), nil),
            ("a change off the snapshot's bar", state(bar: 4, phases: ["a"], pendingAt: 6), "bad_pending"),
            ("no shape: this node's bar decides", state(bar: nil, phases: nil, pendingAt: 6), "bad_pending"),
            ("bar 0", state(bar: 0, phases: ["a"]), "bar_out_of_range"),
            ("bar 2000", state(bar: 2000, phases: nil), "bar_out_of_range"),
            ("too many phases", state(bar: 1, phases: ["a", "b"]), "bad_phases"),
            ("an empty phase", state(bar: 4, phases: [""]), "bad_phases"),
            ("phases without a bar", state(bar: nil, phases: ["a"]), "bad_phases"),
        ]
        for (name, s, reason) in cases {
            let data = [UInt8](try JSONEncoder().encode(s))
            XCTAssertEqual(
                ReplicatedTimeline.validatedSnapshot(data, bar: 4) != nil, reason == nil, "leader's: \(name)")
            let file = try snapshotFile(s)
            do {
                _ = try RaftStore.parseSnapshot(file, bar: 4)
                XCTAssertNil(reason, "start-up accepted: \(name)")
            } catch {
                XCTAssertEqual(error.reason, reason, "start-up: \(name)")
                XCTAssertEqual(error.file, "raft/snapshot")
            }
        }
    }

    // MARK: the data dir's committed shape at start-up

    private func epochEntry(_ index: UInt64, bar: Int, phases: [String]?, startNs: Int64? = nil) throws -> Entry {
        let command = ClusterCommand.epoch(
            startBeat: 0, startNs: startNs ?? self.startNs, bpm: 120, bar: bar, phases: phases)
        return Entry(index: index, term: 1, data: [UInt8](try JSONEncoder().encode(command)))
    }

    func testTheStartUpScanFindsTheCommittedShape() throws {
        let noop = Entry(index: 1, term: 1, kind: .noop)
        let shaped = try epochEntry(2, bar: 4, phases: ["a"])
        let four = try TimelineShape(bar: 4, phases: ["a"])
        XCTAssertNil(ClusterCore.persistedShape(snapshot: nil, entries: [], commit: 0, flags: flags), "fresh")
        XCTAssertEqual(
            ClusterCore.persistedShape(snapshot: nil, entries: [noop, shaped], commit: 2, flags: flags), four)
        XCTAssertNil(
            ClusterCore.persistedShape(snapshot: nil, entries: [noop, shaped], commit: 1, flags: flags),
            "an uncommitted epoch is nobody's shape yet")
        // An entry apply refuses (an epoch out of range, a bad shape) is skipped, as apply skips it.
        let outOfRange = try epochEntry(2, bar: 6, phases: ["z"], startNs: Int64.max - 5)
        let badShape = try epochEntry(3, bar: 0, phases: ["z"])
        var third = try epochEntry(4, bar: 4, phases: ["a"])
        third.term = 2
        XCTAssertEqual(
            ClusterCore.persistedShape(
                snapshot: nil, entries: [noop, outOfRange, badShape, third], commit: 4, flags: flags), four)
        // An old epoch entry (bar only): the flags' phases.
        XCTAssertEqual(
            ClusterCore.persistedShape(
                snapshot: nil, entries: [try epochEntry(1, bar: 8, phases: nil)], commit: 1, flags: flags), flags)
        // The snapshot holds the first epoch: it wins over any later entry.
        let snapshot = ClusterState(
            epoch: .init(startBeat: 0, startNs: startNs, bpm: 120), pending: nil, justification: "", bar: 2,
            phases: ["s"])
        XCTAssertEqual(
            ClusterCore.persistedShape(snapshot: snapshot, entries: [third], commit: 4, flags: flags),
            try TimelineShape(bar: 2, phases: ["s"]))
        var legacy = snapshot
        legacy.bar = nil
        legacy.phases = nil
        XCTAssertEqual(ClusterCore.persistedShape(snapshot: legacy, entries: [], commit: 4, flags: flags), flags)
    }

    // MARK: epoch.json and backups

    func testEpochJsonCarriesThePhasesAndOldFilesStillParse() throws {
        func parse(_ text: String) throws(DataDirError) -> StoredEpoch { try DataDirFiles.parseEpoch(Array(text.utf8)) }
        let head = #"{"clusterId":"c","startBeat":0,"startNs":1700000000000000000,"bpm":120,"bar":4"#
        XCTAssertNil(try parse(head + "}").phases, "a previous version's file")
        XCTAssertEqual(try parse(head + #","phases":["a","b"]}"#).phases, ["a", "b"])
        for (tail, reason) in [
            (#","phases":[]}"#, "bad_phases"), (#","phases":["a","b","c","d","e"]}"#, "bad_phases"),
            (#","phases":["a,b"]}"#, "bad_phases"), (#","phases":"a"}"#, "wrong_type"),
        ] {
            XCTAssertThrowsError(try parse(head + tail), tail) { error in
                XCTAssertEqual((error as? DataDirError)?.reason, reason, "\(error)")
                XCTAssertEqual((error as? DataDirError)?.file, "epoch.json")
            }
        }
    }

    func testEveryEpochJsonWrittenCarriesTheCommittedShape() throws {
        let dir = Harness.tempDir("shape-dd")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let dataDir = try DataDir(path: dir, rejected: RejectedInput())
        dataDir.shape = try TimelineShape(bar: 4, phases: ["a", "b"])
        // As a tempo change builds it (TempoController): without phases.
        try dataDir.saveEpoch(StoredEpoch(clusterId: "c", startBeat: 0, startNs: startNs, bpm: 120, bar: 4))
        XCTAssertEqual(try dataDir.loadEpoch()?.phases, ["a", "b"])
    }

    func testBackupsCarryTheShapeIntoWhatTheyRestore() throws {
        let file = BackupFile(
            clusterId: "c", nodeId: "n1", bar: 4, phases: ["a", "b"],
            epoch: .init(startBeat: 0, startNs: startNs, bpm: 120), pending: nil, term: 3, index: 7, lastBeat: nil,
            takenAtNs: startNs)
        XCTAssertEqual(file.clusterState.bar, 4)
        XCTAssertEqual(file.clusterState.phases, ["a", "b"])
        XCTAssertEqual(file.storedEpoch.phases, ["a", "b"])
        // The restored snapshot validates and holds the shape.
        let snapshot = file.raftSnapshot
        XCTAssertEqual(
            ReplicatedTimeline.validatedSnapshot(snapshot.data, bar: 8)?.shape(flags: flags),
            try TimelineShape(bar: 4, phases: ["a", "b"]))
    }
}
