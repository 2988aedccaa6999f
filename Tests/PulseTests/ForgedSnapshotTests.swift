// Issue 20, item 3, with real processes: a host that reaches a follower's
// plain-TCP Raft port (bound to loopback) and claims to be the current leader
// (its name and term are public in GET /timeline) sends a snapshot whose
// voter set is `{evil}` and whose timeline is forged. The follower refuses it
// before anything changes (`foreign_voter_set`, counted), so nothing is
// persisted: restarted, it follows its real peers and keeps the real
// timeline. And a node whose Raft port is off loopback does not start on
// plain TCP unless told `-raft-insecure`.
import Foundation
import PulseCore
import PulsePolicy
import Raft
import XCTest

@testable import Pulse

final class ForgedSnapshotTests: XCTestCase {
    func testAForgedLeadersSnapshotChangesNothingPersistent() throws {
        let cluster = try PulseCluster(cluster: "forged", bpm: 300)
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        let follower = (leader + 1) % 3
        var timeline: [String: Any] = [:]
        Harness.waitUntil(seconds: 10) {
            timeline = cluster.get(follower, "/timeline")
            return timeline["term"] != nil && timeline["leader"] is String
        }
        let term = try XCTUnwrap((timeline["term"] as? NSNumber)?.uint64Value, "\(timeline)")
        let leaderName = try XCTUnwrap(timeline["leader"] as? String, "\(timeline)")
        let epoch = try XCTUnwrap(timeline["epoch"] as? [String: Any])
        let startNs = try XCTUnwrap((epoch["start_ns"] as? NSNumber)?.int64Value)
        let commit = try XCTUnwrap(
            ((cluster.get(follower, "/leader")["stats"] as? [String: Any])?["commit_index"] as? NSNumber)?.uint64Value)

        // The forgery: the leader's id and term, a snapshot far ahead of the
        // follower's log, voters {evil}, a timeline at another tempo.
        let evil = Member(id: PeerList.stableId("evil"), context: Array("evil\n127.0.0.1:1".utf8))
        let state = ClusterState(
            epoch: .init(startBeat: 0, startNs: startNs, bpm: 120), pending: nil, justification: "forged")
        var message = Message(
            kind: .snapshot, from: PeerList.stableId(leaderName), to: PeerList.stableId(cluster.names[follower]),
            term: term)
        message.snapshot = Snapshot(
            index: commit + 1000, term: term, data: [UInt8](try JSONEncoder().encode(state)), members: [evil])
        var payload: [UInt8] = []
        message.encode(into: &payload)
        let fd = try Harness.connectLoopback(port: cluster.raftPorts[follower], timeoutMs: 2000)
        defer { close(fd) }
        let frame = HostilePeerTests.rawFrame(payload, sendNs: HostilePeerTests.realtimeNs())
        XCTAssertEqual(frame.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, frame.count)

        var rejections: [String: Double] = [:]
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                rejections = HostilePeerTests.raftRejections((try? cluster.metrics(follower)) ?? "")
                return (rejections["foreign_voter_set"] ?? 0) >= 1
            }, "refused and counted: \(rejections)\n\(cluster.logs)")

        // Restarted from its data dir, the follower has the real voters and
        // timeline, and follows the real leader.
        cluster.nodes[follower]?.stop()
        try cluster.start(follower)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                cluster.get(follower, "/timeline")["leader"] as? String == leaderName
                    && cluster.get(follower, "/leader")["leader"] as? String == "127.0.0.1:\(cluster.raftPorts[leader])"
            },
            cluster.logs)
        let members = (cluster.get(follower, "/members")["members"] as? [[String: Any]] ?? []).compactMap {
            $0["name"] as? String
        }
        XCTAssertEqual(members.sorted(), cluster.names, cluster.logs)
        XCTAssertEqual(cluster.get(follower, "/tempo")["current_bpm"] as? Int, 300)
        // Its Raft log keeps moving with the real cluster: a change forwarded
        // through it commits and applies everywhere.
        let response = try XCTUnwrap(
            RawClient(port: cluster.adminPorts[follower]).request(
                httpRequest("POST", "/tempo", body: #"{"tempo_bpm": 310, "justification": "after"}"#)))
        XCTAssertEqual(response.status, 202, response.text + cluster.logs)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) {
                (0..<3).allSatisfy { cluster.get($0, "/tempo")["current_bpm"] as? Int == 310 }
            }, cluster.logs)
    }

    func testAPlainTCPRaftPortOffLoopbackIsRefusedAtStartUp() throws {
        let dir = Harness.tempDir("insecure")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cluster = ["-node-id", "n1", "-peers", "n1@pulse-a:7000,n2@pulse-b:7000", "-raft-bind", "0.0.0.0:7000"]
        // The binary: one line, exit 2, before anything is bound.
        let refused = try runPulse(
            ["-bootstrap"] + cluster + ["-data-dir", "\(dir)/data", "-admin-port", "0", "-nats", "nats://127.0.0.1:1"])
        XCTAssertEqual(refused.status, 2, refused.stderr)
        XCTAssertEqual(refused.stderr.split(separator: "\n").count, 1, refused.stderr)
        XCTAssertTrue(
            refused.stderr.contains("-raft-bind 0.0.0.0 is not a loopback address")
                && refused.stderr.contains("-raft-insecure"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/data"), "refused before the data dir")
        // Mutual TLS, or the explicit opt-out, is accepted; loopback needs neither.
        for name in ["c.pem", "k.pem", "ca.pem"] {
            FileManager.default.createFile(atPath: "\(dir)/\(name)", contents: Data())
        }
        let tls = ["-raft-tls-cert", "\(dir)/c.pem", "-raft-tls-key", "\(dir)/k.pem", "-raft-tls-ca", "\(dir)/ca.pem"]
        XCTAssertNoThrow(try PulseCommand.parseConfig(cluster + tls, environment: [:]))
        XCTAssertTrue(try PulseCommand.parseConfig(cluster + ["-raft-insecure"], environment: [:]).raftInsecure)
        XCTAssertNoThrow(try PulseCommand.parseConfig(cluster, environment: ["BACKBEAT_RAFT_INSECURE": "true"]))
        XCTAssertNoThrow(
            try PulseCommand.parseConfig(
                ["-node-id", "n1", "-peers", "n1@127.0.0.1:7000,n2@127.0.0.1:7001"], environment: [:]))
        XCTAssertThrowsError(
            try PulseCommand.parseConfig(
                ["-node-id", "n1", "-peers", "n1@10.0.0.1:7000,n2@10.0.0.2:7000"], environment: [:]))
    }
}
