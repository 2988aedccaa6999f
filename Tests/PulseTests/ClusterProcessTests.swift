// Three real `pulse` processes forming a Raft cluster on loopback, a real
// nats-server, and an independent subscriber: failover, graceful stop,
// a frozen leader, and a full restart.
import Foundation
import Glibc
import XCTest

final class ClusterProcessTests: XCTestCase {
    /// The 3-node process cluster (Support/PulseCluster.swift).
    typealias Cluster = PulseCluster

    /// (index, publisher suffix, term, receive ns) of every frame.
    private func frames(_ subscriber: Subscriber) -> [(index: Int64, from: String, term: Int64, receivedNs: Int64)] {
        subscriber.received.compactMap { frame in
            let o = frame.object
            guard let index = (o["beat_index"] as? NSNumber)?.int64Value, let hlc = o["hlc"] as? String,
                let term = (o["term"] as? NSNumber)?.int64Value
            else { return nil }
            return (index, String(hlc.split(separator: ":").last ?? ""), term, frame.receivedNs)
        }
    }

    private func assertNoRepeatNoBackwards(
        _ list: [(index: Int64, from: String, term: Int64, receivedNs: Int64)], _ logs: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        for (a, b) in zip(list, list.dropFirst()) {
            XCTAssertGreaterThan(b.index, a.index, "index \(b.index) after \(a.index)\n\(logs)", file: file, line: line)
            XCTAssertGreaterThanOrEqual(b.term, a.term, "term went back", file: file, line: line)
        }
    }

    func testSigtermOfTheLeaderMissesNoBeat() throws {
        try sigtermOfTheLeaderMissesNoBeat(cluster: "graceful", extra: [])
    }

    /// The same in timer-only mode, where the leader reads its echoes at its
    /// turns (NatsLink.deferReads): the stop reads what waited first, so
    /// only the echo of a frame published after it starts the hand-over
    /// (review of 2026-12-07 F1).
    func testSigtermOfATimerOnlyLeaderMissesNoBeat() throws {
        try sigtermOfTheLeaderMissesNoBeat(cluster: "graceful-timer", extra: ["-spin-max-us", "0"])
    }

