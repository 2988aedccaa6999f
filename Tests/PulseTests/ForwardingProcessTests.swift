// Issue 20, item 1, with real processes: a follower forwards `POST /tempo` to
// the leader over the Raft transport (RaftForwarding.swift), never on a NATS
// subject. With the shipped deploy/nats/backbeat.conf, a subscriber holding
// the consumer role on `backbeat.<c>.>` and `_INBOX.>` sees beats, the
// timeline and the tempo announcement, and never the admin token, while the
// change is forwarded, committed and applied on every node.
import Foundation
import XCTest

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
}
