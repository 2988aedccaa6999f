// A single node is a one-voter Raft cluster (issue 19), with real `pulse`
// processes and a real nats-server: a data dir written by the release
// before (an `epoch.json` in today's format, with a pending tempo change and
// its justification, no Raft state) starts on exactly that timeline, which
// is then its Raft log (`epoch.json` renamed `epoch.json.migrated`, never
// read again); `/members`, `/leader` and `/health` name its one voter.
import Foundation
import Glibc
import XCTest

@testable import Pulse

final class EpochMigrationProcessTests: XCTestCase {
    private func start(_ dir: String, port: Int, nats: NatsServer, label: String) throws -> PulseProcess {
        try PulseProcess(
            arguments: [
                "-cluster", "mig", "-data-dir", dir, "-admin-port", "\(port)", "-nats", nats.url, "-bar", "4",
                "-phases", "p,q", "-max-bpm", "600", "-node-id", "solo-1",
            ], logPath: dir + label + ".log")
    }

    private func get(_ port: Int, _ path: String) -> [String: Any] { PulseCluster.adminJSON(port: port, path) }

    func testAnEpochFileOfTheReleaseBeforeBecomesTheOneVoterLog() throws {
        let nats = try NatsServer()
        let base = Harness.tempDir("migrate")
        defer { try? FileManager.default.removeItem(atPath: base) }
        let dir = base + "/n"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // The file as the release before wrote it (DataDir.saveEpoch: sorted
        // keys), with a change at a downbeat two minutes ahead.
        let startNs = (Int64(Date().timeIntervalSince1970) - 60) * 1_000_000_000
        let atBeat: Int64 = 4 * 100  // 120 bpm: beat 400 is 200 s after the start, a downbeat
        let text =
            #"{"bar":4,"bpm":120,"clusterId":"mig","pendingAtBeat":\#(atBeat),"pendingBpm":126,"#
            + #""pendingJustification":"faster","phases":["p","q"],"startBeat":0,"startNs":\#(startNs)}"#
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/epoch.json"))
        // The parser of today's release accepts it as it is.
        let parsed = try DataDirFiles.parseEpoch(Array(text.utf8))
        XCTAssertEqual(parsed.pendingJustification, "faster")

        let port = Harness.freePort()
        let node = try start(dir, port: port, nats: nats, label: "-a")
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.mig.beat")
        XCTAssertTrue(subscriber.wait(for: 2, seconds: 10), node.log)
        assertTimeline(get(port, "/timeline"), startNs: startNs, atBeat: atBeat, node.log)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/epoch.json"), "no longer the source of truth")
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/epoch.json.migrated"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/raft"))
        XCTAssertTrue(node.log.contains("epoch.json migrated"), node.log)

        // One voter: itself, leading; /leader and /health say the same.
        let members = get(port, "/members")
        let list = members["members"] as? [[String: Any]] ?? []
        XCTAssertEqual(list.count, 1, "\(members)")
        XCTAssertEqual(list.first?["name"] as? String, "solo-1")
        XCTAssertEqual(list.first?["leader"] as? Bool, true)
        XCTAssertEqual(members["leader"] as? String, "solo-1")
        XCTAssertEqual(members["voter"] as? Bool, true)
        let leader = get(port, "/leader")
        XCTAssertEqual(leader["is_leader"] as? Bool, true, "\(leader)")
        XCTAssertEqual(leader["cluster_size"] as? Int, 1, "\(leader)")
        let health = get(port, "/health")
        XCTAssertEqual(health["status"] as? String, "ok", "\(health)")
        let frames = subscriber.received.compactMap { ($0.object["term"] as? NSNumber)?.int64Value }
        XCTAssertTrue(
            frames.allSatisfy { $0 >= 2 }, "frames carry the one-voter term (above the migrated 1): \(frames)")
        // The pending change holds: another is refused until it applies.
        let refused = try RawClient(port: port, timeoutMs: 2000).request(
            httpRequest("POST", "/tempo", body: #"{"tempo_bpm":125,"justification":"x"}"#))
        XCTAssertEqual(refused?.status, 409, refused?.text ?? "")
        XCTAssertEqual(node.stop(), 0, node.log)

        // Restarted: the same timeline, from the Raft log alone.
        let again = try start(dir, port: port, nats: nats, label: "-b")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { (self.get(port, "/timeline")["epoch"] as? [String: Any]) != nil },
            again.log)
        assertTimeline(get(port, "/timeline"), startNs: startNs, atBeat: atBeat, again.log)
        XCTAssertFalse(again.log.contains("epoch.json migrated"), again.log)
        XCTAssertEqual(again.stop(), 0, again.log)
    }

    /// An `epoch.json` next to a Raft log that says something else (an older
    /// release ran on the data dir after the migration) is refused with one line.
    func testAnEpochFileThatDisagreesWithTheRaftLogRefusesToStart() throws {
        let nats = try NatsServer()
        let base = Harness.tempDir("migrate-both")
        defer { try? FileManager.default.removeItem(atPath: base) }
        let dir = base + "/n"
        let port = Harness.freePort()
        let node = try PulseProcess(
            arguments: [
                "-cluster", "mig", "-data-dir", dir, "-admin-port", "\(port)", "-nats", nats.url, "-bar", "4",
                "-phases", "p,q", "-bootstrap",
            ], logPath: dir + ".log")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { (self.get(port, "/timeline")["epoch"] as? [String: Any]) != nil },
            node.log)
        XCTAssertEqual(node.stop(), 0, node.log)
        let startNs = (Int64(Date().timeIntervalSince1970) - 60) * 1_000_000_000
        let text = #"{"bar":4,"bpm":120,"clusterId":"mig","phases":["p","q"],"startBeat":0,"startNs":\#(startNs)}"#
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/epoch.json"))
        let result = try runPulse(
            [
                "-cluster", "mig", "-data-dir", dir, "-admin-port", "0", "-nats", nats.url, "-bar", "4", "-phases",
                "p,q",
            ],
            timeout: 10)
        XCTAssertEqual(result.status, 2, result.stderr)
        XCTAssertEqual(result.stderr.split(separator: "\n").filter { !$0.isEmpty }.count, 1, result.stderr)
        XCTAssertTrue(result.stderr.contains("holds both a Raft log and an epoch.json"), result.stderr)
    }

    private func assertTimeline(
        _ body: [String: Any], startNs: Int64, atBeat: Int64, _ log: String, line: UInt = #line
    ) {
        let epoch = body["epoch"] as? [String: Any] ?? [:]
        XCTAssertEqual((epoch["start_ns"] as? NSNumber)?.int64Value, startNs, "\(body) \(log)", line: line)
        XCTAssertEqual((epoch["start_beat"] as? NSNumber)?.int64Value, 0, line: line)
        XCTAssertEqual((epoch["bpm"] as? NSNumber)?.int64Value, 120, line: line)
        XCTAssertEqual(body["bar"] as? Int, 4, line: line)
        XCTAssertEqual(body["phases"] as? [String], ["p", "q"], line: line)
        let pending = body["pending"] as? [String: Any] ?? [:]
        XCTAssertEqual((pending["at_beat"] as? NSNumber)?.int64Value, atBeat, "\(body)", line: line)
        XCTAssertEqual((pending["bpm"] as? NSNumber)?.int64Value, 126, line: line)
    }
}