    private func sigtermOfTheLeaderMissesNoBeat(cluster name: String, extra: [String]) throws {
        let cluster = try Cluster(cluster: name, bpm: 300, extra: extra)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.\(name).beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 4, seconds: 10), cluster.logs)
        cluster.nodes[leader]?.stop()
        let before = subscriber.count
        XCTAssertTrue(subscriber.wait(for: before + 8, seconds: 10), cluster.logs)
        let list = frames(subscriber)
        assertNoRepeatNoBackwards(list, cluster.logs)
        for (a, b) in zip(list, list.dropFirst()) {
            XCTAssertEqual(b.index, a.index + 1, "no beat missed across the handover\n\(cluster.logs)")
        }
        XCTAssertGreaterThan(Set(list.map(\.from)).count, 1, "a new leader took over")
    }

    func testSigkillOfTheLeaderFailsOverWithinOneSecond() throws {
        let cluster = try Cluster(cluster: "failover", bpm: 600)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.failover.beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 5, seconds: 10), cluster.logs)
        let oldSuffix = String(cluster.names[leader].suffix(4))
        XCTAssertTrue(
            try cluster.metrics(leader).contains("backbeat_hot_path_allocated_bytes_total 0"),
            "the leader's beat path allocates nothing")
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let killedNs = Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
        cluster.nodes[leader]?.signal(SIGKILL)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { self.frames(subscriber).contains { $0.from != oldSuffix } }, cluster.logs)
        let list = frames(subscriber)
        let first = try XCTUnwrap(list.first { $0.from != oldSuffix && $0.receivedNs > killedNs })
        let failoverMs = Double(first.receivedNs - killedNs) / 1e6
        XCTAssertLessThanOrEqual(failoverMs, 1000, "first frame from the new leader \(failoverMs) ms after the kill")
        assertNoRepeatNoBackwards(list, cluster.logs)
        cluster.nodes[leader] = nil
    }

    func testBadRaftFramesAreRefusedAndCounted() throws {
        let cluster = try Cluster(cluster: "badframes", bpm: 600)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.badframes.beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 10), cluster.logs)
        let payloads: [[UInt8]] = [
            Array("GET / HTTP/1.1\r\n\r\n".utf8),  // wrong magic
            [0xBB, 2, 0, 0, 0xFF, 0xFF, 0xFF, 0x7F] + [UInt8](repeating: 0, count: 24),  // 2 GiB length
            [0xBB, 2, 0, 0, 4, 0, 0, 0] + [UInt8](repeating: 0, count: 24) + [9, 9, 9, 9],  // not a message
            (0..<4096).map { _ in UInt8.random(in: 0...255) },
        ]
        for payload in payloads {
            let client = try RawClient(port: cluster.raftPorts[leader])
            _ = client.send(bytes: payload)
            XCTAssertTrue(client.waitForClose(), "the node closes a connection that sent a bad frame")
        }
        let before = subscriber.count
        XCTAssertTrue(subscriber.wait(for: before + 5, seconds: 5), "beats go on\n\(cluster.logs)")
        XCTAssertEqual(cluster.leader(), leader, "the leader is undisturbed")
        let metrics = try cluster.metrics(leader)
        let line = metrics.split(separator: "\n").first { $0.hasPrefix("backbeat_raft_bad_frames_total ") }
        XCTAssertEqual(line.map(String.init), "backbeat_raft_bad_frames_total 4", metrics)
    }

    func testFrozenLeaderNeverPublishesAfterItsSuccessor() throws {
        let cluster = try Cluster(cluster: "frozen", bpm: 300)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.frozen.beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 4, seconds: 10), cluster.logs)
        let oldSuffix = String(cluster.names[leader].suffix(4))
        cluster.nodes[leader]?.signal(SIGSTOP)
        usleep(3_000_000)
        cluster.nodes[leader]?.signal(SIGCONT)
        let before = subscriber.count
        XCTAssertTrue(subscriber.wait(for: before + 10, seconds: 10), cluster.logs)
        let list = frames(subscriber)
        assertNoRepeatNoBackwards(list, cluster.logs)
        if let successorFirst = list.firstIndex(where: { $0.from != oldSuffix }) {
            let lateFromOld = list[successorFirst...].filter { $0.from == oldSuffix }
            XCTAssertTrue(lateFromOld.isEmpty, "the frozen leader published after its successor\n\(cluster.logs)")
        } else {
            XCTFail("no successor took over\n\(cluster.logs)")
        }
    }

    func testAllRestartedKeepTheTimelineAndTempo() throws {
        // Compact after every 2 entries, so the restart also recovers from a snapshot.
        let cluster = try Cluster(cluster: "restart", bpm: 300, extra: ["-raft-compact-every", "2"])
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.restart.beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 10), cluster.logs)
        // A tempo change posted on a follower is forwarded to the leader.
        let follower = (leader + 1) % 3
        XCTAssertEqual(cluster.get(follower, "/tempo")["can_change"] as? Bool, true, "a follower forwards, so it can")
        let client = try RawClient(port: cluster.adminPorts[follower])
        let response = try XCTUnwrap(
            client.request(httpRequest("POST", "/tempo", body: #"{"tempo_bpm": 320, "justification": "restart"}"#)))
        XCTAssertEqual(response.status, 202, response.text + cluster.logs)
        let atBeat = try XCTUnwrap((response.json["apply_at_beat"] as? NSNumber)?.int64Value)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) { self.frames(subscriber).contains { $0.index >= atBeat + 2 } }, cluster.logs
        )
        // Every node applied it.
        for i in 0..<3 {
            XCTAssertEqual(cluster.get(i, "/tempo")["current_bpm"] as? Int, 320, "node \(i)\n\(cluster.logs)")
        }
        let reference = try XCTUnwrap(subscriber.received.last)
        cluster.stopAll()
        let stoppedAt = subscriber.count
        for i in 0..<3 { try cluster.start(i) }
        XCTAssertTrue(subscriber.wait(for: stoppedAt + 5, seconds: 20), cluster.logs)
        let after = try XCTUnwrap(subscriber.received.last)
        // Same timeline: the later frame sits a whole number of 320-bpm periods after the reference.
        let k0 = try XCTUnwrap((reference.object["beat_index"] as? NSNumber)?.int64Value)
        let k1 = try XCTUnwrap((after.object["beat_index"] as? NSNumber)?.int64Value)
        XCTAssertEqual((after.object["tempo_bpm"] as? NSNumber)?.int64Value, 320)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let d0 = try XCTUnwrap(formatter.date(from: reference.object["deadline_at"] as? String ?? ""))
        let d1 = try XCTUnwrap(formatter.date(from: after.object["deadline_at"] as? String ?? ""))
        let expectedMs = Double(k1 - k0) * 60_000 / 320
        XCTAssertEqual(d1.timeIntervalSince(d0) * 1000, expectedMs, accuracy: 2, cluster.logs)
        assertNoRepeatNoBackwards(frames(subscriber), cluster.logs)
        XCTAssertTrue(
            FileManager.default.fileExists(atPath: "\(cluster.dir)/n1/raft/snapshot"), "the log was compacted")
    }
}
