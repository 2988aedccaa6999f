// Issue 20, item 1, with real processes: a follower forwards `POST /tempo` to
// the leader over the Raft transport (RaftForwarding.swift), never on a NATS
// subject. With the shipped deploy/nats/backbeat.conf, a subscriber holding
// the consumer role on `backbeat.<c>.>` and `_INBOX.>` sees beats, the
// timeline and the tempo announcement, and never the admin token, while the
// change is forwarded, committed and applied on every node.
import Foundation
import XCTest

@testable import Pulse

final class ForwardingProcessTests: XCTestCase {
    func testAFollowersTempoChangeNeverShowsTheTokenToAConsumer() throws {
        let dir = Harness.tempDir("forwarding")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let nats = try NatsAuthTests.SecuredNats(dir: dir)
        let seedPath = "\(dir)/pulse.nk"
        try Data("\(nats.pulse.seed)\n".utf8).write(to: URL(fileURLWithPath: seedPath))
        let token = "admin-token-\(UInt64.random(in: 1...UInt64.max))"
        // The cluster id deploy/nats/backbeat.conf spells out.
        let cluster = try PulseCluster(
            cluster: "chorus-aus-01", bpm: 300, extra: ["-nats-nkey", seedPath, "-admin-token", token],
            natsURL: nats.url)
        let subjects = try Subscriber(url: nats.consumerURL, subject: "backbeat.chorus-aus-01.>")
        let inboxes = try Subscriber(url: nats.consumerURL, subject: "_INBOX.>")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(
            subjects.wait(for: 3, seconds: 10), "the consumer receives the cluster's subjects\n\(cluster.logs)")

        let follower = (leader + 1) % 3
        let body = #"{"tempo_bpm": 320, "justification": "forwarded"}"#
        let post = { (headers: [String]) in
            try XCTUnwrap(
                RawClient(port: cluster.adminPorts[follower]).request(
                    httpRequest("POST", "/tempo", body: body, headers: headers)))
        }
        // The follower authenticates its own client first.
        XCTAssertEqual(try post([]).status, 401)
        let response = try post(["Authorization: Bearer \(token)"])
        XCTAssertEqual(response.status, 202, response.text + cluster.logs)
        XCTAssertEqual(response.json["tempo_bpm"] as? Int, 320, response.text)
        // Committed through the leader and applied everywhere; announced.
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) {
                (0..<3).allSatisfy { cluster.get($0, "/tempo")["current_bpm"] as? Int == 320 }
            },
            cluster.logs)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                subjects.received.contains { $0.object["type"] as? String == "backbeat.tempo_change.v1" }
            }, "the announcement reaches the consumer")

        let seen = subjects.received + inboxes.received
        XCTAssertGreaterThan(seen.count, 3)
        XCTAssertFalse(seen.contains { $0.text.contains(token) }, "a consumer read the admin token")
        XCTAssertFalse(cluster.logs.contains(token), "the token is in a log")
    }

    /// Adversarial review F3 (2026-12-07): on plain-TCP Raft a local process
    /// can claim a member's id with a keepalive and send a forwarded
    /// `POST /tempo` to the leader. With an admin token set, a forwarded
    /// request must carry the token's MAC: the forged one is refused and
    /// counted, the tempo stays; a real follower's still goes through.
    func testAForgedForwardOnPlainTcpRaftIsRefusedWithoutTheTokensMac() throws {
        let token = "admin-token-\(UInt64.random(in: 1...UInt64.max))"
        let cluster = try PulseCluster(cluster: "fwdmac", bpm: 300, extra: ["-admin-token", token])
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        let follower = (leader + 1) % 3
        let claimed = PeerList.stableId(cluster.names[follower])
        let client = try RawClient(port: cluster.raftPorts[leader])
        let keepalive = HostilePeerTests.rawFrame(
            [], sendNs: HostilePeerTests.realtimeNs(), echoSendNs: Int64(bitPattern: claimed))
        XCTAssertTrue(client.send(bytes: keepalive))
        let forged = ForwardedMessage(
            type: .request, kind: .tempo, status: 0, id: 7,
            body: Array(#"{"tempo_bpm": 320, "justification": "forged"}"#.utf8))
        var frame = HostilePeerTests.rawFrame(forged.encode(), sendNs: HostilePeerTests.realtimeNs())
        frame[2] = RaftTransport.forwardedKind
        XCTAssertTrue(client.send(bytes: frame))
        var refused = 0.0
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                let metrics =
                    (try? RawClient(port: cluster.adminPorts[leader], timeoutMs: 2000))?.request(
                        httpRequest("GET", "/metrics"))?.text ?? ""
                refused =
                    LiveViewProcessTests.metric(
                        metrics, "backbeat_rejected_input_total", [#"reason="bad_forward_mac""#]) ?? 0
                return refused >= 1
            }, "the forged forward is refused and counted\n\(cluster.logs)")
        XCTAssertEqual(cluster.get(leader, "/tempo")["pending_bpm"] as? Int, 300, "no change pending")

        // A real follower's request carries the MAC and is served (once its
        // connection, displaced by the forger's claim, is back).
        client.close()
        var response: RawResponse?
        _ = Harness.waitUntil(seconds: 10) {
            response = try? RawClient(port: cluster.adminPorts[follower]).request(
                httpRequest(
                    "POST", "/tempo", body: #"{"tempo_bpm": 320, "justification": "real"}"#,
                    headers: ["Authorization: Bearer \(token)"]))
            return response.map { $0.status != 503 } ?? false
        }
        let answer = try XCTUnwrap(response)
        XCTAssertEqual(answer.status, 202, answer.text + cluster.logs)
    }
}
