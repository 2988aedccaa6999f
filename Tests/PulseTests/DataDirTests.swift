// The data dir as untrusted input (requirements §10): every file corrupt,
// truncated, of the wrong types or out of range is refused with a reason
// naming it (and the byte offset, for the Raft log); a torn log tail is cut;
// the pure parsers never trap, whatever the bytes.
import Foundation
import Glibc
import PulseCore
import PulsePolicy
import Raft
import XCTest

@testable import Pulse

final class DataDirTests: XCTestCase, RaftStoreFixtures {
    // MARK: helpers

    private let validEpoch = StoredEpoch(
        clusterId: "c1", startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120, bar: 8)

    private func json(_ epoch: StoredEpoch) throws -> [UInt8] { [UInt8](try DataDir.encode(epoch)) }

    /// `validEpoch` as a JSON object with `changes` applied (a nil value removes the key).
    private func epochBytes(_ changes: [String: Any?]) throws -> [UInt8] {
        var object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(try json(validEpoch))) as? [String: Any])
        for (key, value) in changes { object[key] = value ?? nil }
        return [UInt8](try JSONSerialization.data(withJSONObject: object))
    }

    private func assertRefused(
        _ body: () throws(DataDirError) -> Void, file name: String, reason: String, offset: Int? = nil,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        do {
            try body()
            XCTFail("accepted; expected \(reason)", file: file, line: line)
        } catch {
            XCTAssertEqual(error.file, name, "\(error)", file: file, line: line)
            XCTAssertEqual(error.reason, reason, "\(error)", file: file, line: line)
            if let offset { XCTAssertEqual(error.offset, offset, "\(error)", file: file, line: line) }
            XCTAssertFalse(error.description.contains("\n"), "one line: \(error)", file: file, line: line)
            XCTAssertTrue(error.description.hasPrefix(name), "names the file: \(error)", file: file, line: line)
        }
    }

    private func assertEpochRefused(
        _ bytes: [UInt8], _ reason: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        assertRefused(
            { () throws(DataDirError) in _ = try DataDirFiles.parseEpoch(bytes) }, file: "epoch.json",
            reason: reason, file: file, line: line)
    }

    // MARK: epoch.json

    func testValidEpochRoundTrips() throws {
        XCTAssertEqual(try DataDirFiles.parseEpoch(try json(validEpoch)), validEpoch)
        var pending = validEpoch
        pending.pendingAtBeat = 800
        pending.pendingBpm = 125
        pending.pendingJustification = "faster"
        XCTAssertEqual(try DataDirFiles.parseEpoch(try json(pending)), pending)
    }

    func testCorruptAndTruncatedEpochIsRefused() throws {
        let good = try json(validEpoch)
        assertEpochRefused([], "bad_json")
        assertEpochRefused(Array("not json".utf8), "bad_json")
        assertEpochRefused([0xFF, 0xFE, 0x00, 0x7B], "bad_json")
        assertEpochRefused(Array(good.prefix(good.count / 2)), "bad_json")
        assertEpochRefused(Array("[1,2,3]".utf8), "wrong_type")
        assertEpochRefused([UInt8](repeating: 0x20, count: DataDirFiles.maxEpochBytes + 1), "too_large")
    }

    func testEpochWithWrongTypesOrMissingFieldsIsRefused() throws {
        assertEpochRefused(try epochBytes(["bpm": "120"]), "wrong_type")
        assertEpochRefused(Array(#"{"clusterId":"c1","startBeat":0,"startNs":1,"bpm":12.5,"bar":8}"#.utf8), "bad_json")
        assertEpochRefused(Array(#"{"clusterId":"c1","startBeat":0,"startNs":1,"bpm":1e30,"bar":8}"#.utf8), "bad_json")
        assertEpochRefused(try epochBytes(["startNs": NSNull()]), "wrong_type")
        assertEpochRefused(try epochBytes(["clusterId": 7]), "wrong_type")
        assertEpochRefused(try epochBytes(["bpm": nil]), "missing_field")
        assertEpochRefused(try epochBytes(["clusterId": nil]), "missing_field")
        let noBar = try epochBytes(["bar": nil])
        do {
            _ = try DataDirFiles.parseEpoch(noBar)
            XCTFail("accepted")
        } catch {
            XCTAssertTrue(error.detail.contains("'bar'"), "names the field: \(error)")
        }
    }

    func testEpochOutOfRangeIsRefused() throws {
        for bpm: Int64 in [0, -1, 6001, Int64.max, Int64.min] {
            assertEpochRefused(try epochBytes(["bpm": bpm]), "bpm_out_of_range")
        }
        for bar in [0, -8, 1025] { assertEpochRefused(try epochBytes(["bar": bar]), "bar_out_of_range") }
        for startNs: Int64 in [-1, Int64.max, Int64.max - 1000, 7_258_118_400_000_000_001] {
            assertEpochRefused(try epochBytes(["startNs": startNs]), "instant_out_of_range")
        }
        for startBeat: Int64 in [-1, (1 << 48) + 1, Int64.max] {
            assertEpochRefused(try epochBytes(["startBeat": startBeat]), "beat_out_of_range")
        }
        assertEpochRefused(try epochBytes(["clusterId": "a\u{1}b"]), "bad_cluster_id")
        assertEpochRefused(try epochBytes(["clusterId": ""]), "bad_cluster_id")
        // The pending change: both fields or none, at a later downbeat, a valid epoch itself.
        assertEpochRefused(try epochBytes(["pendingAtBeat": 800]), "bad_pending")
        assertEpochRefused(try epochBytes(["pendingBpm": 125]), "bad_pending")
        assertEpochRefused(try epochBytes(["pendingAtBeat": 801, "pendingBpm": 125]), "bad_pending")
        assertEpochRefused(try epochBytes(["pendingAtBeat": 0, "pendingBpm": 125]), "bad_pending")
        assertEpochRefused(try epochBytes(["pendingAtBeat": 800, "pendingBpm": 0]), "bpm_out_of_range")
        assertEpochRefused(
            try epochBytes(["pendingAtBeat": Int64.max - 7, "pendingBpm": 125]), "beat_out_of_range")
        // Beyond the supported range, though representable: refused as the start of an epoch.
        assertEpochRefused(try epochBytes(["pendingAtBeat": 1 << 50, "pendingBpm": 125]), "beat_out_of_range")
    }

    func testEpochFarAheadOfTheClockIsRefused() throws {
        let now = validEpoch.startNs
        XCTAssertNoThrow(try DataDirFiles.checkNotFarAhead(validEpoch, nowNs: now - 3_600_000_000_000))
        assertRefused(
            { () throws(DataDirError) in
                try DataDirFiles.checkNotFarAhead(self.validEpoch, nowNs: now - 2 * 86_400_000_000_000)
            }, file: "epoch.json", reason: "start_in_future")
        XCTAssertNoThrow(try DataDirFiles.checkNotFarAhead(validEpoch, nowNs: Int64.max))
    }

    func testLoadEpochCountsAndNamesThePath() throws {
        let dir = Harness.tempDir("epoch")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rejected = RejectedInput()
        let dataDir = try DataDir(path: dir, rejected: rejected)
        XCTAssertNil(try dataDir.loadEpoch())
        try dataDir.saveEpoch(validEpoch)
        XCTAssertEqual(try dataDir.loadEpoch(), validEpoch)
        try Data(try epochBytes(["bpm": 0])).write(to: URL(fileURLWithPath: dir + "/epoch.json"))
        XCTAssertThrowsError(try dataDir.loadEpoch()) { error in
            XCTAssertTrue("\(error)".hasPrefix(dir + "/epoch.json: bpm 0"), "\(error)")
        }
        XCTAssertEqual(rejected.count(.dataDir, reason: "bpm_out_of_range"), 1)
        try FileManager.default.removeItem(atPath: dir + "/epoch.json")
        try FileManager.default.createDirectory(atPath: dir + "/epoch.json", withIntermediateDirectories: false)
        XCTAssertThrowsError(try dataDir.loadEpoch()) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
    }

    // MARK: the timeline math's range

    func testValidatedEpochsNeverOverflowAtTheCornersOfTheRange() throws {
        let lo = TempoEpoch.supportedNs.lowerBound
        let hi = TempoEpoch.supportedNs.upperBound
        for bpm: Int64 in [1, 7, 119, 6000] {
            for startBeat: Int64 in [0, 1 << 48] {
                for startNs in [lo, 1_700_000_000_123_456_789, hi] {
                    let epoch = try TempoEpoch.validated(startBeat: startBeat, startNs: startNs, bpm: bpm)
                    let timeline = Timeline(epoch: epoch, bar: 1024, phaseCount: 3)
                    for t in [lo, lo + 1, startNs, hi - 1, hi] {
                        // A trap here fails the test run; the relations check the answers.
                        let k = timeline.beat(atOrBeforeNs: t)
                        XCTAssertLessThanOrEqual(timeline.instantNs(ofBeat: k), t)
                        XCTAssertGreaterThan(timeline.instantNs(ofBeat: k + 1), t)
                        XCTAssertGreaterThan(timeline.deadlineNs(ofBeat: k + 1), timeline.instantNs(ofBeat: k + 1))
                        XCTAssertEqual(epoch.checkedInstantNs(ofBeat: k), timeline.instantNs(ofBeat: k))
                    }
                }
            }
        }
        XCTAssertThrowsError(try TempoEpoch.validated(startBeat: 0, startNs: 0, bpm: 0))
        XCTAssertThrowsError(try TempoEpoch.validated(startBeat: 0, startNs: hi + 1, bpm: 12))
        XCTAssertThrowsError(try TempoEpoch.validated(startBeat: -1, startNs: 0, bpm: 12))
    }

    func testCheckedInstantMatchesTheMathOrSaysNil() {
        let epoch = TempoEpoch(startBeat: 16, startNs: 1_700_000_000_000_000_000, bpm: 7)
        for k: Int64 in [-1_000_000, 0, 15, 16, 17, 123_456_789] {
            XCTAssertEqual(epoch.checkedInstantNs(ofBeat: k), epoch.instantNs(ofBeat: k))
        }
        XCTAssertNil(epoch.checkedInstantNs(ofBeat: Int64.max))
        XCTAssertNil(epoch.checkedInstantNs(ofBeat: Int64.min))
        XCTAssertNil(TempoEpoch(startBeat: 0, startNs: Int64.max - 10, bpm: 1).checkedInstantNs(ofBeat: 1))
        XCTAssertNil(TempoEpoch(startBeat: Int64.min, startNs: 0, bpm: Int64.max).checkedInstantNs(ofBeat: Int64.max))
    }

    // MARK: node_id and LOCK

    func testNodeIdFileIsValidated() {
        XCTAssertEqual(try DataDirFiles.parseNodeId(Array("pulse-1a2b3c\n".utf8)), "pulse-1a2b3c")
        XCTAssertEqual(try DataDirFiles.parseNodeId(Array("  n1\r\n".utf8)), "n1")
        let bad: [([UInt8], String)] = [
            ([], "empty"),
            (Array(" \n\t".utf8), "empty"),
            (Array("n\u{7}1\n".utf8), "bad_id"),
            (Array("n\u{0}1".utf8), "bad_id"),
            (Array("a\u{200B}b".utf8), "bad_id"),  // U+200B is a format character (Cf)
            (Array("a.b".utf8), "bad_id"),
            (Array("a b".utf8), "bad_id"),
            (Array(String(repeating: "x", count: 129).utf8), "bad_id"),
            ([0x6E, 0xFF, 0x31], "not_utf8"),
            ([0xC3], "not_utf8"),
            ([UInt8](repeating: 0x61, count: 2000), "too_large"),
        ]
        for (bytes, reason) in bad {
            assertRefused(
                { () throws(DataDirError) in _ = try DataDirFiles.parseNodeId(bytes) }, file: "node_id",
                reason: reason)
        }
    }

    func testBadNodeIdFileRefusesAndIsNotReplaced() throws {
        let dir = Harness.tempDir("nodeid")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rejected = RejectedInput()
        let dataDir = try DataDir(path: dir, rejected: rejected)
        let generated = try dataDir.nodeId(preferring: "")
        XCTAssertTrue(generated.hasPrefix("pulse-"))
        XCTAssertEqual(try dataDir.nodeId(preferring: ""), generated, "kept")
        XCTAssertEqual(try dataDir.nodeId(preferring: "n9"), "n9", "the flag wins")
        let bad = Data("n\u{1B}[31m1\n".utf8)
        try bad.write(to: URL(fileURLWithPath: dir + "/node_id"))
        XCTAssertThrowsError(try dataDir.nodeId(preferring: "")) { error in
            XCTAssertTrue("\(error)".hasPrefix(dir + "/node_id: "), "\(error)")
            XCTAssertFalse("\(error)".contains("\u{1B}"), "no control characters echoed: \(error)")
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/node_id")), bad, "not replaced")
        try Data().write(to: URL(fileURLWithPath: dir + "/node_id"))
        XCTAssertThrowsError(try dataDir.nodeId(preferring: ""))
        XCTAssertEqual(rejected.count(.dataDir), 2)
    }

    func testIdRuleIsTheSameForFlagsAndFile() {
        XCTAssertThrowsError(try PulseCommand.parseConfig(["-node-id", "n\u{7}1"], environment: [:])) { error in
            XCTAssertTrue("\(error)".contains("control characters"), "\(error)")
            XCTAssertFalse("\(error)".contains("\u{7}"))
        }
        XCTAssertThrowsError(try PulseCommand.parseConfig(["-node-id", "n\u{FFFD}"], environment: [:]))
        XCTAssertThrowsError(try PulseCommand.parseConfig(["-node-id", "a\nb"], environment: [:])) { error in
            XCTAssertFalse("\(error)".contains("\n"), "one line: \(error)")
        }
        XCTAssertNoThrow(try PulseCommand.parseConfig(["-node-id", "nœud-1"], environment: [:]))
    }

    func testLockFileMustBeARegularFile() throws {
        let dir = Harness.tempDir("lock")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let target = dir + "-elsewhere"
        defer { try? FileManager.default.removeItem(atPath: target) }
        try FileManager.default.createSymbolicLink(atPath: dir + "/LOCK", withDestinationPath: target)
        XCTAssertThrowsError(try DataDir(path: dir, rejected: RejectedInput())) { error in
            XCTAssertTrue("\(error)".contains("/LOCK: "), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: target), "nothing created through the link")
        try FileManager.default.removeItem(atPath: dir + "/LOCK")
        XCTAssertEqual(mkfifo(dir + "/LOCK", 0o644), 0)
        XCTAssertThrowsError(try DataDir(path: dir, rejected: RejectedInput())) { error in
            XCTAssertTrue("\(error)".contains("not a regular file"), "\(error)")
        }
        try FileManager.default.removeItem(atPath: dir + "/LOCK")
        let first = try DataDir(path: dir, rejected: RejectedInput())
        XCTAssertThrowsError(try DataDir(path: dir, rejected: RejectedInput())) { error in
            XCTAssertTrue("\(error)".contains("in use"), "\(error)")
        }
        _ = first
    }

    // MARK: modes and owner (issue 20, item 6)

    private func mode(_ path: String) -> mode_t {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & 0o7777 : 0xFFFF
    }

    func testFilesAre0600InA0700DirectoryAndLinksAreNotFollowed() throws {
        let base = Harness.tempDir("modes")
        defer { try? FileManager.default.removeItem(atPath: base) }
        let dir = base + "/new/data"
        let store = try DataDir(path: dir, rejected: RejectedInput())
        _ = try store.nodeId(preferring: "")
        try store.saveEpoch(validEpoch)
        XCTAssertEqual(mode(dir), 0o700)
        XCTAssertEqual(mode(base + "/new"), 0o700, "a missing parent too")
        for name in ["LOCK", "node_id", "epoch.json"] { XCTAssertEqual(mode(dir + "/" + name), 0o600, name) }

        // A temp name planted as a link to a victim: the write goes to a new file, not through the link.
        let victim = base + "/victim"
        try Data("keep".utf8).write(to: URL(fileURLWithPath: victim))
        try FileManager.default.createSymbolicLink(atPath: dir + "/epoch.json.tmp", withDestinationPath: victim)
        try store.saveEpoch(validEpoch)
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "keep")
        XCTAssertEqual(try store.loadEpoch(), validEpoch)

        // epoch.json replaced by a link to a file someone else chose: refused, not read.
        try FileManager.default.removeItem(atPath: dir + "/epoch.json")
        try FileManager.default.createSymbolicLink(atPath: dir + "/epoch.json", withDestinationPath: victim)
        XCTAssertThrowsError(try store.loadEpoch()) { error in
            XCTAssertTrue("\(error)".contains("epoch.json: is a symbolic link"), "\(error)")
        }
    }

    func testExistingReadableDirAndFilesAreNarrowed() throws {
        let dir = Harness.tempDir("narrow")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertEqual(chmod(dir, 0o755), 0)
        try Data("n-old\n".utf8).write(to: URL(fileURLWithPath: dir + "/node_id"))
        XCTAssertEqual(chmod(dir + "/node_id", 0o644), 0)
        let store = try DataDir(path: dir, rejected: RejectedInput())
        XCTAssertEqual(try store.nodeId(preferring: ""), "n-old")
        XCTAssertEqual(mode(dir), 0o700)
        XCTAssertEqual(mode(dir + "/node_id"), 0o600)
    }

    func testRaftDirIs0700AndItsOlderFilesAreNarrowed() throws {
        let dir = Harness.tempDir("raftmodes")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // New: raft/ 0700, each file RaftStore writes 0600.
        let files = try PosixRaftFiles(dataDir: dir + "/new")
        try files.append("log", [1, 2, 3])
        try files.replace("hardstate", with: [4])
        XCTAssertEqual(mode(dir + "/new/raft"), 0o700)
        for name in ["log", "hardstate"] { XCTAssertEqual(mode(dir + "/new/raft/" + name), 0o600, name) }
        // Of an earlier version (0755, files 0644): narrowed at start; a link is left alone.
        let old = dir + "/old/raft"
        try FileManager.default.createDirectory(atPath: old, withIntermediateDirectories: true)
        XCTAssertEqual(chmod(old, 0o755), 0)
        for name in ["hardstate", "log", "snapshot"] {
            try Data([1]).write(to: URL(fileURLWithPath: old + "/" + name))
            XCTAssertEqual(chmod(old + "/" + name, 0o644), 0)
        }
        let victim = dir + "/victim"
        try Data([9]).write(to: URL(fileURLWithPath: victim))
        XCTAssertEqual(chmod(victim, 0o644), 0)
        try FileManager.default.createSymbolicLink(atPath: old + "/snapshot.tmp", withDestinationPath: victim)
        _ = try PosixRaftFiles(dataDir: dir + "/old")
        XCTAssertEqual(mode(old), 0o700)
        for name in ["hardstate", "log", "snapshot"] { XCTAssertEqual(mode(old + "/" + name), 0o600, name) }
        XCTAssertEqual(mode(victim), 0o644, "not through a link")
    }

    func testADirWritableByOthersOrOwnedByAnotherUserIsRefused() throws {
        let dir = Harness.tempDir("owner")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for bad: mode_t in [0o777, 0o770, 0o702] {
            XCTAssertEqual(chmod(dir, bad), 0)
            let rejected = RejectedInput()
            XCTAssertThrowsError(try DataDir(path: dir, rejected: rejected)) { error in
                XCTAssertTrue("\(error)".contains("writable by group or others"), "\(error)")
                XCTAssertFalse("\(error)".contains("\n"))
            }
            XCTAssertEqual(rejected.count(.dataDir, reason: "writable_by_others"), 1)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/LOCK"), "nothing written")
        }
        XCTAssertEqual(chmod(dir, 0o700), 0)
        guard geteuid() == 0 else { return }  // only root can give a directory away (CI runs as root)
        XCTAssertEqual(chown(dir, 4321, 4321), 0)
        let rejected = RejectedInput()
        XCTAssertThrowsError(try DataDir(path: dir, rejected: rejected)) { error in
            XCTAssertTrue("\(error)".contains("owned by uid 4321"), "\(error)")
        }
        XCTAssertEqual(rejected.count(.dataDir, reason: "foreign_owner"), 1)
    }

    // MARK: Raft files

    /// A record as the store writes it.
    static func record(_ entry: Entry) -> [UInt8] {
        var payload = [UInt8]()
        RaftStore.put(&payload, entry.index)
        RaftStore.put(&payload, entry.term)
        payload.append(entry.kind.rawValue)
        payload += entry.data
        var out: [UInt8] = [UInt8(payload.count & 0xFF), UInt8(payload.count >> 8 & 0xFF), 0, 0]
        RaftStore.put(&out, RaftStore.checksum(payload))
        return out + payload
    }

    private func hardStateBytes(term: UInt64, vote: UInt64, commit: UInt64) -> [UInt8] {
        var bytes = [UInt8]()
        RaftStore.put(&bytes, term)
        RaftStore.put(&bytes, vote)
        RaftStore.put(&bytes, commit)
        RaftStore.put(&bytes, RaftStore.checksum(bytes))
        return bytes
    }

    func testHardStateIsValidated() {
        XCTAssertEqual(
            try RaftStore.parseHardState(hardStateBytes(term: 3, vote: 2, commit: 9)),
            HardState(term: 3, vote: 2, commit: 9))
        // Terms from 2^62 on are legal (reached one step at a time after a
        // forged term, RaftNode.maxTerm): a node there must restart.
        XCTAssertEqual(
            try RaftStore.parseHardState(hardStateBytes(term: (1 << 62) + 5, vote: 2, commit: 9)),
            HardState(term: (1 << 62) + 5, vote: 2, commit: 9))
        let good = hardStateBytes(term: 3, vote: 2, commit: 9)
        var flipped = good
        flipped[5] ^= 0x10
        let cases: [([UInt8], String)] = [
            ([], "bad_length"), (Array(good.prefix(31)), "bad_length"), (good + [0], "bad_length"),
            (flipped, "bad_checksum"),
            (hardStateBytes(term: 1 << 63, vote: 2, commit: 0), "term_absurd"),
            (hardStateBytes(term: UInt64.max, vote: 2, commit: 0), "term_absurd"),
            (hardStateBytes(term: 3, vote: 2, commit: UInt64.max), "index_absurd"),
        ]
        for (bytes, reason) in cases {
            assertRefused(
                { () throws(DataDirError) in _ = try RaftStore.parseHardState(bytes) },
                file: "raft/hardstate", reason: reason)
        }
    }

    func testConsistencyAcrossTheRaftFiles() {
        let log = entries(5...7, term: 2)
        let snapshot = Snapshot(index: 4, term: 1, data: [])
        XCTAssertNoThrow(
            try RaftStore.checkConsistency(
                hardState: HardState(term: 2, vote: 1, commit: 7), snapshot: snapshot, entries: log))
        assertRefused(
            { () throws(DataDirError) in
                try RaftStore.checkConsistency(
                    hardState: HardState(term: 2, vote: 1, commit: 8), snapshot: snapshot, entries: log)
            }, file: "raft/hardstate", reason: "commit_beyond_log")
        assertRefused(
            { () throws(DataDirError) in
                try RaftStore.checkConsistency(
                    hardState: HardState(term: 1, vote: 1, commit: 5), snapshot: snapshot, entries: log)
            }, file: "raft/hardstate", reason: "term_behind_log")
        assertRefused(
            { () throws(DataDirError) in
                try RaftStore.checkConsistency(
                    hardState: HardState(term: 2, vote: 1, commit: 0), snapshot: nil, entries: log)
            }, file: "raft/log", reason: "gap")
        assertRefused(
            { () throws(DataDirError) in
                try RaftStore.checkConsistency(
                    hardState: HardState(term: 2), snapshot: Snapshot(index: UInt64.max, term: 1, data: []),
                    entries: [Entry(index: 0, term: 1)])
            }, file: "raft/log", reason: "gap")
    }

    func testTornTailIsCutAtEveryCutPoint() throws {
        let records = entries(1...3, term: 1).map(Self.record)
        let whole = records.flatMap { $0 }
        let lastStart = records[0].count + records[1].count
        XCTAssertEqual(try RaftStore.scanLog(whole), RaftLogScan(entries: entries(1...3, term: 1), tornTailAt: nil))
        for cut in lastStart..<whole.count {
            let scan = try RaftStore.scanLog(Array(whole.prefix(cut)))
            XCTAssertEqual(scan.entries.map(\.index), [1, 2], "cut at \(cut)")
            XCTAssertEqual(scan.tornTailAt, cut == lastStart ? nil : lastStart, "cut at \(cut)")
        }
        // A torn append that the file system filled with zeros, and a bad last record.
        XCTAssertEqual(try RaftStore.scanLog(whole + [UInt8](repeating: 0, count: 300)).tornTailAt, whole.count)
        var badLast = whole
        badLast[badLast.count - 1] ^= 0x01
        XCTAssertEqual(try RaftStore.scanLog(badLast).tornTailAt, lastStart)
    }

    func testCorruptionInTheMiddleIsRefusedWithItsOffset() throws {
        let records = entries(1...4, term: 1).map(Self.record)
        let whole = records.flatMap { $0 }
        let second = records[0].count
        let third = second + records[1].count
        var payload = whole
        payload[second + 20] ^= 0x04  // the second record's term
        assertRefused(
            { () throws(DataDirError) in _ = try RaftStore.scanLog(payload) }, file: "raft/log",
            reason: "corrupt_record", offset: second)
        var length = whole
        length[second + 2] = 0x7F  // the second record's length runs past the end
        assertRefused(
            { () throws(DataDirError) in _ = try RaftStore.scanLog(length) }, file: "raft/log",
            reason: "corrupt_record", offset: second)
        var zeroed = whole
        for i in second..<third { zeroed[i] = 0 }
        assertRefused(
            { () throws(DataDirError) in _ = try RaftStore.scanLog(zeroed) }, file: "raft/log",
            reason: "corrupt_record", offset: second)
        do {
            _ = try RaftStore.scanLog(zeroed)
        } catch {
            XCTAssertTrue(
                error.description.contains("byte offset \(third)"), "names where intact data resumes: \(error)")
        }
        // Intact records out of sequence are refused too, wherever they are.
        let skipped = records[0] + records[2]
        assertRefused(
            { () throws(DataDirError) in _ = try RaftStore.scanLog(skipped) }, file: "raft/log",
            reason: "bad_sequence", offset: records[0].count)
        let termBack = Self.record(Entry(index: 1, term: 5)) + Self.record(Entry(index: 2, term: 4))
        assertRefused(
            { () throws(DataDirError) in _ = try RaftStore.scanLog(termBack) }, file: "raft/log",
            reason: "bad_sequence")
        assertRefused(
            { () throws(DataDirError) in _ = try RaftStore.scanLog(Self.record(Entry(index: 0, term: 1))) },
            file: "raft/log", reason: "bad_sequence", offset: 0)
        assertRefused(
            { () throws(DataDirError) in
                _ = try RaftStore.scanLog(Self.record(Entry(index: 1, term: UInt64.max)))
            }, file: "raft/log", reason: "bad_sequence", offset: 0)
    }

    // MARK: Scan cost (adversarial review of #9, finding 5)

    /// `scanLog` with its default budget (4 × the file's size), refused as
    /// `reason` at `offset`; returns the bytes it hashed.
    private func refusedScanCost(
        _ bytes: [UInt8], reason: String = "corrupt_record", offset: Int,
        file: StaticString = #filePath, line: UInt = #line
    ) -> LogScanCost {
        var cost = LogScanCost(budget: RaftStore.hashBudgetPerByte * bytes.count)
        assertRefused(
            { () throws(DataDirError) in _ = try RaftStore.scanLog(bytes, cost: &cost) }, file: "raft/log",
            reason: reason, offset: offset, file: file, line: line)
        XCTAssertLessThanOrEqual(cost.bytesHashed, cost.budget, file: file, line: line)
        return cost
    }

    // Old code: a 20 MiB log of 0x01 bytes claimed a 16.8 MB record at each of
    // ~3 million offsets and hashed each one (hours before the node started).
    // Now records are at most `maxRecordBytes` and a bad run longer than one
    // append is corruption: refused at once, nothing hashed.
    func testTwentyMegabytesOfOnesAreRefusedWithoutHashing() {
        let ones = [UInt8](repeating: 0x01, count: 20 << 20)
        XCTAssertEqual(refusedScanCost(ones, offset: 0).bytesHashed, 0)
        // The same after intact records: refused at the first bad one.
        let intact = entries(1...3, term: 1).map(Self.record).flatMap { $0 }
        XCTAssertEqual(refusedScanCost(intact + ones, offset: intact.count).bytesHashed, intact.count - 3 * 12)
    }

    func testTwentyMegabytesOfRandomBytesAreRefusedCheaply() {
        var state: UInt64 = 0x5EED
        var random = [UInt8](repeating: 0, count: 20 << 20)
        for k in stride(from: 0, to: random.count, by: 8) {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            for j in 0..<8 { random[k + j] = UInt8(truncatingIfNeeded: z >> (8 * j)) }
        }
        XCTAssertEqual(refusedScanCost(random, offset: 0).bytesHashed, 0)
    }

    // A crafted tail (within one append's size, so it must be searched) with a
    // plausible record header every 32 bytes, each claiming 256 KiB: searching
    // it would hash ~25 GB. The search stops at its budget and refuses.
    func testCraftedTailStopsAtTheHashingBudget() {
        let intact = entries(1...2, term: 1).map(Self.record).flatMap { $0 }
        let claimed = 256 << 10
        var block = [UInt8](repeating: 0, count: 32)
        for j in 0..<4 { block[j] = UInt8(truncatingIfNeeded: claimed >> (8 * j)) }
        block[12] = 3  // index 3 (the next one), term 1, kind normal; the checksum is wrong
        block[20] = 1
        let tail = (0..<((3 << 20) / 32)).flatMap { _ in block }
        let bytes = intact + tail
        let cost = refusedScanCost(bytes, offset: intact.count)
        XCTAssertGreaterThan(cost.bytesHashed, cost.budget - claimed, "it stopped because of the budget")
        do {
            _ = try RaftStore.scanLog(bytes)
        } catch {
            XCTAssertTrue(error.description.contains("budget"), "\(error)")
        }
    }

    // A torn append is at most one chunk (`maxAppendBytes`): a longer bad run
    // is corruption (before, any length was cut as a torn tail, entries the
    // node may have acknowledged included).
    func testABadRunLongerThanOneAppendIsCorruption() throws {
        let intact = entries(1...3, term: 1).map(Self.record).flatMap { $0 }
        let torn = intact + [UInt8](repeating: 0, count: RaftStore.maxAppendBytes)
        XCTAssertEqual(try RaftStore.scanLog(torn).tornTailAt, intact.count)
        _ = refusedScanCost(torn + [0], offset: intact.count)
        // A record longer than any entry the core accepts is not a record.
        var long = Self.record(Entry(index: 1, term: 1))
        let length = RaftStore.maxRecordBytes + 1
        for j in 0..<4 { long[j] = UInt8(truncatingIfNeeded: length >> (8 * j)) }
        let scan = try RaftStore.scanLog(long + [UInt8](repeating: 0, count: length))
        XCTAssertEqual(scan.tornTailAt, 0)
    }

    func testStoreRefusesMidLogCorruptionWithoutTouchingTheFiles() throws {
        let dir = Harness.tempDir("midlog")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rejected = RejectedInput()
        let store = try RaftStore(dataDir: dir, rejected: rejected)
        _ = try store.load()
        try save(store, hard: HardState(term: 1, vote: 1, commit: 4), entries: entries(1...4, term: 1))
        let path = dir + "/raft/log"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let offset = Self.record(entries(1...1, term: 1)[0]).count
        bytes[offset + 30] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try RaftStore(dataDir: dir, rejected: rejected).load()) { error in
            XCTAssertTrue("\(error)".hasPrefix(dir + "/raft/log at byte offset \(offset): "), "\(error)")
            XCTAssertTrue("\(error)".hasSuffix("refusing to start"), "\(error)")
        }
        XCTAssertEqual([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))), bytes, "left as found")
        XCTAssertEqual(rejected.count(.dataDir, reason: "corrupt_record"), 1)
        // A bad last record that the commit covers is not a torn append: refused, not cut.
        var last = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        last[offset + 30] ^= 0xFF  // repair
        last[last.count - 1] ^= 0xFF
        try Data(last).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try RaftStore(dataDir: dir).load()) { error in
            XCTAssertTrue("\(error)".contains("raft/log at byte offset"), "\(error)")
            XCTAssertTrue("\(error)".contains("committed"), "\(error)")
        }
        XCTAssertEqual([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))), last, "left as found")
    }

    func testStoreCutsATornAppendAndCountsIt() throws {
        let dir = Harness.tempDir("tornappend")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RaftStore(dataDir: dir)
        _ = try store.load()
        try save(store, hard: HardState(term: 1, vote: 1, commit: 3), entries: entries(1...3, term: 1))
        let path = dir + "/raft/log"
        let clean = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let next = Self.record(Entry(index: 4, term: 1, data: Array("uncommitted".utf8)))
        try Data(clean + next.prefix(next.count - 3)).write(to: URL(fileURLWithPath: path))
        let rejected = RejectedInput()
        let loaded = try RaftStore(dataDir: dir, rejected: rejected).load()
        XCTAssertEqual(loaded.entries.map(\.index), [1, 2, 3])
        XCTAssertEqual(loaded.truncatedBytes, next.count - 3)
        XCTAssertEqual(rejected.count(.dataDir, reason: "torn_tail"), 1)
        XCTAssertEqual([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))), clean, "cut back")
    }

    func testNewTermIsStoredBeforeItsEntries() throws {
        // If the log cannot be written, the new term and vote are on disk
        // already (with the old commit): a crash between the two never leaves
        // a log term above the stored term.
        let dir = Harness.tempDir("order")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RaftStore(dataDir: dir)
        _ = try store.load()
        try save(store, hard: HardState(term: 1, vote: 1, commit: 2), entries: entries(1...2, term: 1))
        try FileManager.default.removeItem(atPath: dir + "/raft/log")
        try FileManager.default.createDirectory(atPath: dir + "/raft/log", withIntermediateDirectories: false)
        XCTAssertThrowsError(
            try save(store, hard: HardState(term: 2, vote: 3, commit: 3), entries: entries(3...3, term: 2)))
        let hard = try RaftStore.parseHardState(
            [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/raft/hardstate"))))
        XCTAssertEqual(hard, HardState(term: 2, vote: 3, commit: 2))
    }

    func testSnapshotIsValidated() throws {
        let state = ClusterState(
            epoch: .init(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120),
            pending: .init(atBeat: 64, bpm: 125),
            justification: "x")
        let data = [UInt8](try JSONEncoder().encode(state))
        let good = snapshotBytes(index: 9, term: 2, data: data)
        XCTAssertEqual(try RaftStore.parseSnapshot(good), Snapshot(index: 9, term: 2, data: data))
        var flipped = good
        flipped[30] ^= 0x01
        func stateBytes(_ s: ClusterState) throws -> [UInt8] { [UInt8](try JSONEncoder().encode(s)) }
        var zeroBpm = state
        zeroBpm.epoch.bpm = 0
        var hugeStart = state
        hugeStart.epoch.startNs = Int64.max - 5
        var badPending = state
        badPending.pending = .init(atBeat: Int64.max, bpm: 125)
        let cases: [([UInt8], String)] = [
            (Array(good.prefix(20)), "bad_length"),
            (Array(good.prefix(good.count - 1)), "bad_checksum"),
            (flipped, "bad_checksum"),
            (snapshotBytes(index: 9, term: 2, data: Array("{\"epoch\":".utf8)), "bad_snapshot_state"),
            (snapshotBytes(index: 9, term: 2, data: []), "bad_snapshot_state"),
            (snapshotBytes(index: 9, term: 2, data: try stateBytes(zeroBpm)), "bpm_out_of_range"),
            (snapshotBytes(index: 9, term: 2, data: try stateBytes(hugeStart)), "instant_out_of_range"),
            (snapshotBytes(index: 9, term: 2, data: try stateBytes(badPending)), "beat_out_of_range"),
            (snapshotBytes(index: 0, term: 2, data: data), "index_absurd"),
            (snapshotBytes(index: 9, term: UInt64.max, data: data), "index_absurd"),
        ]
        for (bytes, reason) in cases {
            assertRefused(
                { () throws(DataDirError) in _ = try RaftStore.parseSnapshot(bytes) }, file: "raft/snapshot",
                reason: reason)
        }
    }

    func testCorruptSnapshotRefusesToStart() throws {
        let dir = Harness.tempDir("snap")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/raft", withIntermediateDirectories: true)
        try Data(snapshotBytes(index: 3, term: 1, data: Array("garbage".utf8))).write(
            to: URL(fileURLWithPath: dir + "/raft/snapshot"))
        XCTAssertThrowsError(try RaftStore(dataDir: dir).load()) { error in
            XCTAssertTrue("\(error)".hasPrefix(dir + "/raft/snapshot: "), "\(error)")
        }
    }

    // MARK: never a trap

    /// Seeded random bytes and mutations of valid files through every parser:
    /// a trap would end the test run; refusals are the expected answers.
    func testParsersNeverTrapOnArbitraryBytes() throws {
        var rng = SplitMix(seed: 0x9_2024)
        let state = ClusterState(
            epoch: .init(startBeat: 8, startNs: 1_700_000_000_000_000_000, bpm: 12), pending: nil, justification: "")
        let seeds: [[UInt8]] = [
            try json(validEpoch), Array("pulse-abcdef\n".utf8), hardStateBytes(term: 2, vote: 1, commit: 3),
            snapshotBytes(index: 3, term: 1, data: [UInt8](try JSONEncoder().encode(state))),
            entries(1...5, term: 1).map(Self.record).flatMap { $0 },
        ]
        var accepted = 0
        for round in 0..<4000 {
            var bytes = seeds[round % seeds.count]
            switch rng.next() % 4 {
            case 0: bytes = (0..<Int(rng.next() % 200)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            case 1: if !bytes.isEmpty { bytes[Int(rng.next() % UInt64(bytes.count))] ^= UInt8(1 << (rng.next() % 8)) }
            case 2: bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count + 1))))
            default:
                if !bytes.isEmpty {
                    let at = Int(rng.next() % UInt64(bytes.count))
                    bytes.replaceSubrange(
                        at..<min(bytes.count, at + 8), with: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
                }
            }
            if (try? DataDirFiles.parseEpoch(bytes)) != nil { accepted += 1 }
            if (try? DataDirFiles.parseNodeId(bytes)) != nil { accepted += 1 }
            if (try? RaftStore.parseHardState(bytes)) != nil { accepted += 1 }
            if (try? RaftStore.parseSnapshot(bytes)) != nil { accepted += 1 }
            if (try? RaftStore.scanLog(bytes)) != nil { accepted += 1 }
        }
        XCTAssertGreaterThan(accepted, 0, "some inputs stay valid")
    }
}

/// A small seeded generator (SplitMix64), so any failure replays.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
