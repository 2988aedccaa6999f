// The real `pulse` binary on corrupted data dirs (requirements §10): it exits
// non-zero within seconds with exactly one line on stderr naming the file,
// and a node whose Raft log ends in a torn append starts and keeps its timeline.
import Foundation
import Raft
import XCTest

@testable import Pulse

final class DataDirProcessTests: XCTestCase {
    /// Runs a single node on `dir` (nothing listens on the NATS port: a
    /// refusing node must stop before it connects) and checks the refusal.
    func assertRefusesToStart(
        dataDir dir: String, extra: [String] = [], status: Int32 = 1, naming file: String,
        line: UInt = #line
    ) throws {
        let started = Date()
        let result = try runPulse(
            ["-cluster", "dd", "-data-dir", dir, "-admin-port", "0", "-nats", "nats://127.0.0.1:1"] + extra,
            timeout: 10)
        let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }
        XCTAssertEqual(result.status, status, result.stderr, line: line)
        XCTAssertEqual(lines.count, 1, "exactly one line: \(result.stderr)", line: line)
        XCTAssertTrue(result.stderr.hasPrefix("pulse: error: "), result.stderr, line: line)
        XCTAssertTrue(result.stderr.contains(file), "names \(file): \(result.stderr)", line: line)
        XCTAssertLessThan(Date().timeIntervalSince(started), 5, "exits within seconds", line: line)
    }

    private func writeEpoch(_ dir: String, _ text: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/epoch.json"))
    }

    func testCorruptEpochFilesRefuseToStartWithOneLine() throws {
        let base = Harness.tempDir("dd-epoch")
        defer { try? FileManager.default.removeItem(atPath: base) }
        let cases = [
            #"{"clusterId":"dd","startBeat":0,"startNs":1700000000000000000,"bpm":0,"bar":8}"#,
            #"{"clusterId":"dd","startBeat":0,"startNs":1700000000000000000,"bpm":1e30,"bar":8}"#,
            #"{"clusterId":"dd","startBeat":0,"startNs":9223372036854775000,"bpm":12,"bar":8}"#,
            #"{"clusterId":"dd","startBeat":0,"startNs":1700000000000000000,"bpm":12,"bar":0}"#,
            #"{"clusterId":"dd","startBeat":0,"startNs":1700000000000000000,"bpm":"12","bar":8}"#,
            #"{"clusterId":"dd","startBeat":0,"startNs":17000000"#,
            #"{"clusterId":"dd","startBeat":0,"startNs":1700000000000000000,"bpm":12,"bar":8,"pendingAtBeat":9223372036854775800,"pendingBpm":13}"#,
        ]
        for (i, text) in cases.enumerated() {
            let dir = "\(base)/\(i)"
            try writeEpoch(dir, text)
            try assertRefusesToStart(dataDir: dir, naming: dir + "/epoch.json")
        }
        // A timeline a century ahead of this clock: within the math's range, but not this cluster's.
        let dir = "\(base)/future"
        try writeEpoch(dir, #"{"clusterId":"dd","startBeat":0,"startNs":5000000000000000000,"bpm":12,"bar":8}"#)
        try assertRefusesToStart(dataDir: dir, naming: dir + "/epoch.json")
    }

    func testADataDirOthersCanWriteOrOwnRefusesToStart() throws {
        let base = Harness.tempDir("dd-owner")
        defer { try? FileManager.default.removeItem(atPath: base) }
        let dir = base + "/shared"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        XCTAssertEqual(chmod(dir, 0o777), 0)
        try assertRefusesToStart(dataDir: dir, naming: "data dir \(dir) is writable by group or others")
        guard geteuid() == 0 else { return }  // only root can give a directory away (CI runs as root)
        XCTAssertEqual(chmod(dir, 0o700), 0)
        XCTAssertEqual(chown(dir, 4321, 4321), 0)
        try assertRefusesToStart(dataDir: dir, naming: "data dir \(dir) is owned by uid 4321")
    }

    func testBadNodeIdsRefuseToStart() throws {
        let base = Harness.tempDir("dd-id")
        defer { try? FileManager.default.removeItem(atPath: base) }
        for (i, bytes) in [Array("n\u{7}1\n".utf8), [], [0x6E, 0xFF], Array("a/b".utf8)].enumerated() {
            let dir = "\(base)/\(i)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/node_id"))
            try assertRefusesToStart(dataDir: dir, naming: dir + "/node_id")
        }
        // The flag follows the same rule (a configuration error: status 2).
        try assertRefusesToStart(
            dataDir: "\(base)/flag", extra: ["-node-id", "n\u{1B}1", "-bootstrap"], status: 2, naming: "-node-id")
    }

    func testCorruptRaftLogRefusesToStartNamingTheOffset() throws {
        let dir = Harness.tempDir("dd-raft")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try RaftStore(dataDir: dir)
        _ = try store.load()
        let done = DispatchSemaphore(value: 0)
        let entries = (1...4).map { Entry(index: UInt64($0), term: 1, kind: .noop) }
        store.save(hardState: HardState(term: 1, vote: 0, commit: 4), snapshot: nil, entries: entries) { _ in
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        let path = dir + "/raft/log"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let recordBytes = bytes.count / 4
        bytes[recordBytes * 2 + 14] ^= 0x01  // inside the third record
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let ports = (0..<3).map { _ in Harness.freePort() }
        let peers = (0..<3).map { "n\($0 + 1)@127.0.0.1:\(ports[$0])" }.joined(separator: ",")
        try assertRefusesToStart(
            dataDir: dir, extra: ["-node-id", "n1", "-peers", peers, "-raft-bind", "127.0.0.1:\(ports[0])"],
            naming: "\(dir)/raft/log at byte offset \(recordBytes * 2)")
        XCTAssertEqual([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))), bytes, "left as found")
    }

    func testTornRaftLogTailIsCutAndTheTimelineKept() throws {
        let nats = try NatsServer()
        let dir = Harness.tempDir("dd-torn")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let raftPort = Harness.freePort()
        let args = [
            "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", "torn", "-node-id", "n1",
            "-peers", "n1@127.0.0.1:\(raftPort)", "-raft-bind", "127.0.0.1:\(raftPort)", "-nats", nats.url,
            "-data-dir", dir + "/data", "-admin-port", "0",
        ]
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.torn.beat")
        var node = try PulseProcess(arguments: args, logPath: dir + "/a.log")
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 15), node.log)
        XCTAssertEqual(node.stop(), 0, node.log)
        let before = try XCTUnwrap(subscriber.received.last)
        let countBefore = subscriber.count
        // A crash in the middle of an append: the next record, cut short.
        let path = dir + "/data/raft/log"
        let clean = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let scan = try RaftStore.scanLog(clean)
        let last = try XCTUnwrap(scan.entries.last, "the log holds the epoch")
        let next = DataDirTests.record(Entry(index: last.index + 1, term: last.term, kind: .noop))
        try Data(clean + next.prefix(next.count / 2)).write(to: URL(fileURLWithPath: path))

        node = try PulseProcess(arguments: args, logPath: dir + "/b.log")
        XCTAssertTrue(subscriber.wait(for: countBefore + 3, seconds: 15), node.log)
        XCTAssertEqual(node.stop(), 0, node.log)
        XCTAssertTrue(node.log.contains("cut a torn log tail"), node.log)
        let after = try XCTUnwrap(subscriber.received.last)
        // The same timeline: the later frame's deadline sits a whole number of 600-bpm periods later.
        let k0 = try XCTUnwrap((before.object["beat_index"] as? NSNumber)?.int64Value)
        let k1 = try XCTUnwrap((after.object["beat_index"] as? NSNumber)?.int64Value)
        XCTAssertGreaterThan(k1, k0)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let d0 = try XCTUnwrap(formatter.date(from: before.object["deadline_at"] as? String ?? ""))
        let d1 = try XCTUnwrap(formatter.date(from: after.object["deadline_at"] as? String ?? ""))
        XCTAssertEqual(d1.timeIntervalSince(d0) * 1000, Double(k1 - k0) * 100, accuracy: 2)
        // The torn record is gone from the file: the log is whole again.
        XCTAssertNil(try RaftStore.scanLog([UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))).tornTailAt)
    }
}

extension DataDirProcessTests {
    /// A node started with -bootstrap over a snapshot it cannot read refuses
    /// to start, rather than running without it and proposing a second epoch.
    func testBootstrapOverAnUnreadableSnapshotRefusesToStart() throws {
        let dir = Harness.tempDir("dd-snap")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/raft", withIntermediateDirectories: true)
        var body = [UInt8]()
        RaftStore.put(&body, 7)  // index
        RaftStore.put(&body, 1)  // term
        body += Array(#"{"epoch":{"startBeat":0,"startNs":1700000000000000000,"bpm":0},"justification":""}"#.utf8)
        var file = [UInt8]()
        RaftStore.put(&file, RaftStore.checksum(body))
        try Data(file + body).write(to: URL(fileURLWithPath: dir + "/raft/snapshot"))
        let port = Harness.freePort()
        try assertRefusesToStart(
            dataDir: dir,
            extra: [
                "-bootstrap", "-node-id", "n1", "-peers", "n1@127.0.0.1:\(port)", "-raft-bind", "127.0.0.1:\(port)",
            ],
            naming: dir + "/raft/snapshot")
    }
}
